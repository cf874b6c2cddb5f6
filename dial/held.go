package dial

import (
	"math/bits"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/portspace/portspace/portalloc"
	"github.com/portspace/portspace/tuple"
)

// holdKey names one (protocol, source, destination): the ports a Dialer holds
// toward one destination from one source. Ports are shared freely across
// different keys; that is the point of 4-tuple reuse.
type holdKey struct {
	proto tuple.Proto
	src   netip.Addr
	dst   netip.AddrPort
}

// holdSet is the set of port-set indices this Dialer holds (or is trying)
// for one key, plus the search cursor. Small sets are a bitmap; for large
// port sets it starts as a sorted slice and becomes a bitmap when it grows,
// so a destination with a few connections costs a few bytes.
type holdSet struct {
	n     int
	next  uint32   // where the next search starts (RFC 6056 §3.3.4-style per-destination counter)
	small []uint32 // sorted held indices while bits is nil
	bits  []uint64
}

const (
	bitmapAlways = 8192 // port sets up to this size always use a bitmap (1 KiB)
	smallMax     = 256  // a sorted slice grows to this many entries, then becomes a bitmap
)

func newHoldSet(size, start uint32) *holdSet {
	h := &holdSet{next: start}
	if size <= bitmapAlways {
		h.bits = make([]uint64, (size+63)/64)
	}
	return h
}

func (h *holdSet) has(i uint32) bool {
	if h.bits != nil {
		return h.bits[i/64]&(1<<(i%64)) != 0
	}
	_, ok := slices.BinarySearch(h.small, i)
	return ok
}

func (h *holdSet) add(i uint32, size uint32) {
	if h.bits == nil && len(h.small) >= smallMax {
		h.bits = make([]uint64, (size+63)/64)
		for _, j := range h.small {
			h.bits[j/64] |= 1 << (j % 64)
		}
		h.small = nil
	}
	h.n++
	if h.bits != nil {
		h.bits[i/64] |= 1 << (i % 64)
		return
	}
	k, _ := slices.BinarySearch(h.small, i)
	h.small = slices.Insert(h.small, k, i)
}

func (h *holdSet) del(i uint32) {
	h.n--
	if h.bits != nil {
		h.bits[i/64] &^= 1 << (i % 64)
		return
	}
	if k, ok := slices.BinarySearch(h.small, i); ok {
		h.small = slices.Delete(h.small, k, k+1)
	}
}

// nextFree returns the first index not held, not passed over by mode of
// memo m (which may be nil) and not in the bitmap skip (which may be nil),
// among the limit indices that start at from
// and wrap at size, and how many indices it passed over.
func (h *holdSet) nextFree(from, limit, size uint32, m *takenMemo, mode memoMode, skip []uint64) (idx, skipped uint32, ok bool) {
	i := from
	if h.bits != nil {
		for skipped < limit {
			w, b := i/64, i%64
			span := 64 - b
			if size-i < span {
				span = size - i
			}
			if limit-skipped < span {
				span = limit - skipped
			}
			blocked := h.bits[w] | m.blocked(w, mode)
			if skip != nil {
				blocked |= skip[w]
			}
			if free := ^blocked >> b; free != 0 {
				if tz := uint32(bits.TrailingZeros64(free)); tz < span {
					return i + tz, skipped + tz, true
				}
			}
			skipped += span
			if i += span; i == size {
				i = 0
			}
		}
		return 0, skipped, false
	}
	k, _ := slices.BinarySearch(h.small, i)
	for skipped < limit {
		held := k < len(h.small) && h.small[k] == i
		if held {
			k++
		} else if m.blocked(i/64, mode)&(1<<(i%64)) == 0 && (skip == nil || skip[i/64]&(1<<(i%64)) == 0) {
			return i, skipped, true
		}
		skipped++
		if i++; i == size {
			i, k = 0, 0
		}
	}
	return 0, skipped, false
}

// selector keeps a Dialer's hold sets. Its methods are the port-selection
// step; once a destination has an entry they do not allocate.
type selector struct {
	secret portalloc.Secret
	now    func() time.Time // the clock of the taken-port memo (a seam for tests)
	mu     sync.Mutex
	held   map[holdKey]*holdSet
	taken  map[holdKey]*takenMemo // ports found taken by others, per key (bounded)
}

func newSelector() *selector {
	return &selector{secret: portalloc.NewSecret(), now: time.Now, held: make(map[holdKey]*holdSet), taken: make(map[holdKey]*takenMemo)}
}

// offset is the keyed hash F(source, destination address, destination port,
// secret) of RFC 6056 §3.3.3 (Algorithm 3), portalloc.Offset (SipHash-2-4
// under a per-Dialer random secret): it spreads the starting points of
// different destinations over the port set, so that searches toward
// different destinations do not all begin on the same ports, and an
// outsider cannot predict them. The protocol is folded into the source
// address's hash input by toggling a bit of the secret.
func (s *selector) offset(k holdKey) uint64 {
	secret := s.secret
	secret[15] ^= byte(k.proto)
	return uint64(portalloc.Offset(secret, k.src, k.dst))
}

