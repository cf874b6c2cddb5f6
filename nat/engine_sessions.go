package nat

import (
	"iter"
	"net/netip"
	"time"

	"github.com/portspace/portspace/tuple"
)

// Session describes one flow of the table (see Engine.Sessions).
type Session struct {
	Proto    tuple.Proto
	Internal netip.AddrPort // ICMP: the query identifier as port
	External netip.AddrPort
	Remote   netip.AddrPort // ICMP: port 0
	// State is the TCP state ("syn-out", "syn-in", "established",
	// "fin-out", "fin-in", "fin-both", "rst"), "" for UDP and ICMP.
	State string
	// Expires is when the session ends unless refreshed (1 s resolution).
	Expires time.Time
	// Mapping is true for the session that holds the mapping (the first
	// one of its internal endpoint).
	Mapping bool
	// Inbound is true for a session opened by an inbound packet.
	Inbound bool
}

// Sessions iterates over the live sessions, for management and tests
// ("nat show"). It allocates; do not call it on the packet path, and do
// not call other Engine methods while iterating.
func (e *Engine) Sessions() iter.Seq[Session] {
	return func(yield func(Session) bool) {
		t := e.t
		for c := range t.span() {
			r := t.at(t.nth(c))
			if r.flags&fUsed == 0 || r.flags&(fZombie|fFilter) != 0 {
				continue
			}
			s := Session{
				Proto:    tuple.Proto(r.proto),
				Internal: ap4(r.intAddr, r.intPort),
				External: ap4(r.extAddr, r.extPort),
				Remote:   ap4(r.remAddr, r.remPort),
				Expires:  time.Unix(e.base+int64(r.expire), 0),
				Mapping:  r.flags&fOwner != 0,
				Inbound:  r.aux&auxInbound != 0,
			}
			if r.proto == uint8(tuple.TCP) {
				s.State = tcpStateNames[r.state]
			}
			if !yield(s) {
				return
			}
		}
	}
}
