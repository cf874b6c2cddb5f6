package proxy

import (
	"net/netip"
	"testing"
)

func TestGuard(t *testing.T) {
	g := Guard{
		Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.10/32"), netip.MustParsePrefix("10.9.0.0/16")},
		Deny:  []netip.Prefix{netip.MustParsePrefix("10.9.9.0/24"), netip.MustParsePrefix("203.0.113.0/24")},
		Own:   []netip.Addr{netip.MustParseAddr("198.51.100.7")},
	}
	cases := map[string]Reason{
		"127.0.0.1":        Loopback,
		"127.0.0.10":       None,
		"::1":              Loopback,
		"::ffff:127.0.0.1": Loopback,
		"10.1.2.3":         Private,
		"172.16.0.1":       Private,
		"192.168.0.1":      Private,
		"10.9.1.1":         None,
		"10.9.9.9":         Denied,
		"fd00::1":          Private,
		"169.254.1.1":      LinkLocal,
		"fe80::1":          LinkLocal,
		"100.64.0.1":       SharedCGN,
		"100.127.255.255":  SharedCGN,
		"100.128.0.1":      None,
		"224.0.0.1":        LinkLocal,
		"239.1.2.3":        Multicast,
		"ff02::1":          LinkLocal,
		"ff0e::1":          Multicast,
		"0.0.0.0":          Unspecified,
		"0.1.2.3":          Unspecified,
		"::":               Unspecified,
		"255.255.255.255":  Reserved,
		"240.0.0.1":        Reserved,
		"198.51.100.7":     Own,
		"203.0.113.5":      Denied,
		"8.8.8.8":          None,
		"2606:4700::1111":  None,
		"64:ff9b::a00:1":   Private,  // NAT64 of 10.0.0.1
		"2002:7f00:1::1":   Loopback, // 6to4 of 127.0.0.1
		"fc00::1":          Private,
		"3fff::1":          None,
		"4000::1":          Reserved,
	}
	for s, want := range cases {
		if got := g.Check(netip.MustParseAddr(s)); got != want {
			t.Errorf("%s: %v, want %v", s, got, want)
		}
	}
	var zero Guard
	if zero.Check(netip.MustParseAddr("127.0.0.10")) != Loopback {
		t.Error("the zero Guard allows loopback")
	}
}
