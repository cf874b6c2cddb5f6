package nat

import (
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"time"

	"github.com/portspace/portspace/portalloc"
	"github.com/portspace/portspace/tuple"
)

// Mapping is the mapping behaviour of RFC 4787 §4.1: what decides whether
// two flows from one internal endpoint share an external endpoint.
type Mapping uint8

// The mapping behaviours. The zero value means MappingEIM.
const (
	// MappingEIM: endpoint-independent mapping; one external endpoint per
	// internal endpoint, whatever the destination (RFC 4787 REQ-1 MUST,
	// RFC 5382 REQ-1).
	MappingEIM Mapping = iota + 1
	// MappingADM: address-dependent mapping; one external endpoint per
	// internal endpoint and destination address.
	MappingADM
	// MappingAPDM: address-and-port-dependent mapping ("symmetric NAT");
	// one external endpoint per internal endpoint and destination endpoint.
	MappingAPDM
)

// Filtering is the filtering behaviour of RFC 4787 §5: which inbound
// packets a mapping lets through.
type Filtering uint8

// The filtering behaviours. The zero value means FilterEIF (for
// Config.TCPFiltering: the same as Config.Filtering).
const (
	// FilterEIF: endpoint-independent filtering; any remote endpoint may
	// send to an existing mapping (RFC 4787 REQ-8 when transparency matters,
	// RFC 6888 REQ-7).
	FilterEIF Filtering = iota + 1
	// FilterADF: address-dependent filtering; only remote addresses the
	// internal endpoint has sent to.
	FilterADF
	// FilterAPDF: address-and-port-dependent filtering; only remote
	// endpoints the internal endpoint has sent to.
	FilterAPDF
)

var mappingNames = [...]string{"", "endpoint-independent", "address-dependent", "address-and-port-dependent"}
var filteringNames = mappingNames

// String returns "endpoint-independent", "address-dependent" or
// "address-and-port-dependent" (the RFC 4787 terms).
func (m Mapping) String() string {
	if m == 0 {
		m = MappingEIM
	}
	if int(m) < len(mappingNames) {
		return mappingNames[m]
	}
	return fmt.Sprintf("mapping(%d)", uint8(m))
}

// String returns "endpoint-independent", "address-dependent" or
// "address-and-port-dependent" (the RFC 4787 terms).
func (f Filtering) String() string {
	if f == 0 {
		f = FilterEIF
	}
	if int(f) < len(filteringNames) {
		return filteringNames[f]
	}
	return fmt.Sprintf("filtering(%d)", uint8(f))
}

// Pooling is the IP address pooling behaviour (RFC 4787 §4.1 REQ-2).
type Pooling = portalloc.Pooling

// Pooling behaviours (see package portalloc).
const (
	PoolingPaired    = portalloc.Paired    // RFC 4787 REQ-2, RFC 6888 REQ-2 (default)
	PoolingArbitrary = portalloc.Arbitrary // any address for any mapping
)

// Default timer values (Config fields with a zero value take these).
const (
	DefaultUDPTimeout     = 5 * time.Minute             // RFC 4787 REQ-5 RECOMMENDED default
	DefaultTCPEstablished = 2*time.Hour + 4*time.Minute // RFC 5382 REQ-5 minimum
	DefaultTCPTransitory  = 4 * time.Minute             // RFC 5382 REQ-5, RFC 7857 §2.1 (open)
	DefaultTCPClosing     = 4 * time.Minute             // RFC 7857 §2.1 (closing), §2.2 (after RST)
	DefaultICMPTimeout    = 60 * time.Second            // RFC 5508 REQ-2 minimum
	DefaultSYNHold        = 6 * time.Second             // RFC 5382 REQ-4
	DefaultMaxHeldSYNs    = 64

	// Held fragments (RFC 4787 REQ-14; see Config.FragmentHold).
	DefaultFragmentHold              = 2 * time.Second
	DefaultMaxHeldFragments          = 256
	DefaultMaxHeldFragmentBytes      = 256 << 10
	DefaultMaxFragmentsPerDatagram   = 45 // a 64 KiB datagram in 1500-byte fragments
	DefaultMaxHeldFragmentsPerSource = 64
)

