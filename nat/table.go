package nat

import (
	"fmt"
	"math/bits"
	"unsafe"

	"github.com/portspace/portspace/internal/hugepage"
)

// The translation table.
//
// Every piece of state is a 32-byte record in a chunked arena:
//
//   - a session: one flow (5-tuple) with its internal, external and remote
//     endpoints, TCP state and expiry; both directions use the same record;
//   - the first session of a mapping is its owner (flag fOwner): it stands
//     for the mapping (internal endpoint -> external endpoint) and counts the
//     other sessions of the mapping in refs. When the owner's flow ends while
//     other sessions remain, it becomes a zombie (fZombie) that only holds
//     the mapping; it is freed with the mapping's last session;
//   - a filter record (fFilter) counts the sessions of a mapping towards one
//     remote address, for address-dependent filtering.
//
// One open-addressing hash index with 4-byte slots finds records by key.
// Each record has at most two keys: an owner by its mapping key outbound
// (internal endpoint [+ remote address [+ port]]) and inbound (external
// endpoint [+ remote endpoint when ports overlap]); another session by its
// outbound 5-tuple and its inbound 5-tuple; a filter by (external endpoint,
// remote address). A packet of the common one-session-per-mapping flow
// therefore costs one probe sequence: the mapping key finds the owner and
// its remote endpoint matches.
//
// A slot holds record index+1 in the low 27 bits, which of the record's
// two keys it is in bit 27, and a 4-bit tag from the hash in bits 28-31, so
// most non-matching slots are skipped without touching the record. Linear
// probing with backward-shift deletion keeps the index free of tombstones.
// When half full it doubles incrementally: new keys go to a new array and
// each insertion or deletion moves 16 slots of the old one, so no packet
// pays for rehashing the whole table (a 10 M-session table would otherwise
// stall for about a second). When less than 1/8 full it shrinks the same
// way to a size at most 1/4 full (Engine.ExpireSome drives the move too),
// and when less than 1/8 of the arena's records are in use, the top chunks
// are emptied by moving their live records down and then released
// (trim), a bounded number per Expire call.

type rec struct {
	intAddr, extAddr, remAddr uint32
	expire                    uint32 // engine seconds; the record is dead at expire
	refs                      uint32 // owner: other sessions; filter: sessions; free: next free
	intPort, extPort, remPort uint16
	proto                     uint8
	flags                     uint8
	state                     uint8 // TCP state (tcpState)
	aux                       uint8 // sticky per-session bits (auxInbound, ...)
}

const (
	fUsed   = 1 << iota
	fOwner  // holds a mapping (keys: mapOut, mapIn)
	fZombie // owner whose own flow ended; holds the mapping only
	fFilter // ADF filter record (key: filt)
	fLoose  // session without an owner (overloading): keys out, in
)

// Aux bits.
const (
	auxInbound = 1 << iota // created by an inbound packet
	auxHeld                // an unsolicited SYN for this 5-tuple is held
)

// Key kinds: a record's key 0 or 1 (slot bit 27) by role.
const (
	kMapOut = iota // owner key 0
	kMapIn         // owner key 1
	kOut           // session key 0
	kIn            // session key 1
	kFilt          // filter key 0
)

const (
	chunkBits  = 14
	chunkSize  = 1 << chunkBits
	idxBits    = 27
	maxRecords = 1<<idxBits - 1
	idxMask    = 1<<idxBits - 1
	whichBit   = 1 << idxBits
)

// key is a packed lookup key.
type key struct{ w0, w1 uint64 }

func mkKey(kind uint8, proto uint8, aAddr uint32, aPort uint16, bAddr uint32, bPort uint16) key {
	return key{
		w0: uint64(aAddr)<<32 | uint64(bAddr),
		w1: uint64(aPort)<<48 | uint64(bPort)<<32 | uint64(proto)<<8 | uint64(kind),
	}
}

// mode bits decide which fields mapping keys include.
type keyMode struct {
	mapRemAddr bool // mapOut includes the remote address (ADM, APDM, overlap)
	mapRemPort bool // mapOut includes the remote port (APDM, overlap)
	inRem      bool // mapIn includes the remote endpoint (overlap)
}

