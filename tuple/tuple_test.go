package tuple

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"unsafe"
)

func TestProtoParseString(t *testing.T) {
	for _, p := range []Proto{TCP, UDP, ICMP} {
		got, err := ParseProto(p.String())
		if err != nil || got != p {
			t.Errorf("ParseProto(%q) = %v, %v", p.String(), got, err)
		}
	}
	if _, err := ParseProto("sctp"); !errors.Is(err, ErrSyntax) {
		t.Errorf("ParseProto(sctp) error = %v, want ErrSyntax", err)
	}
	if Proto(132).IsValid() || Proto(132).String() != "proto(132)" {
		t.Errorf("Proto(132) = %v valid=%v", Proto(132), Proto(132).IsValid())
	}
}

func TestTupleRoundTrip(t *testing.T) {
	for _, s := range []string{
		"tcp 192.0.2.1:40000->198.51.100.7:443",
		"udp [2001:db8::1]:5353->[2001:db8::2]:53",
	} {
		tp, err := ParseTuple(s)
		if err != nil {
			t.Fatalf("ParseTuple(%q): %v", s, err)
		}
		if tp.String() != s || !tp.IsValid() {
			t.Errorf("round trip %q -> %q valid=%v", s, tp.String(), tp.IsValid())
		}
		if tp.Reverse().Reverse() != tp || tp.Reverse().Local != tp.Remote {
			t.Errorf("Reverse of %v wrong: %v", tp, tp.Reverse())
		}
	}
	for _, bad := range []string{
		"", "tcp", "tcp 1.2.3.4:1", "xyz 1.2.3.4:1->1.2.3.4:2",
		"tcp 1.2.3.4->1.2.3.4:2", "tcp 1.2.3.4:1->[::1]:2",
	} {
		if _, err := ParseTuple(bad); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseTuple(%q) error = %v, want ErrSyntax", bad, err)
		}
	}
	// Tuples are comparable map keys.
	m := map[Tuple]int{MustParseTuple("tcp 10.0.0.1:1->10.0.0.2:2"): 1}
	if m[From(TCP, netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:2"))] != 1 {
		t.Error("equal tuples are not the same map key")
	}
}

func TestPortRange(t *testing.T) {
	r := MustParsePortRange("40000-40999")
	if r.Len() != 1000 || r.First() != 40000 || r.Last() != 40999 || !r.Contains(40500) || r.Contains(41000) ||
		!r.Contains(40000) || !r.Contains(40999) || r.Contains(39999) {
		t.Errorf("range %v: len %d first %d last %d", r, r.Len(), r.First(), r.Last())
	}
	if r.String() != "40000-40999" || SinglePort(80).String() != "80" {
		t.Errorf("String: %q %q", r.String(), SinglePort(80).String())
	}
	if full := MustParsePortRange("0-65535"); full.Len() != 65536 {
		t.Errorf("full range Len = %d", full.Len())
	}
	n := 0
	for p := range MustParsePortRange("65530-65535").All() {
		if p < 65530 {
			t.Fatalf("iteration went below range: %d", p)
		}
		n++
	}
	if n != 6 {
		t.Errorf("iterated %d ports of 65530-65535, want 6", n)
	}
	if PortRangeFrom(5, 4).IsValid() || (PortRange{}).Len() != 0 {
		t.Error("inverted or zero range should be invalid and empty")
	}
	if x := r.Intersect(MustParsePortRange("40990-50000")); x != PortRangeFrom(40990, 40999) {
		t.Errorf("Intersect = %v", x)
	}
	for _, bad := range []string{"", "-", "1-", "x", "70000", "5-4", "1-2-3", "+1", "0x10"} {
		if _, err := ParsePortRange(bad); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParsePortRange(%q) err = %v", bad, err)
		}
	}
}

func TestPortSetNormalises(t *testing.T) {
	s := MustParsePortSet("4000-4095, 1024-2047,2048-2050,1500,80")
	if got := s.String(); got != "80,1024-2050,4000-4095" {
		t.Errorf("String = %q", got)
	}
	if s.Len() != 1+1027+96 || s.NumRanges() != 3 {
		t.Errorf("Len %d NumRanges %d", s.Len(), s.NumRanges())
	}
	if s != MustParsePortSet("80,1024-2050,4000-4095") {
		t.Error("equal sets are not ==")
	}
	if !s.Contains(80) || s.Contains(81) || !s.Contains(4095) || s.Contains(4096) {
		t.Error("Contains wrong")
	}
	// Nth and Index are inverse and follow All's order.
	i := 0
	for p := range s.All() {
		if q, ok := s.Nth(i); !ok || q != p {
			t.Fatalf("Nth(%d) = %d,%v want %d", i, q, ok, p)
		}
		if s.Index(p) != i {
			t.Fatalf("Index(%d) = %d want %d", p, s.Index(p), i)
		}
		i++
	}
	if i != s.Len() {
		t.Errorf("All yielded %d ports, Len %d", i, s.Len())
	}
	if _, ok := s.Nth(s.Len()); ok {
		t.Error("Nth(Len) ok")
	}
	if s.Index(81) != -1 {
		t.Error("Index of absent port")
	}
}

