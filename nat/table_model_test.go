package nat

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/packet"
)

// checkSlots verifies every slot of both index arrays (for tests): it names
// a used record of a live slab by a key that record has, its tag is that
// key's hash, it is reachable from the key's home position (no empty slot
// in between), and no record key has two slots in one array. check counts
// slots; this catches a slot left pointing at a record's old position.
func checkSlots(tb *table) error {
	for a, arr := range [][]uint32{tb.slots, tb.old} {
		if arr == nil {
			continue
		}
		shift := tb.shift
		if a == 1 {
			shift = tb.oldShift
		}
		mask := uint32(len(arr) - 1)
		seen := map[uint32]bool{}
		for pos, s := range arr {
			if s == 0 {
				continue
			}
			i := s & idxMask
			if i == 0 {
				return fmt.Errorf("array %d slot %d: %#x names no record", a, pos, s)
			}
			c, p := (i-1)>>slabBit, (i-1)&slabMask
			if int(p) >= len(tb.s[c]) {
				return fmt.Errorf("array %d slot %d: %#x beyond slab %d of %d", a, pos, s, c, len(tb.s[c]))
			}
			r := &tb.s[c][p]
			if r.flags&fUsed == 0 {
				return fmt.Errorf("array %d slot %d: %#x names free record %d/%d", a, pos, s, c, p)
			}
			_, _, two := kindsOf(r)
			if s&whichBit != 0 && !two {
				return fmt.Errorf("array %d slot %d: %#x names key 1 of a one-key record", a, pos, s)
			}
			v := s & 0x0fffffff
			if seen[v] {
				return fmt.Errorf("array %d: two slots %#x", a, v)
			}
			seen[v] = true
			h := tb.hash(tb.keyOf(r, kindOf(r, s)))
			if uint32(h&15)<<28 != s&0xf0000000 {
				return fmt.Errorf("array %d slot %d: %#x has the wrong tag", a, pos, s)
			}
			for q := uint32(h>>shift) & mask; q != uint32(pos); q = (q + 1) & mask {
				if arr[q] == 0 {
					return fmt.Errorf("array %d slot %d: %#x unreachable from its home %d", a, pos, s, uint32(h>>shift)&mask)
				}
			}
		}
	}
	return nil
}

// TestTableModel drives the table with random operations checked against
// a Go map: insertions of owners, sessions, loose sessions and filters;
// deletions found by key 0 or by key 1; look-ups by both keys (and of
// deleted keys, which must miss); changes to a record's non-key fields;
// settle and maintain steps of every size. The live count swings between
// targets, so the index and the slab grow, shrink and have shrinks turned
// round while records are deleted and looked up; after every operation the
// keys it touched are looked up again, and every few operations every slot
// and every live record is checked.
func TestTableModel(t *testing.T) {
	modes := []keyMode{{}, {mapRemAddr: true}, {mapRemAddr: true, mapRemPort: true, inRem: true}}
	for mi, mode := range modes {
		t.Run(fmt.Sprintf("mode%d", mi), func(t *testing.T) { runTableModel(t, mode, uint64(mi)) })
	}
}

