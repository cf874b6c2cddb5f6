package nat

import (
	"time"

	"github.com/portspace/portspace/packet"
	"github.com/portspace/portspace/tuple"
)

// ICMP error translation (RFC 5508 §4, REQ-3 to REQ-7; RFC 4787 REQ-12;
// RFC 5382 REQ-9/10). Errors never create, refresh or delete state.

// inboundError translates an ICMP error arriving from outside about a
// packet this NAT sent out: its embedded packet goes from an external
// endpoint to a remote endpoint.
func (e *Engine) inboundError(p *packet.Packet, now time.Time, ns uint32) Verdict {
	if p.VerifyChecksums() != nil {
		return e.drop(ReasonICMPChecksum) // RFC 5508 REQ-3
	}
	in := p.Inner()
	proto := uint8(in.Proto())
	ea, ep := u4(in.Src()), in.SrcPort()
	ra, rp := u4(in.Dst()), in.DstPort()
	if in.Proto() == tuple.ICMP {
		rp = 0
	}
	if !e.isExternal(ea) {
		return e.drop(ReasonICMPNoSession)
	}
	s, o := e.lookupIn(proto, ea, ep, ra, rp, now, ns)
	if s == 0 {
		s = o // the mapping's internal endpoint is the same for all its sessions
	}
	if s == 0 {
		return e.drop(ReasonICMPNoSession) // RFC 5508 REQ-4
	}
	r := e.t.at(s - 1)
	if p.SetInnerSrc(ap4(r.intAddr, r.intPort)) != nil || p.SetDstAddr(a4(r.intAddr)) != nil {
		return e.drop(ReasonUnsupported)
	}
	return Verdict{Action: Forward}
}

// outboundError translates an ICMP error sent from inside about a packet
// this NAT delivered inside: its embedded packet goes from a remote
// endpoint to an internal endpoint. When the remote is an external
// endpoint of this NAT (the packet was hairpinned), the error is
// hairpinned too (RFC 5508 REQ-7).
func (e *Engine) outboundError(p *packet.Packet, now time.Time, ns uint32) Verdict {
	if p.VerifyChecksums() != nil {
		return e.drop(ReasonICMPChecksum)
	}
	in := p.Inner()
	proto := uint8(in.Proto())
	ia, ip := u4(in.Dst()), in.DstPort()
	ra, rp := u4(in.Src()), in.SrcPort()
	if in.Proto() == tuple.ICMP {
		rp = 0
	}
	if !e.isInside(ia) {
		return e.drop(ReasonICMPNoSession)
	}
	s, o := e.lookupOut(proto, ia, ip, ra, rp, now, ns)
	if s == 0 {
		s = o
	}
	if s == 0 {
		return e.drop(ReasonICMPNoSession)
	}
	r := e.t.at(s - 1)
	if p.SetInnerDst(ap4(r.extAddr, r.extPort)) != nil || p.SetSrcAddr(a4(r.extAddr)) != nil {
		return e.drop(ReasonUnsupported)
	}
	if !e.isExternal(u4(p.Dst())) {
		e.st.Forwarded++
		return Verdict{Action: Forward}
	}
	v := e.inboundError(p, now, ns)
	if v.Action == Forward {
		v.Action = Hairpin
		e.st.Hairpinned++
	}
	return v
}
