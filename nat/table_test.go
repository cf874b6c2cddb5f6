package nat

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/portspace/portspace/packet"
)

// TestTableRandom inserts and deletes records at random through several
// incremental growths of the index and the slab (moving records a few per
// step, as each Engine call does) and checks after every step that exactly
// the live records are found by both keys.
func TestTableRandom(t *testing.T) {
	for _, mode := range []keyMode{{}, {mapRemAddr: true, mapRemPort: true, inRem: true}} {
		tb := newTable(1, 2, mode, 0)
		r := rand.New(rand.NewPCG(7, 8))
		var keys []key
		sawOld, sawMove := false, false
		for step := 0; step < 60000; step++ {
			tb.settle(settleStep)
			if len(keys) > 0 && r.IntN(3) == 0 {
				k := r.IntN(len(keys))
				i := tb.find(keys[k])
				if i == 0 {
					t.Fatalf("step %d: live key not found", step)
				}
				keys[k] = keys[len(keys)-1]
				keys = keys[:len(keys)-1]
				tb.unindex(i - 1)
				tb.release(i - 1)
			} else {
				rc := randRec(r)
				if _, ok := tb.insert(rc); !ok {
					t.Fatalf("step %d: insert", step)
				}
				keys = append(keys, tb.keyOf(&rc, kind0(&rc)))
			}
			if step < 3000 || step%997 == 0 || step > 59500 {
				sawOld = sawOld || tb.old != nil
				sawMove = sawMove || tb.moving
				if err := tb.check(); err != nil {
					t.Fatalf("step %d (old=%v, moving=%v): %v", step, tb.old != nil, tb.moving, err)
				}
				if tb.n != len(keys) {
					t.Fatalf("step %d: %d records, %d live", step, tb.n, len(keys))
				}
			}
		}
		if !sawOld || !sawMove {
			t.Fatalf("checks during an index growth %v, during a slab move %v", sawOld, sawMove)
		}
		if len(tb.slots) < 1<<15 || len(tb.s[tb.cs]) < 1<<15 {
			t.Fatalf("index or slab did not grow: %d slots, %d records", len(tb.slots), len(tb.s[tb.cs]))
		}
		for _, k := range keys {
			i := tb.find(k)
			tb.unindex(i - 1)
			tb.release(i - 1)
		}
		tb.migrate(len(tb.old))
		tb.settle(1 << 20)
		if err := tb.check(); err != nil || tb.used != 0 || tb.n != 0 {
			t.Fatalf("after deleting all: %v, %d used, %d records", err, tb.used, tb.n)
		}
	}
}

// TestTableShrink: after most of 200 k sessions expire, the index and the
// slab shrink (incrementally, records moving into a smaller slab), so
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
		sawTrim = sawTrim || e.t.moving && len(e.t.s[e.t.cs]) < len(e.t.s[e.t.cs^1])
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
	if !sawShrink || !sawTrim || e.t.old != nil || e.t.moving {
		t.Fatalf("index shrink seen %v, slab shrink seen %v, index still migrating %v, slab moving %v", sawShrink, sawTrim, e.t.old != nil, e.t.moving)
	}
	if st.TableBytes > before/8 {
		t.Fatalf("TableBytes %d after expiry, %d before", st.TableBytes, before)
	}
	t.Logf("TableBytes %d -> %d (%d sessions left), index %d slots, slab %d records", before, st.TableBytes, st.Sessions, len(e.t.slots), len(e.t.s[e.t.cs]))
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

// randRec returns a UDP session or owner record with random endpoints.
func randRec(r *rand.Rand) rec {
	rc := rec{flags: fUsed, proto: 17}
	rc.intAddr, rc.intPort = r.Uint32(), uint16(r.Uint32())
	rc.extAddr, rc.extPort = r.Uint32(), uint16(r.Uint32())
	rc.remAddr, rc.remPort = r.Uint32(), uint16(r.Uint32())
	if r.IntN(2) == 0 {
		rc.flags |= fOwner
	}
	return rc
}

