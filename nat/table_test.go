package nat

import (
	"math/rand/v2"
	"testing"
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
