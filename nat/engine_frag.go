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
// address alone; inbound and hairpinned non-first fragments that arrive
// before their first fragment are held (see holdFragment) and released,
// translated, through Engine.Released when it comes.
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
	xlat2   uint32 // hairpinned: internal destination
	id      uint16 // the datagram's IPv4 ID as received
	newID   uint16 // outbound: the ID its fragments leave with
	proto   uint8
	dir     uint8 // 1 outbound, 2 inbound
	exempt  bool  // NoTranslate: forward unchanged
	hairpin bool  // outbound to an external address, translated twice
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
func (e *Engine) noteFragment(p *packet.Packet, outbound bool, orig uint32, origID uint16, ns uint32) *fragEntry {
	proto := uint8(p.Proto())
	if outbound {
		f := e.fragFind(orig, u4(p.Dst()), origID, proto, 1, ns)
		if f == nil {
			f = e.fragNew(orig, u4(p.Dst()), origID, proto, 1, ns)
		}
		f.xlat = u4(p.Src())
		f.hairpin = false
		setIPID(p, f.newID)
		return f
	}
	f := e.fragNew(u4(p.Src()), orig, p.IPID(), proto, 2, ns)
	f.xlat = u4(p.Dst())
	return f
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
				return e.drop(ReasonFragment) // exemption depends on ports not seen yet
			}
			e.exemptFragment(p, 1, ns)
			return e.untranslated()
		}
		if e.isExternal(dst) {
			// Hairpinned: the destination's mapping is in the first fragment.
			if e.cfg.NoHairpinning {
				return e.drop(ReasonNoHairpin)
			}
			return e.holdFragment(p, src, dst, 1, ns)
		}
		// Before the first fragment: under paired pooling the address is
		// known from the subscriber alone.
		a, ok := e.alloc[pidx(tuple.Proto(proto))].PairedAddr(a4(src))
		if !ok {
			return e.drop(ReasonFragment)
		}
		f = e.fragNew(src, dst, p.IPID(), proto, 1, ns)
		f.xlat = u4(a)
	}
	if f.exempt {
		return e.untranslated()
	}
	if f.hairpin {
		if !e.applyFragment(p, f) {
			return e.drop(ReasonFragment)
		}
		e.st.Hairpinned++
		return Verdict{Action: Hairpin}
	}
	if e.isExternal(dst) {
		return e.drop(ReasonFragment) // its first fragment was not hairpinned
	}
	if p.SetSrcAddr(a4(f.xlat)) != nil {
		return e.drop(ReasonFragment)
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
		return e.holdFragment(p, src, dst, 2, ns)
	}
	if p.SetDstAddr(a4(f.xlat)) != nil {
		return e.drop(ReasonFragment)
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
	return e.drop(ReasonFragment)
}

// Held fragments (RFC 4787 REQ-14). An inbound non-first fragment whose
// first fragment has not been seen (no cache entry), or a hairpinned one
// (inside to an external address of this NAT), cannot be translated yet:
// its ports are in the first fragment. It is copied into a bounded store
// (an arena of Config.MaxHeldFragmentBytes, allocated on first use, and
// at most Config.MaxHeldFragments entries) and held for
// Config.FragmentHold. When the first fragment of its datagram is
// translated, the held fragments get the same rewrite and are handed out
// by Released. The store keeps arrival order; entries that leave are
// marked and the arena compacted at the start of the next call (a
// memmove of at most the byte cap), so the slices Released returns stay
// valid until then.

type heldFrag struct {
	a, b     uint32 // fragment identity as for fragEntry
	id       uint16
	off      uint16 // fragment offset (8-byte units), to drop duplicates
	proto    uint8
	dir      uint8
	gone     bool
	start, n int // bytes in fragBuf
	deadline uint32
}

func fragOffset(b []byte) uint16 { return binary.BigEndian.Uint16(b[6:8]) & 0x1fff }

