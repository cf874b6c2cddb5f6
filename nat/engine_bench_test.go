package nat

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/portspace/portspace/packet"
)

// Benchmarks of the translation table. Each published figure in
// docs/nat.md names the command that reproduces it.

// benchConfig is the default EIM/EIF engine over 256 external addresses,
// enough for 10 M mappings without port overlapping.
func benchConfig() Config {
	ext := make([]netip.Addr, 256)
	a := netip.MustParseAddr("198.18.0.0")
	for i := range ext {
		ext[i] = a
		a = a.Next()
	}
	return Config{External: ext, Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Seed: 1}
}

// flowEndpoints returns the internal and remote endpoints of flow i:
// 512 flows per internal host, remotes spread over 256 addresses.
func flowEndpoints(i int) (src, dst netip.AddrPort) {
	h := uint32(i / 512)
	src = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(h >> 16), byte(h >> 8), byte(h)}), uint16(1024+i%512))
	dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 443)
	return src, dst
}

// flowPacket writes the UDP packet of flow i into buf (a copy of tmpl with
// the endpoints rewritten, checksums valid).
func flowPacket(buf, tmpl []byte, i int) []byte {
	buf = append(buf[:0], tmpl...)
	src, dst := flowEndpoints(i)
	var p packet.Packet
	if p.Parse(buf) != nil || p.SetSrc(src) != nil || p.SetDst(dst) != nil {
		panic("bad template")
	}
	return buf
}

// fill creates n UDP sessions in e.
func fill(b *testing.B, e *Engine, tmpl []byte, n int) {
	b.Helper()
	var buf []byte
	for i := 0; i < n; i++ {
		buf = flowPacket(buf, tmpl, i)
		if v := e.Outbound(buf, t0); v.Action != Forward {
			b.Fatalf("flow %d: %v %s", i, v.Action, v.Reason)
		}
	}
}

// BenchmarkTranslate compares the engine's per-packet cost on an
// established UDP flow (outbound and inbound) with a bare minimum that
// does only what any NAT must: parse, one Go map look-up, rewrite with
// incremental checksum update. Both copy the packet into the work buffer
// first. The ratio engine/bare is the table's overhead.
//
//	go test -run '^$' -bench 'Translate' -count 5 ./nat
func BenchmarkTranslate(b *testing.B) {
	tmpl := udpPkt(b, hostA, srv1)
	b.Run("engine-out", func(b *testing.B) {
		e := newEngine(b, testConfig(nil))
		buf := append([]byte(nil), tmpl...)
		e.Outbound(buf, t0)
		b.ReportAllocs()
		c0 := cpuNanos()
		defer func() { reportCPU(b, c0) }()
		for b.Loop() {
			buf = append(buf[:0], tmpl...)
			if e.Outbound(buf, t0).Action != Forward {
				b.Fatal("dropped")
			}
		}
	})
	b.Run("engine-in", func(b *testing.B) {
		e := newEngine(b, testConfig(nil))
		x := mapUDP(b, e, hostA, srv1, t0)
		in := udpPkt(b, srv1, x)
		buf := append([]byte(nil), in...)
		b.ReportAllocs()
		c0 := cpuNanos()
		defer func() { reportCPU(b, c0) }()
		for b.Loop() {
			buf = append(buf[:0], in...)
			if e.Inbound(buf, t0).Action != Forward {
				b.Fatal("dropped")
			}
		}
	})
	b.Run("engine-tcp-out", func(b *testing.B) {
		e := newEngine(b, testConfig(nil))
		buf := tcpPkt(b, hostA, srv1, "S")
		e.Outbound(buf, t0)
		ack := tcpPkt(b, hostA, srv1, "A")
		b.ReportAllocs()
		c0 := cpuNanos()
		defer func() { reportCPU(b, c0) }()
		for b.Loop() {
			buf = append(buf[:0], ack...)
			if e.Outbound(buf, t0).Action != Forward {
				b.Fatal("dropped")
			}
		}
	})
	b.Run("bare", func(b *testing.B) {
		// The flow key packed into two words, as a careful NAT would.
		type fk struct{ w0, w1 uint64 }
		mk := func(p *packet.Packet) fk {
			s, d := p.Src().As4(), p.Dst().As4()
			return fk{uint64(u4(netip.AddrFrom4(s)))<<32 | uint64(u4(netip.AddrFrom4(d))),
				uint64(p.SrcPort())<<32 | uint64(p.DstPort())<<16 | uint64(p.Proto())}
		}
		m := map[fk]netip.AddrPort{}
		var p packet.Packet
		for i := 0; i < 1000; i++ { // a few entries, as a table would hold
			_ = p.Parse(udpPkt(b, netip.AddrPortFrom(hostB.Addr(), uint16(i)), srv1))
			m[mk(&p)] = netip.AddrPortFrom(extA, uint16(i))
		}
		_ = p.Parse(append([]byte(nil), tmpl...))
		m[mk(&p)] = netip.AddrPortFrom(extA, 40000)
		buf := append([]byte(nil), tmpl...)
		b.ReportAllocs()
		c0 := cpuNanos()
		defer func() { reportCPU(b, c0) }()
		for b.Loop() {
			buf = append(buf[:0], tmpl...)
			if p.Parse(buf) != nil {
				b.Fatal("parse")
			}
			x, ok := m[mk(&p)]
			if !ok {
				b.Fatal("miss")
			}
			_ = p.SetSrc(x)
		}
	})
}

