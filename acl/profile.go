package acl

import (
	"fmt"
	"slices"
	"strings"

	"github.com/portspace/portspace/tuple"
)

// profiles maps each named ephemeral-port profile to its ranges. The values
// come from the platforms' defaults:
//   - strict, the portspace default for return rules: 32768-65535, which
//     covers Linux and the IANA range (naclgen doc/EPHEMERAL_PORTS.md).
//   - loose: 1024-65535, every non-system port (the +ephemeral_loose tag).
//   - linux: net.ipv4.ip_local_port_range, 32768-60999 since Linux 4.x.
//   - iana: RFC 6335 §6 Dynamic Ports, 49152-65535.
//   - windows: Windows Vista/Server 2008 and later, 49152-65535 (KB929851).
//   - windows-legacy: Windows up to XP/Server 2003, 1025-5000.
//   - freebsd: IPPORT_EPHEMERALFIRST..IPPORT_EPHEMERALLAST, 10000-65535.
//   - macos: net.inet.ip.portrange.first/last, 49152-65535.
//   - aws-nat-gateway, elb, lambda: 1024-65535 (AWS VPC user guide,
//     "Ephemeral ports").
var profiles = map[string]tuple.PortRange{
	"strict":          tuple.PortRangeFrom(32768, 65535),
	"loose":           tuple.PortRangeFrom(1024, 65535),
	"linux":           tuple.PortRangeFrom(32768, 60999),
	"iana":            tuple.PortRangeFrom(49152, 65535),
	"windows":         tuple.PortRangeFrom(49152, 65535),
	"windows-legacy":  tuple.PortRangeFrom(1025, 5000),
	"freebsd":         tuple.PortRangeFrom(10000, 65535),
	"macos":           tuple.PortRangeFrom(49152, 65535),
	"aws-nat-gateway": tuple.PortRangeFrom(1024, 65535),
	"elb":             tuple.PortRangeFrom(1024, 65535),
	"lambda":          tuple.PortRangeFrom(1024, 65535),
}

// DefaultProfile names the profile that return rules use when neither the
// flow nor its initiating zone names one: "strict", 32768-65535.
const DefaultProfile = "strict"

// NodePortRange is Kubernetes' default --service-node-port-range,
// 30000-32767; lint warns when a return range overlaps it.
var NodePortRange = tuple.PortRangeFrom(30000, 32767)

// Profile returns the ephemeral (client source) port set of a named platform
// profile, such as "linux" (32768-60999) or "windows-legacy" (1025-5000).
// Names are case-insensitive; ok is false for an unknown name. See Profiles
// for the list.
func Profile(name string) (ports tuple.PortSet, ok bool) {
	r, ok := profiles[strings.ToLower(name)]
	if !ok {
		return tuple.PortSet{}, false
	}
	return tuple.PortSetOf(r), true
}

// Profiles returns the names of every ephemeral-port profile, sorted.
func Profiles() []string {
	names := make([]string, 0, len(profiles))
	for n := range profiles {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ParseEphemeral returns the union of the given items, each a profile name
// (see Profiles) or a port range "lo-hi" or a single port. An empty list
// gives the empty set.
func ParseEphemeral(items ...string) (tuple.PortSet, error) {
	var set tuple.PortSet
	for _, it := range items {
		if p, ok := Profile(it); ok {
			set = set.Union(p)
			continue
		}
		r, err := tuple.ParsePortRange(it)
		if err != nil {
			return tuple.PortSet{}, fmt.Errorf("acl: ephemeral %q is neither a profile (%s) nor a port range: %w",
				it, strings.Join(Profiles(), ", "), err)
		}
		set = set.Union(tuple.PortSetOf(r))
	}
	return set, nil
}