type table struct {
	chunks [][]rec
	n      int    // records in use
	free   uint32 // free list head (index+1), 0 = none
	next   uint32 // next never-used index

	slots []uint32
	shift uint8
	used  int // occupied slots of slots
	// While growing: the previous array, still complete (deletions apply
	// to both), and the migration cursor into it.
	old      []uint32
	oldShift uint8
	mig      uint32
	minBits  uint8 // the index never shrinks below 2^minBits slots
	// While trimming the arena: chunks at and above trimTo are being
	// emptied (their free records are kept off the free list).
	trimTo uint32
	pend   uint32 // the free list when the trim began, being filtered
	k0     uint64
	k1     uint64
	mode   keyMode
	sink   uint32 // keeps Engine.Prefetch's loads
}

// indexMinBits sizes a new index (2^10 slots); tests lower it to exercise
// growth.
var indexMinBits = 10

// newTable returns a table whose index holds expect sessions (two keys
// each) without growing.
func newTable(k0, k1 uint64, mode keyMode, expect int) *table {
	t := &table{k0: k0 | 1, k1: k1 | 1, mode: mode}
	b := indexMinBits
	for 1<<b < 4*expect+4 {
		b++
	}
	t.slots = makeSlots(1 << b)
	t.shift = uint8(64 - b)
	t.minBits = uint8(b)
	return t
}

func (t *table) at(i uint32) *rec { return &t.chunks[i>>chunkBits][i&(chunkSize-1)] }

func (t *table) hash(k key) uint64 {
	hi, lo := bits.Mul64(k.w0^t.k0, k.w1^t.k1)
	h := hi ^ lo
	hi, lo = bits.Mul64(h^0x9e3779b97f4a7c15, t.k0^k.w1)
	return hi ^ lo
}

// keyOf returns the key of record r of the given kind.
func (t *table) keyOf(r *rec, kind uint8) key {
	switch kind {
	case kMapOut:
		var ra uint32
		var rp uint16
		if t.mode.mapRemAddr {
			ra = r.remAddr
		}
		if t.mode.mapRemPort {
			rp = r.remPort
		}
		return mkKey(kMapOut, r.proto, r.intAddr, r.intPort, ra, rp)
	case kMapIn:
		if t.mode.inRem {
			return mkKey(kMapIn, r.proto, r.extAddr, r.extPort, r.remAddr, r.remPort)
		}
		return mkKey(kMapIn, r.proto, r.extAddr, r.extPort, 0, 0)
	case kOut:
		return mkKey(kOut, r.proto, r.intAddr, r.intPort, r.remAddr, r.remPort)
	case kIn:
		return mkKey(kIn, r.proto, r.extAddr, r.extPort, r.remAddr, r.remPort)
	default:
		return mkKey(kFilt, r.proto, r.extAddr, r.extPort, r.remAddr, 0)
	}
}

// kindOf returns the key kind of slot value s pointing at record r.
func kindOf(r *rec, s uint32) uint8 {
	which := uint8(s>>idxBits) & 1
	switch {
	case r.flags&fOwner != 0:
		return kMapOut + which
	case r.flags&fFilter != 0:
		return kFilt
	default:
		return kOut + which
	}
}

func kindsOf(r *rec) (k0, k1 uint8, two bool) {
	switch {
	case r.flags&fOwner != 0:
		return kMapOut, kMapIn, true
	case r.flags&fFilter != 0:
		return kFilt, 0, false
	default:
		return kOut, kIn, true
	}
}

// find returns the index+1 of the record with key k, or 0. While the
// index grows, keys not yet moved are found in the old array.
func (t *table) find(k key) uint32 {
	h := t.hash(k)
	if i := t.findIn(t.slots, t.shift, h, k); i != 0 || t.old == nil {
		return i
	}
	return t.findIn(t.old, t.oldShift, h, k)
}

