package nat

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/packet"
)

// TestTableRandom inserts and deletes records at random through several
// incremental growths and checks after every step that exactly the live
// records are found by both keys.
func TestTableRandom(t *testing.T) {
	for _, mode := range []keyMode{{}, {mapRemAddr: true, mapRemPort: true, inRem: true}} {
		tb := newTable(1, 2, mode, 0)
		r := rand.New(rand.NewPCG(7, 8))
		live := map[uint32]bool{}
		var ids []uint32
		sawOld := false
		for step := 0; step < 60000; step++ {
			if len(ids) > 0 && r.IntN(3) == 0 {
				k := r.IntN(len(ids))
				i := ids[k]
				ids[k] = ids[len(ids)-1]
				ids = ids[:len(ids)-1]
				tb.unindex(i)
				tb.release(i)
				delete(live, i)
			} else {
				i, _ := tb.alloc()
				rc := tb.at(i)
				rc.proto = 17
				rc.intAddr, rc.intPort = r.Uint32(), uint16(r.Uint32())
				rc.extAddr, rc.extPort = r.Uint32(), uint16(r.Uint32())
				rc.remAddr, rc.remPort = r.Uint32(), uint16(r.Uint32())
				if r.IntN(2) == 0 {
					rc.flags |= fOwner
				}
				tb.index(i)
				live[i] = true
				ids = append(ids, i)
			}
			if step < 5000 || step%997 == 0 || step > 59000 {
				sawOld = sawOld || tb.old != nil
				if err := tb.check(); err != nil {
					t.Fatalf("step %d (old=%v): %v", step, tb.old != nil, err)
				}
			}
		}
		if !sawOld {
			t.Fatal("no check ran during a growth")
		}
		if len(tb.slots) < 1<<15 {
			t.Fatalf("index did not grow: %d slots", len(tb.slots))
		}
		for _, i := range ids {
			tb.unindex(i)
			tb.release(i)
		}
		tb.migrate(len(tb.old))
		if err := tb.check(); err != nil || tb.used != 0 {
			t.Fatalf("after deleting all: %v, %d used", err, tb.used)
		}
	}
}

// TestTableShrink: after most of 200 k sessions expire, the index shrinks
// (incrementally) and the arena releases its emptied chunks, so
// TableBytes drops; the surviving flows keep translating to the same
// external endpoints, in both directions, at every step of the shrink.
func TestTableShrink(t *testing.T) {
	const n, keepEvery = 200_000, 100
	e := newEngine(t, benchConfig())
	tmpl := udpPkt(t, hostA, srv1)
	var buf []byte
	ext := map[int]netip.AddrPort{}
	send := func(i int, now time.Time) netip.AddrPort {
		buf = flowPacket(buf, tmpl, i)
		if v := e.Outbound(buf, now); v.Action != Forward {
			t.Fatalf("flow %d: %v %s", i, v.Action, v.Reason)
		}
		var p packet.Packet
		if err := p.Parse(buf); err != nil {
			t.Fatal(err)
		}
		return netip.AddrPortFrom(p.Src(), p.SrcPort())
	}
	for i := range n {
		x := send(i, t0)
		if i%keepEvery == 0 {
			ext[i] = x
		}
	}
	before := e.Stats().TableBytes
	for i := range ext {
		send(i, t0.Add(4*time.Minute)) // refreshed: survives
	}
	// check translates every survivor out and in and compares endpoints.
	check := func(step int, now time.Time) {
		t.Helper()
		for i, x := range ext {
			if got := send(i, now); got != x {
				t.Fatalf("step %d: flow %d left from %v, was %v", step, i, got, x)
			}
			src, dst := flowEndpoints(i)
			buf = append(buf[:0], tmpl...)
			var p packet.Packet
			if p.Parse(buf) != nil || p.SetSrc(dst) != nil || p.SetDst(x) != nil {
				t.Fatal("bad template")
			}
			if v := e.Inbound(buf, now); v.Action != Forward {
				t.Fatalf("step %d: reply to flow %d: %v %s", step, i, v.Action, v.Reason)
			}
			if p.Parse(buf) != nil || netip.AddrPortFrom(p.Dst(), p.DstPort()) != src {
				t.Fatalf("step %d: reply to flow %d delivered to %v", step, i, p.Dst())
			}
		}
	}
	now := t0.Add(6 * time.Minute)
	sawShrink, sawTrim := false, false
	for step := 0; step < 400; step++ {
		e.ExpireSome(now, 4096)
		sawShrink = sawShrink || e.t.old != nil && len(e.t.slots) < len(e.t.old)
		sawTrim = sawTrim || e.t.trimTo != 0
		if step%25 == 0 {
			check(step, now)
			if err := e.t.check(); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
		}
	}
	st := e.Stats()
	if st.Sessions != len(ext) || st.Records != len(ext) {
		t.Fatalf("after expiry: %d sessions, %d records, want %d", st.Sessions, st.Records, len(ext))
	}
	if !sawShrink || !sawTrim || e.t.old != nil || e.t.trimTo != 0 {
		t.Fatalf("shrink seen %v, trim seen %v, still migrating %v, trimming %v", sawShrink, sawTrim, e.t.old != nil, e.t.trimTo)
	}
	if st.TableBytes > before/8 {
		t.Fatalf("TableBytes %d after expiry, %d before", st.TableBytes, before)
	}
	t.Logf("TableBytes %d -> %d (%d sessions left), index %d slots, %d chunks", before, st.TableBytes, st.Sessions, len(e.t.slots), len(e.t.chunks))
	check(-1, now)
	if err := e.t.check(); err != nil {
		t.Fatal(err)
	}
	// The table grows again.
	for i := n; i < n+50_000; i++ {
		send(i, now)
	}
	check(-2, now)
	if err := e.t.check(); err != nil {
		t.Fatal(err)
	}
	for range 10 { // each call does a bounded part of the shrink
		e.Expire(now.Add(24 * time.Hour))
	}
	if st := e.Stats(); st.Records != 0 || st.TableBytes > 1<<20 {
		t.Fatalf("after expiring everything: %+v", st)
	}
}