// Config configures an Engine. The zero value of every field except
// External and Internal is a documented default; Preset returns complete
// configurations. Settings are orthogonal: any mapping combines with any
// filtering, pooling, port assignment and timers (New rejects the few
// combinations that cannot work, naming the field).
type Config struct {
	// External are the NAT's external IPv4 addresses (the pool). Required.
	External []netip.Addr `yaml:"external"`
	// Internal are the IPv4 prefixes of the internal side. Outbound packets
	// from other sources are dropped ("not-internal"). Required.
	Internal []netip.Prefix `yaml:"internal"`

	// Mapping is the mapping behaviour for UDP, TCP and ICMP queries
	// (default MappingEIM; RFC 4787 REQ-1, RFC 5382 REQ-1, RFC 5508 REQ-1a).
	Mapping Mapping `yaml:"mapping"`
	// Filtering is the filtering behaviour (default FilterEIF).
	Filtering Filtering `yaml:"filtering"`
	// TCPFiltering, if set, overrides Filtering for TCP (RFC 5382 REQ-3:
	// TCP filtering may differ from UDP filtering).
	TCPFiltering Filtering `yaml:"tcp_filtering"`
	// Pooling is PoolingPaired (default) or PoolingArbitrary.
	Pooling Pooling `yaml:"pooling"`

	// PreservePort tries the internal port (ICMP identifier) first
	// (RFC 4787 §4.2.1 port preservation).
	PreservePort bool `yaml:"preserve_port"`
	// Algorithm is the RFC 6056 algorithm for ports that are not preserved
	// (default keyed hash, RFC 7857 §3 / RFC 6056 §4).
	Algorithm portalloc.Algorithm `yaml:"algorithm"`
	// Ports are the external ports of TCP and UDP (default 1-65535).
	Ports tuple.PortSet `yaml:"ports"`
	// Parity keeps the parity of the internal port (RFC 4787 REQ-4).
	Parity bool `yaml:"parity"`
	// MixClasses lets ports 0-1023 map to 1024-65535 and back; by default
	// the class is kept (RFC 4787 REQ-3a).
	MixClasses bool `yaml:"mix_classes"`
	// Overlapping lets one external port serve several internal endpoints
	// whose remote endpoints differ, demultiplexed by the 5-tuple (RFC 7857
	// §3 port overlapping; what Linux masquerade does). Mappings are then
	// per 5-tuple and the configured mapping becomes a preference (a port
	// is reused when the 5-tuple is free), so it requires FilterAPDF.
	Overlapping bool `yaml:"overlapping"`
	// Overloading lets a new mapping share an external port already held by
	// another internal endpoint when no free port is left, as long as the
	// 5-tuples differ (RFC 4787 §4.2.2 "port overloading", which REQ-3
	// forbids: off by default, for experiments). Sessions made this way
	// accept only their own remote endpoint.
	Overloading bool `yaml:"overloading"`
	// NoHairpinning disables hairpinning (RFC 4787 REQ-9 requires it, so
	// it is on by default). Hairpinned packets keep the external source
	// (REQ-9a).
	NoHairpinning bool `yaml:"no_hairpinning"`
	// InboundRefresh lets inbound packets refresh timers (RFC 4787 REQ-6
	// MAY); off by default.
	InboundRefresh bool `yaml:"inbound_refresh"`
	// NoOutboundRefresh stops outbound packets refreshing timers (violates
	// RFC 4787 REQ-6; for experiments).
	NoOutboundRefresh bool `yaml:"no_outbound_refresh"`

	// UDPTimeout is the UDP mapping timer (default 5 min; RFC 4787 REQ-5
	// requires at least 2 min, but shorter values are accepted for
	// experiments).
	UDPTimeout time.Duration `yaml:"udp_timeout"`
	// TCPEstablished is the idle timer of established TCP connections
	// (default 2 h 4 min, RFC 5382 REQ-5).
	TCPEstablished time.Duration `yaml:"tcp_established"`
	// TCPTransitory is the timer of connections being opened (default
	// 4 min, RFC 5382 REQ-5, RFC 7857 §2.1).
	TCPTransitory time.Duration `yaml:"tcp_transitory"`
	// TCPClosing is the timer after both FINs or a RST (default 4 min,
	// RFC 7857 §2.1 and §2.2).
	TCPClosing time.Duration `yaml:"tcp_closing"`
	// ICMPTimeout is the ICMP query timer (default 60 s, RFC 5508 REQ-2).
	ICMPTimeout time.Duration `yaml:"icmp_timeout"`
	// SYNHold is how long an unsolicited inbound SYN is held before the
	// engine answers it with ICMP port unreachable (default 6 s, RFC 5382
	// REQ-4). If an outbound SYN of the same connection arrives meanwhile,
	// the held SYN is dropped silently. A negative SYNHold disables the
	// hold: unsolicited inbound SYNs are dropped at once, silently
	// (ReasonSYNDropped).
	SYNHold time.Duration `yaml:"syn_hold"`
	// SilentSYNDrop drops held SYNs silently instead of answering with
	// port unreachable (RFC 5382 REQ-4 allows this by policy).
	SilentSYNDrop bool `yaml:"silent_syn_drop"`
	// MaxHeldSYNs bounds the SYNs held at once (default 64); more are
	// dropped silently.
	MaxHeldSYNs int `yaml:"max_held_syns"`

	// FragmentHold is how long a non-first fragment that arrives before
	// the first fragment of its datagram (which carries the ports) is held
	// waiting for it (default 2 s; RFC 4787 REQ-14 requires receiving
	// out-of-order fragments, RFC 791 §3.2 bounds reassembly with a timer,
	// kept short here because the engine holds copies). Held fragments are
	// inbound ones and hairpinned ones; when the first fragment is
	// translated they are translated too and handed out by
	// Engine.Released. Expire drops those held longer (ReasonFragmentTimeout).
	// A negative FragmentHold disables the hold: such fragments are
	// dropped at once (ReasonFragment).
	FragmentHold time.Duration `yaml:"fragment_hold"`
	// MaxHeldFragments bounds the fragments held at once (default 256),
	// MaxHeldFragmentBytes their total size (default 256 KiB, allocated on
	// first use and never grown), MaxFragmentsPerDatagram those of one
	// datagram (default 45) and MaxHeldFragmentsPerSource those from one
	// source address (default 64). A fragment over any cap is dropped
	// (ReasonFragmentHoldFull), so a flood of orphan fragments costs
	// bounded memory and cannot push out more than its source's share.
	MaxHeldFragments          int `yaml:"max_held_fragments"`
	MaxHeldFragmentBytes      int `yaml:"max_held_fragment_bytes"`
	MaxFragmentsPerDatagram   int `yaml:"max_fragments_per_datagram"`
	MaxHeldFragmentsPerSource int `yaml:"max_held_fragments_per_source"`
	// NoICMPReplies stops the engine from answering with ICMP
	// "communication administratively prohibited" when it cannot create a
	// session (RFC 5508 REQ-8 SHOULD; on by default).
	NoICMPReplies bool `yaml:"no_icmp_replies"`
	// ReplySource is the source address of ICMP messages the engine sends
	// to the internal side (default External[0]).
	ReplySource netip.Addr `yaml:"reply_source"`

	// MaxPortsPerSubscriber limits the external ports (mappings) of one
	// internal address per protocol (RFC 6888 REQ-3 MUST be configurable);
	// 0 means no limit. With Overlapping it counts the distinct external
	// endpoints the subscriber's mappings use: at the limit a new flow
	// overlaps onto one of its own ports or is refused (RFC 6888 REQ-4).
	MaxPortsPerSubscriber int `yaml:"max_ports_per_subscriber"`
	// MaxSessionsPerSubscriber limits the sessions of one internal address
	// (RFC 6888 REQ-5); 0 means no limit.
	MaxSessionsPerSubscriber int `yaml:"max_sessions_per_subscriber"`
	// MaxSessions limits the engine's state (RFC 6888 REQ-5); 0 means no
	// limit.
	MaxSessions int `yaml:"max_sessions"`
	// BlockSize > 0 allocates ports to subscribers in blocks of this size
	// (RFC 6888 REQ-4, bulk port allocation).
	BlockSize int `yaml:"block_size"`
	// MaxBlocksPerSubscriber limits the blocks of one subscriber per
	// protocol; 0 means no limit.
	MaxBlocksPerSubscriber int `yaml:"max_blocks_per_subscriber"`
	// Deterministic maps each internal address to a fixed block of one
	// external address computed from Internal, External and Ports
	// (RFC 7422); BlockSize is then ignored.
	Deterministic bool `yaml:"deterministic"`
	// Quarantine keeps a freed external port out of use this long
	// (RFC 6888 REQ-8 SHOULD: 120 s); 0 disables it.
	Quarantine time.Duration `yaml:"quarantine"`

	// NoTranslate lists destination prefixes that are not translated
	// (RFC 6888 REQ-6 MUST: translation can be turned off per destination):
	// Outbound forwards packets to them unchanged, and Inbound forwards
	// packets from them to internal addresses unchanged.
	NoTranslate []netip.Prefix `yaml:"no_translate"`
	// NoTranslatePorts, if set, limits NoTranslate to these destination
	// ports (TCP and UDP; ICMP is then translated).
	NoTranslatePorts tuple.PortSet `yaml:"no_translate_ports"`

	// ExpectedSessions pre-sizes the table for this many sessions, so that
	// it does not grow (and re-index, an O(n) pause) while filling up to
	// it; 0 starts small.
	ExpectedSessions int `yaml:"expected_sessions"`

	// LogDestinations adds remote endpoints to events and emits session
	// events (RFC 6888 REQ-12: off by default).
	LogDestinations bool `yaml:"log_destinations"`
	// Events receives mapping and block events; nil disables them.
	Events EventSink `yaml:"-"`
	// Logger receives debug logs of mappings created and deleted and of
	// sessions refused (only when its handler is enabled at debug level,
	// checked once by New); nil discards.
	Logger *slog.Logger `yaml:"-"`

	// Secret keys the port-selection and table hashes (default random).
	Secret portalloc.Secret `yaml:"secret"`
	// Seed seeds the random port algorithms (0 = random); set it for
	// reproducible tests.
	Seed uint64 `yaml:"seed"`
}