// search is one dial's walk over the port set for one key. The walk has
// up to three passes, each over the whole set from the same start: first
// the indices neither held nor memoised as taken by others (and at most
// memoReprobe whose mark is stale); then, only when that pass found
// nothing free, the memoised ones of the older generations (oldest
// first); then every index not held that this search has not tried yet. So every index not held by this Dialer is tried
// before exhaustion is reported, and none twice.
type search struct {
	key      holdKey
	size     uint32
	start    uint32
	pos      uint32
	left     uint32
	started  bool
	pass     uint8
	reprobes uint8    // stale memoised indices tried in the first pass
	tried    []uint32 // indices found taken in the first pass
	skip     []uint64 // retry passes: the indices this search has tried
}

// pick reserves the next index of the walk and returns it, or false when
// the walk has covered the whole set.
func (s *selector) pick(sr *search) (uint32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.holdSetLocked(sr)
	m := s.memoLocked(sr.key)
	if !sr.started {
		sr.started, sr.start, sr.left = true, h.next%sr.size, sr.size
		sr.pos = sr.start
	}
	for {
		mode := skipFresh
		switch {
		case sr.pass == 0 && sr.reprobes >= memoReprobe:
			mode = skipMemo
		case sr.pass == 1:
			mode = onlyOld
		case sr.pass == 2:
			mode = skipNone
		}
		idx, skipped, ok := h.nextFree(sr.pos, sr.left, sr.size, m, mode, sr.skip)
		if ok {
			if sr.pass == 0 && m.isStale(idx) {
				sr.reprobes++
			}
			h.add(idx, sr.size)
			sr.left -= skipped + 1
			if sr.pos = idx + 1; sr.pos == sr.size {
				sr.pos = 0
			}
			return idx, true
		}
		if sr.pass == 2 || sr.pass == 0 && m == nil {
			break
		}
		if sr.pass == 0 {
			// The slow path toward exhaustion: remember what the
			// first pass tried, so the last one does not try it again.
			sr.skip = make([]uint64, (sr.size+63)/64)
			for _, i := range sr.tried {
				sr.skip[i/64] |= 1 << (i % 64)
			}
			sr.tried = nil
		}
		sr.pass++
		sr.pos, sr.left = sr.start, sr.size
	}
	sr.left = 0
	if h.n == 0 {
		delete(s.held, sr.key)
	}
	return 0, false
}

// holdSetLocked returns sr's hold set, creating it (its cursor at the keyed
// hash) for a key with nothing held.
func (s *selector) holdSetLocked(sr *search) *holdSet {
	h := s.held[sr.key]
	if h == nil {
		h = newHoldSet(sr.size, uint32(s.offset(sr.key)%uint64(sr.size)))
		s.held[sr.key] = h
	}
	return h
}

// reserve reserves a specific index for sr's key (a retry of a busy port),
// or reports false when the Dialer already holds it.
func (s *selector) reserve(sr *search, idx uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.holdSetLocked(sr)
	if h.has(idx) {
		return false
	}
	h.add(idx, sr.size)
	return true
}

// settle records the outcome of trying idx: on success the Dialer keeps
// holding it and the next search toward this key starts after it; on failure
// the reservation is dropped.
func (s *selector) settle(sr *search, idx uint32, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.held[sr.key]
	if ok {
		h.next = sr.pos
		if m := s.memoLocked(sr.key); m != nil {
			m.unmark(idx)
		}
		return
	}
	s.releaseLocked(sr.key, h, idx)
}

// settleTaken records that idx is taken by another socket toward sr's
// key: the reservation is dropped and the index memoised, so that later
// searches pass over it without a syscall until the memo expires.
func (s *selector) settleTaken(sr *search, idx uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.markTakenLocked(sr.key, idx, sr.size)
	s.releaseLocked(sr.key, s.held[sr.key], idx)
	if sr.skip != nil {
		sr.skip[idx/64] |= 1 << (idx % 64)
	} else {
		sr.tried = append(sr.tried, idx)
	}
}

func (s *selector) releaseLocked(k holdKey, h *holdSet, idx uint32) {
	h.del(idx)
	if h.n == 0 {
		delete(s.held, k)
	}
}

// release drops a held index when its connection closes.
func (s *selector) release(k holdKey, idx uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.held[k]; h != nil && h.has(idx) {
		s.releaseLocked(k, h, idx)
	}
}

// holding reports how many indices the Dialer holds for k (for tests).
func (s *selector) holding(k holdKey) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.held[k]; h != nil {
		return h.n
	}
	return 0
}
