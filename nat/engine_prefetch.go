package nat

import (
	"encoding/binary"
	"unsafe"
)

// PrefetchSlots bounds the packets one Prefetch call prepares.
const PrefetchSlots = 64

// Prefetch prepares the table look-ups of a batch of packets, so that the
// Outbound and Inbound calls that follow (in any order, with no other
// call in between) find their records in the cache. It asks the CPU for
// every packet's first cache line without waiting for it (a prefetch
// instruction: outbound, the record's home line in the slab; inbound, the
// index slot), then, once all are on their way, for the second line where
// one is needed (inbound: the record the slot names; outbound, for the
// few records away from home: the index slot and the record), so that the
// memory accesses of different packets overlap instead of each packet
// waiting for its own misses in turn. inbound[i] says which look-up
// packet i gets. At most PrefetchSlots packets are prepared; malformed
// ones are skipped (the real call judges them). It does not change the
// engine's state and does not allocate.
func (e *Engine) Prefetch(pkts [][]byte, inbound []bool) {
	var hs [PrefetchSlots]uint64
	var ks [PrefetchSlots]key
	var ok [PrefetchSlots]bool
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
		if !good {
			continue
		}
		h := t.hash(k)
		hs[i], ks[i], ok[i] = h, k, true
		if inbound[i] {
			sink += prefetch(unsafe.Pointer(&t.slots[uint32(h>>t.shift)&mask]))
		} else {
			sink += prefetch(unsafe.Pointer(&cur[homeOf(h, len(cur))]))
		}
	}
	for i := 0; i < n; i++ {
		if !ok[i] || !inbound[i] && t.atHome(hs[i], ks[i], kMapOut) != 0 {
			continue
		}
		if r := t.slotRecord(uint32(hs[i]>>t.shift)&mask, uint32(hs[i]&15)<<28); r != nil {
			sink += prefetch(unsafe.Pointer(r))
		}
	}
	t.sink += uint32(sink)
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
