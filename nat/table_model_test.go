package nat

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/packet"
	"github.com/portspace/portspace/portalloc"
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
	var sawGrow, sawShrink, sawTurn, sawIdxGrow, sawIdxShrink, sawOldHit, sawDelMoving, sawAway bool
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
				if tb.moving && !sawAway {
					for j := range tb.s[tb.cs] {
						v := &tb.s[tb.cs][j]
						if k := tb.keyOf(v, kind0(v)); v.flags != 0 && tb.atHome(tb.hash(k), k, kind0(v)) == 0 {
							sawAway = true // found through the index only
							break
						}
					}
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
	if !sawGrow || !sawShrink || !sawTurn || !sawIdxGrow || !sawIdxShrink || !sawOldHit || !sawDelMoving || !sawAway {
		t.Fatalf("slab growth %v, slab shrink %v, shrink turned round %v, index growth %v, index shrink %v, "+
			"look-up in the slab being emptied %v, deletion there %v, record away from home during a move %v",
			sawGrow, sawShrink, sawTurn, sawIdxGrow, sawIdxShrink, sawOldHit, sawDelMoving, sawAway)
	}
	t.Logf("%d steps", step)
}

// TestEngineModelMoves drives an engine with random new flows, refreshes,
// replies, clock advances and partial sweeps (ExpireSome with small
// budgets), so that the slab and the index grow and shrink under traffic,
// and checks it against a model of each session's last packet. Each
// internal endpoint talks to two remote ports, so a mapping has an owner
// and a second session (found inbound by its own key 1), and under ADF a
// filter record. A mapping with a session seen within its timer keeps its
// external endpoint, a reply reaches the internal endpoint, a session idle
// past its timer is gone after a sweep, and Sessions (during moves too)
// lists every live session once.
func TestEngineModelMoves(t *testing.T) {
	for _, f := range []Filtering{FilterEIF, FilterADF} {
		t.Run(f.String(), func(t *testing.T) { runEngineModel(t, f) })
	}
}

func runEngineModel(t *testing.T, filt Filtering) {
	const timeout = 60 * time.Second
	cfg := benchConfig()
	cfg.UDPTimeout = timeout
	cfg.Filtering = filt
	cfg.Secret = portalloc.Secret{byte(filt), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} // the same hashes every run
	e := newEngine(t, cfg)
	r := rand.New(rand.NewPCG(5, uint64(filt)))
	tmpl := udpPkt(t, hostA, srv1)
	type flow struct {
		ext  netip.AddrPort
		last [2]time.Time // per remote port; zero: never
	}
	model := map[int]*flow{}
	var ids []int // mappings ever opened
	now := t0
	var buf []byte
	remote := func(i, k int) netip.AddrPort {
		_, dst := flowEndpoints(i)
		return netip.AddrPortFrom(dst.Addr(), dst.Port()+uint16(k))
	}
	out := func(i, k int) netip.AddrPort {
		t.Helper()
		buf = flowPacket(buf, tmpl, i)
		var p packet.Packet
		if p.Parse(buf) != nil || p.SetDst(remote(i, k)) != nil {
			t.Fatal("bad template")
		}
		if v := e.Outbound(buf, now); v.Action != Forward {
			t.Fatalf("%v: flow %d/%d: %v %s", now.Sub(t0), i, k, v.Action, v.Reason)
		}
		if err := p.Parse(buf); err != nil {
			t.Fatal(err)
		}
		return netip.AddrPortFrom(p.Src(), p.SrcPort())
	}
	// alive: certainly alive (true, true), certainly dead (false, true).
	alive := func(last time.Time) (bool, bool) {
		d := now.Sub(last)
		switch {
		case last.IsZero() || d > timeout+2*time.Second:
			return false, true
		case d < timeout-2*time.Second:
			return true, true
		}
		return false, false
	}
	// mapping: whether some session of f is certainly alive, or all are
	// certainly dead.
	mapping := func(f *flow) (bool, bool) {
		l0, s0 := alive(f.last[0])
		l1, s1 := alive(f.last[1])
		return l0 || l1, l0 || l1 || s0 && s1
	}
	sawGrow, sawShrink, sawIdx, sawListMoving, sawExpireMoving := false, false, false, false, false
	next, movingChecks := 0, 0
	for step := 0; step < 100_000; step++ {
		if e.t.moving {
			g := len(e.t.s[e.t.cs]) > len(e.t.s[e.t.cs^1])
			sawGrow, sawShrink = sawGrow || g, sawShrink || !g
		}
		sawIdx = sawIdx || e.t.old != nil
		// Waves: bursts of new flows, then quiet times in which they expire.
		wave := step / 20_000 % 2
		switch x := r.IntN(100); {
		case x < 25 && wave == 0 || x < 3:
			i := next
			next++
			ids = append(ids, i)
			f := &flow{}
			f.ext = out(i, 0)
			f.last[0] = now
			model[i] = f
		case x < 50:
			if len(ids) == 0 {
				continue
			}
			i, k := ids[r.IntN(len(ids))], r.IntN(2)
			f := model[i]
			live, _ := mapping(f)
			ext := out(i, k)
			if live && ext != f.ext {
				t.Fatalf("%v: flow %d/%d left from %v, was %v", now.Sub(t0), i, k, ext, f.ext)
			}
			f.ext, f.last[k] = ext, now
		case x < 75:
			if len(ids) == 0 {
				continue
			}
			i, k := ids[r.IntN(len(ids))], r.IntN(2)
			f := model[i]
			live, sure := mapping(f)
			if !sure {
				continue
			}
			src, _ := flowEndpoints(i)
			buf = append(buf[:0], tmpl...)
			var p packet.Packet
			if p.Parse(buf) != nil || p.SetSrc(remote(i, k)) != nil || p.SetDst(f.ext) != nil {
				t.Fatal("bad template")
			}
			v := e.Inbound(buf, now)
			delivered := v.Action == Forward && p.Parse(buf) == nil && netip.AddrPortFrom(p.Dst(), p.DstPort()) == src
			if live && !delivered {
				t.Fatalf("%v: reply to flow %d/%d via %v: %v %s, to %v", now.Sub(t0), i, k, f.ext, v.Action, v.Reason, p.Dst())
			}
			// A mapping whose sessions have all expired is gone for
			// replies too, before any sweep (a zombie's timer).
			if !live && delivered {
				t.Fatalf("%v: reply to expired flow %d/%d via %v delivered", now.Sub(t0), i, k, f.ext)
			}
		case x < 90:
			if wave == 0 {
				now = now.Add(time.Duration(r.IntN(10)) * time.Millisecond)
			} else {
				now = now.Add(time.Duration(r.IntN(1500)) * time.Millisecond)
			}
		case x < 99 || r.IntN(10) != 0:
			moving, before := e.t.moving, e.Stats().Expired
			e.ExpireSome(now, []int{1, 8, 64, 512, 4096}[r.IntN(5)])
			sawExpireMoving = sawExpireMoving || moving && e.Stats().Expired > before
			if e.t.moving && len(e.t.s[e.t.cs]) < len(e.t.s[e.t.cs^1]) {
				sawShrink = true // a shrink this call started
			}
		default:
			e.Expire(now)
		}
		full := step%4000 == 0
		if full || e.t.moving && step%50 == 0 && movingChecks < 40 {
			if err := e.t.check(); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			if err := checkSlots(e.t); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			if e.t.moving {
				sawListMoving = true
				movingChecks++
			}
			type sk struct{ in, rem netip.AddrPort }
			list := func() map[sk]netip.AddrPort {
				l := map[sk]netip.AddrPort{}
				for s := range e.Sessions() {
					k := sk{s.Internal, s.Remote}
					if _, dup := l[k]; dup {
						t.Fatalf("step %d: session %v listed twice", step, k)
					}
					l[k] = s.External
				}
				return l
			}
			for _, sweep := range []bool{false, true} {
				if sweep && !full {
					break
				}
				if sweep {
					e.Expire(now) // after a full sweep no idle session is listed
				}
				l := list()
				for i, f := range model {
					src, _ := flowEndpoints(i)
					for k := range 2 {
						ext, ok := l[sk{src, remote(i, k)}]
						switch live, sure := alive(f.last[k]); {
						case live && ext != f.ext:
							t.Fatalf("step %d (sweep %v): live session %d/%d listed as %v, want %v", step, sweep, i, k, ext, f.ext)
						case sweep && !live && sure && ok:
							t.Fatalf("step %d: after a sweep session %d/%d idle for %v listed", step, i, k, now.Sub(f.last[k]))
						}
					}
				}
				if st := e.Stats(); sweep && st.Sessions != len(l) {
					t.Fatalf("step %d: %d sessions counted, %d listed", step, st.Sessions, len(l))
				}
			}
		}
	}
	if !sawGrow || !sawShrink || !sawIdx || !sawListMoving || !sawExpireMoving {
		t.Fatalf("slab growth %v, slab shrink %v, index move %v, Sessions during a move %v, expiry during a move %v",
			sawGrow, sawShrink, sawIdx, sawListMoving, sawExpireMoving)
	}
}

