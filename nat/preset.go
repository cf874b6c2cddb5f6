package nat

import (
	"fmt"
	"slices"
	"time"

	"github.com/portspace/portspace/portalloc"
	"github.com/portspace/portspace/tuple"
)

// PresetInfo describes a named preset: its classification and where the
// behaviour comes from.
type PresetInfo struct {
	Name      string
	Mapping   Mapping
	Filtering Filtering
	// Summary is a one-line description.
	Summary string
}

var presets = []struct {
	info PresetInfo
	cfg  func() Config
}{
	{PresetInfo{"full-cone", MappingEIM, FilterEIF, "RFC 3489 full cone: EIM, EIF, port preservation, hairpinning"}, func() Config {
		return Config{Mapping: MappingEIM, Filtering: FilterEIF, PreservePort: true}
	}},
	{PresetInfo{"restricted-cone", MappingEIM, FilterADF, "RFC 3489 (address-)restricted cone: EIM, ADF, port preservation"}, func() Config {
		return Config{Mapping: MappingEIM, Filtering: FilterADF, PreservePort: true}
	}},
	{PresetInfo{"port-restricted-cone", MappingEIM, FilterAPDF, "RFC 3489 port-restricted cone (Tailscale \"easy\"): EIM, APDF, port preservation"}, func() Config {
		return Config{Mapping: MappingEIM, Filtering: FilterAPDF, PreservePort: true}
	}},
	{PresetInfo{"symmetric", MappingAPDM, FilterAPDF, "RFC 3489 symmetric (Tailscale \"hard\"): APDM, APDF, random ports"}, func() Config {
		return Config{Mapping: MappingAPDM, Filtering: FilterAPDF, Algorithm: portalloc.SimpleRandom}
	}},
	{PresetInfo{"address-dependent", MappingADM, FilterADF, "ADM and ADF, random ports"}, func() Config {
		return Config{Mapping: MappingADM, Filtering: FilterADF, Algorithm: portalloc.SimpleRandom}
	}},
	{PresetInfo{"rfc-recommended", MappingEIM, FilterEIF, "every MUST and RECOMMENDED of RFC 4787/5382/5508/7857, with EIF"}, func() Config {
		return Config{
			Mapping: MappingEIM, Filtering: FilterEIF, Pooling: PoolingPaired,
			Algorithm: portalloc.KeyedHash, Parity: true, // REQ-4, RFC 7857 §3 (RFC 6056)
			UDPTimeout: DefaultUDPTimeout, TCPEstablished: DefaultTCPEstablished,
			TCPTransitory: DefaultTCPTransitory, TCPClosing: DefaultTCPClosing,
			ICMPTimeout: DefaultICMPTimeout, SYNHold: DefaultSYNHold,
		}
	}},
	{PresetInfo{"linux-masquerade", MappingEIM, FilterAPDF, "Linux netfilter masquerade: port preserved when the reply tuple is free, ports overlap across destinations, conntrack timers, APDF; EIM while the preserved port is free, otherwise address-and-port-dependent (like Linux)"}, func() Config {
		return Config{
			Mapping: MappingEIM, Filtering: FilterAPDF, Overlapping: true, PreservePort: true,
			Algorithm: portalloc.SimpleRandom, InboundRefresh: true,
			UDPTimeout: 120 * time.Second, TCPEstablished: 5 * 24 * time.Hour,
			TCPTransitory: 120 * time.Second, TCPClosing: 120 * time.Second, ICMPTimeout: 30 * time.Second,
			SYNHold: -1, NoICMPReplies: true,
		}
	}},
	{PresetInfo{"cgn", MappingEIM, FilterEIF, "RFC 6888 carrier-grade NAT: EIM, EIF, paired pooling, 512-port blocks (up to 8), 120 s port quarantine, no destination logging"}, func() Config {
		return Config{
			Mapping: MappingEIM, Filtering: FilterEIF, Pooling: PoolingPaired, Parity: true,
			Ports: tuple.PortSetOf(tuple.PortRangeFrom(1024, 65535)), MixClasses: true,
			BlockSize: 512, MaxBlocksPerSubscriber: 8, Quarantine: 120 * time.Second,
			MaxSessionsPerSubscriber: 8192,
		}
	}},
	{PresetInfo{"deterministic", MappingEIM, FilterEIF, "RFC 7422 deterministic CGN: fixed per-subscriber blocks computed from the prefixes, EIM, EIF"}, func() Config {
		return Config{
			Mapping: MappingEIM, Filtering: FilterEIF, Deterministic: true,
			Ports: tuple.PortSetOf(tuple.PortRangeFrom(1024, 65535)), MixClasses: true,
			Quarantine: 120 * time.Second,
		}
	}},
	{PresetInfo{"pion-vnet", MappingEIM, FilterEIF, "like pion/transport vnet's default NAT: EIM, EIF, sequential ports, 30 s timers (violates RFC 4787 REQ-5)"}, func() Config {
		return Config{
			Mapping: MappingEIM, Filtering: FilterEIF, Algorithm: portalloc.Sequential,
			Ports: tuple.PortSetOf(tuple.PortRangeFrom(0xC000, 0xFFFF)), MixClasses: true,
			UDPTimeout: 30 * time.Second, TCPEstablished: 30 * time.Second, TCPTransitory: 30 * time.Second,
			TCPClosing: 30 * time.Second, ICMPTimeout: 30 * time.Second, SYNHold: -1,
		}
	}},
}

// Presets returns the names and classifications of the presets Preset
// knows.
func Presets() []PresetInfo {
	out := make([]PresetInfo, len(presets))
	for i, p := range presets {
		out[i] = p.info
	}
	return out
}

// Preset returns the named configuration, without External and Internal
// (fill them in before New). Names: "full-cone", "restricted-cone",
// "port-restricted-cone", "symmetric", "address-dependent",
// "rfc-recommended", "linux-masquerade", "cgn", "deterministic",
// "pion-vnet". See Presets for their classification.
func Preset(name string) (Config, error) {
	for _, p := range presets {
		if p.info.Name == name {
			return p.cfg(), nil
		}
	}
	names := make([]string, len(presets))
	for i, p := range presets {
		names[i] = p.info.Name
	}
	slices.Sort(names)
	return Config{}, fmt.Errorf("nat: unknown preset %q (known: %v)", name, names)
}
