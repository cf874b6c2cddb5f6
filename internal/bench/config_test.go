package bench

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/portspace/portspace/tuple"
)

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func TestParseDests(t *testing.T) {
	tests := []struct {
		in   string
		want []netip.Addr
	}{
		{"3", addrs("127.1.0.1", "127.1.0.2", "127.1.0.3")},
		{" 1 ", addrs("127.1.0.1")},
		{"127.0.0.2,127.0.0.3", addrs("127.0.0.2", "127.0.0.3")},
		{"127.0.0.2, 127.9.9.9", addrs("127.0.0.2", "127.9.9.9")},
		{"127.2.0.0/30", addrs("127.2.0.0", "127.2.0.1", "127.2.0.2", "127.2.0.3")},
		{"127.2.0.5/31,127.3.0.1", addrs("127.2.0.4", "127.2.0.5", "127.3.0.1")},
		{"::1", addrs("::1")},
		{"::ffff:127.0.0.7", addrs("127.0.0.7")},
	}
	for _, tt := range tests {
		got, err := ParseDests(tt.in)
		if err != nil {
			t.Errorf("ParseDests(%q): %v", tt.in, err)
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("ParseDests(%q) = %v, want %v", tt.in, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("ParseDests(%q)[%d] = %v, want %v", tt.in, i, got[i], tt.want[i])
			}
		}
	}
}

// TestCountDestsSkipsZeroAndBroadcastOctets checks that a count large
// enough to cross a /24 boundary skips .0 and .255 and stays unique.
func TestCountDestsSkipsZeroAndBroadcastOctets(t *testing.T) {
	got, err := CountDests(1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1000 {
		t.Fatalf("CountDests(1000) gave %d addresses", len(got))
	}
	seen := map[netip.Addr]bool{}
	for _, a := range got {
		b := a.As4()
		if b[3] == 0 || b[3] == 255 || !a.IsLoopback() || seen[a] {
			t.Fatalf("CountDests(1000) holds %v (zero/broadcast octet, not loopback, or repeated)", a)
		}
		seen[a] = true
	}
	if got[254] != netip.MustParseAddr("127.1.1.1") {
		t.Errorf("the 255th address is %v, want 127.1.1.1 (127.1.0.255 and 127.1.1.0 skipped)", got[254])
	}
}

// TestParseDestsErrorsNameTheInput checks that every bad --dests input
// gives an ErrBadInput error naming the flag and the input.
func TestParseDestsErrorsNameTheInput(t *testing.T) {
	for _, in := range []string{
		"",                    // empty
		"0",                   // count out of range
		"-3",                  // negative count
		"999999999",           // count too large
		"abc",                 // not an address
		"10.0.0.1",            // not loopback
		"127.0.0.2,",          // empty item
		"127.0.0.2,127.0.0.2", // duplicate
		"127.0.0.0/8",         // prefix too large
		"127.0.0.0/33",        // bad prefix
		"2001:db8::1",         // IPv6 but not loopback
	} {
		_, err := ParseDests(in)
		if err == nil {
			t.Errorf("ParseDests(%q) succeeded", in)
			continue
		}
		if !errors.Is(err, ErrBadInput) {
			t.Errorf("ParseDests(%q) error %v does not match ErrBadInput", in, err)
		}
		if !strings.Contains(err.Error(), "--dests") || !strings.Contains(err.Error(), in) {
			t.Errorf("ParseDests(%q) error %q does not name the flag and the input", in, err)
		}
	}
}

func TestParseSources(t *testing.T) {
	got, err := ParseSources("127.0.0.1,127.0.0.5")
	if err != nil || len(got) != 2 || got[1] != netip.MustParseAddr("127.0.0.5") {
		t.Errorf("ParseSources = %v, %v", got, err)
	}
	for _, in := range []string{"", "192.0.2.1", "3"} {
		if _, err := ParseSources(in); !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), "--sources") {
			t.Errorf("ParseSources(%q) = %v, want an ErrBadInput naming --sources", in, err)
		}
	}
}

func TestParseFill(t *testing.T) {
	got, err := ParseFill("0, 50,95%")
	if err != nil || len(got) != 3 || got[0] != 0 || got[1] != 50 || got[2] != 95 {
		t.Errorf("ParseFill = %v, %v", got, err)
	}
	for _, in := range []string{"", "100", "-1", "x", "50,,60", "NaN"} {
		if _, err := ParseFill(in); !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), "--fill") {
			t.Errorf("ParseFill(%q) = %v, want an ErrBadInput naming --fill", in, err)
		}
	}
}

