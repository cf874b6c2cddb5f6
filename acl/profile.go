package acl

import (
	"fmt"
	"strings"

	"github.com/portspace/portspace/ephemeral"
	"github.com/portspace/portspace/tuple"
)

// DefaultProfile names the profile that return rules use when neither the
// flow nor its initiating zone names one: "strict", 32768-65535.
const DefaultProfile = "strict"

// NodePortRange is Kubernetes' default --service-node-port-range,
// 30000-32767; lint warns when a return range overlaps it.
var NodePortRange = tuple.PortRangeFrom(30000, 32767)

// ParseEphemeral returns the union of the given items, each a profile name
// (see ephemeral.Names) or a port range "lo-hi" or a single port. An empty list
// gives the empty set.
func ParseEphemeral(items ...string) (tuple.PortSet, error) {
	var set tuple.PortSet
	for _, it := range items {
		if p, ok := ephemeral.Profile(it); ok {
			set = set.Union(p)
			continue
		}
		r, err := tuple.ParsePortRange(it)
		if err != nil {
			return tuple.PortSet{}, fmt.Errorf("acl: ephemeral %q is neither a profile (%s) nor a port range: %w",
				it, strings.Join(ephemeral.Names(), ", "), err)
		}
		set = set.Union(tuple.PortSetOf(r))
	}
	return set, nil
}
