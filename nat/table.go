package nat

import (
	"fmt"
	"math/bits"
	"unsafe"

	"github.com/portspace/portspace/internal/hugepage"
)

// The translation table.
//
// Every piece of state is a 32-byte record:
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
// Each record has at most two keys: an owner by its mapping key outbound
// (internal endpoint [+ remote address [+ port]]) and inbound (external
// endpoint [+ remote endpoint when ports overlap]); another session by its
// outbound 5-tuple and its inbound 5-tuple; a filter by (external endpoint,
// remote address). A packet of the common one-session-per-mapping flow
// therefore costs one look-up: the mapping key finds the owner and its
// remote endpoint matches.
//
// Records live in a slab, an array of records that is itself hashed by
// each record's first key (key 0: the outbound mapping key of an owner,
// the outbound 5-tuple of another session, the filter key): a new record
// goes into its home line (the 64-byte cache line of two records that
// key 0's hash picks) or, when both are taken, the neighbouring line of
// the same 128-byte pair, and only when all four are taken anywhere free
// (a cursor scans for one). The slab is kept at most half full, so at
// 1 M records about 96% of them sit in their home pair: an outbound
// look-up (key 0) reads the home line and finds the record there, one
// cache miss, with the slab on huge pages so that the miss costs no page
// walk.
//
// One open-addressing hash index with 4-byte slots finds every key of every
// record (key 0 too, so a record away from home is found): inbound look-ups
// (key 1) and the outbound ones that miss at home read an index slot and
// then the record. A slot holds record index+1 in the low 27 bits, which of
// the record's two keys it is in bit 27, and a 4-bit tag from the hash in
// bits 28-31, so most non-matching slots are skipped without touching the
// record. Linear probing with backward-shift deletion keeps the index free
// of tombstones. When half full it doubles incrementally: new keys go to a
// new array and each insertion or deletion moves 16 slots of the old one,
// so no packet pays for rehashing the whole table (a 10 M-session table
// would otherwise stall for about a second). When less than 1/8 full it
// shrinks the same way to a size at most 1/4 full (Engine.ExpireSome
// drives the move too).
//
// The slab resizes the same way: when an insertion would make it more than
// half full it doubles, and when Engine.ExpireSome finds it less than 1/8
// full it shrinks to at most 1/4 full. A resize allocates the new slab
// (the other of two slab numbers, so the records of both have indices) and
// makes it the current one: new records go there, and the old slab's
// records move into their home lines in the new one a few at a time
// (copy, and the record's index slots rewritten in place), 8 per Outbound
// or Inbound call, done before the
// call looks anything up, and more per ExpireSome call. Record indices are
// thus stable within a call, as the engine needs, and a move between calls
// is invisible to it. The old slab is released when empty. A shrink that
// the table outgrows before it ends is turned round: the larger slab is
// current again and the smaller one is emptied into it.

type rec struct {
	intAddr, extAddr, remAddr uint32
	expire                    uint32 // engine seconds; the record is dead at expire
	refs                      uint32 // owner: other sessions; filter: sessions
	intPort, extPort, remPort uint16
	proto                     uint8
	flags                     uint8
	state                     uint8 // TCP state (tcpState)
	aux                       uint8 // sticky per-session bits (auxInbound, ...)
	// mx (an owner with other sessions) bounds how long after expire the
	// mapping's last other session ends, in seconds (mxUnknown: beyond
	// what 16 bits hold); a zombie's expire is that end (the mapping's
	// timer, RFC 4787 §4.3) and its mx is 0.
	mx uint16
}

// mxUnknown is rec.mx when the end of an owner's other sessions lies more
// than 18 h after its own: the mapping then waits for the sweep.
const mxUnknown = 0xffff

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
	idxBits  = 27
	idxMask  = 1<<idxBits - 1
	whichBit = 1 << idxBits
	// A record index is slab<<slabBit | position: slab 0 or 1.
	slabBit  = 26
	slabMask = 1<<slabBit - 1
	// maxSlab is the largest slab (a multiple of 4 whose indices+1 fit
	// the index's 27 bits); maxRecords the most records the table holds.
	maxSlab    = 1<<slabBit - 4
	maxRecords = maxSlab
	// minSlab is the smallest slab (32 KiB).
	minSlab = 1 << 10
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
	// The slabs: s[cs] is current; while moving, s[cs^1] is being emptied
	// into it from position smig on. cnt counts each slab's used records.
	s       [2][]rec
	cs      uint32
	cnt     [2]int
	moving  bool
	smig    uint32
	scan    uint32 // where the search for a free record away from home resumes
	n       int    // records in use
	slabMin int    // the slab never shrinks below this

	slots []uint32
	shift uint8
	used  int // occupied slots of slots
	// While growing: the previous array, still complete (deletions apply
	// to both), and the migration cursor into it.
	old      []uint32
	oldShift uint8
	mig      uint32
	minBits  uint8 // the index never shrinks below 2^minBits slots
	k0       uint64
	k1       uint64
	mode     keyMode
	sink     uint32 // keeps Engine.Prefetch's loads
}

