package dial

import (
	"time"
)

// memoTTL is how long a port found taken by another socket (another
// process, or another Dialer) stays memoised toward a destination: between
// memoTTL/2 and memoTTL after it was last found taken.
const memoTTL = 5 * time.Second

// memoBudget bounds the bytes of all memo bitmaps of one Dialer; the
// number of destinations memoised at once is this over one memo's size,
// at least memoMinKeys.
const (
	memoBudget  = 4 << 20
	memoMinKeys = 16
)

// takenMemo remembers which indices of the port set were found taken by
// others toward one (protocol, source, destination), in two generations of
// memoTTL/2 each: cur holds the indices marked since start, prev those
// marked in the half period before. A generation that ends is dropped, so
// a mark expires after memoTTL at most. The search skips memoised indices
// without a syscall and retries them (prev first: oldest first) only
// before reporting exhaustion.
type takenMemo struct {
	start     time.Time // when cur began
	cur, prev []uint64
}

// advance rotates the generations up to now.
func (m *takenMemo) advance(now time.Time) {
	const half = memoTTL / 2
	for i := 0; now.Sub(m.start) >= half; i++ {
		if i == 2 {
			// Both generations are empty now; restart the clock.
			m.start = now
			break
		}
		m.prev, m.cur = m.cur, m.prev
		clear(m.cur)
		m.start = m.start.Add(half)
	}
}

func (m *takenMemo) mark(i uint32) {
	m.cur[i/64] |= 1 << (i % 64)
	m.prev[i/64] &^= 1 << (i % 64)
}

func (m *takenMemo) unmark(i uint32) {
	m.cur[i/64] &^= 1 << (i % 64)
	m.prev[i/64] &^= 1 << (i % 64)
}

func (m *takenMemo) has(i uint32) bool {
	return (m.cur[i/64]|m.prev[i/64])&(1<<(i%64)) != 0
}

// memoMode says which indices a walk over the hold set passes over besides
// the held ones.
type memoMode uint8

const (
	skipMemo memoMode = iota // pass over every memoised index (the first walk)
	onlyPrev                 // visit only indices of the older generation (the first retry walk)
	skipPrev                 // pass over the older generation (the last walk: the newer generation and the rest)
	skipNone                 // visit every index not held (the last walk, when the memo changed meanwhile)
)

// blocked returns the bits of word w that mode passes over.
func (m *takenMemo) blocked(w uint32, mode memoMode) uint64 {
	switch mode {
	case skipMemo:
		if m == nil {
			return 0
		}
		return m.cur[w] | m.prev[w]
	case onlyPrev:
		if m == nil {
			return ^uint64(0)
		}
		return ^m.prev[w]
	}
	return 0
}

// memoLocked returns k's memo advanced to now, or nil.
func (s *selector) memoLocked(k holdKey) *takenMemo {
	if len(s.taken) == 0 {
		return nil
	}
	m := s.taken[k]
	if m != nil {
		m.advance(s.now())
	}
	return m
}

// markTakenLocked memoises idx as taken toward k, creating the memo
// (evicting another destination's when the budget is reached).
func (s *selector) markTakenLocked(k holdKey, idx, size uint32) {
	m := s.memoLocked(k)
	if m == nil {
		words := (size + 63) / 64
		limit := max(memoBudget/(16*int(words)), memoMinKeys)
		if len(s.taken) >= limit {
			s.evictMemoLocked()
		}
		m = &takenMemo{start: s.now(), cur: make([]uint64, words), prev: make([]uint64, words)}
		s.taken[k] = m
	}
	m.mark(idx)
}

// evictMemoLocked drops one memo: the stalest among a few, which Go's map
// order makes a sample.
func (s *selector) evictMemoLocked() {
	var victim holdKey
	var oldest time.Time
	n := 0
	for k, m := range s.taken {
		if n == 0 || m.start.Before(oldest) {
			victim, oldest = k, m.start
		}
		if n++; n == 8 {
			break
		}
	}
	delete(s.taken, victim)
}

// memoised reports whether idx is memoised as taken toward k (for tests).
func (s *selector) memoised(k holdKey, idx uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.memoLocked(k)
	return m != nil && m.has(idx)
}
