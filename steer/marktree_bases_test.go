package steer

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestMarkTreeBoundaries checks FormNFT's fwmark tree where its group
// arithmetic is tight: MaxHosts 632, whose 632 marks fill exactly 79 groups
// of 8 (k = 3) when MarkBase+1 is a multiple of 16 (MarkBase 0x7073000f) and
// would need 80 such groups from the default MarkBase (so k = 4 there), and
// MarkBase 0x7073000f with the default 999 hosts. With every host present,
// each host's mark reaches its table in any order of the rules within a
// priority, within groups + 2^k visits; every fwmark rule and goto target
// lies below the catch-all priority; and a mark of no host reaches the
// catch-all.
func TestMarkTreeBoundaries(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, c := range []struct {
		base  uint32
		hosts int
		k     uint
	}{{0, 632, 4}, {0x7073000f, 632, 3}, {0x7073000f, 999, 4}} {
		o := Options{MarkBase: c.base, MaxHosts: c.hosts}
		k := o.MarkShift()
		if k != c.k {
			t.Errorf("MarkBase %#x, MaxHosts %d: MarkShift() = %d, want %d", c.base, c.hosts, k, c.k)
		}
		p, err := NewPlan(hostsLeases(c.hosts, false), t0, o, nil)
		if err != nil {
			t.Fatal(err)
		}
		groups := map[uint32]bool{}
		for _, h := range p.Hosts {
			groups[h.Mark>>k] = true
		}
		miss := uint32(DefaultPriority + missOffset)
		dst := netip.MustParseAddr("192.0.2.10")
		for try := range 3 {
			var shuffle *rand.Rand
			if try > 0 {
				shuffle = rng
			}
			rs := kernelOrder(p.Rules(FormNFT), shuffle)
			for _, r := range rs {
				if r.Mask != 0 && r.Priority >= miss || r.Goto != 0 && (r.Goto <= r.Priority || r.Goto >= miss) {
					t.Fatalf("MarkBase %#x, MaxHosts %d: rule %+v at or past the catch-all priority %d", c.base, c.hosts, r, miss)
				}
			}
			for _, h := range p.Hosts {
				table, visited := walk(rs, false, h.Mark, dst)
				if table != h.Table {
					t.Fatalf("MarkBase %#x, MaxHosts %d (shuffle %d): mark %#x reached table %d, want %d", c.base, c.hosts, try, h.Mark, table, h.Table)
				}
				if max := len(groups) + 1<<k; visited > max {
					t.Errorf("MarkBase %#x, MaxHosts %d: mark %#x visited %d rules, want at most %d", c.base, c.hosts, h.Mark, visited, max)
				}
			}
			if table, _ := walk(rs, false, p.Hosts[len(p.Hosts)-1].Mark+1, dst); table != DefaultTableBase {
				t.Errorf("MarkBase %#x, MaxHosts %d: a mark of no host reached table %d, want the catch-all", c.base, c.hosts, table)
			}
		}
	}
}