func (t *table) findIn(slots []uint32, shift uint8, h uint64, k key) uint32 {
	mask := uint32(len(slots) - 1)
	pos := uint32(h>>shift) & mask
	tag := uint32(h&15) << 28
	kind := uint8(k.w1)
	for {
		s := slots[pos]
		if s == 0 {
			return 0
		}
		if s&0xf0000000 == tag {
			i := s & idxMask
			r := t.at(i - 1)
			if kindOf(r, s) == kind && t.keyOf(r, kind) == k {
				return i
			}
		}
		pos = (pos + 1) & mask
	}
}

// insertSlot adds slot value v (index+1 and which bit) for key k to the
// current array.
func (t *table) insertSlot(k key, v uint32) {
	h := t.hash(k)
	mask := uint32(len(t.slots) - 1)
	pos := uint32(h>>t.shift) & mask
	v |= uint32(h&15) << 28
	for t.slots[pos] != 0 {
		pos = (pos + 1) & mask
	}
	t.slots[pos] = v
	t.used++
}

// index adds the keys of record i (index, not +1).
func (t *table) index(i uint32) {
	if t.used+2 > len(t.slots)/2 {
		t.startGrow()
	}
	t.migrate(migrateStep)
	r := t.at(i)
	k0, k1, two := kindsOf(r)
	t.insertSlot(t.keyOf(r, k0), i+1)
	if two {
		t.insertSlot(t.keyOf(r, k1), (i+1)|whichBit)
	}
}

// unindex removes the keys of record i.
func (t *table) unindex(i uint32) {
	r := t.at(i)
	k0, k1, two := kindsOf(r)
	t.removeSlot(t.keyOf(r, k0), i+1)
	if two {
		t.removeSlot(t.keyOf(r, k1), (i+1)|whichBit)
	}
	t.migrate(migrateStep)
	if t.old == nil && t.used*8 < len(t.slots) && len(t.slots) > 1<<t.minBits {
		t.startShrink()
	}
}

// removeSlot removes the slot of key k with value v from both arrays.
func (t *table) removeSlot(k key, v uint32) {
	h := t.hash(k)
	if t.removeIn(t.slots, t.shift, h, v, false) {
		t.used--
	}
	if t.old != nil {
		t.removeIn(t.old, t.oldShift, h, v, true)
	}
}

// removeIn deletes value v from slots with backward-shift deletion. In
// the old array, an entry shifted from the part not yet migrated into the
// migrated part is migrated at once, so that no entry is skipped.
func (t *table) removeIn(slots []uint32, shift uint8, h uint64, v uint32, old bool) bool {
	mask := uint32(len(slots) - 1)
	pos := uint32(h>>shift) & mask
	for {
		s := slots[pos]
		if s == 0 {
			return false
		}
		if s&0x0fffffff == v {
			break
		}
		pos = (pos + 1) & mask
	}
	for {
		slots[pos] = 0
		j := pos
		for {
			j = (j + 1) & mask
			s := slots[j]
			if s == 0 {
				return true
			}
			r := t.at(s&idxMask - 1)
			home := uint32(t.hash(t.keyOf(r, kindOf(r, s)))>>shift) & mask
			// Move s to pos when its home is not in (pos, j] cyclically.
			if (j-home)&mask >= (j-pos)&mask {
				slots[pos] = s
				if old && pos < t.mig && j >= t.mig {
					t.migrateSlot(s)
				}
				pos = j
				break
			}
		}
	}
}

// migrateStep is how many old slots each index or unindex call moves;
// the old array (half full at most) is done long before the new one
// (twice as large) is half full.
const migrateStep = 16

// makeSlots allocates an index array, backed by huge pages where the OS
// offers them.
func makeSlots(n int) []uint32 {
	s := make([]uint32, n)
	hugepage.Advise(unsafe.Pointer(&s[0]), 4*n)
	return s
}

// startGrow begins doubling the index: new keys go to a new array, and
// index/unindex calls move the old array's keys over a few at a time, so
// no call pays for rehashing the whole table.
func (t *table) startGrow() {
	if t.old != nil {
		t.migrate(len(t.old)) // finish the previous growth first
	}
	t.old, t.oldShift, t.mig = t.slots, t.shift, 0
	t.slots = makeSlots(2 * len(t.old))
	t.shift--
	t.used = 0
}

