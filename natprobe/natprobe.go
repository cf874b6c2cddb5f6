// Package natprobe classifies the NAT between this host and a STUN server:
// the RFC 5780 behaviour-discovery tests (section 4.3 mapping, 4.4
// filtering, 4.6 binding lifetime, 3.4 hairpinning, 3.6 ALG detection) and
// what RFC 5780 leaves out (port preservation, parity, overlapping, the
// allocation pattern, and TCP mapping from one reused local port). Results
// are named in RFC 4787 terms with the RFC 3489 class beside them. Against
// a classic RFC 3489 server (no OTHER-ADDRESS) the probe uses
// CHANGED-ADDRESS instead.
//
// Probe runs the UDP tests (and, with Options.TCP, ProbeTCP) and returns a
// Result; its MarshalJSON is the `portspace natprobe --json` document.
package natprobe

import (
	"errors"
	"log/slog"
	"net/netip"
	"time"
)

// Behavior is an RFC 4787 mapping or filtering behaviour (RFC 4787 sections
// 4.1 and 5; RFC 5780 sections 4.3 and 4.4). The empty value means "not
// determined".
type Behavior string

// The three behaviours of RFC 4787 sections 4.1 and 5.
const (
	EndpointIndependent     Behavior = "endpoint-independent"
	AddressDependent        Behavior = "address-dependent"
	AddressAndPortDependent Behavior = "address-and-port-dependent"
)

// Allocation is a NAT's port allocation pattern as seen over a series of
// new mappings (RFC 4787 section 4.2.1 names preservation; sequential and
// random are the prediction classes of the hole-punching literature). The
// empty value means "not determined".
type Allocation string

// Port allocation patterns.
const (
	Preserving Allocation = "preserving" // the external port is the internal port
	Sequential Allocation = "sequential" // each new mapping is the previous plus Delta
	Random     Allocation = "random"     // neither
)

// Class is a NAT type of RFC 3489 section 5 (and its section 10.1
// decision flow); the empty value means "not determined".
type Class string

// The RFC 3489 classes.
const (
	Open               Class = "open"
	FullCone           Class = "full-cone"
	RestrictedCone     Class = "restricted-cone"
	PortRestrictedCone Class = "port-restricted-cone"
	Symmetric          Class = "symmetric"
	SymmetricFirewall  Class = "symmetric-firewall"
	Blocked            Class = "blocked"
)

// Defaults of Options' zero values.
const (
	// DefaultRTO is the first retransmission timeout (RFC 8489 section
	// 6.2.1); it doubles on every retransmission.
	DefaultRTO = 500 * time.Millisecond
	// DefaultTimeout is how long a test that expects an answer waits for
	// one (sends at 0, 0.5 s and 1.5 s with the default RTO).
	DefaultTimeout = 3 * time.Second
	// DefaultDecide is the deadline of a test whose result may be "no
	// answer" (filtering, hairpinning, a lifetime trial): sent at 0 and
	// after one RTO.
	DefaultDecide = time.Second
	// DefaultPace is the gap between new transactions: RFC 5780 section
	// 5 allows at most 10 new transactions per second.
	DefaultPace = 100 * time.Millisecond
	// DefaultLifetimeMax is the longest binding lifetime the section 4.6
	// search tries; DefaultLifetimeResolution where it stops.
	DefaultLifetimeMax        = 180 * time.Second
	DefaultLifetimeResolution = time.Second
)

// Options configures Probe. The zero value of every field but Server is a
// documented default.
type Options struct {
	// Server is the STUN server's primary transport address. Required.
	Server netip.AddrPort
	// Local is the local address to probe from; zero means the address
	// the routing table picks toward Server. Its port is ignored: every
	// test uses fresh random ports (RFC 5780 section 4.1).
	Local netip.Addr
	// AltLocal is a second local address of this host (same family). With
	// it the probe tests port overlapping directly: the same port from both
	// addresses toward two server addresses (like natdiscovery -c -A).
	AltLocal netip.Addr
	// TCP also runs ProbeTCP toward the same server.
	TCP bool
	// TCPLocalPort is the local port ProbeTCP reuses; 0 lets the kernel
	// choose one.
	TCPLocalPort uint16
	// Lifetime runs the binding lifetime search (RFC 5780 section 4.6),
	// which takes minutes; LifetimeMax and LifetimeResolution bound it
	// (0 means the defaults).
	Lifetime           bool
	LifetimeMax        time.Duration
	LifetimeResolution time.Duration
	// RTO, Timeout, Decide and Pace override DefaultRTO,
	// DefaultTimeout, DefaultDecide and DefaultPace when not zero.
	RTO, Timeout, Decide, Pace time.Duration
	// Series is the number of extra mappings made toward the primary
	// address to see the allocation pattern; 0 means 3.
	Series int
	// Logger receives one debug line per transaction; nil discards.
	Logger *slog.Logger

	onFirstSend func(time.Time) // tests: when each new transaction started
}

// Sample is one observed mapping: the local endpoint, the server endpoint
// it sent to, and the reflexive address the server saw.
type Sample struct {
	Local  netip.AddrPort `json:"local"`
	Server netip.AddrPort `json:"server"`
	Mapped netip.AddrPort `json:"mapped"`
	Sent   time.Duration  `json:"-"`
}

