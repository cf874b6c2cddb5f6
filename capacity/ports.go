package capacity

import (
	"strings"

	"github.com/portspace/portspace/tuple"
)

// Profiles resolves names of platform ephemeral-port profiles ("linux",
// "windows", ...) to port sets.
type Profiles interface {
	// Profile returns the ports of the named profile and whether it exists.
	Profile(name string) (tuple.PortSet, bool)
	// ProfileNames returns every known name, for error messages.
	ProfileNames() []string
}

// ParsePorts parses a port specification: a comma-separated list whose
// items are port ranges ("1024-2047", "8080") or profile names known to
// profiles ("linux"), giving their union; or the RFC 7597 PSID form
// "a=6,k=8,psid=18" of tuple.ParsePortSet. Names are matched
// case-insensitively; profiles may be nil when no names are allowed. Errors
// name the input and the item, and match ErrInput and either
// tuple.ErrSyntax or ErrUnknownProfile. Port 0 is refused: it is not a port a
// connection can have as its source.
func ParsePorts(in string, profiles Profiles) (tuple.PortSet, error) {
	if strings.TrimSpace(in) == "" {
		return tuple.PortSet{}, badInput(nil, "ports %q: empty", in)
	}
	if strings.Contains(in, "=") {
		s, err := tuple.ParsePortSet(in)
		if err != nil {
			return tuple.PortSet{}, badInput(err, "ports %q: %v", in, err)
		}
		if s.Contains(0) {
			return tuple.PortSet{}, badInput(nil, "ports %q: port 0 is not a source port", in)
		}
		return s, nil
	}
	var set tuple.PortSet
	for raw := range strings.SplitSeq(in, ",") {
		item := strings.TrimSpace(raw)
		if item == "" {
			return tuple.PortSet{}, badInput(nil, "ports %q: empty item", in)
		}
		if c := item[0]; c >= '0' && c <= '9' {
			r, err := tuple.ParsePortRange(item)
			if err != nil {
				return tuple.PortSet{}, badInput(err, "ports %q: item %q: %v", in, item, err)
			}
			set = set.Union(tuple.PortSetOf(r))
			continue
		}
		if profiles == nil {
			return tuple.PortSet{}, badInput(ErrUnknownProfile, "ports %q: item %q: unknown profile (no profiles available)", in, item)
		}
		p, ok := profiles.Profile(strings.ToLower(item))
		if !ok {
			return tuple.PortSet{}, badInput(ErrUnknownProfile, "ports %q: item %q: unknown profile; known: %s", in, item, strings.Join(profiles.ProfileNames(), ", "))
		}
		set = set.Union(p)
	}
	if set.Contains(0) {
		return tuple.PortSet{}, badInput(nil, "ports %q: port 0 is not a source port (binding port 0 asks the kernel for any port)", in)
	}
	return set, nil
}