// startShrink begins halving (or more) an index less than 1/8 full, to
// a size at most 1/4 full, the same way as startGrow: keys move to the
// smaller array a few at a time (and in Engine.ExpireSome), look-ups
// check both arrays meanwhile.
func (t *table) startShrink() {
	b := int(t.minBits)
	for 1<<b < 4*t.used+4 {
		b++
	}
	if 1<<b >= len(t.slots) {
		return
	}
	t.old, t.oldShift, t.mig = t.slots, t.shift, 0
	t.slots = makeSlots(1 << b)
	t.shift = uint8(64 - b)
	t.used = 0
}

// maintain does up to n steps of background work: moving index slots of
// a growth or shrink, starting a shrink, and trimming the arena.
func (t *table) maintain(n int) {
	t.migrate(n)
	if t.old == nil && t.used*8 < len(t.slots) && len(t.slots) > 1<<t.minBits {
		t.startShrink()
		t.migrate(n)
	}
	t.trim(min(n, maxTrimStep))
}

// maxTrimStep bounds the records trim moves per call (a move is an
// unindex and an index, about 0.2 µs).
const maxTrimStep = 1 << 15

// maxTrimScan bounds the records trim looks at per call (free ones cost
// a load each: about 1 ms per million).
const maxTrimScan = 1 << 20

// refill moves up to n records of the pending free list (see trim) to
// the free list, dropping those above the trim limit.
func (t *table) refill(n int) {
	lim := t.trimTo << chunkBits
	for ; n > 0 && t.pend != 0; n-- {
		i := t.pend - 1
		r := t.at(i)
		t.pend = r.refs
		if i < lim {
			r.refs = t.free
			t.free = i + 1
		} else {
			*r = rec{}
		}
	}
}

// abandonTrim stops a trim that found no free record below its limit (the
// table filled up again): the free records above the limit go back on
// the free list.
func (t *table) abandonTrim() {
	for i := t.trimTo << chunkBits; i < t.next; i++ {
		if r := t.at(i); r.flags&fUsed == 0 {
			*r = rec{refs: t.free}
			t.free = i + 1
		}
	}
	t.trimTo = 0
}

// trim releases arena chunks after mass expiry. When fewer than 1/8 of
// the arena's records are in use, the chunks above what would hold them
// 1/4 full are emptied: their free records leave the free list (which
// is filtered incrementally, 16 n records per call, alloc taking from
// it meanwhile), their
// live records move (unindex, copy, index) into free records below, one
// at a time from the top, up to n moves (and maxTrimScan records) per
// call; emptied
// chunks are dropped from the top. Record indices are internal to a
// call, so moving a record between calls is invisible to the engine.
func (t *table) trim(n int) {
	if t.trimTo == 0 {
		if len(t.chunks) <= 1 || t.n*8 >= len(t.chunks)*chunkSize {
			return
		}
		k := max(1, (4*t.n+chunkSize-1)/chunkSize)
		if k >= len(t.chunks) {
			return
		}
		t.trimTo = uint32(k)
		t.pend, t.free = t.free, 0
	}
	// First filter the old free list, incrementally: records below the
	// limit go back on the free list, the others are dropped from it.
	if t.pend != 0 {
		t.refill(min(16*n, maxTrimScan))
		if t.pend != 0 {
			return
		}
	}
	lim := t.trimTo << chunkBits
	for scans := 0; n > 0 && t.next > lim && scans < maxTrimScan; scans++ {
		j := t.next - 1
		if r := t.at(j); r.flags&fUsed != 0 {
			if t.free == 0 {
				t.abandonTrim()
				return
			}
			n--
			i := t.free - 1
			t.free = t.at(i).refs
			moved := *r
			t.unindex(j)
			*t.at(i) = moved
			t.index(i)
			*r = rec{}
		}
		t.next--
		if t.next&(chunkSize-1) == 0 {
			t.chunks[len(t.chunks)-1] = nil
			t.chunks = t.chunks[:t.next>>chunkBits]
		}
	}
	if t.next <= lim {
		t.trimTo = 0
	}
}

