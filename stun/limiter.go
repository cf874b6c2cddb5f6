package stun

import (
	"encoding/binary"
	"net/netip"
	"sync"
)

// limiterSlots is the size of the rate limiter's table. Clients whose
// addresses hash to one slot share its budget: a collision makes the limit
// stricter, never looser.
const (
	limiterSlots  = 1 << 14
	limiterShards = 64
)

// limiter is a per-client-address token bucket (requests per second with a
// burst) over a fixed table, so checking it allocates nothing. Time is
// passed in as Unix nanoseconds.
type limiter struct {
	rate   float64 // tokens per nanosecond
	burst  float64
	seed   uint64
	shards [limiterShards]sync.Mutex
	slots  [limiterSlots]bucket
}

type bucket struct {
	tokens float64
	last   int64
}

func newLimiter(perSecond float64, burst int, seed uint64) *limiter {
	return &limiter{rate: perSecond / 1e9, burst: float64(burst), seed: seed}
}

// allow takes one token from a's bucket at time now and reports whether
// there was one.
func (l *limiter) allow(a netip.Addr, now int64) bool {
	i := l.slot(a)
	mu := &l.shards[i%limiterShards]
	mu.Lock()
	b := &l.slots[i]
	if b.last == 0 {
		b.tokens = l.burst
	} else if d := now - b.last; d > 0 {
		b.tokens += float64(d) * l.rate
		if b.tokens > l.burst {
			b.tokens = l.burst
		}
	}
	b.last = now
	ok := b.tokens >= 1
	if ok {
		b.tokens--
	}
	mu.Unlock()
	return ok
}

func (l *limiter) slot(a netip.Addr) uint32 {
	v := a.Unmap().As16()
	h := l.seed ^ 0x9e3779b97f4a7c15
	for _, w := range [2]uint64{binary.LittleEndian.Uint64(v[:8]), binary.LittleEndian.Uint64(v[8:])} {
		h ^= w
		h *= 0xff51afd7ed558ccd
		h ^= h >> 33
	}
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return uint32(h % limiterSlots)
}