// BenchmarkSetup measures new-session setup: each packet is the first of a
// new UDP flow from a new internal endpoint (a new mapping: port
// allocation, record, two index entries). The packet is built from a
// template inside the loop (about 30 ns of the figure).
//
//	go test -run '^$' -bench 'Setup' -benchtime 2000000x -count 5 ./nat
func BenchmarkSetup(b *testing.B) {
	e := newEngine(b, benchConfig())
	tmpl := udpPkt(b, hostA, srv1)
	var buf []byte
	b.ReportAllocs()
	c0 := cpuNanos()
	for i := 0; i < b.N; i++ {
		buf = flowPacket(buf, tmpl, i)
		if v := e.Outbound(buf, t0); v.Action != Forward {
			b.Fatalf("flow %d: %v %s", i, v.Action, v.Reason)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "setups/s")
	if c := cpuNanos() - c0; c > 0 {
		b.ReportMetric(float64(b.N)/(float64(c)/1e9), "setups/cpu-s")
	}
}

// BenchmarkMemory measures the heap growth of an engine holding 1 M UDP
// sessions (each its own mapping, the common case of one flow per source
// port), divided by the sessions: runtime.MemStats.HeapAlloc after a GC,
// before and after filling.
//
//	go test -run '^$' -bench 'Memory' -benchtime 1x -count 5 ./nat
func BenchmarkMemory(b *testing.B) {
	const n = 1_000_000
	tmpl := udpPkt(b, hostA, srv1)
	for i := 0; i < b.N; i++ {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		e := newEngine(b, benchConfig())
		fill(b, e, tmpl, n)
		runtime.GC()
		runtime.ReadMemStats(&after)
		st := e.Stats()
		if st.Sessions != n {
			b.Fatalf("%d sessions", st.Sessions)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/session")
		b.ReportMetric(float64(st.TableBytes)/n, "table-bytes/session")
		runtime.KeepAlive(e)
	}
}

// long reports whether the run allows long set-ups (not -short, not
// -benchtime 1x as `make test` uses).
func long() bool {
	f := flag.Lookup("test.benchtime")
	return !testing.Short() && (f == nil || f.Value.String() != "1x")
}

// BenchmarkLookup measures established-flow translation (outbound UDP) on
// tables of 1 k to 10 M sessions. "random" cycles over 16,384 flows drawn
// at random from the whole table: a working set of about 2 MB spread over
// it, so TLB misses grow with the table but most cache lines stay in L3 (a
// flow chosen from the whole table for every packet is
// BenchmarkLookupBatch's "random/single"). "hot" cycles over 1024 random
// flows of the table, so it shows the cost of the hash probe alone, which
// should stay flat. The 10 M case needs about
// 1.2 GB (1.7 GB while the slab doubles) and a minute of set-up; it is skipped under -short and at
// -benchtime 1x.
//
//	go test -run '^$' -bench 'Lookup' -count 5 ./nat
func BenchmarkLookup(b *testing.B) {
	tmpl := udpPkt(b, hostA, srv1)
	for _, n := range []int{1_000, 100_000, 1_000_000, 10_000_000} {
		var e *Engine
		for _, mode := range []string{"random", "hot"} {
			b.Run(fmt.Sprintf("sessions=%d/%s", n, mode), func(b *testing.B) {
				if n > 1_000_000 && !long() {
					b.Skip("10 M sessions: skipped under -short and -benchtime 1x")
				}
				if e == nil {
					e = newEngine(b, benchConfig())
					fill(b, e, tmpl, n)
				}
				np := 1 << 14
				if mode == "hot" {
					np = 1 << 10
				}
				// One contiguous buffer of packets, so reading them costs
				// the same at every table size.
				pl := len(tmpl)
				all := make([]byte, np*pl)
				r := rand.New(rand.NewPCG(1, 2))
				for i := 0; i < np; i++ {
					copy(all[i*pl:], flowPacket(nil, tmpl, r.IntN(n)))
				}
				buf := make([]byte, 0, pl)
				b.ReportAllocs()
				b.ResetTimer()
				c0 := cpuNanos()
				defer func() { reportCPU(b, c0) }()
				for i := 0; i < b.N; i++ {
					k := (i & (np - 1)) * pl
					buf = append(buf[:0], all[k:k+pl]...)
					if e.Outbound(buf, t0).Action != Forward {
						b.Fatal("dropped")
					}
				}
			})
		}
		e = nil
		runtime.GC()
	}
}

// reportCPU adds the cpu-ns/op metric: process CPU time per iteration
// since c0 (see cpuNanos).
func reportCPU(b *testing.B, c0 int64) {
	if c := cpuNanos() - c0; c > 0 && b.N > 0 {
		b.ReportMetric(float64(c)/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkSetupPause reports the slowest single Outbound call while the
// table fills with b.N new sessions: with the incremental index growth no
// call pays for rehashing the table (a stop-the-world rehash took about
// 0.1 s per million sessions). Preemption by other processes also shows
// up here, so read it on a quiet machine.
//
//	go test -run '^$' -bench SetupPause -benchtime 4000000x -count 5 ./nat
func BenchmarkSetupPause(b *testing.B) {
	e := newEngine(b, benchConfig())
	tmpl := udpPkt(b, hostA, srv1)
	var buf []byte
	var worst time.Duration
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = flowPacket(buf, tmpl, i)
		t := time.Now()
		if v := e.Outbound(buf, t0); v.Action != Forward {
			b.Fatalf("flow %d: %v %s", i, v.Action, v.Reason)
		}
		if d := time.Since(t); d > worst {
			worst = d
			if testing.Verbose() && d > time.Millisecond {
				b.Logf("call %d took %v (index %d slots, growing %v)", i, d, len(e.t.slots), e.t.old != nil)
			}
		}
	}
	b.ReportMetric(float64(worst.Nanoseconds()), "max-ns/call")
}

// BenchmarkExpireShrink measures the table's shrink after mass expiry:
// 1 M UDP sessions of which 1 % stay alive, then ExpireSome(now, 4096)
// calls until the index and slab are small again. It reports the table
// bytes before and after, the slowest call and the total time of the
// calls. Skipped under -short and at -benchtime 1x.
//
//	go test -run '^$' -bench ExpireShrink -count 5 ./nat
func BenchmarkExpireShrink(b *testing.B) {
	if !long() {
		b.Skip("1 M sessions: skipped under -short and -benchtime 1x")
	}
	tmpl := udpPkt(b, hostA, srv1)
	const n = 1_000_000
	var before, after int
	var worst, total time.Duration
	for range b.N {
		b.StopTimer()
		e := newEngine(b, benchConfig())
		fill(b, e, tmpl, n)
		var buf []byte
		for i := 0; i < n; i += 100 {
			buf = flowPacket(buf, tmpl, i)
			e.Outbound(buf, t0.Add(4*time.Minute))
		}
		before = e.Stats().TableBytes
		runtime.GC()
		b.StartTimer()
		for range 2000 {
			s := time.Now()
			e.ExpireSome(t0.Add(6*time.Minute), 4096)
			d := time.Since(s)
			total += d
			worst = max(worst, d)
		}
		after = e.Stats().TableBytes
	}
	b.ReportMetric(float64(before), "bytes-before")
	b.ReportMetric(float64(after), "bytes-after")
	b.ReportMetric(float64(worst.Microseconds())/1000, "worst-call-ms")
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "total-ms")
}

// replyTo returns the reply to established outbound packet pkt: pkt
// translated by e, its endpoints swapped (the checksums stay valid).
func replyTo(b *testing.B, e *Engine, pkt []byte) []byte {
	q := append([]byte(nil), pkt...)
	if v := e.Outbound(q, t0); v.Action != Forward {
		b.Fatalf("outbound %v %s", v.Action, v.Reason)
	}
	r := append([]byte(nil), q...)
	copy(r[12:16], q[16:20])
	copy(r[16:20], q[12:16])
	copy(r[20:22], q[22:24])
	copy(r[22:24], q[20:22])
	return r
}

// BenchmarkLookupBatch is BenchmarkLookup's 1 M-session case with a fresh
// random flow for every packet (no working set: 16 M packets drawn from
// the whole table, more than the cache holds), "single" calling Outbound
// per packet as BenchmarkLookup does, "batch32" handing the packets over
// in batches of 32 with Engine.Prefetch first (as the gateway does with
// each TUN batch), so that the cache misses of different packets overlap
// with each other and with the translation of the packets before them
// (one per packet for a record in its home line, the common case; index
// slot and record otherwise: Prefetch asks for the first lines, each
// Outbound or Inbound call for the later lines of the packets a few
// places ahead). Each packet is copied into its buffer and translated
// whole (Outbound or Inbound: parse, look-up, refresh, rewrite with
// checksums). "hot" cycles over 1,024 flows
// (cache-resident), to show what Prefetch costs when there is no miss to
// hide. "random-in" is "random" for the replies (Inbound: index slot,
// then record). ns/op is per packet in all. The table-bytes/session metric is the
// slab and index bytes per session (BenchmarkMemory has the heap growth).
//
//	go test -run '^$' -bench 'LookupBatch' -count 5 ./nat
func BenchmarkLookupBatch(b *testing.B) {
	tmpl := udpPkt(b, hostA, srv1)
	const n = 1_000_000
	var e *Engine
	for _, mode := range []string{"random/single", "random/batch32", "hot/single", "hot/batch32", "random-in/single", "random-in/batch32"} {
		b.Run(fmt.Sprintf("sessions=%d/%s", n, mode), func(b *testing.B) {
			if e == nil {
				e = newEngine(b, benchConfig())
				fill(b, e, tmpl, n)
			}
			np := 1 << 20
			if !long() || strings.HasPrefix(mode, "hot") {
				np = 1 << 10 // hot: 1,024 flows, cache-resident
			}
			pl := len(tmpl)
			all := make([]byte, np*pl)
			r := rand.New(rand.NewPCG(3, 4))
			in := strings.HasPrefix(mode, "random-in")
			for i := 0; i < np; i++ {
				pk := flowPacket(nil, tmpl, r.IntN(n))
				if in {
					pk = replyTo(b, e, pk)
				}
				copy(all[i*pl:], pk)
			}
			const bs = 32
			bufs := make([][]byte, bs)
			for i := range bufs {
				bufs[i] = make([]byte, pl)
			}
			inbound := make([]bool, bs)
			for i := range inbound {
				inbound[i] = in
			}
			b.ReportMetric(float64(e.Stats().TableBytes)/n, "table-bytes/session")
			b.ReportAllocs()
			b.ResetTimer()
			c0 := cpuNanos()
			defer func() { reportCPU(b, c0) }()
			for i := 0; i < b.N; i += bs {
				m := min(bs, b.N-i)
				for j := 0; j < m; j++ {
					k := ((i + j) & (np - 1)) * pl
					copy(bufs[j], all[k:k+pl])
				}
				if strings.HasSuffix(mode, "batch32") {
					e.Prefetch(bufs[:m], inbound[:m])
				}
				for j := 0; j < m; j++ {
					if in {
						if e.Inbound(bufs[j], t0).Action != Forward {
							b.Fatal("dropped")
						}
					} else if e.Outbound(bufs[j], t0).Action != Forward {
						b.Fatal("dropped")
					}
				}
			}
		})
	}
}

// BenchmarkMissLatency measures the price of one cache miss on this
// machine, for reading the look-up figures: each op is one load that
// depends on the previous one (a pointer chase over a random cycle through
// the 64-byte lines of a 64 MiB array, the size of a 1 M-session slab,
// advised to huge pages as the slab is). BenchmarkLookupBatch's
// random/single minus hot/single should come to about one such miss.
//
//	go test -run '^$' -bench 'MissLatency|LookupBatch' -count 5 ./nat
func BenchmarkMissLatency(b *testing.B) {
	const lines = 1 << 20 // 64 MiB
	sl := makeSlab(2 * lines)
	next := unsafe.Slice((*uint32)(unsafe.Pointer(&sl[0])), len(sl)*8)
	perm := rand.New(rand.NewPCG(5, 6)).Perm(lines)
	for i := range lines {
		next[perm[i]*16] = uint32(perm[(i+1)%lines] * 16)
	}
	p := uint32(perm[0] * 16)
	b.ResetTimer()
	c0 := cpuNanos()
	defer func() { reportCPU(b, c0) }()
	for i := 0; i < b.N; i++ {
		p = next[p]
	}
	if p == 1 {
		b.Log(p) // keeps the chase
	}
}

// BenchmarkMissParallel is BenchmarkMissLatency with several independent
// pointer chases interleaved (chains=k: k loads in flight at once, as a
// batch's look-ups are): ns/op is per load, so chains=1 is one miss and
// chains=k shows how many misses this machine overlaps (memory-level
// parallelism; a virtual machine's nested page walks can bound it). A
// batched look-up can be no cheaper than its misses cost here.
//
//	go test -run '^$' -bench 'MissParallel|MissLatency' ./nat
func BenchmarkMissParallel(b *testing.B) {
	const lines = 1 << 20 // 64 MiB
	sl := makeSlab(2 * lines)
	next := unsafe.Slice((*uint32)(unsafe.Pointer(&sl[0])), len(sl)*8)
	perm := rand.New(rand.NewPCG(5, 6)).Perm(lines)
	for i := range lines {
		next[perm[i]*16] = uint32(perm[(i+1)%lines] * 16)
	}
	for _, k := range []int{1, 2, 4, 8, 16} {
		b.Run(fmt.Sprintf("chains=%d", k), func(b *testing.B) {
			var p [16]uint32
			for j := range k {
				p[j] = uint32(perm[j*lines/k] * 16) // k far-apart points of the one cycle
			}
			b.ResetTimer()
			c0 := cpuNanos()
			defer func() { reportCPU(b, c0) }()
			for i := 0; i < b.N; i += k {
				for j := range k {
					p[j] = next[p[j]]
				}
			}
			if p[0] == 1 {
				b.Log(p) // keeps the chases
			}
		})
	}
}
