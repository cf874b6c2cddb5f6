package steer

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/tuple"
)

// FuzzPlan builds plans from two slices given in tuple.PortSet syntax
// (ranges or the PSID form) held by one or two hosts, and checks that
// overlapping slices are refused and that otherwise both forms steer every
// port to the host holding it and no other port anywhere.
func FuzzPlan(f *testing.F) {
	for _, seed := range []struct {
		a, b string
		same bool
	}{
		{"1024-2047", "2048-3071", false},           // adjacent, two hosts
		{"1024-2047", "2048-3071", true},            // adjacent, one host: merged
		{"1024-2047", "2000-2100", false},           // overlapping
		{"a=6,k=6,psid=1", "a=6,k=6,psid=2", false}, // interleaved PSID sets
		{"a=6,k=6,psid=1", "1040", false},           // a port inside a PSID set
		{"65535", "0-10,65000-65534", true},         // the edges of the port space
		{"1,3,5,7", "2,4,6", false},                 // many one-port ranges
		{"0-4999", "60001-65535", false},            // unaligned, too many ports for a hash map
		{"1024-1087", "1088-1151", false},           // 64-port blocks: a hash map, mask 0xffc0
	} {
		f.Add(seed.a, seed.b, seed.same)
	}
	f.Fuzz(func(t *testing.T, a, b string, same bool) {
		pa, err := tuple.ParsePortSet(a)
		if err != nil {
			return
		}
		pb, err := tuple.ParsePortSet(b)
		if err != nil {
			return
		}
		h1, h2 := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.2.2")
		if same {
			h2 = h1
		}
		la, lb := held("x/0", "192.0.2.10", "1", h1.String()), held("x/1", "192.0.2.10", "1", h2.String())
		la.Ports, lb.Ports = pa, pb
		p, err := NewPlan([]lease.Lease{la, lb}, t0, Options{}, nil)
		if pa.Intersect(pb).IsValid() {
			if !errors.Is(err, ErrOverlap) {
				t.Fatalf("overlapping %q and %q: err = %v", a, b, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("%q, %q: %v", a, b, err)
		}
		table := map[netip.Addr]uint32{}
		for _, h := range p.Hosts {
			table[h.Addr] = h.Table
		}
		chain := map[string]uint32{}
		maps, chains := p.NFT()
		for _, c := range chains {
			chain[c.Name] = table[c.Host]
		}
		ipRules := map[tuple.Proto][]Rule{}
		for _, r := range p.Rules(FormIP) {
			if r.Dport.IsValid() {
				ipRules[r.Proto] = append(ipRules[r.Proto], r)
			}
		}
		if len(maps) != 1 {
			t.Fatalf("%d maps, want 1", len(maps))
		}
		for port := 0; port <= 65535; port++ {
			var want uint32
			switch {
			case pa.Contains(uint16(port)):
				want = table[h1]
			case pb.Contains(uint16(port)):
				want = table[h2]
			}
			var got uint32
			m := maps[0]
			for _, e := range m.Elems {
				if m.Hash {
					// The kernel looks the masked port up: the element
					// whose key (its first port) it equals, and each
					// element is one block of 2^Shift ports.
					if e.Ports.First()&m.Mask() != e.Ports.First() || int(e.Ports.Last()-e.Ports.First()) != 1<<m.Shift-1 {
						t.Fatalf("hash element %v is not a block of 2^%d ports", e.Ports, m.Shift)
					}
					if e.Ports.First() != uint16(port)&m.Mask() {
						continue
					}
				} else if !e.Ports.Contains(uint16(port)) {
					continue
				}
				if got != 0 {
					t.Fatalf("port %d is in two map elements", port)
				}
				got = chain[e.Chain]
			}
			if got != want {
				t.Fatalf("%q, %q: nft steers port %d to table %d, want %d", a, b, port, got, want)
			}
			for _, proto := range []tuple.Proto{tuple.TCP, tuple.UDP} {
				got = 0
				for _, r := range ipRules[proto] {
					if r.Dport.Contains(uint16(port)) {
						got = r.Table
						break // the first matching rule wins
					}
				}
				if got != want {
					t.Fatalf("%q, %q: ip rules steer %v port %d to table %d, want %d", a, b, proto, port, got, want)
				}
			}
		}
	})
}

// FuzzParseFormat checks that ParseForm and ParseFormat accept exactly the
// names their String forms and docs give, and never panic.
func FuzzParseFormat(f *testing.F) {
	for _, s := range []string{"ip", "nft", "nft-ip", "hosts", "", "IP", "nft "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if fm, err := ParseForm(s); err == nil && fm.String() != s {
			t.Fatalf("ParseForm(%q) = %v", s, fm)
		}
		_, err := ParseFormat(s)
		if ok := s == "ip" || s == "nft" || s == "nft-ip" || s == "hosts"; ok != (err == nil) {
			t.Fatalf("ParseFormat(%q): %v", s, err)
		}
	})
}