// holdFragment keeps a copy of the non-first fragment p (identity a, b,
// dir) until its first fragment comes or Config.FragmentHold passes.
func (e *Engine) holdFragment(p *packet.Packet, a, b uint32, dir uint8, ns uint32) Verdict {
	if e.cfg.FragmentHold < 0 {
		return e.drop(ReasonFragment)
	}
	pk := p.Bytes()
	id, proto, off := p.IPID(), uint8(p.Proto()), fragOffset(pk)
	if e.fragBuf == nil {
		e.fragBuf = make([]byte, 0, e.cfg.MaxHeldFragmentBytes)
		e.fragHeld = make([]heldFrag, 0, e.cfg.MaxHeldFragments)
	}
	perDgram, perSrc := 0, 0
	for k := range e.fragHeld {
		h := &e.fragHeld[k]
		if h.gone {
			continue
		}
		if h.a == a {
			perSrc++
		}
		if h.a == a && h.b == b && h.id == id && h.proto == proto && h.dir == dir {
			if h.off == off {
				return e.drop(ReasonFragmentFull) // a duplicate (or overlapping copy)
			}
			perDgram++
		}
	}
	if len(e.fragHeld) == cap(e.fragHeld) || len(e.fragBuf)+len(pk) > cap(e.fragBuf) ||
		perDgram >= e.cfg.MaxFragmentsPerDatagram || perSrc >= e.cfg.MaxHeldFragmentsPerSource {
		return e.drop(ReasonFragmentFull)
	}
	start := len(e.fragBuf)
	e.fragBuf = append(e.fragBuf, pk...)
	e.fragHeld = append(e.fragHeld, heldFrag{a: a, b: b, id: id, off: off, proto: proto, dir: dir,
		start: start, n: len(pk), deadline: ns + e.tmFrag})
	e.nfrag++
	return e.drop(ReasonFragmentHeld)
}

// releaseFragments translates the fragments held for the datagram of
// cache entry f (just filled by its first fragment) and queues them for
// Released. It reports whether any was released.
func (e *Engine) releaseFragments(f *fragEntry, ns uint32) bool {
	any := false
	for k := range e.fragHeld {
		h := &e.fragHeld[k]
		if h.gone || h.a != f.a || h.b != f.b || h.id != f.id || h.proto != f.proto || h.dir != f.dir {
			continue
		}
		h.gone = true
		e.nfrag--
		e.fragDirty = true
		if ns >= h.deadline+1 {
			e.st.Drops[ReasonFragmentTimeout]++ // its Drop verdict (fragment-held) is counted already
			continue
		}
		var p packet.Packet
		b := e.fragBuf[h.start : h.start+h.n : h.start+h.n]
		if p.Parse(b) != nil || !e.applyFragment(&p, f) {
			e.st.Drops[ReasonFragment]++
			continue
		}
		e.released = append(e.released, b)
		e.st.ReleasedFragments++
		any = true
	}
	return any
}

// applyFragment gives non-first fragment p the rewrite of its datagram's
// first fragment: inbound the internal destination; hairpinned the
// external source, the internal destination and the new IPv4 ID.
func (e *Engine) applyFragment(p *packet.Packet, f *fragEntry) bool {
	if f.dir == 2 {
		return p.SetDstAddr(a4(f.xlat)) == nil
	}
	if !f.hairpin || p.SetSrcAddr(a4(f.xlat)) != nil || p.SetDstAddr(a4(f.xlat2)) != nil {
		return false
	}
	setIPID(p, f.newID)
	return true
}

// compactFragments forgets released and dropped entries of the store and
// compacts its arena (the previous call's Released slices become invalid).
func (e *Engine) compactFragments() {
	e.fragDirty = false
	e.released = e.released[:0]
	w, at := 0, 0
	for _, h := range e.fragHeld {
		if h.gone {
			continue
		}
		copy(e.fragBuf[at:], e.fragBuf[h.start:h.start+h.n])
		h.start = at
		at += h.n
		e.fragHeld[w] = h
		w++
	}
	e.fragHeld = e.fragHeld[:w]
	e.fragBuf = e.fragBuf[:at]
}

// expireFragments drops fragments held longer than Config.FragmentHold.
func (e *Engine) expireFragments(ns uint32) {
	for k := range e.fragHeld {
		h := &e.fragHeld[k]
		if !h.gone && ns >= h.deadline+1 {
			h.gone = true
			e.nfrag--
			e.st.Drops[ReasonFragmentTimeout]++ // its Drop verdict (fragment-held) is counted already
		}
	}
	e.compactFragments()
}

// Released returns the held fragments that the last Outbound or Inbound
// call translated and released (RFC 4787 REQ-14): non-first fragments
// that arrived before the first fragment of their datagram, which that
// call translated (its Verdict has Released set). Send them on the
// internal side, after the packet of that call, as for a Forward verdict
// of Inbound or a Hairpin verdict. They point into the engine's store and
// are valid until the next call on the Engine; a datapath drains them
// after every call whose Verdict.Released is true.
func (e *Engine) Released() [][]byte { return e.released }
