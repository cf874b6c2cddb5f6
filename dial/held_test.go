package dial

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/portspace/portspace/tuple"
)

// TestHoldSetNextFree compares both representations of holdSet with a
// plain map over random operations.
func TestHoldSetNextFree(t *testing.T) {
	for _, size := range []uint32{1, 10, 64, 65, 130, 20000} {
		rng := rand.New(rand.NewPCG(uint64(size), 1))
		h := newHoldSet(size, 0)
		ref := map[uint32]bool{}
		for range 3000 {
			i := rng.Uint32N(size)
			if ref[i] {
				h.del(i)
				delete(ref, i)
			} else if rng.IntN(3) > 0 {
				h.add(i, size)
				ref[i] = true
			}
			from, limit := rng.Uint32N(size), 1+rng.Uint32N(size)
			want, wantSkip, wantOK := uint32(0), uint32(0), false
			for k := uint32(0); k < limit; k++ {
				j := (from + k) % size
				if !ref[j] {
					want, wantSkip, wantOK = j, k, true
					break
				}
				wantSkip = k + 1
			}
			got, skip, ok := h.nextFree(from, limit, size, nil, skipMemo, nil)
			if ok != wantOK || (ok && (got != want || skip != wantSkip)) || (!ok && skip != limit) {
				t.Fatalf("size %d, held %d: nextFree(%d, %d) = %d, %d, %v; want %d, %d, %v", size, len(ref), from, limit, got, skip, ok, want, wantSkip, wantOK)
			}
			if h.n != len(ref) {
				t.Fatalf("count %d, want %d", h.n, len(ref))
			}
		}
	}
}

// TestSelectorCoversSet checks that one search visits every index exactly
// once when nothing succeeds, starting from the keyed hash.
func TestSelectorCoversSet(t *testing.T) {
	s := newSelector()
	k := holdKey{proto: tuple.TCP, src: netip.MustParseAddr("127.0.0.1"), dst: netip.MustParseAddrPort("127.0.1.1:80")}
	sr := search{key: k, size: 10}
	seen := map[uint32]bool{}
	for {
		idx, ok := s.pick(&sr)
		if !ok {
			break
		}
		if seen[idx] {
			t.Fatalf("index %d picked twice", idx)
		}
		seen[idx] = true
		s.settle(&sr, idx, false)
	}
	if len(seen) != 10 {
		t.Fatalf("search covered %d of 10 indices", len(seen))
	}
	if s.holding(k) != 0 || len(s.held) != 0 {
		t.Fatal("failed attempts left state behind")
	}
}

// TestSelectorSpreadsDestinations checks that the keyed hash gives
// different destinations different starting ports (RFC 6056 §3.3.3).
func TestSelectorSpreadsDestinations(t *testing.T) {
	s := newSelector()
	starts := map[uint32]int{}
	for i := range 64 {
		sr := search{key: holdKey{proto: tuple.TCP, src: netip.MustParseAddr("127.0.0.1"), dst: netip.AddrPortFrom(v4dst(i+1), 80)}, size: 1000}
		idx, _ := s.pick(&sr)
		starts[idx]++
		s.settle(&sr, idx, false)
	}
	if len(starts) < 48 {
		t.Fatalf("64 destinations started on only %d distinct ports", len(starts))
	}
}

// TestSelectorAllocs pins the port-selection step (pick and settle toward a
// destination the Dialer already holds ports for) at zero allocations.
func TestSelectorAllocs(t *testing.T) {
	s := newSelector()
	for _, size := range []uint32{1000, 60000} {
		k := holdKey{proto: tuple.UDP, src: netip.MustParseAddr("fd00::2:1"), dst: netip.MustParseAddrPort("[fd00::1:1]:443")}
		first := search{key: k, size: size}
		held, _ := s.pick(&first)
		s.settle(&first, held, true)
		allocs := testing.AllocsPerRun(1000, func() {
			sr := search{key: k, size: size}
			idx, ok := s.pick(&sr)
			if !ok {
				panic("no index")
			}
			s.settle(&sr, idx, false)
		})
		if allocs != 0 {
			t.Errorf("size %d: port selection allocates %.1f times per dial", size, allocs)
		}
		s.release(k, held)
	}
}
