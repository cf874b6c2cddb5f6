package nat

import (
	"github.com/portspace/portspace/packet"
	"github.com/portspace/portspace/tuple"
)

// Fragments (RFC 4787 REQ-14, RFC 5382 via RFC 791). A first fragment
// carries the transport header and is translated like any packet; its
// translation is remembered, keyed by the fragment identity (addresses,
// protocol, IPv4 ID, RFC 791 §3.2), in a small direct-mapped cache, and
// the later fragments of the datagram get the same address rewrite (their
// ports are in the first fragment). Outbound fragments may arrive in any
// order under paired pooling, where the external address depends on the
// internal address alone; inbound non-first fragments that arrive before
// their first fragment are dropped (no buffering: the engine hands back
// one packet per call).

const (
	fragSlots = 1024
	fragLife  = 30 // seconds a fragment translation is remembered
)

type fragEntry struct {
	a, b    uint32 // outbound: internal source, destination; inbound: source, external destination
	xlat    uint32 // outbound: external source address; inbound: internal destination
	id      uint16
	proto   uint8
	dir     uint8 // 1 outbound, 2 inbound
	expires uint32
}

func (e *Engine) fragSlot(a, b uint32, id uint16, proto uint8, dir uint8) *fragEntry {
	h := e.t.hash(key{uint64(a)<<32 | uint64(b), uint64(id)<<16 | uint64(proto)<<8 | uint64(dir)})
	return &e.frags[h>>(64-10)]
}

// noteFragment remembers the translation of a first fragment.
func (e *Engine) noteFragment(p *packet.Packet, outbound bool, orig uint32, ns uint32) {
	proto := uint8(p.Proto())
	if outbound {
		f := e.fragSlot(orig, u4(p.Dst()), p.IPID(), proto, 1)
		*f = fragEntry{a: orig, b: u4(p.Dst()), xlat: u4(p.Src()), id: p.IPID(), proto: proto, dir: 1, expires: ns + fragLife}
		return
	}
	f := e.fragSlot(u4(p.Src()), orig, p.IPID(), proto, 2)
	*f = fragEntry{a: u4(p.Src()), b: orig, xlat: u4(p.Dst()), id: p.IPID(), proto: proto, dir: 2, expires: ns + fragLife}
}

func (e *Engine) outboundFragment(p *packet.Packet, ns uint32) Verdict {
	src, dst := u4(p.Src()), u4(p.Dst())
	if e.isExternal(dst) {
		return e.drop(rFragment) // hairpinned fragments are not supported
	}
	proto := uint8(p.Proto())
	f := e.fragSlot(src, dst, p.IPID(), proto, 1)
	var ext uint32
	if f.dir == 1 && f.a == src && f.b == dst && f.id == p.IPID() && f.proto == proto && ns < f.expires {
		ext = f.xlat
	} else {
		// Before the first fragment: under paired pooling the address is
		// known from the subscriber alone.
		a, ok := e.alloc[pidx(tuple.Proto(proto))].PairedAddr(a4(src))
		if !ok {
			return e.drop(rFragment)
		}
		ext = u4(a)
	}
	if p.SetSrcAddr(a4(ext)) != nil {
		return e.drop(rFragment)
	}
	e.st.Forwarded++
	return Verdict{Action: Forward}
}

func (e *Engine) inboundFragment(p *packet.Packet, ns uint32) Verdict {
	src, dst := u4(p.Src()), u4(p.Dst())
	proto := uint8(p.Proto())
	f := e.fragSlot(src, dst, p.IPID(), proto, 2)
	if f.dir != 2 || f.a != src || f.b != dst || f.id != p.IPID() || f.proto != proto || ns >= f.expires {
		return e.drop(rFragment)
	}
	if p.SetDstAddr(a4(f.xlat)) != nil {
		return e.drop(rFragment)
	}
	e.st.Forwarded++
	return Verdict{Action: Forward}
}
