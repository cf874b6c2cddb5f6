package nat

import "net/netip"

// PortsUsed returns how many ports (ICMP: identifiers) of external address
// a are allocated or quarantined, by protocol, read from the port
// allocators in constant time (for metrics: RFC 6888 REQ-3 port use per
// address). It does not allocate.
func (e *Engine) PortsUsed(a netip.Addr) (tcp, udp, icmp int) {
	return e.alloc[0].Used(a), e.alloc[1].Used(a), e.alloc[2].Used(a)
}
