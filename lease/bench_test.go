package lease

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portspace/portspace/tuple"
)

// benchPool returns a pool of n slices (n = 100 or a multiple of 100):
// n/100 addresses of 100 slices of 640 ports each.
func benchPool(n int) Pool {
	p := Pool{Name: "bench", Ports: tuple.MustParsePortSet("1024-65023"), Slice: 640}
	for i := range n / 100 {
		p.Addrs = append(p.Addrs, netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}))
	}
	return p
}

// latencies records durations and reports percentiles.
type latencies []time.Duration

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	slices.Sort(l)
	q := func(f float64) float64 { return float64(l[int(f*float64(len(l)-1))]) / 1e6 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

// benchClaim measures one claim at a time (the release between claims is
// not timed; quarantine 0 so slices come back).
func benchClaim(b *testing.B, s Store, n int) {
	ctx := context.Background()
	p := benchPool(n)
	p.Quarantine = 0
	if err := s.Apply(ctx, []Pool{p}); err != nil {
		b.Fatal(err)
	}
	// Hold half the slices so that claims search a half-full pool (at most
	// ten fill claims per timed claim, so that -benchtime 1x stays quick).
	for i := range min(n/2, 10*b.N) {
		if _, err := s.Claim(ctx, Request{Holder: fmt.Sprint("fill", i%10), TTL: time.Hour}); err != nil {
			b.Fatal(err)
		}
	}
	lat := make(latencies, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		l, err := s.Claim(ctx, Request{Holder: fmt.Sprint("h", i%10), TTL: time.Hour})
		lat = append(lat, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := s.Release(ctx, l); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	lat.report(b)
}

// BenchmarkClaim measures claim latency against bolt and against a local
// three-member etcd cluster, with pools of 100 and 10,000 slices (half of
// them held). Run: go test -run '^$' -bench BenchmarkClaim ./lease/
func BenchmarkClaim(b *testing.B) {
	c := startEtcd(b, 3)
	for _, n := range []int{100, 10000} {
		b.Run(fmt.Sprintf("store=bolt/slices=%d", n), func(b *testing.B) {
			s, err := OpenBolt(context.Background(), filepath.Join(b.TempDir(), "leases.db"), BoltOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			benchClaim(b, s, n)
		})
		b.Run(fmt.Sprintf("store=etcd/slices=%d", n), func(b *testing.B) {
			benchClaim(b, openTestEtcd(b, c), n)
		})
	}
}

// claimAll runs claimers concurrent claims spread over stores and returns
// the results.
func claimAll(b *testing.B, stores []Store, claimers int, midway func()) []childResult {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		rs   []childResult
		done atomic.Int64
	)
	for i := range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			holder := fmt.Sprint("h", i)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			l, err := stores[i%len(stores)].Claim(ctx, Request{Holder: holder, TTL: time.Hour})
			r := childResult{Holder: holder, ID: l.ID, Token: l.Token}
			switch {
			case errors.Is(err, ErrNoSlice):
				r.NoSlice = true
			case err != nil:
				r.Err = err.Error()
			}
			mu.Lock()
			rs = append(rs, r)
			mu.Unlock()
			if done.Add(1) == int64(claimers/4) && midway != nil {
				midway()
			}
		}()
	}
	wg.Wait()
	return rs
}

// BenchmarkClaimers runs 1,000 concurrent claimers against a pool of 500
// slices: bolt from 4 processes (250 claimers each), etcd from 8 clients
// in one process, and etcd with its leader killed when a quarter of the
// claims are done. Each run checks exactly 500 grants, no slice twice.
// Run: PORTSPACE_BENCH_FULL=1 go test -run '^$' -bench BenchmarkClaimers -benchtime 1x ./lease/
// Without PORTSPACE_BENCH_FULL (make test's one-iteration smoke run) the
// scale is a tenth: 100 claimers against 50 slices.
func BenchmarkClaimers(b *testing.B) {
	claimers, nslices := 100, 50
	if os.Getenv("PORTSPACE_BENCH_FULL") != "" {
		claimers, nslices = 1000, 500
	}
	p := benchPool(100) // one address, 64,000 ports
	p.Slice = 64000 / nslices
	p.Quarantine = time.Minute
	b.Run("store=bolt/procs=4", func(b *testing.B) {
		for range b.N {
			path := filepath.Join(b.TempDir(), "leases.db")
			s, err := OpenBolt(context.Background(), path, BoltOptions{})
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Apply(context.Background(), []Pool{p}); err != nil {
				b.Fatal(err)
			}
			s.Close()
			t0 := time.Now()
			rs := runClaimers(b, path, 4, claimers/4)
			b.ReportMetric(time.Since(t0).Seconds(), "s/run")
			checkExactlyOnce(b, rs, claimers, nslices)
		}
	})
	for _, kill := range []bool{false, true} {
		b.Run(fmt.Sprintf("store=etcd/leader-killed=%v", kill), func(b *testing.B) {
			for range b.N {
				c := startEtcd(b, 3)
				var stores []Store
				for range 8 {
					s, err := Open(context.Background(), c.URL("bench"))
					if err != nil {
						b.Fatal(err)
					}
					defer s.Close()
					stores = append(stores, s)
				}
				if err := stores[0].Apply(context.Background(), []Pool{p}); err != nil {
					b.Fatal(err)
				}
				var midway func()
				if kill {
					midway = func() {
						if ld := c.Leader(); ld >= 0 {
							c.Kill(ld)
						} else {
							b.Error("no leader to kill")
						}
					}
				}
				t0 := time.Now()
				rs := claimAll(b, stores, claimers, midway)
				b.ReportMetric(time.Since(t0).Seconds(), "s/run")
				checkExactlyOnce(b, rs, claimers, nslices)
			}
		})
	}
}

// BenchmarkClaimScale claims alternately from a store with a 100-slice
// pool and one with a 10,000-slice pool (half held in each), so that both
// see the same machine load, and reports both p50s and their ratio (the
// target: at most 2). Run:
// go test -run '^$' -bench BenchmarkClaimScale -benchtime 1000x ./lease/
func BenchmarkClaimScale(b *testing.B) {
	c := startEtcd(b, 3)
	for _, kind := range []string{"bolt", "etcd"} {
		b.Run("store="+kind, func(b *testing.B) {
			ctx := context.Background()
			var stores [2]Store
			for i, n := range []int{100, 10000} {
				if kind == "bolt" {
					s, err := OpenBolt(ctx, filepath.Join(b.TempDir(), fmt.Sprint(n, ".db")), BoltOptions{})
					if err != nil {
						b.Fatal(err)
					}
					defer s.Close()
					stores[i] = s
				} else {
					stores[i] = openTestEtcd(b, c)
				}
				p := benchPool(n)
				p.Quarantine = 0
				if err := stores[i].Apply(ctx, []Pool{p}); err != nil {
					b.Fatal(err)
				}
				for j := range min(n/2, 10*b.N) {
					if _, err := stores[i].Claim(ctx, Request{Holder: fmt.Sprint("fill", j%10), TTL: time.Hour}); err != nil {
						b.Fatal(err)
					}
				}
			}
			var lat [2]latencies
			b.ResetTimer()
			for i := range b.N {
				for k, s := range stores {
					t0 := time.Now()
					l, err := s.Claim(ctx, Request{Holder: fmt.Sprint("h", i%10), TTL: time.Hour})
					lat[k] = append(lat[k], time.Since(t0))
					if err != nil {
						b.Fatal(err)
					}
					if err := s.Release(ctx, l); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			p50 := func(l latencies) float64 {
				slices.Sort(l)
				return float64(l[len(l)/2]) / 1e6
			}
			a, z := p50(lat[0]), p50(lat[1])
			b.ReportMetric(a, "p50-100-ms")
			b.ReportMetric(z, "p50-10000-ms")
			b.ReportMetric(z/a, "ratio")
		})
	}
}
