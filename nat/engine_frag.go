package nat

import (
	"encoding/binary"

	"github.com/portspace/portspace/packet"
	"github.com/portspace/portspace/tuple"
)

// Fragments (RFC 4787 REQ-14, RFC 791 §3.2). A first fragment carries the
// transport header and is translated like any packet; its translation is
// remembered, keyed by the fragment identity (source, destination,
// protocol, IPv4 ID), in a small direct-mapped cache, and the later
// fragments of the datagram get the same address rewrite (their ports are
// in the first fragment). Outbound fragments may arrive in any order under
// paired pooling, where the external address depends on the internal
// address alone; inbound non-first fragments that arrive before their
// first fragment are dropped (no buffering: the engine hands back one
// packet per call).
//
// Outbound fragmented datagrams also get a new IPv4 ID, the same for all
// their fragments, so that datagrams of two internal hosts that used the
// same ID towards one destination do not share a fragment identity once
// both come from the external address (RFC 6864 §4.1 uniqueness of
// non-atomic datagrams; RFC 7857 §3 points to it). Fragments exempt from
// translation (Config.NoTranslate) pass unchanged.

const (
	fragSlots = 1024
	fragLife  = 30 // seconds a fragment translation is remembered
)

type fragEntry struct {
	a, b    uint32 // outbound: internal source, destination; inbound: source, external (or exempt internal) destination
	xlat    uint32 // outbound: external source address; inbound: internal destination
	id      uint16 // the datagram's IPv4 ID as received
	newID   uint16 // outbound: the ID its fragments leave with
	proto   uint8
	dir     uint8 // 1 outbound, 2 inbound
	exempt  bool  // NoTranslate: forward unchanged
	expires uint32
}

func (e *Engine) fragSlot(a, b uint32, id uint16, proto uint8, dir uint8) *fragEntry {
	h := e.t.hash(key{uint64(a)<<32 | uint64(b), uint64(id)<<16 | uint64(proto)<<8 | uint64(dir)})
	return &e.frags[h>>(64-10)]
}

// fragFind returns the cache entry of a datagram, or nil.
func (e *Engine) fragFind(a, b uint32, id uint16, proto, dir uint8, ns uint32) *fragEntry {
	f := e.fragSlot(a, b, id, proto, dir)
	if f.dir == dir && f.a == a && f.b == b && f.id == id && f.proto == proto && ns < f.expires {
		return f
	}
	return nil
}

// fragNew (re)fills the cache slot of a datagram.
func (e *Engine) fragNew(a, b uint32, id uint16, proto, dir uint8, ns uint32) *fragEntry {
	f := e.fragSlot(a, b, id, proto, dir)
	*f = fragEntry{a: a, b: b, id: id, proto: proto, dir: dir, expires: ns + fragLife}
	if dir == 1 {
		e.nextID++
		f.newID = e.nextID
	}
	return f
}

// setIPID rewrites the IPv4 ID and updates the header checksum (RFC 1624).
func setIPID(p *packet.Packet, id uint16) {
	b := p.Bytes()
	old := binary.BigEndian.Uint16(b[4:6])
	binary.BigEndian.PutUint16(b[4:6], id)
	binary.BigEndian.PutUint16(b[10:12], packet.Update16(binary.BigEndian.Uint16(b[10:12]), old, id))
}

// exemptFragment records that the fragmented datagram p is not translated.
func (e *Engine) exemptFragment(p *packet.Packet, dir uint8, ns uint32) {
	f := e.fragNew(u4(p.Src()), u4(p.Dst()), p.IPID(), uint8(p.Proto()), dir, ns)
	f.exempt = true
}

// noteFragment remembers the translation of a first fragment (already
// translated; orig is its original source outbound, its original
// destination inbound) and gives an outbound one its datagram's new ID.
func (e *Engine) noteFragment(p *packet.Packet, outbound bool, orig uint32, origID uint16, ns uint32) {
	proto := uint8(p.Proto())
	if outbound {
		f := e.fragFind(orig, u4(p.Dst()), origID, proto, 1, ns)
		if f == nil {
			f = e.fragNew(orig, u4(p.Dst()), origID, proto, 1, ns)
		}
		f.xlat = u4(p.Src())
		setIPID(p, f.newID)
		return
	}
	f := e.fragNew(u4(p.Src()), orig, p.IPID(), proto, 2, ns)
	f.xlat = u4(p.Dst())
}

// addrExempt reports whether address a is in Config.NoTranslate and the
// exemption does not depend on ports (which a non-first fragment lacks).
func (e *Engine) addrExempt(a uint32, proto tuple.Proto) (inPrefix, sure bool) {
	for _, p := range e.noXlat {
		if a&p.m == p.a {
			return true, !e.cfg.NoTranslatePorts.IsValid()
		}
	}
	return false, false
}

func (e *Engine) untranslated() Verdict {
	e.st.Forwarded++
	e.st.Untranslated++
	return Verdict{Action: Forward}
}

func (e *Engine) outboundFragment(p *packet.Packet, ns uint32) Verdict {
	src, dst := u4(p.Src()), u4(p.Dst())
	proto := uint8(p.Proto())
	f := e.fragFind(src, dst, p.IPID(), proto, 1, ns)
	if f == nil {
		if in, sure := e.addrExempt(dst, p.Proto()); in {
			if !sure {
				return e.drop(rFragment) // exemption depends on ports not seen yet
			}
			e.exemptFragment(p, 1, ns)
			return e.untranslated()
		}
		if e.isExternal(dst) {
			return e.drop(rFragment) // hairpinned fragments are not supported
		}
		// Before the first fragment: under paired pooling the address is
		// known from the subscriber alone.
		a, ok := e.alloc[pidx(tuple.Proto(proto))].PairedAddr(a4(src))
		if !ok {
			return e.drop(rFragment)
		}
		f = e.fragNew(src, dst, p.IPID(), proto, 1, ns)
		f.xlat = u4(a)
	}
	if f.exempt {
		return e.untranslated()
	}
	if p.SetSrcAddr(a4(f.xlat)) != nil {
		return e.drop(rFragment)
	}
	setIPID(p, f.newID)
	e.st.Forwarded++
	return Verdict{Action: Forward}
}

func (e *Engine) inboundFragment(p *packet.Packet, ns uint32) Verdict {
	src, dst := u4(p.Src()), u4(p.Dst())
	proto := uint8(p.Proto())
	f := e.fragFind(src, dst, p.IPID(), proto, 2, ns)
	if f == nil {
		return e.drop(rFragment)
	}
	if p.SetDstAddr(a4(f.xlat)) != nil {
		return e.drop(rFragment)
	}
	e.st.Forwarded++
	return Verdict{Action: Forward}
}

// inboundExemptFragment handles a non-first fragment addressed to an
// internal address: the reply of untranslated traffic (NoTranslate).
func (e *Engine) inboundExemptFragment(p *packet.Packet, ns uint32) Verdict {
	if f := e.fragFind(u4(p.Src()), u4(p.Dst()), p.IPID(), uint8(p.Proto()), 2, ns); f != nil && f.exempt {
		return e.untranslated()
	}
	if in, sure := e.addrExempt(u4(p.Src()), p.Proto()); in && sure {
		return e.untranslated()
	}
	return e.drop(rFragment)
}
