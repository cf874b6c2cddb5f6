package portalloc

import (
	"net/netip"
	"testing"

	"github.com/portspace/portspace/tuple"
)

// TestDeterministicCSIT checks the CSIT NAT44det shape: inside /20 onto an
// outside /30 gives 1024 subscribers per address and 63 ports each.
func TestDeterministicCSIT(t *testing.T) {
	d, err := NewDeterministic([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/20")},
		[]netip.Addr{netip.MustParseAddr("192.0.2.0"), netip.MustParseAddr("192.0.2.1"),
			netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")}, tuple.PortRange{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Ratio() != 1024 || d.BlockSize() != 63 {
		t.Fatalf("ratio %d block %d, want 1024 and 63", d.Ratio(), d.BlockSize())
	}
	out, blk, ok := d.Forward(netip.MustParseAddr("100.64.4.1")) // index 1025
	if !ok || out != netip.MustParseAddr("192.0.2.1") || blk != tuple.PortRangeFrom(1024+63, 1024+125) {
		t.Fatalf("Forward = %v %v %v", out, blk, ok)
	}
}

// TestDeterministicRoundTrip: Reverse inverts Forward for every port of
// every block, blocks never overlap, and ports outside blocks have no owner.
func TestDeterministicRoundTrip(t *testing.T) {
	inside := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/26"), netip.MustParsePrefix("10.9.0.0/27")}
	outside := []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.9")}
	d, err := NewDeterministic(inside, outside, tuple.PortRangeFrom(2000, 2999))
	if err != nil {
		t.Fatal(err)
	}
	owner := map[netip.AddrPort]netip.Addr{}
	for _, p := range inside {
		for a := p.Addr(); p.Contains(a); a = a.Next() {
			out, blk, ok := d.Forward(a)
			if !ok || blk.Len() != d.BlockSize() {
				t.Fatalf("Forward(%v) = %v %v %v", a, out, blk, ok)
			}
			for port := range blk.All() {
				ep := netip.AddrPortFrom(out, port)
				if prev, dup := owner[ep]; dup {
					t.Fatalf("%v owned by %v and %v", ep, prev, a)
				}
				owner[ep] = a
				if back, ok := d.Reverse(ep); !ok || back != a {
					t.Fatalf("Reverse(%v) = %v %v, want %v", ep, back, ok, a)
				}
			}
		}
	}
	for _, o := range outside {
		for port := 0; port < 65536; port++ {
			ep := netip.AddrPortFrom(o, uint16(port))
			if _, owned := owner[ep]; !owned {
				if in, ok := d.Reverse(ep); ok {
					t.Fatalf("Reverse(%v) = %v for an unowned port", ep, in)
				}
			}
		}
	}
	if _, _, ok := d.Forward(netip.MustParseAddr("10.0.1.0")); ok {
		t.Fatal("Forward of an outside address succeeded")
	}
	if n := testing.AllocsPerRun(100, func() {
		d.Forward(netip.MustParseAddr("10.9.0.3"))
		d.Reverse(netip.MustParseAddrPort("198.51.100.7:2500"))
	}); n != 0 {
		t.Fatalf("Forward/Reverse allocate %v", n)
	}
}

func TestDeterministicErrors(t *testing.T) {
	out := []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	for name, in := range map[string][]netip.Prefix{
		"none":    nil,
		"ipv6":    {netip.MustParsePrefix("2001:db8::/64")},
		"overlap": {netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.0.0.128/25")},
		"toomany": {netip.MustParsePrefix("10.0.0.0/8")},
	} {
		if _, err := NewDeterministic(in, out, tuple.PortRange{}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestDeterministicUnevenDivision: when the inside addresses do not divide
// evenly over the outside addresses (4 over 3, 5 over 2, 3 over 4), RFC 7422
// §2's ratio is rounded up: every inside address still gets a block on one
// of the outside addresses, no two share a port, Reverse gives every port
// of a block back to its owner, and Reverse of any port of any outside
// address answers without panicking.
func TestDeterministicUnevenDivision(t *testing.T) {
	for _, c := range []struct {
		inside []string
		nOut   int
		ports  tuple.PortRange
	}{
		{[]string{"10.0.0.0/30"}, 3, tuple.PortRangeFrom(1024, 1035)},
		{[]string{"10.0.0.0/30", "10.0.1.7/32"}, 2, tuple.PortRangeFrom(2000, 2010)},
		{[]string{"10.0.0.0/31", "10.0.9.1/32"}, 4, tuple.PortRangeFrom(5000, 5006)},
		{[]string{"10.0.0.0/29"}, 3, tuple.PortRangeFrom(1024, 1031)},
	} {
		var inside []netip.Prefix
		for _, s := range c.inside {
			inside = append(inside, netip.MustParsePrefix(s))
		}
		var outside []netip.Addr
		for i := range c.nOut {
			outside = append(outside, netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}))
		}
		d, err := NewDeterministic(inside, outside, c.ports)
		if err != nil {
			t.Fatalf("%v over %d: %v", c.inside, c.nOut, err)
		}
		owner := map[netip.AddrPort]netip.Addr{}
		n := 0
		for _, p := range inside {
			for a := p.Addr(); p.Contains(a); a = a.Next() {
				n++
				out, blk, ok := d.Forward(a)
				if !ok || !blk.IsValid() || blk.Len() != d.BlockSize() || !c.ports.Contains(blk.First()) || !c.ports.Contains(blk.Last()) {
					t.Fatalf("%v over %d: Forward(%v) = %v %v %v", c.inside, c.nOut, a, out, blk, ok)
				}
				for port := range blk.All() {
					ep := netip.AddrPortFrom(out, port)
					if o, dup := owner[ep]; dup {
						t.Fatalf("%v over %d: %v owned by %v and %v", c.inside, c.nOut, ep, o, a)
					}
					owner[ep] = a
					if back, ok := d.Reverse(ep); !ok || back != a {
						t.Fatalf("%v over %d: Reverse(%v) = %v %v, want %v", c.inside, c.nOut, ep, back, ok, a)
					}
				}
			}
		}
		if want := (n + c.nOut - 1) / c.nOut; d.Ratio() != want {
			t.Fatalf("%v over %d: ratio %d, want ⌈%d/%d⌉ = %d", c.inside, c.nOut, d.Ratio(), n, c.nOut, want)
		}
		for _, o := range outside {
			for port := range c.ports.All() {
				ep := netip.AddrPortFrom(o, port)
				if back, ok := d.Reverse(ep); ok != (owner[ep].IsValid()) || ok && back != owner[ep] {
					t.Fatalf("%v over %d: Reverse(%v) = %v %v, owner %v", c.inside, c.nOut, ep, back, ok, owner[ep])
				}
			}
		}
	}
}
