package nat

import (
	"net/netip"
	"testing"
)

// TestIsExternalSet: the external-address set answers for every pool
// size, with addresses inside the pool's range that are not in it, the
// range's neighbours and 0.0.0.0 refused.
func TestIsExternalSet(t *testing.T) {
	for _, n := range []int{1, 2, 7, 9, 256, 1000} {
		var ext []netip.Addr
		in := map[uint32]bool{}
		a := netip.MustParseAddr("198.18.0.1")
		for range n {
			ext = append(ext, a)
			in[u4(a)] = true
			a = a.Next().Next().Next() // gaps inside the range
		}
		e := newEngine(t, Config{External: ext, Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Seed: 1})
		lo, hi := u4(ext[0]), u4(ext[n-1])
		for x := lo - 3; x <= hi+3; x++ {
			if got := e.isExternal(x); got != in[x] {
				t.Fatalf("%d addresses: isExternal(%v) = %v", n, a4(x), got)
			}
		}
		if e.isExternal(0) || e.isExternal(^uint32(0)) {
			t.Fatalf("%d addresses: 0.0.0.0 or 255.255.255.255 external", n)
		}
	}
}