// ConfigError is the error New returns for an invalid Config: Field names
// the Go field ("External", "UDPTimeout") and YAML its yaml name
// ("external", "udp_timeout"), so that a caller that loaded the Config from
// a file can point at the line. Test for it with errors.As.
type ConfigError struct {
	Field string // the Config field, as spelled in Go
	YAML  string // the field's yaml name (its struct tag)
	Err   error  // what is wrong with it
}

// Error returns "nat: Config.<Field>: <what is wrong>".
func (e *ConfigError) Error() string { return "nat: Config." + e.Field + ": " + e.Err.Error() }

// Unwrap returns the cause (for instance a portalloc error).
func (e *ConfigError) Unwrap() error { return e.Err }

// configError returns a *ConfigError for field with a formatted cause (%w
// wraps as in fmt.Errorf).
func configError(field, format string, args ...any) *ConfigError {
	return &ConfigError{Field: field, YAML: YAMLName(field), Err: fmt.Errorf(format, args...)}
}

// YAMLName returns the yaml name of the Config field called field in Go
// ("UDPTimeout" gives "udp_timeout"), or "" when Config has no such field.
func YAMLName(field string) string {
	f, ok := reflect.TypeOf(Config{}).FieldByName(field)
	if !ok {
		return ""
	}
	return f.Tag.Get("yaml")
}

