package portalloc

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkGetPut measures one Get plus one Put (the pool's fill level stays
// constant) on an empty pool and on a pool 99% full, for each algorithm.
//
//	go test -run '^$' -bench GetPut -count 5 ./portalloc
func BenchmarkGetPut(b *testing.B) {
	for _, fill := range []float64{0, 0.99} {
		for _, alg := range []Algorithm{KeyedHash, SimpleRandom, RandomAlt, DoubleHash, RandomIncrements} {
			b.Run(fmt.Sprintf("fill=%v/%v", fill, alg), func(b *testing.B) {
				a := mustNew(b, Config{Algorithm: alg, Parity: true})
				n := int(fill * 64512)
				for i := 0; i < n; i++ {
					r := netip.AddrPortFrom(remote.Addr(), uint16(i))
					if _, err := a.Get(sub2, uint16(1024+i), r, t0); err != nil {
						b.Fatal(err)
					}
				}
				a.Get(sub1, 40000, remote, t0)
				b.ReportAllocs()
				b.ResetTimer()
				c0 := cpuNanos()
				for i := 0; i < b.N; i++ {
					r := netip.AddrPortFrom(remote.Addr(), uint16(i))
					l, err := a.Get(sub1, uint16(1024+i%60000), r, t0)
					if err != nil {
						b.Fatal(err)
					}
					a.Put(sub1, l.Ext, t0)
				}
				if c := cpuNanos() - c0; c > 0 {
					b.ReportMetric(float64(c)/float64(b.N), "cpu-ns/op")
				}
			})
		}
	}
}

// BenchmarkGetPutBlocks measures Get+Put with 512-port blocks (RFC 6888).
func BenchmarkGetPutBlocks(b *testing.B) {
	a := mustNew(b, Config{BlockSize: 512})
	a.Get(sub1, 40000, remote, t0)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		l, err := a.Get(sub1, 40000, remote, t0)
		if err != nil {
			b.Fatal(err)
		}
		a.Put(sub1, l.Ext, t0)
	}
}
