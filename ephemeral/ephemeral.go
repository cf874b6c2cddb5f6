// Package ephemeral names the ephemeral (client source) port ranges of
// platforms: the ports a client's kernel picks its source port from when it
// connects (RFC 6335 §6 calls the IANA range "Dynamic Ports"). The ACL
// generator opens return rules on them and capacity math counts them; both
// take a profile name ("linux", "windows", ...) and resolve it here.
//
// The values are the platforms' defaults:
//   - strict: 32768-65535, which covers Linux and the IANA range (the
//     portspace default for ACL return rules; naclgen's +ephemeral_strict).
//   - loose: 1024-65535, every non-system port (naclgen's +ephemeral_loose).
//   - linux: net.ipv4.ip_local_port_range, 32768-60999 since Linux 4.x.
//   - iana: RFC 6335 §6 Dynamic Ports, 49152-65535.
//   - windows: Windows Vista/Server 2008 and later, 49152-65535 (KB929851).
//   - windows-legacy: Windows up to XP/Server 2003, 1025-5000.
//   - freebsd: IPPORT_EPHEMERALFIRST..IPPORT_EPHEMERALLAST, 10000-65535.
//   - macos: net.inet.ip.portrange.first/last, 49152-65535.
//   - aws-nat-gateway, elb, lambda: 1024-65535 (AWS VPC user guide,
//     "Ephemeral ports").
package ephemeral

import (
	"slices"
	"strings"

	"github.com/portspace/portspace/tuple"
)

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

// Profile returns the ephemeral port set of a named platform profile, such
// as "linux" (32768-60999) or "windows-legacy" (1025-5000). Names are
// case-insensitive; ok is false for an unknown name. See Names for the list.
func Profile(name string) (ports tuple.PortSet, ok bool) {
	r, ok := profiles[strings.ToLower(name)]
	if !ok {
		return tuple.PortSet{}, false
	}
	return tuple.PortSetOf(r), true
}

// Names returns the name of every profile, sorted.
func Names() []string {
	names := make([]string, 0, len(profiles))
	for n := range profiles {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
