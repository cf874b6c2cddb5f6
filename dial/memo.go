package dial

import (
	"time"
)

// memoTTL is how long a port found taken by another socket (another
// process, or another Dialer) stays fresh in the memo toward a destination:
// between memoTTL/2 and memoTTL after it was last found taken. Then it is
// stale: a search may re-probe up to memoReprobe stale ports before it
// passes over the rest, so that the expiry of many marks at once costs no
// dial more than a few extra tries.
const (
	memoTTL     = 5 * time.Second
	memoReprobe = 4
)

// memoBudget bounds the bytes of all memo bitmaps of one Dialer; the
// number of destinations memoised at once is this over one memo's size,
// at least memoMinKeys.
const (
	memoBudget  = 4 << 20
	memoMinKeys = 16
)

// takenMemo remembers which indices of the port set were found taken by
// others toward one (protocol, source, destination), in generations of
// memoTTL/2: cur holds the indices marked since start, prev those marked
// in the half period before, stale those marked earlier. The first pass of
// a search skips fresh (cur, prev) indices without a syscall and re-probes
// at most memoReprobe stale ones; the retry passes before exhaustion try
// the older ones (prev, stale) first.
type takenMemo struct {
	start            time.Time // when cur began
	cur, prev, stale []uint64
}

// advance rotates the generations up to now.
func (m *takenMemo) advance(now time.Time) {
	const half = memoTTL / 2
	for i := 0; now.Sub(m.start) >= half; i++ {
		if i == 2 {
			// cur and prev are empty now; restart the clock.
			m.start = now
			break
		}
		for w := range m.stale {
			m.stale[w] |= m.prev[w]
		}
		m.prev, m.cur = m.cur, m.prev
		clear(m.cur)
		m.start = m.start.Add(half)
	}
}

func (m *takenMemo) mark(i uint32) {
	m.cur[i/64] |= 1 << (i % 64)
	m.prev[i/64] &^= 1 << (i % 64)
	m.stale[i/64] &^= 1 << (i % 64)
}

func (m *takenMemo) unmark(i uint32) {
	m.cur[i/64] &^= 1 << (i % 64)
	m.prev[i/64] &^= 1 << (i % 64)
	m.stale[i/64] &^= 1 << (i % 64)
}

// fresh reports whether idx is memoised and not stale.
func (m *takenMemo) fresh(i uint32) bool {
	return (m.cur[i/64]|m.prev[i/64])&(1<<(i%64)) != 0
}

func (m *takenMemo) isStale(i uint32) bool {
	return m != nil && m.stale[i/64]&(1<<(i%64)) != 0
}

// memoMode says which indices a walk over the hold set passes over besides
// the held ones.
type memoMode uint8

const (
	skipFresh memoMode = iota // pass over fresh indices (the first walk, while it may re-probe stale ones)
	skipMemo                  // pass over every memoised index (the first walk, re-probes used up)
	onlyOld                   // visit only indices of the older generations (the first retry walk)
	skipNone                  // visit every index not held (the last walk)
)

// blocked returns the bits of word w that mode passes over.
func (m *takenMemo) blocked(w uint32, mode memoMode) uint64 {
	switch mode {
	case skipFresh:
		if m == nil {
			return 0
		}
		return m.cur[w] | m.prev[w]
	case skipMemo:
		if m == nil {
			return 0
		}
		return m.cur[w] | m.prev[w] | m.stale[w]
	case onlyOld:
		if m == nil {
			return ^uint64(0)
		}
		return ^(m.prev[w] | m.stale[w])
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
		limit := max(memoBudget/(24*int(words)), memoMinKeys)
		if len(s.taken) >= limit {
			s.evictMemoLocked()
		}
		m = &takenMemo{start: s.now(), cur: make([]uint64, words), prev: make([]uint64, words), stale: make([]uint64, words)}
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

// memoised reports whether idx is freshly memoised as taken toward k (for
// tests).
func (s *selector) memoised(k holdKey, idx uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.memoLocked(k)
	return m != nil && m.fresh(idx)
}