// indexMinBits sizes a new index (2^10 slots); tests lower it to exercise
// growth.
var indexMinBits = 10

// newTable returns a table whose index and slab hold expect sessions (two
// keys each) without growing.
func newTable(k0, k1 uint64, mode keyMode, expect int) *table {
	t := &table{k0: k0 | 1, k1: k1 | 1, mode: mode}
	b := indexMinBits
	for 1<<b < 4*expect+4 {
		b++
	}
	t.slots = makeSlots(1 << b)
	t.shift = uint8(64 - b)
	t.minBits = uint8(b)
	t.slabMin = slabFor(2*expect, minSlab)
	t.s[0] = makeSlab(t.slabMin)
	return t
}

// slabFor returns the slab size (a power of two, at least floor, at most
// maxSlab) for n records.
func slabFor(n, floor int) int {
	s := floor
	for s < n && s < maxSlab {
		s *= 2
	}
	return min(s, maxSlab)
}

// makeSlab allocates a slab of n records starting on a 64-byte boundary
// (so that each pair of records shares one cache line), backed by huge
// pages where the OS offers them.
func makeSlab(n int) []rec {
	raw := make([]rec, n+1)
	off := (uintptr(unsafe.Pointer(&raw[0])) & 63) / 32 // 0 or 1 record
	s := raw[off : off+uintptr(n) : off+uintptr(n)]
	hugepage.Advise(unsafe.Pointer(&s[0]), n*int(unsafe.Sizeof(rec{})))
	return s
}

func (t *table) at(i uint32) *rec { return &t.s[i>>slabBit][i&slabMask] }

func (t *table) hash(k key) uint64 {
	hi, lo := bits.Mul64(k.w0^t.k0, k.w1^t.k1)
	h := hi ^ lo
	hi, lo = bits.Mul64(h^0x9e3779b97f4a7c15, t.k0^k.w1)
	return hi ^ lo
}

