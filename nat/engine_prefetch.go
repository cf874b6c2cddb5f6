package nat

import "encoding/binary"

// PrefetchSlots bounds the packets one Prefetch call prepares.
const PrefetchSlots = 64

// Prefetch prepares the table look-ups of a batch of packets, so that the
// Outbound and Inbound calls that follow (in any order, with no other
// call in between) find their index slots and records in the cache: it
// loads every packet's index slot first and then every record, so the
// memory accesses of different packets overlap instead of each packet
// waiting for two dependent cache misses in turn. inbound[i] says which
// look-up packet i gets. At most PrefetchSlots packets are prepared;
// malformed ones are skipped (the real call judges them). It does not
// change the engine's state and does not allocate.
func (e *Engine) Prefetch(pkts [][]byte, inbound []bool) {
	var pos, tag [PrefetchSlots]uint32
	t := e.t
	if t.old != nil {
		return // the index is moving: look-ups check two arrays
	}
	n := min(len(pkts), len(inbound), PrefetchSlots)
	var sink uint32
	for i := 0; i < n; i++ {
		k, ok := e.prefetchKey(pkts[i], inbound[i])
		if !ok {
			tag[i] = 1 // no tag has its low bits set: skipped below
			continue
		}
		pos[i], tag[i] = t.slotOf(k)
		sink += t.slots[pos[i]]
	}
	var sink8 uint8
	for i := 0; i < n; i++ {
		if tag[i] != 1 {
			sink8 += t.touchRecord(pos[i], tag[i])
		}
	}
	t.sink += sink + uint32(sink8)
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