func runTableModel(t *testing.T, mode keyMode, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 42))
	tb := newTable(r.Uint64(), r.Uint64(), mode, 0)
	live := map[key]rec{} // by key 0
	by1 := map[key]key{}  // key 1 -> key 0
	var keys []key        // key 0 of the live records, for random picks
	pos := map[key]int{}  // index into keys
	var gone []key        // keys of deleted records (both), for misses
	step := 0
	fail := func(format string, a ...any) {
		t.Helper()
		t.Fatalf("step %d (slab %d moving %v cur %d other %d, index old %v): %s", step, tb.cs, tb.moving,
			len(tb.s[tb.cs]), len(tb.s[tb.cs^1]), tb.old != nil, fmt.Sprintf(format, a...))
	}
	key1 := func(v *rec) (key, bool) {
		_, k1, two := kindsOf(v)
		if !two {
			return key{}, false
		}
		return tb.keyOf(v, k1), true
	}
	// lookup finds k0's record by key 0 and by key 1 and compares it.
	lookup := func(k0 key) uint32 {
		t.Helper()
		want := live[k0]
		f := tb.find(k0)
		if f == 0 || *tb.at(f - 1) != want {
			fail("record %+v by key 0: found %d", want, f)
		}
		if k1, ok := key1(&want); ok {
			if g := tb.find(k1); g != f {
				fail("record %+v by key 1: found %d, by key 0 %d", want, g, f)
			}
		}
		return f
	}
	newRec := func() rec {
		v := rec{flags: fUsed, proto: 17, expire: r.Uint32(), refs: r.Uint32N(4), state: uint8(r.IntN(8))}
		// Few addresses and ports, so that keys share parts.
		v.intAddr, v.intPort = r.Uint32N(1024), uint16(r.Uint32N(64))
		v.extAddr, v.extPort = r.Uint32N(1024), uint16(r.Uint32N(64))
		v.remAddr, v.remPort = r.Uint32N(1024), uint16(r.Uint32N(64))
		switch r.IntN(8) {
		case 0, 1, 2:
			v.flags |= fOwner
		case 3:
			v.flags |= fLoose
		case 4:
			v.flags |= fFilter
		}
		return v
	}
	del := func(k0 key) {
		t.Helper()
		v := live[k0]
		f := lookup(k0)
		if k1, ok := key1(&v); ok && r.IntN(2) == 0 {
			f = tb.find(k1) // the engine often deletes what an inbound look-up found
			delete(by1, k1)
			gone = append(gone, k1)
		} else if ok {
			delete(by1, k1)
			gone = append(gone, k1)
		}
		tb.unindex(f - 1)
		tb.release(f - 1)
		delete(live, k0)
		j := pos[k0]
		last := keys[len(keys)-1]
		keys[j], pos[last] = last, j
		keys = keys[:len(keys)-1]
		delete(pos, k0)
		gone = append(gone, k0)
		if len(gone) > 256 {
			gone = gone[len(gone)-256:]
		}
		if g := tb.find(k0); g != 0 {
			fail("deleted record %+v still found by key 0 at %d", v, g)
		}
	}
	var sawGrow, sawShrink, sawTurn, sawIdxGrow, sawIdxShrink, sawOldHit, sawDelMoving bool
	wasShrink := false
	// A quiet phase does no maintenance (so the slab is large when the
	// next phase starts); a burst phase starts a shrink and then inserts
	// with few moves, so that the shrink is turned round.
	type phase struct {
		target       int
		quiet, burst bool
	}
	phases := []phase{{5000, false, false}, {300, true, false}, {3000, false, true}, {40, false, false},
		{6000, false, false}, {100, true, false}, {2500, false, true}, {0, false, false}}
	for _, ph := range phases {
		target := ph.target
		if ph.burst {
			tb.maintain(1)
		}
		for phase := 0; len(live) != target; phase++ {
			step++
			if phase > 400_000 {
				t.Fatalf("target %d not reached (%d live)", target, len(live))
			}
			if tb.moving {
				grow := len(tb.s[tb.cs]) > len(tb.s[tb.cs^1])
				sawGrow = sawGrow || grow
				sawShrink = sawShrink || !grow
				sawTurn = sawTurn || wasShrink && grow
				wasShrink = !grow
			} else {
				wasShrink = false
			}
			if tb.old != nil {
				sawIdxGrow = sawIdxGrow || len(tb.slots) > len(tb.old)
				sawIdxShrink = sawIdxShrink || len(tb.slots) < len(tb.old)
			}
			up := len(live) < target
			x := r.IntN(100)
			switch {
			case ph.burst && x < 90:
				x = 0 // insert
			case ph.burst && x < 95:
				x = 50 // look up
			case ph.burst || ph.quiet && x >= 90:
				x = 70 // settle
			}
			switch {
			case x < 45 && up || x < 15 && !up:
				v := newRec()
				k0 := tb.keyOf(&v, kind0(&v))
				k1, two := key1(&v)
				if _, dup := live[k0]; dup {
					continue
				}
				if _, dup := by1[k1]; two && dup {
					continue
				}
				i, ok := tb.insert(v)
				if !ok {
					fail("insert refused with %d records", tb.n)
				}
				if *tb.at(i) != v {
					fail("inserted %+v, reads %+v", v, *tb.at(i))
				}
				live[k0] = v
				if two {
					by1[k1] = k0
				}
				pos[k0] = len(keys)
				keys = append(keys, k0)
				lookup(k0)
			case x < 45 && !up || x < 15 && up:
				if len(keys) > 0 {
					k0 := keys[r.IntN(len(keys))]
					if tb.moving && (tb.find(k0)-1)>>slabBit != tb.cs {
						sawDelMoving = true
					}
					del(k0)
				}
			case x < 60:
				if len(keys) > 0 {
					if f := lookup(keys[r.IntN(len(keys))]); tb.moving && (f-1)>>slabBit != tb.cs {
						sawOldHit = true
					}
				}
			case x < 65:
				// Change a record's non-key fields through its key 1.
				if len(keys) > 0 {
					k0 := keys[r.IntN(len(keys))]
					v := live[k0]
					k, ok := key1(&v)
					if !ok {
						k = k0
					}
					f := tb.find(k)
					if f == 0 {
						fail("record %+v not found", v)
					}
					p := tb.at(f - 1)
					p.expire, p.refs, p.state, p.aux = r.Uint32(), r.Uint32N(4), uint8(r.IntN(8)), uint8(r.IntN(4))
					live[k0] = *p
				}
			case x < 70:
				if len(gone) > 0 {
					k := gone[r.IntN(len(gone))]
					k0 := k
					if k0b, ok := by1[k]; ok {
						k0 = k0b
					}
					if _, back := live[k0]; !back {
						if f := tb.find(k); f != 0 {
							fail("deleted key %+v found at %d (%+v)", k, f, *tb.at(f - 1))
						}
					}
				}
			case x < 90:
				if ph.burst {
					tb.settle(1)
				} else {
					tb.settle(1 + r.IntN(settleStep))
				}
			default:
				tb.maintain([]int{1, 16, 64, 1024, maxMoveStep}[r.IntN(5)])
			}
			if step%64 == 0 || tb.n < 64 {
				if err := tb.check(); err != nil {
					fail("%v", err)
				}
				if err := checkSlots(tb); err != nil {
					fail("%v", err)
				}
				if tb.n != len(live) {
					fail("%d records counted, %d live", tb.n, len(live))
				}
				if step%512 == 0 {
					for _, k0 := range keys {
						lookup(k0)
					}
				}
			}
		}
	}
	for range 200 {
		tb.maintain(maxMoveStep)
	}
	if err := tb.check(); err != nil {
		fail("%v", err)
	}
	if tb.n != 0 || tb.moving || tb.old != nil || len(tb.s[tb.cs]) != minSlab || len(tb.slots) != 1<<tb.minBits {
		fail("emptied table: %d records, moving %v, index old %v, slab %d, index %d", tb.n, tb.moving, tb.old != nil, len(tb.s[tb.cs]), len(tb.slots))
	}
	if !sawGrow || !sawShrink || !sawTurn || !sawIdxGrow || !sawIdxShrink || !sawOldHit || !sawDelMoving {
		t.Fatalf("slab growth %v, slab shrink %v, shrink turned round %v, index growth %v, index shrink %v, "+
			"look-up in the slab being emptied %v, deletion there %v", sawGrow, sawShrink, sawTurn, sawIdxGrow, sawIdxShrink, sawOldHit, sawDelMoving)
	}
	t.Logf("%d steps", step)
}

