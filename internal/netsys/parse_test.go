//go:build linux

package netsys

import (
	"reflect"
	"testing"
)

func TestParseReserved(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []PortRange
		ok   bool
	}{
		{"", nil, true},
		{"8080", []PortRange{{8080, 8080}}, true},
		{"1000-1010,2000", []PortRange{{1000, 1010}, {2000, 2000}}, true},
		{"10-5", nil, false},
		{"x", nil, false},
		{"1-70000", nil, false},
	} {
		got, err := parseReserved("test", tc.in)
		if (err == nil) != tc.ok || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseReserved(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func FuzzParseReserved(f *testing.F) {
	f.Add("")               // empty sysctl: nothing reserved
	f.Add("8080")           // one port
	f.Add("1000-1010,2000") // a range and a port
	f.Add("10-5")           // reversed range
	f.Add("1-70000")        // out of 16 bits
	f.Add(",,")             // empty entries
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := parseReserved("fuzz", s)
		if err != nil {
			return
		}
		for _, r := range rs {
			if r.Lo > r.Hi {
				t.Fatalf("parseReserved(%q) returned reversed %v", s, r)
			}
		}
	})
}