// homeOf returns the first position of the home line (two records) that
// hash h picks in a slab of n records; its neighbour is at home^2.
func homeOf(h uint64, n int) uint32 {
	return uint32((h>>32)*uint64(n/2)>>32) * 2
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

// kind0 returns the kind of record r's key 0, the key that places it.
func kind0(r *rec) uint8 {
	switch {
	case r.flags&fOwner != 0:
		return kMapOut
	case r.flags&fFilter != 0:
		return kFilt
	default:
		return kOut
	}
}

// isKey0 reports whether keys of this kind place records (see kind0).
func isKey0(kind uint8) bool { return kind == kMapOut || kind == kOut || kind == kFilt }

// find returns the index+1 of the record with key k, or 0. A key 0 is
// looked for in its home line pair first; every key is in the index.
func (t *table) find(k key) uint32 {
	h := t.hash(k)
	if kind := uint8(k.w1); isKey0(kind) {
		if i := t.atHome(h, k, kind); i != 0 {
			return i
		}
	}
	return t.findIndexed(h, k)
}

// atHome returns the index+1 of the record with key 0 k (of the given
// kind, hash h) when it is in its home pair of the current slab, else 0.
func (t *table) atHome(h uint64, k key, kind uint8) uint32 {
	c := t.cs
	sl := t.s[c]
	p := homeOf(h, len(sl))
	for _, q := range [4]uint32{p, p + 1, p ^ 2, p ^ 2 + 1} {
		r := &sl[q]
		if r.flags&fUsed != 0 && kind0(r) == kind && t.keyOf(r, kind) == k {
			return c<<slabBit | q + 1
		}
	}
	return 0
}

// findIndexed is find through the index alone. While the index grows,
// keys not yet moved are found in the old array.
func (t *table) findIndexed(h uint64, k key) uint32 {
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

// insert stores record v (flags include fUsed) in the current slab, at
// home when there is room, indexes its keys and returns its index; false
// when the table is full. It moves no other record.
func (t *table) insert(v rec) (uint32, bool) {
	if t.n >= maxRecords {
		return 0, false
	}
	if cur := len(t.s[t.cs]); 2*(t.cnt[t.cs]+1) > cur {
		switch {
		case !t.moving && cur < maxSlab:
			t.startMove(min(2*cur, maxSlab))
		case t.moving && len(t.s[t.cs^1]) > cur:
			// A shrink the table outgrew: empty the small slab into the
			// large one instead.
			t.cs ^= 1
			t.smig, t.scan = 0, 0
		}
	}
	i, ok := t.place(t.hash(t.keyOf(&v, kind0(&v))), true)
	if !ok {
		return 0, false
	}
	*t.at(i) = v
	t.n++
	t.cnt[i>>slabBit]++
	t.index(i)
	return i, true
}

// place returns a free record for a record whose key 0 has hash h: in its
// home pair of the current slab if one is free, else the next free one
// the scan finds there; when the current slab is full and other is true,
// a free one of the slab being emptied, at or after its move cursor.
func (t *table) place(h uint64, other bool) (uint32, bool) {
	c := t.cs
	if sl := t.s[c]; t.cnt[c] < len(sl) {
		p := homeOf(h, len(sl))
		for _, q := range [4]uint32{p, p + 1, p ^ 2, p ^ 2 + 1} {
			if sl[q].flags == 0 {
				return c<<slabBit | q, true
			}
		}
		for {
			q := t.scan
			if t.scan++; int(t.scan) == len(sl) {
				t.scan = 0
			}
			if sl[q].flags == 0 {
				return c<<slabBit | q, true
			}
		}
	}
	if o := c ^ 1; other && t.moving {
		sl := t.s[o]
		for q := t.smig; int(q) < len(sl); q++ {
			if sl[q].flags == 0 {
				return o<<slabBit | q, true
			}
		}
	}
	return 0, false
}

// release frees record i (already unindexed).
func (t *table) release(i uint32) {
	*t.at(i) = rec{}
	t.n--
	t.cnt[i>>slabBit]--
}

// startMove makes a new slab of n records current; the records of the
// previous one move into it (settle).
func (t *table) startMove(n int) {
	o := t.cs ^ 1
	t.s[o] = makeSlab(n)
	t.cnt[o] = 0
	t.cs = o
	t.moving = true
	t.smig, t.scan = 0, 0
}

// settleStep is how many records each Outbound and Inbound call moves
// while the slab resizes: more than the records one call can create, so
// a doubling is done long before the new slab is half full.
const settleStep = 8

// settle moves up to n records of the slab being emptied into their home
// lines of the current one (looking at up to 64 n positions), and
// releases the old slab once it is empty. Callers hold no record index.
func (t *table) settle(n int) {
	if !t.moving {
		return
	}
	o := t.cs ^ 1
	sl := t.s[o]
	for budget := 64 * n; budget > 0; budget-- {
		if t.cnt[o] == 0 || int(t.smig) >= len(sl) {
			t.s[o], t.cnt[o], t.moving, t.smig = nil, 0, false, 0
			return
		}
		r := &sl[t.smig]
		if r.flags == 0 {
			t.smig++
			continue
		}
		v := *r
		i, ok := t.place(t.hash(t.keyOf(&v, kind0(&v))), false)
		if !ok {
			return // the current slab is full; insert turns the move round
		}
		j := o<<slabBit | t.smig
		*t.at(i) = v
		*r = rec{}
		t.cnt[o]--
		t.cnt[t.cs]++
		// The keys stay the same: their slots are rewritten in place.
		k0, k1, two := kindsOf(&v)
		t.reslot(t.keyOf(&v, k0), j+1, i+1)
		if two {
			t.reslot(t.keyOf(&v, k1), (j+1)|whichBit, (i+1)|whichBit)
		}
		t.smig++
		budget -= 63 // a move costs as much as 64 looks
		if n--; n == 0 {
			return
		}
	}
}

// reslot rewrites the slot of key k with value from (index+1 and which
// bit) to value to, in both index arrays while the index moves (the old
// one is complete until it is dropped).
func (t *table) reslot(k key, from, to uint32) {
	h := t.hash(k)
	reslotIn(t.slots, t.shift, h, from, to)
	if t.old != nil {
		reslotIn(t.old, t.oldShift, h, from, to)
	}
}

func reslotIn(slots []uint32, shift uint8, h uint64, from, to uint32) {
	mask := uint32(len(slots) - 1)
	for pos := uint32(h>>shift) & mask; slots[pos] != 0; pos = (pos + 1) & mask {
		if slots[pos]&0x0fffffff == from {
			slots[pos] = slots[pos]&0xf0000000 | to
			return
		}
	}
}

// span returns the number of record positions (both slabs) and nth the
// index of position c < span(): ExpireSome's and Flush's sweep order.
func (t *table) span() uint32 { return uint32(len(t.s[0]) + len(t.s[1])) }

func (t *table) nth(c uint32) uint32 {
	if n0 := uint32(len(t.s[0])); c >= n0 {
		return 1<<slabBit | (c - n0)
	}
	return c
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
// a growth or shrink, starting a shrink of the index or the slab, and
// moving records of a slab resize (at most maxMoveStep).
func (t *table) maintain(n int) {
	t.migrate(n)
	if t.old == nil && t.used*8 < len(t.slots) && len(t.slots) > 1<<t.minBits {
		t.startShrink()
		t.migrate(n)
	}
	if cur := len(t.s[t.cs]); !t.moving && cur > t.slabMin && t.n*8 < cur {
		if s := slabFor(4*t.n, t.slabMin); s < cur {
			t.startMove(s)
		}
	}
	t.settle(min(n, maxMoveStep))
}

// maxMoveStep bounds the records maintain moves per call (a move is a
// copy and two slot rewrites, about 0.1 µs on a large table).
const maxMoveStep = 1 << 15

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

// memBytes returns the bytes held by the table's arrays.
func (t *table) memBytes() int {
	return (len(t.s[0])+len(t.s[1]))*int(unsafe.Sizeof(rec{})) + (len(t.slots)+len(t.old))*4
}

// check verifies the slabs and the index (for tests): every key of every
// used record is found, through the index and by find, counts agree, the
// slab being emptied holds nothing before its move cursor, and no slot is
// stale.
func (t *table) check() error {
	want, total := 0, 0
	for c := range t.s {
		used := 0
		for j := range t.s[c] {
			r := &t.s[c][j]
			if r.flags == 0 {
				continue
			}
			if r.flags&fUsed == 0 {
				return fmt.Errorf("record %d/%d has flags %#x without fUsed", c, j, r.flags)
			}
			used++
			if t.moving && uint32(c) != t.cs && uint32(j) < t.smig {
				return fmt.Errorf("record %d/%d behind the move cursor %d", c, j, t.smig)
			}
			i := uint32(c)<<slabBit | uint32(j) + 1
			k0, k1, two := kindsOf(r)
			key := t.keyOf(r, k0)
			h := t.hash(key)
			if got := t.findIndexed(h, key); got != i {
				return fmt.Errorf("record %d key %d in the index as %d", i-1, k0, got)
			}
			if got := t.atHome(h, key, k0); got != 0 && got != i {
				return fmt.Errorf("record %d key %d found at home as %d", i-1, k0, got)
			}
			want++
			if two {
				key = t.keyOf(r, k1)
				if got := t.findIndexed(t.hash(key), key); got != i {
					return fmt.Errorf("record %d key %d in the index as %d", i-1, k1, got)
				}
				want++
			}
		}
		if used != t.cnt[c] {
			return fmt.Errorf("slab %d: %d records used, %d counted", c, used, t.cnt[c])
		}
		if !t.moving && uint32(c) != t.cs && (used != 0 || t.s[c] != nil) {
			return fmt.Errorf("slab %d kept (%d records) while not moving", c, used)
		}
		total += used
	}
	if total != t.n {
		return fmt.Errorf("%d records used, %d counted", total, t.n)
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

// slotRecord returns the record the first slot with tag tag at or after
// pos (within 4 slots) points to, nil if none: the second half of a
// prefetch.
func (t *table) slotRecord(pos, tag uint32) *rec {
	mask := uint32(len(t.slots) - 1)
	for n := 0; n < 4; n++ {
		s := t.slots[pos]
		if s == 0 {
			return nil
		}
		if s&0xf0000000 == tag {
			return t.at(s&idxMask - 1)
		}
		pos = (pos + 1) & mask
	}
	return nil
}
