package punch

import (
	"fmt"
	"net/netip"
)

// Mapping names an RFC 4787 section 4.1 mapping behaviour, observed here
// for TCP as RFC 5382 section 4.1 (REQ-1) asks of NATs.
type Mapping string

// The mapping behaviours; None means no NAT was seen (the reflexive
// endpoint is the local one).
const (
	MappingNone    Mapping = "none"
	MappingEI      Mapping = "endpoint-independent"
	MappingAD      Mapping = "address-dependent"
	MappingAPD     Mapping = "address-and-port-dependent"
	MappingUnknown Mapping = ""
)

const (
	maxSequentialDelta = 64
	defaultWindow      = 4
	maxPredictWindow   = 16
)

// Allocation names how a NAT picks the external port of a new mapping.
type Allocation string

// The allocation patterns: the local port kept (port preservation, RFC 4787
// section 4.2.1), the next port by a fixed delta, or anything else.
const (
	AllocPreserving Allocation = "preserving"
	AllocSequential Allocation = "sequential"
	AllocRandom     Allocation = "random"
)

// Behavior is a NAT's TCP behaviour as one peer measured it from the port
// it punches from.
type Behavior struct {
	Mapping    Mapping    `json:"mapping"`
	Allocation Allocation `json:"allocation"`
	// Delta is the step between consecutive mappings of a sequential NAT.
	Delta int `json:"delta,omitempty"`
	// Last is the external endpoint of the most recent probe mapping: a
	// sequential NAT's next mapping is Last's port plus Delta.
	Last netip.AddrPort `json:"last,omitzero"`
}

// Observation is one TCP probe: the rendezvous endpoint connected to, and
// the external endpoint it saw the connection come from.
type Observation struct {
	Server netip.AddrPort
	Mapped netip.AddrPort
}

// Learn classifies the NAT between local and the rendezvous from probes
// sent from local to different rendezvous endpoints in order (RFC 5780
// section 4.3's tests I-III, over TCP as its section 3.1 allows): the same
// mapping toward every endpoint is endpoint-independent; the same mapping
// toward one address's two ports but another toward a second address is
// address-dependent; otherwise address-and-port-dependent. The allocation
// pattern comes from the mapped ports.
func Learn(local netip.AddrPort, obs []Observation) (Behavior, error) {
	if len(obs) == 0 {
		return Behavior{}, fmt.Errorf("punch: learn: no observations")
	}
	b := Behavior{Last: obs[len(obs)-1].Mapped}
	first := obs[0].Mapped
	if first == local {
		b.Mapping, b.Allocation = MappingNone, AllocPreserving
		return b, nil
	}
	preserving := true
	for _, o := range obs {
		if o.Mapped.Port() != local.Port() {
			preserving = false
		}
	}
	switch {
	case len(obs) == 1:
		b.Mapping = MappingUnknown
	case allSame(obs):
		b.Mapping = MappingEI
	default:
		b.Mapping = MappingAPD
		// Two endpoints on one address with one mapping, and another
		// mapping toward another address: address-dependent.
		if addressDependent(obs) {
			b.Mapping = MappingAD
		}
	}
	switch {
	case preserving:
		b.Allocation = AllocPreserving
	case b.Mapping == MappingEI:
		// One mapping for every destination: its port is all that matters.
		b.Allocation = AllocRandom
	default:
		if d, ok := sequentialDelta(obs); ok {
			b.Allocation, b.Delta = AllocSequential, d
		} else {
			b.Allocation = AllocRandom
		}
	}
	return b, nil
}

func allSame(obs []Observation) bool {
	for _, o := range obs[1:] {
		if o.Mapped != obs[0].Mapped {
			return false
		}
	}
	return true
}

// addressDependent reports whether the mapping depends on the server's
// address only: equal for equal server addresses, different otherwise.
func addressDependent(obs []Observation) bool {
	sawSameAddr := false
	for i := range obs {
		for j := i + 1; j < len(obs); j++ {
			sameAddr := obs[i].Server.Addr() == obs[j].Server.Addr()
			sameMap := obs[i].Mapped == obs[j].Mapped
			if sameAddr != sameMap {
				return false
			}
			if sameAddr {
				sawSameAddr = true
			}
		}
	}
	return sawSameAddr
}

// sequentialDelta returns the fixed step between the distinct mapped ports
// in probe order, if there is one and it is small.
func sequentialDelta(obs []Observation) (int, bool) {
	var ports []int
	for i, o := range obs {
		if i == 0 || o.Mapped != obs[i-1].Mapped {
			ports = append(ports, int(o.Mapped.Port()))
		}
	}
	if len(ports) < 2 {
		return 0, false
	}
	d := ports[1] - ports[0]
	if d == 0 || d > maxSequentialDelta || d < -maxSequentialDelta {
		return 0, false
	}
	for i := 2; i < len(ports); i++ {
		if ports[i]-ports[i-1] != d {
			return 0, false
		}
	}
	return d, true
}

// Predictable reports whether a peer can aim at this NAT's next mapping.
func (b Behavior) Predictable() bool {
	switch {
	case b.Mapping == MappingNone, b.Mapping == MappingEI:
		return true
	case b.Allocation == AllocPreserving, b.Allocation == AllocSequential:
		return true
	}
	return false
}

// Predict returns the external endpoints the NAT is expected to give the
// next connections from local toward a new destination, most likely first:
// the reflexive endpoint for endpoint-independent mapping, the local port
// for a preserving NAT, and Last plus k times Delta for k = 1..window for a
// sequential one. An unpredictable NAT gives nothing.
func (b Behavior) Predict(local, reflexive netip.AddrPort, window int) []netip.AddrPort {
	if window <= 0 {
		window = defaultWindow
	}
	window = min(window, maxPredictWindow)
	switch {
	case b.Mapping == MappingNone:
		return []netip.AddrPort{local}
	case b.Mapping == MappingEI:
		return []netip.AddrPort{reflexive}
	case b.Allocation == AllocPreserving:
		return []netip.AddrPort{netip.AddrPortFrom(reflexive.Addr(), local.Port())}
	case b.Allocation == AllocSequential:
		var out []netip.AddrPort
		p := int(b.Last.Port())
		for k := 1; k <= window; k++ {
			q := p + k*b.Delta
			if q < 1 || q > 65535 {
				break
			}
			out = append(out, netip.AddrPortFrom(b.Last.Addr(), uint16(q)))
		}
		return out
	}
	return nil
}

// Feasible says whether TCP punching between NATs a and b can work by
// simultaneous open with port prediction, and why not when it cannot: both
// sides must be able to aim at the other's next mapping (endpoint-
// independent mapping, port preservation or sequential allocation, RFC 5382
// REQ-1 and REQ-2). When one side allocates at random, its SYN can only get
// in if the other side's NAT filters endpoint-independently, which a TCP
// probe cannot tell (RFC 5780 section 3.2), so the answer is "no, unless".
func Feasible(a, b Behavior) (bool, string) {
	pa, pb := a.Predictable(), b.Predictable()
	switch {
	case pa && pb:
		return true, ""
	case !pa && !pb:
		return false, fmt.Sprintf("both NATs map %s with %s ports: neither side's next port can be predicted", a.Mapping, a.Allocation)
	case !pa:
		return false, fmt.Sprintf("the first NAT maps %s with random ports: only endpoint-independent filtering at the second would let its SYN in", a.Mapping)
	default:
		return false, fmt.Sprintf("the second NAT maps %s with random ports: only endpoint-independent filtering at the first would let its SYN in", b.Mapping)
	}
}
