package nat

import (
	"encoding/binary"
	"unsafe"
)

// PrefetchSlots bounds the packets one Prefetch call prepares.
const PrefetchSlots = 64

// The prefetch pipeline's distances, in packets: the Outbound or Inbound
// call for packet j asks for the second cache line of packet j+pfAhead2
// (its first line, asked for by Prefetch, has arrived by then) and the
// third of packet j+pfAhead3 (outbound records away from home: index slot,
// then record).
const (
	pfAhead2 = 4
	pfAhead3 = 2
)

// pfState is a batch that Prefetch prepared: each packet's look-up key
// and hash, and the next packet the Outbound and Inbound calls are at.
type pfState struct {
	n, next int
	in      [PrefetchSlots]bool
	ok      [PrefetchSlots]bool
	h       [PrefetchSlots]uint64
	k       [PrefetchSlots]key
}

// Prefetch prepares the table look-ups of a batch of packets, so that the
// Outbound and Inbound calls that follow (in the order of pkts, with no
// other call in between) find their records in the cache. It asks the CPU
// for every packet's first cache line without waiting for it (a prefetch
// instruction: outbound, the record's home line in the slab; inbound, the
// index slot), and for the second line of the first few packets (inbound:
// the record the slot names; outbound, for the few records away from
// home, the index slot); each following Outbound or Inbound call then
// asks for the second (and third) line of the packet a few places ahead
// of it, whose first line has arrived meanwhile. So the memory accesses
// of different packets overlap with each other and with the translation
// of the packets before them (a software pipeline), instead of each packet
// waiting for its own misses in turn. inbound[i] says which look-up
// packet i gets. At most PrefetchSlots packets are prepared; malformed
// ones are skipped (the real call judges them). Calls in another order
// only lose the benefit. It does not change the engine's translation
// state and does not allocate.
func (e *Engine) Prefetch(pkts [][]byte, inbound []bool) {
	pf := &e.pf
	pf.n, pf.next = 0, 0
	t := e.t
	if t.old != nil {
		return // the index is moving: look-ups check two arrays
	}
	n := min(len(pkts), len(inbound), PrefetchSlots)
	cur := t.s[t.cs]
	mask := uint32(len(t.slots) - 1)
	var sink uint8
	for i := 0; i < n; i++ {
		k, good := e.prefetchKey(pkts[i], inbound[i])
		pf.ok[i], pf.in[i] = good, inbound[i]
		if !good {
			continue
		}
		h := t.hash(k)
		pf.h[i], pf.k[i] = h, k
		if inbound[i] {
			sink += prefetch(unsafe.Pointer(&t.slots[uint32(h>>t.shift)&mask]))
		} else {
			sink += prefetch(unsafe.Pointer(&cur[homeOf(h, len(cur))]))
		}
	}
	pf.n = n
	for j := 0; j < min(n, pfAhead2); j++ {
		sink += e.prefetch2(j)
	}
	for j := 0; j < min(n, pfAhead3); j++ {
		sink += e.prefetch3(j)
	}
	t.sink += uint32(sink)
}

// prefetchStep runs at the start of an Outbound or Inbound call after
// Prefetch: the pipeline's later stages for the packets ahead.
func (e *Engine) prefetchStep() {
	pf := &e.pf
	j := pf.next
	pf.next++
	if e.t.old != nil {
		pf.n = 0
		return
	}
	var sink uint8
	if j+pfAhead2 < pf.n {
		sink += e.prefetch2(j + pfAhead2)
	}
	if j+pfAhead3 < pf.n {
		sink += e.prefetch3(j + pfAhead3)
	}
	e.t.sink += uint32(sink)
}

// prefetch2 asks for packet j's second line: inbound, the record its
// index slot names; outbound, when the record is not at home, the index
// slot.
func (e *Engine) prefetch2(j int) uint8 {
	pf := &e.pf
	if !pf.ok[j] {
		return 0
	}
	t := e.t
	h := pf.h[j]
	if pf.in[j] {
		if r := t.slotRecord(uint32(h>>t.shift)&uint32(len(t.slots)-1), uint32(h&15)<<28); r != nil {
			return prefetch(unsafe.Pointer(r))
		}
		return 0
	}
	if sl := t.s[t.cs]; len(sl) > 0 {
		// The home line (prefetched): a record of the packet's internal
		// endpoint there is, but for rare exceptions, the one looked for.
		p := homeOf(h, len(sl))
		if int(p)+2 <= len(sl) && lineMask(sl[p:p+2:p+2], uint32(pf.k[j].w0>>32), uint16(pf.k[j].w1>>48), false) != 0 {
			pf.ok[j] = false // nothing more to ask for
			return 0
		}
	}
	return prefetch(unsafe.Pointer(&t.slots[uint32(h>>t.shift)&uint32(len(t.slots)-1)]))
}

// prefetch3 asks for the record of an outbound packet j not at home.
func (e *Engine) prefetch3(j int) uint8 {
	pf := &e.pf
	if !pf.ok[j] || pf.in[j] {
		return 0
	}
	t := e.t
	h := pf.h[j]
	if r := t.slotRecord(uint32(h>>t.shift)&uint32(len(t.slots)-1), uint32(h&15)<<28); r != nil {
		return prefetch(unsafe.Pointer(r))
	}
	return 0
}

// prefetchKey returns the mapping key the look-up of pkt starts with, read
// from the raw header (TCP, UDP and ICMP echo).
func (e *Engine) prefetchKey(p []byte, inbound bool) (key, bool) {
	if len(p) < 20 || p[0]>>4 != 4 {
		return key{}, false
	}
	ihl := int(p[0]&15) * 4
	if ihl < 20 || len(p) < ihl+8 || binary.BigEndian.Uint16(p[6:])&0x1fff != 0 {
		return key{}, false
	}
	proto := p[9]
	src, dst := binary.BigEndian.Uint32(p[12:]), binary.BigEndian.Uint32(p[16:])
	var sp, dp uint16
	switch proto {
	case 6, 17:
		sp, dp = binary.BigEndian.Uint16(p[ihl:]), binary.BigEndian.Uint16(p[ihl+2:])
	case 1:
		id := binary.BigEndian.Uint16(p[ihl+4:])
		if inbound {
			dp = id
		} else {
			sp = id
		}
	default:
		return key{}, false
	}
	m := e.t.mode
	if !inbound {
		var ra uint32
		var rp uint16
		if m.mapRemAddr {
			ra = dst
		}
		if m.mapRemPort {
			rp = dp
		}
		return mkKey(kMapOut, proto, src, sp, ra, rp), true
	}
	if m.inRem {
		return mkKey(kMapIn, proto, dst, dp, src, sp), true
	}
	return mkKey(kMapIn, proto, dst, dp, 0, 0), true
}
