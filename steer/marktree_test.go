package steer

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/portspace/portspace/lease"
)

// hostsLeases returns one 64-port slice of 192.0.2.10 per host, n hosts
// (10.0.x.y), and of 2001:db8::10 for every third host when v6.
func hostsLeases(n int, v6 bool) []lease.Lease {
	var ls []lease.Lease
	for i := range n {
		lo := 1024 + 64*i
		ports := fmt.Sprintf("%d-%d", lo, lo+63)
		if v6 && i%3 == 0 {
			ls = append(ls, held(fmt.Sprint("v6/", i), "2001:db8::10", ports, fmt.Sprintf("fd00::%x", i+2)))
			continue
		}
		ls = append(ls, held(fmt.Sprint("v4/", i), "192.0.2.10", ports, fmt.Sprintf("10.0.%d.%d", i/200, 2+i%200)))
	}
	return ls
}

// walk models the kernel's rule walk (fib_rules_lookup): rules in order,
// a matching goto continues at the first rule of its target priority, and
// the first matching lookup rule gives the table (a goto whose target
// priority has no rule is skipped, as the kernel skips an unresolved
// one). It returns 0 when no
// rule matches and the number of rules visited.
func walk(rs []Rule, v6 bool, mark uint32, dst netip.Addr) (table uint32, visited int) {
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		if r.V6 != v6 {
			continue
		}
		visited++
		if r.Mask != 0 && (mark^r.Mark)&r.Mask != 0 || r.Dst.IsValid() && !r.Dst.Contains(dst) {
			continue
		}
		if r.Goto == 0 {
			return r.Table, visited
		}
		j := i + 1
		for j < len(rs) && !(rs[j].V6 == v6 && rs[j].Priority == r.Goto) {
			j++
		}
		if j < len(rs) { // a goto to a priority with no rule is skipped
			i = j - 1
		}
	}
	return 0, visited
}

// kernelOrder sorts rules by priority as the kernel keeps them; rules of
// one priority keep their order unless shuffle is set, which mixes them as
// an Apply that adds them in any order might.
func kernelOrder(rs []Rule, shuffle *rand.Rand) []Rule {
	out := append([]Rule(nil), rs...)
	if shuffle != nil {
		shuffle.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	}
	// A stable insertion sort by priority keeps the (shuffled) order
	// within a priority.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j-1].Priority > out[j].Priority; j-- {
			out[j-1], out[j] = out[j], out[j-1]
		}
	}
	return out
}

// TestMarkTree checks FormNFT's fwmark rules for 1, 16, 17, 101 and 999
// hosts (mark groups of 16: one group, a full one, one over, the
// benchmark's 101 and the most): every host's mark reaches its table,
// whatever the order of the rules within a priority, within groups + 16
// rule visits; marks of no host, and unmarked packets, reach the
// catch-all; and the rules stay inside the owned priorities.
func TestMarkTree(t *testing.T) {
	if k := (Options{}).MarkShift(); k != 4 {
		t.Fatalf("MarkShift() = %d for the defaults, want 4", k)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 16, 17, 101, 999} {
		for _, v6 := range []bool{false, true} {
			p, err := NewPlan(hostsLeases(n, v6), t0, Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			groups := map[bool]map[uint32]bool{false: {}, true: {}}
			for _, h := range p.Hosts {
				groups[h.Addr.Is6()][h.Mark>>4] = true
			}
			for try := range 3 {
				var shuffle *rand.Rand
				if try > 0 {
					shuffle = rng
				}
				rs := kernelOrder(p.Rules(FormNFT), shuffle)
				for _, r := range rs {
					if r.Priority < DefaultPriority || r.Priority >= DefaultPriority+PriorityRange ||
						r.Goto != 0 && (r.Goto <= r.Priority || r.Goto >= DefaultPriority+missOffset || r.Table != 0) {
						t.Fatalf("%d hosts: rule %+v outside the owned priorities or not a forward goto", n, r)
					}
				}
				for _, h := range p.Hosts {
					dst := netip.MustParseAddr("192.0.2.10")
					if h.Addr.Is6() {
						dst = netip.MustParseAddr("2001:db8::10")
					}
					table, visited := walk(rs, h.Addr.Is6(), h.Mark, dst)
					if table != h.Table {
						t.Fatalf("%d hosts (v6 %v, shuffle %d): mark %#x reached table %d, want %d", n, v6, try, h.Mark, table, h.Table)
					}
					if max := len(groups[h.Addr.Is6()]) + 16; visited > max {
						t.Errorf("%d hosts: mark %#x visited %d rules, want at most %d", n, h.Mark, visited, max)
					}
					if table, _ := walk(rs, h.Addr.Is6(), h.Mark+DefaultMaxHosts+1, dst); table != DefaultTableBase {
						t.Errorf("%d hosts: a mark of no host reached table %d, want the catch-all", n, table)
					}
					if table, _ := walk(rs, h.Addr.Is6(), 0, dst); table != DefaultTableBase {
						t.Errorf("%d hosts: an unmarked packet reached table %d, want the catch-all", n, table)
					}
				}
			}
		}
	}
}

// TestMarkTreeFlat: with at most 79 hosts allowed, every fwmark rule sits
// at Priority+10 and no goto is made.
func TestMarkTreeFlat(t *testing.T) {
	o := Options{MaxHosts: 79}
	if k := o.MarkShift(); k != 0 {
		t.Fatalf("MarkShift() = %d for 79 hosts, want 0", k)
	}
	p, err := NewPlan(hostsLeases(40, false), t0, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	rs := p.Rules(FormNFT)
	for _, r := range rs[:40] {
		if r.Goto != 0 || r.Priority != DefaultPriority+sliceOffset || r.Mask != 0xffffffff {
			t.Errorf("flat rule %+v", r)
		}
	}
	if len(rs) != 40+len(p.Shared) {
		t.Errorf("%d rules, want %d", len(rs), 40+len(p.Shared))
	}
}