// TestTableTrim: records inserted and deleted at random while the index
// shrinks and the arena is trimmed in small steps (records move): every
// live record stays findable by both keys with its fields intact.
func TestTableTrim(t *testing.T) {
	tb := newTable(3, 4, keyMode{}, 0)
	r := rand.New(rand.NewPCG(9, 10))
	type live struct {
		k   key
		rec rec
	}
	var lv []live
	add := func() {
		i, ok := tb.alloc()
		if !ok {
			t.Fatal("alloc")
		}
		rc := tb.at(i)
		rc.proto = 17
		rc.intAddr, rc.intPort = r.Uint32(), uint16(r.Uint32())
		rc.extAddr, rc.extPort = r.Uint32(), uint16(r.Uint32())
		rc.remAddr, rc.remPort = r.Uint32(), uint16(r.Uint32())
		if r.IntN(2) == 0 {
			rc.flags |= fOwner
		}
		tb.index(i)
		k0, _, _ := kindsOf(rc)
		lv = append(lv, live{tb.keyOf(rc, k0), *rc})
	}
	del := func() {
		j := r.IntN(len(lv))
		f := tb.find(lv[j].k)
		if f == 0 {
			t.Fatal("live record not found")
		}
		tb.unindex(f - 1)
		tb.release(f - 1)
		lv[j] = lv[len(lv)-1]
		lv = lv[:len(lv)-1]
	}
	verify := func(step int) {
		t.Helper()
		if err := tb.check(); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		for _, l := range lv {
			f := tb.find(l.k)
			if f == 0 || *tb.at(f - 1) != l.rec {
				t.Fatalf("step %d: record %+v lost (found %d)", step, l.rec, f)
			}
		}
		if tb.n != len(lv) {
			t.Fatalf("step %d: %d records counted, %d live", step, tb.n, len(lv))
		}
	}
	for range 3*chunkSize - 100 {
		add()
	}
	for len(lv) > 1500 {
		del()
	}
	sawTrim, sawShrink := false, false
	for step := range 6000 {
		switch x := r.IntN(10); {
		case x < 3:
			add()
		case x < 6:
			del()
		default:
			tb.maintain(64)
		}
		sawTrim = sawTrim || tb.trimTo != 0
		sawShrink = sawShrink || tb.old != nil && len(tb.slots) < len(tb.old)
		if step%200 == 0 {
			verify(step)
		}
	}
	for range 1000 {
		tb.maintain(1 << 10)
	}
	verify(-1)
	if !sawTrim || !sawShrink || len(tb.chunks) != 1 {
		t.Fatalf("trim seen %v, shrink seen %v, %d chunks left", sawTrim, sawShrink, len(tb.chunks))
	}
	// Refill past the trimmed size: the arena grows again.
	for range 2 * chunkSize {
		add()
	}
	verify(-2)
	// A trim overtaken by a refill is abandoned; no record is lost.
	for len(lv) > 1500 {
		del()
	}
	tb.maintain(1)
	if tb.trimTo == 0 {
		t.Fatal("no trim started")
	}
	for range 2 * chunkSize {
		add()
	}
	for range 100 {
		tb.maintain(1 << 10)
	}
	if tb.trimTo != 0 {
		t.Fatal("trim not abandoned")
	}
	verify(-3)
	for len(lv) > 0 {
		del()
	}
	for range 100 {
		tb.maintain(1 << 10)
	}
	verify(-4)
	if len(tb.chunks) != 1 {
		t.Fatalf("%d chunks after deleting all", len(tb.chunks))
	}
}