func TestPortSetAlgebra(t *testing.T) {
	a := MustParsePortSet("1000-1999,3000-3999")
	b := MustParsePortSet("1500-3500")
	if got := a.Intersect(b).String(); got != "1500-1999,3000-3500" {
		t.Errorf("Intersect = %q", got)
	}
	if got := a.Union(b).String(); got != "1000-3999" {
		t.Errorf("Union = %q", got)
	}
	if got := a.Subtract(b).String(); got != "1000-1499,3501-3999" {
		t.Errorf("Subtract = %q", got)
	}
	if !a.ContainsSet(MustParsePortSet("1000,3999")) || a.ContainsSet(b) {
		t.Error("ContainsSet wrong")
	}
	if a.Bounds() != PortRangeFrom(1000, 3999) {
		t.Errorf("Bounds = %v", a.Bounds())
	}
}

// TestPSID checks the RFC 7597 §5.1 example shape: with a=6, k=8 each PSID
// holds 63 blocks of 4 ports, none below 1024.
func TestPSID(t *testing.T) {
	s, err := PSIDPortSet(6, 8, 0x34)
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 63*4 || s.NumRanges() != 63 {
		t.Errorf("a=6,k=8: Len %d ranges %d, want 252 and 63", s.Len(), s.NumRanges())
	}
	if s.Range(0).First() != 1<<10|0x34<<2 {
		t.Errorf("first range %v", s.Range(0))
	}
	for p := range s.All() {
		if p < 1024 || (p>>2)&0xff != 0x34 {
			t.Fatalf("port %d does not belong to PSID 0x34", p)
		}
	}
	// Every PSID's sets are disjoint and together cover 1024-65535.
	var all PortSet
	for id := range uint16(256) {
		s, _ := PSIDPortSet(6, 8, id)
		if all.Intersect(s).IsValid() {
			t.Fatalf("PSID %d overlaps earlier PSIDs", id)
		}
		all = all.Union(s)
	}
	if all.String() != "1024-65535" {
		t.Errorf("union of all PSIDs = %q", all.String())
	}
	p, err := ParsePortSet("k=8, psid=52, a=6")
	if err != nil || !p.Equal(s) && p.Len() != 252 {
		t.Fatalf("parse PSID form: %v %v", p, err)
	}
	if p.String() != "a=6,k=8,psid=52" {
		t.Errorf("PSID String = %q", p.String())
	}
	if q, _ := ParsePortSet("k=4,psid=3,a=0"); q.String() != "a=0,k=4,psid=3" || q.Bounds() != PortRangeFrom(3<<12, 4<<12-1) {
		t.Errorf("a=0 form: %v %v", q, q.Bounds())
	}
	for _, bad := range []string{"k=8", "a=6,k=8,psid=256", "a=10,k=8,psid=1", "a=6,k=8,psid=1,k=2", "x=1", "a=6,k=8,psid=-1"} {
		if _, err := ParsePortSet(bad); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParsePortSet(%q) err = %v", bad, err)
		}
	}
}

func TestPortSetErrorsNameInput(t *testing.T) {
	_, err := ParsePortSet("1024-2047,40x")
	var pe *ParseError
	if !errors.As(err, &pe) || pe.In != "1024-2047,40x" {
		t.Fatalf("err = %v", err)
	}
	if want := `tuple: parse port set "1024-2047,40x": item "40x": port "40x" is not a decimal number`; err.Error() != want {
		t.Errorf("err = %q\nwant %q", err, want)
	}
}

func TestAccessorsDoNotAllocate(t *testing.T) {
	s := MustParsePortSet("1024-2047,4000-4095,8080,9000-9999")
	r := MustParsePortRange("40000-40999")
	tp := MustParseTuple("tcp 10.0.0.1:1->10.0.0.2:2")
	var sink int
	allocs := testing.AllocsPerRun(1000, func() {
		if s.Contains(4001) {
			sink++
		}
		p, _ := s.Nth(1500)
		sink += s.Index(p) + s.Len() + r.Len()
		if r.Contains(40001) && tp.IsValid() && tp.Reverse().Reverse() == tp {
			sink++
		}
	})
	if allocs != 0 {
		t.Errorf("accessors allocate %v times per run", allocs)
	}
	_ = sink
}

func TestTextMarshalling(t *testing.T) {
	for _, in := range []string{"1-2,5", "a=6,k=8,psid=7"} {
		s := MustParsePortSet(in)
		b, _ := s.MarshalText()
		var back PortSet
		if err := back.UnmarshalText(b); err != nil || back != s {
			t.Errorf("%q: round trip %v %v", in, back, err)
		}
	}
	got := slices.Collect(MustParsePortSet("5-6,9").All())
	if !slices.Equal(got, []uint16{5, 6, 9}) {
		t.Errorf("All = %v", got)
	}
}

// TestTupleSize pins the size the Tuple doc comment states: 72 bytes on a
// 64-bit platform (it is copied by value on every look-up).
func TestTupleSize(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("the documented size is for 64-bit platforms")
	}
	if got := unsafe.Sizeof(Tuple{}); got != 72 {
		t.Errorf("unsafe.Sizeof(Tuple{}) = %d, the doc comment says 72", got)
	}
}