// TestTableLimits: the largest record index (the last position of slab 1
// at its largest) plus one fits a slot's index bits without touching the
// which bit, a home line pair of the largest slab lies inside it for any
// hash, and New refuses MaxSessions and ExpectedSessions above half the
// records the table holds (as Reload refuses MaxSessions), naming the
// field.
func TestTableLimits(t *testing.T) {
	if last := uint32(1<<slabBit|(maxSlab-1)) + 1; last > idxMask || last&whichBit != 0 {
		t.Fatalf("record index+1 %#x does not fit %#x", last, idxMask)
	}
	if maxRecords/2 != 33_554_430 {
		t.Fatalf("session cap %d", maxRecords/2)
	}
	for _, h := range []uint64{0, 1 << 32, ^uint64(0) >> 1, ^uint64(0) - 1<<32, ^uint64(0)} {
		p := homeOf(h, maxSlab)
		for _, q := range [4]uint32{p, p + 1, p ^ 2, p ^ 2 + 1} {
			if q >= maxSlab {
				t.Fatalf("hash %#x: home pair position %d beyond a slab of %d", h, q, maxSlab)
			}
		}
	}
	ok := testConfig(func(c *Config) { c.MaxSessions = maxRecords / 2 })
	e := newEngine(t, ok)
	for _, c := range []struct {
		field string
		mut   func(*Config)
	}{
		{"MaxSessions", func(c *Config) { c.MaxSessions = maxRecords/2 + 1 }},
		{"ExpectedSessions", func(c *Config) { c.ExpectedSessions = maxRecords/2 + 1 }},
	} {
		var ce *ConfigError
		if _, err := New(testConfig(c.mut)); !errors.As(err, &ce) || ce.Field != c.field {
			t.Fatalf("%s over the cap: %v", c.field, err)
		}
	}
	cfg := ok
	cfg.MaxSessions = maxRecords/2 + 1
	var ce *ConfigError
	if err := e.Reload(cfg); !errors.As(err, &ce) || ce.Field != "MaxSessions" {
		t.Fatalf("Reload with MaxSessions over the cap: %v", err)
	}
	if e.cfg.MaxSessions != maxRecords/2 {
		t.Fatalf("MaxSessions %d after a refused Reload", e.cfg.MaxSessions)
	}
}