// Result is the outcome of Probe. Pointer fields and empty strings mean
// "not determined"; Skipped says why for each test that did not run.
type Result struct {
	Server  netip.AddrPort // the primary address probed
	Other   netip.AddrPort // OTHER-ADDRESS (or CHANGED-ADDRESS); zero when absent
	RFC5780 bool           // the server sent OTHER-ADDRESS (false: RFC 3489 fallback or none)
	Local   netip.AddrPort // the first test's local endpoint
	Mapped  netip.AddrPort // the first test's reflexive address
	NAT     *bool          // Mapped differs from Local (RFC 5780 section 4.3 test I)

	Mapping     Behavior // RFC 5780 section 4.3
	Filtering   Behavior // RFC 5780 section 4.4
	Hairpinning *bool    // RFC 5780 section 3.4
	ALG         *bool    // RFC 5780 section 3.6: MAPPED-ADDRESS differs from XOR-MAPPED-ADDRESS
	// OriginRewritten: some answer's RESPONSE-ORIGIN (RFC 5780 section
	// 7.3) differed from the
	// address the answer came from or the address it should have come
	// from (the one the request went to, or the socket its CHANGE-REQUEST
	// named): the server sits behind a NAT of its own, a double NAT on
	// the path, or an ALG rewrote it. OriginNotes says which answers.
	// nil when no answer carried it (RFC 3489 servers).
	OriginRewritten *bool
	OriginNotes     []string
	Preservation    *bool // every first mapping kept its local port
	Parity          *bool // every mapping kept its local port's parity
	Overlapping     *bool // true when two local endpoints shared an external port; nil when not seen
	Allocation      Allocation
	Delta           int // for Sequential: the step between new mappings

	Lifetime        time.Duration // RFC 5780 section 4.6 (0: not measured)
	LifetimeAtLeast bool          // the binding outlived LifetimeMax
	// InboundRefresh is the binding refresh behaviour of RFC 5780 section
	// 4.6 (RFC 4787 section 4.3, REQ-6): true when answers sent to the
	// binding alone, at half its lifetime apart, kept it alive for twice
	// its lifetime; false when it still expired; nil when not measured.
	InboundRefresh *bool

	RFC3489 Class

	Samples []Sample // every new mapping seen, in the order it was made
	Skipped []string // tests not run or not decided, with the reason
	Elapsed time.Duration
	TCP     *TCPResult // with Options.TCP
}

// Sentinel errors (test with errors.Is).
var (
	// ErrBadOptions: options that cannot work.
	ErrBadOptions = errors.New("natprobe: bad options")
	// ErrTimeout: a test that needed an answer got none in time.
	ErrTimeout = errors.New("natprobe: no response")
	// ErrServer: the server answered with an error or without the
	// attributes a test needs.
	ErrServer = errors.New("natprobe: server error")
)

func ptr(b bool) *bool { return &b }

// class derives the RFC 3489 class from the RFC 4787 behaviours (RFC 3489
// section 10.1; RFC 4787 section 3 maps the names).
func class(nat *bool, m, f Behavior) Class {
	if nat == nil {
		return ""
	}
	if !*nat {
		switch f {
		case EndpointIndependent:
			return Open
		case AddressDependent, AddressAndPortDependent:
			return SymmetricFirewall
		}
		return ""
	}
	switch m {
	case AddressDependent, AddressAndPortDependent:
		return Symmetric
	case EndpointIndependent:
		switch f {
		case EndpointIndependent:
			return FullCone
		case AddressDependent:
			return RestrictedCone
		case AddressAndPortDependent:
			return PortRestrictedCone
		}
	}
	return ""
}

// analyse fills Preservation, Parity, Overlapping, Allocation and Delta from
// the samples (each a new mapping, in the order made); firsts are the
// samples that were each socket's first mapping.
func analyse(samples []Sample, firsts []Sample) (pres, parity, overlap *bool, alloc Allocation, delta int) {
	if len(firsts) > 0 {
		p := true
		for _, s := range firsts {
			if s.Mapped.Port() != s.Local.Port() {
				p = false
			}
		}
		pres = ptr(p)
	}
	if len(samples) >= 2 {
		p := true
		for _, s := range samples {
			if s.Mapped.Port()%2 != s.Local.Port()%2 {
				p = false
			}
		}
		parity = ptr(p)
	}
	for i := range samples {
		for j := i + 1; j < len(samples); j++ {
			a, b := samples[i], samples[j]
			if a.Local != b.Local && a.Mapped == b.Mapped {
				overlap = ptr(true)
			}
		}
	}
	switch {
	case pres != nil && *pres:
		return pres, parity, overlap, Preserving, 0
	case len(samples) < 3:
		return pres, parity, overlap, "", 0
	}
	// Sequential: every new mapping above (or every one below) the one
	// before by at most 64, so that mappings other hosts (or other tests)
	// took in between still count; Delta is the most common step. Random
	// ports pass that test with odds of about (128/65536)^n.
	counts := map[int]int{}
	sign := 0
	for i := 1; i < len(samples); i++ {
		d := int(int16(samples[i].Mapped.Port() - samples[i-1].Mapped.Port()))
		sg := 1
		if d < 0 {
			sg = -1
		}
		if d == 0 || d > 64 || d < -64 || (sign != 0 && sg != sign) {
			return pres, parity, overlap, Random, 0
		}
		sign = sg
		counts[d]++
	}
	best := 0
	for d, n := range counts {
		if n > counts[best] || (n == counts[best] && (best == 0 || abs(d) < abs(best))) {
			best = d
		}
	}
	return pres, parity, overlap, Sequential, best
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