// normalized returns cfg with defaults filled in, or a *ConfigError naming
// the first invalid field.
func (cfg Config) normalized() (Config, error) {
	fail := func(field, format string, args ...any) (Config, error) {
		return Config{}, configError(field, format, args...)
	}
	if len(cfg.External) == 0 {
		return fail("External", "no external addresses")
	}
	seen := map[netip.Addr]bool{}
	for i, a := range cfg.External {
		if !a.Is4() {
			return fail("External", "address %d (%v) is not IPv4", i, a)
		}
		if seen[a] {
			return fail("External", "%v listed twice", a)
		}
		seen[a] = true
	}
	if len(cfg.Internal) == 0 {
		return fail("Internal", "no internal prefixes")
	}
	for i, p := range cfg.Internal {
		if !p.IsValid() || !p.Addr().Is4() {
			return fail("Internal", "prefix %d (%v) is not IPv4", i, p)
		}
		cfg.Internal[i] = p.Masked()
		for _, a := range cfg.External {
			if p.Contains(a) {
				return fail("Internal", "prefix %v contains external address %v", p, a)
			}
		}
	}
	for i, p := range cfg.NoTranslate {
		if !p.IsValid() || !p.Addr().Is4() {
			return fail("NoTranslate", "prefix %d (%v) is not IPv4", i, p)
		}
	}
	if cfg.Mapping == 0 {
		cfg.Mapping = MappingEIM
	}
	if cfg.Mapping > MappingAPDM {
		return fail("Mapping", "unknown mapping %d", cfg.Mapping)
	}
	if cfg.Filtering == 0 {
		cfg.Filtering = FilterEIF
	}
	if cfg.Filtering > FilterAPDF {
		return fail("Filtering", "unknown filtering %d", cfg.Filtering)
	}
	if cfg.TCPFiltering == 0 {
		cfg.TCPFiltering = cfg.Filtering
	}
	if cfg.TCPFiltering > FilterAPDF {
		return fail("TCPFiltering", "unknown filtering %d", cfg.TCPFiltering)
	}
	if cfg.Pooling > PoolingArbitrary {
		return fail("Pooling", "unknown pooling %d", cfg.Pooling)
	}
	if cfg.Algorithm > portalloc.Sequential {
		return fail("Algorithm", "unknown algorithm %d", cfg.Algorithm)
	}
	if cfg.Overlapping && (cfg.Filtering != FilterAPDF || cfg.TCPFiltering != FilterAPDF) {
		return fail("Overlapping", "requires address-and-port-dependent filtering (a shared external port cannot say which internal endpoint an unknown remote means)")
	}
	if cfg.Ports.Contains(0) {
		return fail("Ports", "contains port 0, which is not a usable source port")
	}
	if cfg.Overlapping && cfg.Overloading {
		return fail("Overloading", "cannot be combined with Overlapping (overlapping already shares ports by 5-tuple)")
	}
	if cfg.MaxBlocksPerSubscriber > 0 && cfg.BlockSize == 0 {
		return fail("MaxBlocksPerSubscriber", "set without BlockSize")
	}
	if cfg.Overlapping && (cfg.BlockSize > 0 || cfg.Deterministic || cfg.Quarantine > 0) {
		return fail("Overlapping", "cannot be combined with port blocks, deterministic mapping or a quarantine")
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"UDPTimeout", &cfg.UDPTimeout, DefaultUDPTimeout},
		{"TCPEstablished", &cfg.TCPEstablished, DefaultTCPEstablished},
		{"TCPTransitory", &cfg.TCPTransitory, DefaultTCPTransitory},
		{"TCPClosing", &cfg.TCPClosing, DefaultTCPClosing},
		{"ICMPTimeout", &cfg.ICMPTimeout, DefaultICMPTimeout},
		{"SYNHold", &cfg.SYNHold, DefaultSYNHold},
		{"FragmentHold", &cfg.FragmentHold, DefaultFragmentHold},
	} {
		if *d.v < 0 && d.v != &cfg.SYNHold && d.v != &cfg.FragmentHold {
			return fail(d.name, "negative duration %v", *d.v)
		}
		if *d.v < 0 {
			continue // hold disabled
		}
		if *d.v > 0 && *d.v < time.Second {
			return fail(d.name, "%v is below the 1 s timer resolution", *d.v)
		}
		if *d.v > 10*365*24*time.Hour {
			return fail(d.name, "%v exceeds 10 years", *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.Quarantine < 0 {
		return fail("Quarantine", "negative duration %v", cfg.Quarantine)
	}
	if cfg.MaxHeldSYNs < 0 {
		return fail("MaxHeldSYNs", "negative")
	}
	if cfg.MaxHeldSYNs == 0 {
		cfg.MaxHeldSYNs = DefaultMaxHeldSYNs
	}
	for _, d := range []struct {
		name     string
		v        *int
		def, max int
	}{
		{"MaxHeldFragments", &cfg.MaxHeldFragments, DefaultMaxHeldFragments, 1 << 16},
		{"MaxHeldFragmentBytes", &cfg.MaxHeldFragmentBytes, DefaultMaxHeldFragmentBytes, 64 << 20},
		{"MaxFragmentsPerDatagram", &cfg.MaxFragmentsPerDatagram, DefaultMaxFragmentsPerDatagram, 8192},
		{"MaxHeldFragmentsPerSource", &cfg.MaxHeldFragmentsPerSource, DefaultMaxHeldFragmentsPerSource, 1 << 16},
	} {
		if *d.v < 0 {
			return fail(d.name, "negative")
		}
		if *d.v > d.max {
			return fail(d.name, "%d exceeds %d", *d.v, d.max)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	for name, v := range map[string]int{
		"MaxPortsPerSubscriber": cfg.MaxPortsPerSubscriber, "MaxSessionsPerSubscriber": cfg.MaxSessionsPerSubscriber,
		"MaxSessions": cfg.MaxSessions, "BlockSize": cfg.BlockSize, "ExpectedSessions": cfg.ExpectedSessions, "MaxBlocksPerSubscriber": cfg.MaxBlocksPerSubscriber,
	} {
		if v < 0 {
			return fail(name, "negative")
		}
	}
	if cfg.ExpectedSessions > maxRecords/2 {
		return fail("ExpectedSessions", "exceeds %d", maxRecords/2)
	}
	if cfg.MaxSessions > maxRecords/2 {
		return fail("MaxSessions", "exceeds %d", maxRecords/2)
	}
	if cfg.ReplySource.IsValid() && !cfg.ReplySource.Is4() {
		return fail("ReplySource", "%v is not IPv4", cfg.ReplySource)
	}
	if !cfg.ReplySource.IsValid() {
		cfg.ReplySource = cfg.External[0]
	}
	if cfg.Secret.IsZero() {
		cfg.Secret = portalloc.NewSecret()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}
