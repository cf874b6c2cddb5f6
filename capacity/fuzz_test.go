package capacity

import (
	"errors"
	"strings"
	"testing"

	"github.com/portspace/portspace/tuple"
)

// FuzzParsePorts checks that ParsePorts never panics, that every error
// matches ErrInput and names the input, and that every port it accepts is
// covered by one of the items (a range or a profile) of the input.
func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{
		"1024-2047,4000-4095", // two ranges
		"linux",               // a profile
		"linux, iana,8080",    // profiles, spaces and a single port
		"a=6,k=8,psid=18",     // RFC 7597 PSID form
		"",                    // empty
		"1024-",               // missing last port
		"65535-0",             // reversed
		"70000",               // out of range
		",",                   // empty items
		"LiNuX,0-0",           // case and port 0
		"nosuch",              // unknown profile
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		set, err := ParsePorts(in, testProfiles)
		if err != nil {
			if !errors.Is(err, ErrInput) || !strings.HasPrefix(err.Error(), "capacity: ") {
				t.Fatalf("%q: error %v does not match ErrInput", in, err)
			}
			return
		}
		if !set.IsValid() {
			t.Fatalf("%q: accepted but empty", in)
		}
		if strings.Contains(in, "=") {
			want, err := tuple.ParsePortSet(in)
			if err != nil || !want.Equal(set) {
				t.Fatalf("%q: PSID form gave %v, tuple gives %v, %v", in, set, want, err)
			}
			return
		}
		var union tuple.PortSet
		for item := range strings.SplitSeq(in, ",") {
			item = strings.TrimSpace(item)
			if p, ok := testProfiles[strings.ToLower(item)]; ok {
				union = union.Union(p)
				continue
			}
			r, err := tuple.ParsePortRange(item)
			if err != nil {
				t.Fatalf("%q: accepted, but item %q is neither a profile nor a range: %v", in, item, err)
			}
			union = union.Union(tuple.PortSetOf(r))
		}
		if !union.Equal(set) {
			t.Fatalf("%q: got %v, items give %v", in, set, union)
		}
	})
}

// FuzzParseSharing checks that ParseSharing never panics and that what it
// accepts round-trips through String.
func FuzzParseSharing(f *testing.F) {
	for _, s := range []string{
		"4-tuple",   // canonical
		"exclusive", // canonical
		"BIND",      // alias, upper case
		" 4tuple ",  // alias with spaces
		"",          // empty
		"5-tuple",   // unknown
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseSharing(in)
		if err != nil {
			if !errors.Is(err, ErrInput) {
				t.Fatalf("%q: error %v does not match ErrInput", in, err)
			}
			return
		}
		back, err := ParseSharing(s.String())
		if err != nil || back != s {
			t.Fatalf("%q: %v does not round-trip: %v, %v", in, s, back, err)
		}
	})
}