// TestTableMove: records inserted and deleted at random while the slab
// doubles and shrinks and its records move into the new slab in small
// steps (settle, as Outbound, Inbound and ExpireSome do it): every live
// record stays findable by both keys with its fields intact, a shrink the
// table outgrows is turned round, and the table ends at its smallest.
func TestTableMove(t *testing.T) {
	tb := newTable(3, 4, keyMode{}, 0)
	r := rand.New(rand.NewPCG(9, 10))
	type live struct {
		k   key
		rec rec
	}
	var lv []live
	add := func() {
		rc := randRec(r)
		if _, ok := tb.insert(rc); !ok {
			t.Fatal("insert")
		}
		lv = append(lv, live{tb.keyOf(&rc, kind0(&rc)), rc})
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
	sawGrow, sawShrink, sawTurn := false, false, false
	watch := func() {
		if tb.moving {
			big := len(tb.s[tb.cs]) > len(tb.s[tb.cs^1])
			sawGrow = sawGrow || big
			sawShrink = sawShrink || !big
		}
	}
	// Growth: 2 moves per insertion (Engine calls settle before each).
	for step := range 40_000 {
		tb.settle(2)
		add()
		watch()
		if step%500 == 0 {
			verify(step)
		}
	}
	verify(-1)
	if !sawGrow || len(tb.s[tb.cs]) < 2*len(lv) {
		t.Fatalf("growth seen %v, slab %d for %d records", sawGrow, len(tb.s[tb.cs]), len(lv))
	}
	for len(lv) > 1500 {
		del()
	}
	// Shrink in small steps, with insertions and deletions meanwhile.
	for step := range 6000 {
		switch x := r.IntN(10); {
		case x < 3:
			add()
		case x < 6:
			del()
		default:
			tb.maintain(64)
		}
		watch()
		if step%200 == 0 {
			verify(step)
		}
	}
	for range 1000 {
		tb.maintain(1 << 10)
	}
	verify(-2)
	if !sawShrink || tb.moving || len(tb.s[tb.cs]) > slabFor(4*len(lv), minSlab) {
		t.Fatalf("shrink seen %v, moving %v, slab %d for %d records", sawShrink, tb.moving, len(tb.s[tb.cs]), len(lv))
	}
	// A shrink overtaken by insertions is turned round; no record is lost.
	for range 10_000 {
		add()
	}
	for range 100 {
		tb.maintain(1 << 10)
	}
	for len(lv) > 100 {
		del()
	}
	tb.maintain(1)
	if !tb.moving || len(tb.s[tb.cs]) >= len(tb.s[tb.cs^1]) {
		t.Fatal("no shrink started")
	}
	for range 10_000 {
		add()
		if tb.moving && len(tb.s[tb.cs]) > len(tb.s[tb.cs^1]) {
			sawTurn = true
		}
	}
	verify(-3)
	if !sawTurn {
		t.Fatal("the shrink was not turned round")
	}
	for range 100 {
		tb.maintain(1 << 10)
	}
	verify(-4)
	for len(lv) > 0 {
		del()
	}
	for range 100 {
		tb.maintain(1 << 10)
	}
	verify(-5)
	if tb.moving || len(tb.s[tb.cs]) != minSlab {
		t.Fatalf("slab of %d records after deleting all (moving %v)", len(tb.s[tb.cs]), tb.moving)
	}
}

// TestTableHome: filled with 500 k sessions as BenchmarkLookupBatch fills
// its table (the slab then as full as with 1 M: 48%), the slab is at most
// half full and at least 95% of the records sit in
// their home line pair, where an outbound look-up finds them without the
// index (one cache line), and each slab starts on a cache line.
func TestTableHome(t *testing.T) {
	if testing.Short() {
		t.Skip("500 k sessions")
	}
	e := newEngine(t, benchConfig())
	tmpl := udpPkt(t, hostA, srv1)
	var buf []byte
	const n = 500_000
	for i := range n {
		buf = flowPacket(buf, tmpl, i)
		if v := e.Outbound(buf, t0); v.Action != Forward {
			t.Fatalf("flow %d: %v %s", i, v.Action, v.Reason)
		}
	}
	tb := e.t
	if tb.moving {
		t.Fatal("slab still moving after 500 k insertions")
	}
	sl := tb.s[tb.cs]
	if uintptr(unsafe.Pointer(&sl[0]))%64 != 0 {
		t.Fatalf("slab at %p, not on a cache line", &sl[0])
	}
	if 2*tb.n > len(sl) {
		t.Fatalf("%d records in a slab of %d", tb.n, len(sl))
	}
	home := 0
	for j := range sl {
		r := &sl[j]
		if r.flags == 0 {
			continue
		}
		k := tb.keyOf(r, kind0(r))
		if tb.atHome(tb.hash(k), k, kind0(r)) == uint32(tb.cs)<<slabBit|uint32(j)+1 {
			home++
		}
	}
	if home*100 < 95*tb.n {
		t.Fatalf("%d of %d records at home", home, tb.n)
	}
	t.Logf("%d of %d records (%.2f%%) at home in a slab of %d", home, tb.n, 100*float64(home)/float64(tb.n), len(sl))
}