// TestEngineModelMoves drives an engine with random new flows, refreshes,
// replies, clock advances and partial sweeps (ExpireSome with small
// budgets), so that the slab and the index grow and shrink under traffic,
// and checks it against a model of each flow's external endpoint and last
// packet: a flow seen within its timer keeps its external endpoint both
// ways, a reply reaches its internal endpoint, a flow idle past its timer
// is gone, and Sessions (during moves too) lists every live flow once.
func TestEngineModelMoves(t *testing.T) {
	const timeout = 60 * time.Second
	cfg := benchConfig()
	cfg.UDPTimeout = timeout
	e := newEngine(t, cfg)
	r := rand.New(rand.NewPCG(5, 6))
	tmpl := udpPkt(t, hostA, srv1)
	type flow struct {
		ext  netip.AddrPort
		last time.Time
	}
	model := map[int]flow{}
	var ids []int // flows ever opened
	now := t0
	var buf []byte
	out := func(i int) netip.AddrPort {
		t.Helper()
		buf = flowPacket(buf, tmpl, i)
		if v := e.Outbound(buf, now); v.Action != Forward {
			t.Fatalf("%v: flow %d: %v %s", now.Sub(t0), i, v.Action, v.Reason)
		}
		var p packet.Packet
		if err := p.Parse(buf); err != nil {
			t.Fatal(err)
		}
		return netip.AddrPortFrom(p.Src(), p.SrcPort())
	}
	// alive: certainly alive (true, true), certainly dead (false, true).
	alive := func(f flow) (bool, bool) {
		d := now.Sub(f.last)
		switch {
		case d < timeout-2*time.Second:
			return true, true
		case d > timeout+2*time.Second:
			return false, true
		}
		return false, false
	}
	sawGrow, sawShrink, sawIdx, sawListMoving := false, false, false, false
	next := 0
	for step := 0; step < 120_000; step++ {
		if e.t.moving {
			g := len(e.t.s[e.t.cs]) > len(e.t.s[e.t.cs^1])
			sawGrow, sawShrink = sawGrow || g, sawShrink || !g
		}
		sawIdx = sawIdx || e.t.old != nil
		// Waves: bursts of new flows, then quiet times in which they expire.
		wave := step / 20_000 % 2
		switch x := r.IntN(100); {
		case x < 30 && wave == 0 || x < 3:
			i := next
			next++
			ids = append(ids, i)
			model[i] = flow{out(i), now}
		case x < 50:
			if len(ids) == 0 {
				continue
			}
			i := ids[r.IntN(len(ids))]
			f, ok := model[i]
			live, _ := alive(f)
			ext := out(i)
			if ok && live && ext != f.ext {
				t.Fatalf("%v: flow %d left from %v, was %v", now.Sub(t0), i, ext, f.ext)
			}
			model[i] = flow{ext, now}
		case x < 75:
			if len(ids) == 0 {
				continue
			}
			i := ids[r.IntN(len(ids))]
			f, ok := model[i]
			if !ok {
				continue
			}
			live, sure := alive(f)
			if !sure {
				continue
			}
			src, dst := flowEndpoints(i)
			buf = append(buf[:0], tmpl...)
			var p packet.Packet
			if p.Parse(buf) != nil || p.SetSrc(dst) != nil || p.SetDst(f.ext) != nil {
				t.Fatal("bad template")
			}
			v := e.Inbound(buf, now)
			if live {
				if v.Action != Forward || p.Parse(buf) != nil || netip.AddrPortFrom(p.Dst(), p.DstPort()) != src {
					t.Fatalf("%v: reply to flow %d via %v: %v %s, to %v", now.Sub(t0), i, f.ext, v.Action, v.Reason, p.Dst())
				}
			} else if v.Action == Forward {
				// The port may serve a newer flow now; it must not reach the old one's host.
				if p.Parse(buf) == nil && netip.AddrPortFrom(p.Dst(), p.DstPort()) == src {
					t.Fatalf("%v: reply to expired flow %d via %v delivered", now.Sub(t0), i, f.ext)
				}
			}
		case x < 90:
			if wave == 0 {
				now = now.Add(time.Duration(r.IntN(10)) * time.Millisecond)
			} else {
				now = now.Add(time.Duration(r.IntN(1500)) * time.Millisecond)
			}
		default:
			e.ExpireSome(now, []int{1, 8, 64, 512, 4096}[r.IntN(5)])
		}
		if step%4000 == 0 {
			if err := e.t.check(); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			if err := checkSlots(e.t); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			// Sessions lists every live flow once and no dead one.
			sawListMoving = sawListMoving || e.t.moving
			listed := map[netip.AddrPort]netip.AddrPort{}
			for s := range e.Sessions() {
				if _, dup := listed[s.Internal]; dup {
					t.Fatalf("step %d: session %v listed twice", step, s.Internal)
				}
				listed[s.Internal] = s.External
			}
			for i, f := range model {
				src, _ := flowEndpoints(i)
				if live, _ := alive(f); live && listed[src] != f.ext {
					t.Fatalf("step %d: live flow %d listed as %v, want %v", step, i, listed[src], f.ext)
				}
			}
			// After a full sweep no flow idle past its timer is listed.
			e.Expire(now)
			listed = map[netip.AddrPort]netip.AddrPort{}
			for s := range e.Sessions() {
				listed[s.Internal] = s.External
			}
			for i, f := range model {
				src, _ := flowEndpoints(i)
				switch live, sure := alive(f); {
				case live && listed[src] != f.ext:
					t.Fatalf("step %d: after a sweep live flow %d listed as %v, want %v", step, i, listed[src], f.ext)
				case !live && sure && listed[src].IsValid():
					t.Fatalf("step %d: after a sweep flow %d idle for %v listed", step, i, now.Sub(f.last))
				}
			}
			if st := e.Stats(); st.Sessions != len(listed) {
				t.Fatalf("step %d: %d sessions counted, %d listed", step, st.Sessions, len(listed))
			}
		}
	}
	if !sawGrow || !sawShrink || !sawIdx || !sawListMoving {
		t.Fatalf("slab growth %v, slab shrink %v, index move %v, Sessions during a move %v", sawGrow, sawShrink, sawIdx, sawListMoving)
	}
}
