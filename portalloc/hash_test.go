package portalloc

import (
	"net/netip"
	"testing"
)

// TestSipHashVector checks Sum64 against the reference vectors of the
// SipHash paper (key 00..0f, message 00..n-1).
func TestSipHashVector(t *testing.T) {
	var k Secret
	for i := range k {
		k[i] = byte(i)
	}
	msg := make([]byte, 64)
	for i := range msg {
		msg[i] = byte(i)
	}
	for _, tc := range []struct {
		n    int
		want uint64
	}{
		{0, 0x726fdb47dd0e0e31},
		{1, 0x74f839c593dc67fd},
		{8, 0x93f5f5799a932462},
		{15, 0xa129ca6149be45e5},
	} {
		if got := k.Sum64(msg[:tc.n]); got != tc.want {
			t.Errorf("SipHash(%d bytes) = %#x, want %#x", tc.n, got, tc.want)
		}
	}
}

func TestOffsetKeyed(t *testing.T) {
	s1, s2 := NewSecret(), NewSecret()
	l := netip.MustParseAddr("10.0.0.1")
	r := netip.MustParseAddrPort("192.0.2.1:443")
	if a, b := Offset(s1, l, r), Offset(s1, l, r); a != b {
		t.Fatal("Offset is not deterministic")
	}
	if Offset(s1, l, r) == Offset(s2, l, r) && Offset(s1, l, netip.MustParseAddrPort("192.0.2.1:80")) == Offset(s2, l, netip.MustParseAddrPort("192.0.2.1:80")) {
		t.Fatal("Offset does not depend on the secret")
	}
	if Offset(s1, l, r) == Offset(s1, l, netip.MustParseAddrPort("192.0.2.2:443")) &&
		Offset(s1, l, r) == Offset(s1, l, netip.MustParseAddrPort("192.0.2.3:443")) {
		t.Fatal("Offset does not depend on the remote address")
	}
	if n := testing.AllocsPerRun(100, func() { Offset(s1, l, r) }); n != 0 {
		t.Fatalf("Offset allocates %v", n)
	}
}