func TestConfigDefaultsAndCapacity(t *testing.T) {
	var c Config
	if got := c.Capacity(); got != 1000*20 {
		t.Errorf("default capacity = %d, want 20000 (1 source × 1000 ports × 20 destinations)", got)
	}
	c = Config{Sources: addrs("127.0.0.1", "127.0.0.2"), Ports: tuple.MustParsePortSet("40000-40009"), Dests: addrs("127.0.0.3")}
	if got := c.Capacity(); got != 20 {
		t.Errorf("capacity = %d, want 20", got)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("the zero Config does not validate: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for name, c := range map[string]Config{
		"icmp":               {Proto: tuple.ICMP},
		"public source":      {Sources: addrs("192.0.2.1")},
		"public destination": {Dests: addrs("198.51.100.1")},
		"mixed families":     {Sources: addrs("127.0.0.1"), Dests: addrs("::1")},
		"fill 100":           {Fill: []float64{100}},
		"negative conns":     {Conns: -1},
	} {
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "bench: ") {
			t.Errorf("%s: Validate() = %v, want a bench: error", name, err)
		}
	}
}

// FuzzParseDests checks that ParseDests never panics and that whatever it
// accepts is a non-empty list of unique loopback addresses.
func FuzzParseDests(f *testing.F) {
	for _, s := range []string{
		"20",                   // a count
		"127.0.0.2,127.0.0.3",  // a list
		"127.2.0.0/24",         // a prefix
		"::1",                  // IPv6 loopback
		"10.0.0.1",             // not loopback: an error
		"127.0.0.2,,",          // empty items
		"127.0.0.1/0",          // an over-large prefix
		"1e3",                  // not a count
		"::ffff:127.0.0.1/120", // a mapped prefix
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := ParseDests(in)
		if err != nil {
			if !errors.Is(err, ErrBadInput) {
				t.Fatalf("ParseDests(%q) error %v does not match ErrBadInput", in, err)
			}
			return
		}
		if len(got) == 0 || len(got) > MaxDests {
			t.Fatalf("ParseDests(%q) gave %d addresses", in, len(got))
		}
		seen := map[netip.Addr]bool{}
		for _, a := range got {
			if !a.IsLoopback() || seen[a] {
				t.Fatalf("ParseDests(%q) gave %v (not loopback or repeated)", in, a)
			}
			seen[a] = true
		}
	})
}

// FuzzParseFill checks that ParseFill never panics and accepts only
// percentages in [0, 100).
func FuzzParseFill(f *testing.F) {
	for _, s := range []string{
		"95",      // one level
		"0,50,95", // a list
		"99.9%",   // a percent sign
		"100",     // out of range
		"-0",      // negative zero
		"Inf",     // infinity
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := ParseFill(in)
		if err != nil {
			if !errors.Is(err, ErrBadInput) {
				t.Fatalf("ParseFill(%q) error %v does not match ErrBadInput", in, err)
			}
			return
		}
		for _, v := range got {
			if !(v >= 0 && v < 100) {
				t.Fatalf("ParseFill(%q) gave %v", in, v)
			}
		}
	})
}

func TestNamespaceIPv6(t *testing.T) {
	src, dests, err := NamespaceIPv6(300)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]bool{src: true}
	for _, a := range dests {
		if !NamespacePrefix.Contains(a) || seen[a] {
			t.Fatalf("destination %v is outside %v or repeated", a, NamespacePrefix)
		}
		seen[a] = true
	}
	if len(dests) != 300 || !NamespacePrefix.Contains(src) {
		t.Fatalf("source %v, %d destinations", src, len(dests))
	}
	c := Config{Sources: []netip.Addr{src}, Dests: dests}
	if err := c.Validate(); err == nil {
		t.Errorf("namespace addresses validate without LocalPrefix")
	}
	c.LocalPrefix = NamespacePrefix
	if err := c.Validate(); err != nil {
		t.Errorf("namespace addresses with LocalPrefix: %v", err)
	}
	if _, _, err := NamespaceIPv6(0); !errors.Is(err, ErrBadInput) {
		t.Errorf("NamespaceIPv6(0) = %v", err)
	}
}
