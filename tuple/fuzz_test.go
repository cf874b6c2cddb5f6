package tuple

import (
	"errors"
	"testing"
)

func FuzzParsePortSet(f *testing.F) {
	for _, s := range []string{
		"1024-2047,4000-4095", // two ranges
		"80",                  // a single port
		"0-65535",             // everything
		"5-4",                 // inverted
		"a=6,k=8,psid=18",     // RFC 7597 form
		"a=0,k=16,psid=65535", // one port
		"1,,2",                // empty item
		" 1 - 2 ",             // spaces
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParsePortSet(in)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v does not match ErrSyntax", err)
			}
			return
		}
		// The String form parses back to the same set.
		back, err := ParsePortSet(s.String())
		if err != nil || back != s {
			t.Fatalf("%q -> %q -> %v, %v", in, s.String(), back, err)
		}
		n := 0
		for r := range s.Ranges() {
			n += r.Len()
		}
		if n != s.Len() {
			t.Fatalf("ranges hold %d ports, Len %d", n, s.Len())
		}
	})
}

func FuzzParseTuple(f *testing.F) {
	for _, s := range []string{
		"tcp 192.0.2.1:40000->198.51.100.7:443",
		"udp [::1]:1->[::1]:2",
		"icmp 1.2.3.4:0->5.6.7.8:0",
		"tcp 1.2.3.4:1->",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		tp, err := ParseTuple(in)
		if err != nil {
			return
		}
		back, err := ParseTuple(tp.String())
		if err != nil || back != tp {
			t.Fatalf("%q -> %q -> %v, %v", in, tp.String(), back, err)
		}
	})
}