// migrate moves up to n slots of the old array.
func (t *table) migrate(n int) {
	for ; n > 0 && t.old != nil; n-- {
		if s := t.old[t.mig]; s != 0 {
			t.migrateSlot(s)
		}
		t.mig++
		if int(t.mig) == len(t.old) {
			t.old = nil
		}
	}
}

// migrateSlot copies old slot value s into the current array unless it is
// there already (an entry shifted across the migration cursor).
func (t *table) migrateSlot(s uint32) {
	r := t.at(s&idxMask - 1)
	k := t.keyOf(r, kindOf(r, s))
	h := t.hash(k)
	mask := uint32(len(t.slots) - 1)
	v := s & 0x0fffffff
	for pos := uint32(h>>t.shift) & mask; t.slots[pos] != 0; pos = (pos + 1) & mask {
		if t.slots[pos]&0x0fffffff == v {
			return
		}
	}
	t.insertSlot(k, v)
}

// alloc returns a zeroed record index, or false at maxRecords.
func (t *table) alloc() (uint32, bool) {
	var i uint32
	if t.free == 0 && t.pend != 0 {
		t.refill(64) // a trim is filtering the free list (bounded work)
	}
	if t.free != 0 {
		i = t.free - 1
		t.free = t.at(i).refs
	} else {
		if t.next >= maxRecords {
			return 0, false
		}
		i = t.next
		t.next++
		if int(i>>chunkBits) == len(t.chunks) {
			t.chunks = append(t.chunks, make([]rec, chunkSize))
		}
	}
	*t.at(i) = rec{flags: fUsed}
	t.n++
	return i, true
}

// release returns record i (already unindexed) to the free list.
func (t *table) release(i uint32) {
	r := t.at(i)
	t.n--
	if t.trimTo != 0 && i >= t.trimTo<<chunkBits {
		*r = rec{} // in a chunk being emptied: kept off the free list
		return
	}
	*r = rec{refs: t.free}
	t.free = i + 1
}

// memBytes returns the bytes held by the table's arrays.
func (t *table) memBytes() int {
	return len(t.chunks)*chunkSize*32 + (len(t.slots)+len(t.old))*4
}

// check verifies the index against the arena (for tests): every key of
// every used record is found and no slot is stale.
func (t *table) check() error {
	want := 0
	for c := range t.chunks {
		for j := range t.chunks[c] {
			r := &t.chunks[c][j]
			if r.flags&fUsed == 0 {
				continue
			}
			i := uint32(c<<chunkBits+j) + 1
			k0, k1, two := kindsOf(r)
			if got := t.find(t.keyOf(r, k0)); got != i {
				return fmt.Errorf("record %d key %d found as %d", i-1, k0, got)
			}
			want++
			if two {
				if got := t.find(t.keyOf(r, k1)); got != i {
					return fmt.Errorf("record %d key %d found as %d", i-1, k1, got)
				}
				want++
			}
		}
	}
	n := 0
	for _, s := range t.slots {
		if s != 0 {
			n++
		}
	}
	if n != t.used {
		return fmt.Errorf("%d slots used, %d counted", n, t.used)
	}
	if t.old == nil && n != want {
		return fmt.Errorf("%d slots used, %d keys", n, want)
	}
	if n > want {
		return fmt.Errorf("%d slots used, only %d keys", n, want)
	}
	return nil
}

// slotOf returns the home position of key k in the current index array and
// the slot value there, loading it: the first half of a prefetch.
func (t *table) slotOf(k key) (pos uint32, tag uint32) {
	h := t.hash(k)
	mask := uint32(len(t.slots) - 1)
	pos = uint32(h>>t.shift) & mask
	return pos, uint32(h&15) << 28
}

// touchRecord loads the record the slot at pos points to when its tag
// matches (the second half of a prefetch); it returns a byte of it so the
// load is not optimised away.
func (t *table) touchRecord(pos, tag uint32) uint8 {
	mask := uint32(len(t.slots) - 1)
	for n := 0; n < 4; n++ {
		s := t.slots[pos]
		if s == 0 {
			return 0
		}
		if s&0xf0000000 == tag {
			return t.at(s&idxMask - 1).flags
		}
		pos = (pos + 1) & mask
	}
	return 0
}
