package nat

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/portspace/portspace/portalloc"
	"time"
)

// TestPrefetchPipelineSameResults drives two engines with the same
// packets (new flows, established flows, replies, UDP and TCP, in batches
// of 1 to 100 packets, more than PrefetchSlots), one of them calling
// Prefetch before each batch, with expiry sweeps between batches and,
// now and then, inside one, while the table grows past several resizes:
// every verdict and every translated packet is the same, so Prefetch
// changes nothing but the cache.
func TestPrefetchPipelineSameResults(t *testing.T) {
	cfg := benchConfig()
	cfg.UDPTimeout = 30 * time.Second
	cfg.Secret = portalloc.Secret{1, 2, 3} // the same ports in both engines
	a, b := newEngine(t, cfg), newEngine(t, cfg)
	r := rand.New(rand.NewPCG(7, 8))
	udp := udpPkt(t, hostA, srv1)
	tcp := tcpPkt(t, hostA, srv1, "S")
	var replies [][]byte // replies to translated packets, to send inbound
	now := t0
	next := 0
	var buf []byte
	for round := 0; round < 400; round++ {
		n := 1 + r.IntN(100)
		var batch [][]byte
		var inb []bool
		for range n {
			switch x := r.IntN(10); {
			case x < 4 || next == 0:
				tmpl := udp
				if x == 0 {
					tmpl = tcp
				}
				batch = append(batch, flowPacket(nil, tmpl, next))
				next++
				inb = append(inb, false)
			case x < 7:
				batch = append(batch, flowPacket(buf, udp, r.IntN(next)))
				inb = append(inb, false)
			default:
				if len(replies) == 0 {
					continue
				}
				batch = append(batch, append([]byte(nil), replies[r.IntN(len(replies))]...))
				inb = append(inb, true)
			}
		}
		pa := make([][]byte, len(batch))
		for i := range batch {
			pa[i] = append([]byte(nil), batch[i]...)
		}
		b.Prefetch(batch, inb)
		mid := -1
		if round%7 == 3 {
			mid = r.IntN(len(batch))
		}
		for i := range batch {
			if i == mid {
				b.ExpireSome(now, 64)
				a.ExpireSome(now, 64)
			}
			var va, vb Verdict
			if inb[i] {
				va, vb = a.Inbound(pa[i], now), b.Inbound(batch[i], now)
			} else {
				va, vb = a.Outbound(pa[i], now), b.Outbound(batch[i], now)
			}
			if va.Action != vb.Action || va.Reason != vb.Reason || !bytes.Equal(pa[i], batch[i]) {
				t.Fatalf("round %d packet %d (inbound %v): %v %s against %v %s with Prefetch", round, i, inb[i], va.Action, va.Reason, vb.Action, vb.Reason)
			}
			if !inb[i] && va.Action == Forward && len(replies) < 4096 {
				q := pa[i]
				rep := append([]byte(nil), q...)
				copy(rep[12:16], q[16:20])
				copy(rep[16:20], q[12:16])
				copy(rep[20:22], q[22:24])
				copy(rep[22:24], q[20:22])
				replies = append(replies, rep)
			}
		}
		now = now.Add(time.Duration(r.IntN(500)) * time.Millisecond)
		if round%50 == 49 {
			a.ExpireSome(now, 1000)
			b.ExpireSome(now, 1000)
		}
	}
	if sa, sb := a.Stats(), b.Stats(); sa != sb {
		t.Fatalf("stats differ:\n%+v\n%+v", sa, sb)
	}
	if err := b.t.check(); err != nil {
		t.Fatal(err)
	}
	if a.Stats().Sessions < 1000 {
		t.Fatalf("only %d sessions: the test did not grow the table", a.Stats().Sessions)
	}
}

// TestPrefetchBatchNoAlloc: a batch of established flows, Prefetch then
// Outbound for each packet (the gateway's datapath), allocates nothing.
func TestPrefetchBatchNoAlloc(t *testing.T) {
	e := newEngine(t, benchConfig())
	tmpl := udpPkt(t, hostA, srv1)
	const n = 48
	pkts := make([][]byte, n)
	inb := make([]bool, n)
	for i := range pkts {
		pkts[i] = flowPacket(nil, tmpl, i*7919)
		if v := e.Outbound(append([]byte(nil), pkts[i]...), t0); v.Action != Forward {
			t.Fatal(v)
		}
	}
	work := make([][]byte, n)
	for i := range work {
		work[i] = make([]byte, len(pkts[i]))
	}
	if a := testing.AllocsPerRun(100, func() {
		for i := range work {
			copy(work[i], pkts[i])
		}
		e.Prefetch(work, inb)
		for i := range work {
			if e.Outbound(work[i], t0).Action != Forward {
				t.Fatal("dropped")
			}
		}
	}); a != 0 {
		t.Fatalf("a prefetched batch allocates %v", a)
	}
}
