package steer

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/tuple"
)

// manySlices returns n held 64-port slices of 192.0.2.10 from port 1024 up,
// spread round robin over hosts 10.0.0.3.. (hosts of them), except the
// last, which host 10.0.1.2 holds: it sorts after the others, so it has the
// last table, and in the ip form its slice's rules come last and in the nft
// form its fwmark rule does: the worst case for both rule walks.
func manySlices(n, hosts int) []lease.Lease {
	if hosts > 250 {
		panic("manySlices: at most 250 hosts")
	}
	ls := make([]lease.Lease, n)
	for i := range ls {
		lo := uint16(1024 + 64*i)
		host := netip.AddrFrom4([4]byte{10, 0, 0, byte(3 + i%hosts)})
		if i == n-1 {
			host = netip.MustParseAddr("10.0.1.2")
		}
		ls[i] = lease.Lease{ID: fmt.Sprintf("de/192.0.2.10/%d", i), Pool: "de", Addr: netip.MustParseAddr("192.0.2.10"),
			Ports: tuple.PortSetOf(tuple.PortRangeFrom(lo, lo+63)), Holder: host.String(), Host: host,
			Token: 1, Expires: t0.Add(1e12), State: lease.Held}
	}
	return ls
}

// BenchmarkRender1000 builds the plan of 1,000 slices held by 100 hosts
// and renders it in each format; the target is under 1 s (docs/steer.md).
func BenchmarkRender1000(b *testing.B) {
	ls := manySlices(1000, 100)
	for _, f := range []struct {
		name string
		f    Format
	}{{"ip", FormatIP}, {"nft", FormatNFT}} {
		b.Run(f.name, func(b *testing.B) {
			for b.Loop() {
				p, err := NewPlan(ls, t0, Options{}, nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := Render(p, f.f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// iperfInterval is one interval report of iperf3's text output.
type iperfInterval struct {
	// Duration is the interval's length as iperf3 reports it.
	Duration time.Duration
	// BitsPerSecond is its rate (received, on the receiving side).
	BitsPerSecond float64
}

// parseIperfInterval reads an iperf3 interval line such as
// "[  5]   0.25-0.50   sec  52.5 MBytes  1.76 Gbits/sec" (TCP) or with
// UDP's jitter and loss after it; ok is false for every other line (headers,
// separators, the closing sender and receiver totals).
func parseIperfInterval(line string) (iv iperfInterval, ok bool) {
	f := strings.Fields(line)
	if len(f) < 7 || !strings.HasPrefix(f[0], "[") {
		return iv, false
	}
	i := 1
	if f[0] == "[" { // "[  5]" splits into "[" and "5]"
		i = 2
	}
	if !strings.HasSuffix(f[i-1], "]") || len(f) < i+6 || f[i+1] != "sec" {
		return iv, false
	}
	for _, w := range f[i+6:] {
		if w == "sender" || w == "receiver" {
			return iv, false
		}
	}
	lo, hi, found := strings.Cut(f[i], "-")
	a, err1 := strconv.ParseFloat(lo, 64)
	z, err2 := strconv.ParseFloat(hi, 64)
	rate, err3 := strconv.ParseFloat(f[i+4], 64)
	if !found || err1 != nil || err2 != nil || err3 != nil || !(a >= 0 && z > a && z-a <= 3600) || !(rate >= 0 && rate < 1e6) {
		return iv, false
	}
	unit := map[string]float64{"bits/sec": 1, "Kbits/sec": 1e3, "Mbits/sec": 1e6, "Gbits/sec": 1e9, "Tbits/sec": 1e12}[f[i+5]]
	if unit == 0 {
		return iv, false
	}
	return iperfInterval{Duration: time.Duration((z - a) * float64(time.Second)), BitsPerSecond: rate * unit}, true
}

// quartiles returns the first quartile, the median and the third quartile
// of xs (linear interpolation between order statistics); NaN for none.
func quartiles(xs []float64) (q1, med, q3 float64) {
	if len(xs) == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	at := func(q float64) float64 {
		pos := q * float64(len(s)-1)
		i := int(pos)
		if i+1 >= len(s) {
			return s[len(s)-1]
		}
		return s[i] + (pos-float64(i))*(s[i+1]-s[i])
	}
	return at(0.25), at(0.5), at(0.75)
}

func TestParseIperfInterval(t *testing.T) {
	for _, tc := range []struct {
		line string
		want iperfInterval
		ok   bool
	}{
		{"[  5]   0.25-0.50   sec  52.5 MBytes  1.76 Gbits/sec", iperfInterval{250 * time.Millisecond, 1.76e9}, true},
		{"[  5]  12.00-12.25  sec  2.71 MBytes  90.9 Mbits/sec  0.013 ms  123/11234 (1.1%)", iperfInterval{250 * time.Millisecond, 90.9e6}, true},
		{"[  5]   0.25-0.50   sec  52.5 MBytes  -1.76 Gbits/sec", iperfInterval{}, false},
		{"[  5]   0.25-NaN   sec  52.5 MBytes  1.76 Gbits/sec", iperfInterval{}, false},
		{"[  5]   0.00-10.00  sec  9.80 GBytes  8.42 Gbits/sec    0             sender", iperfInterval{}, false},
		{"[  5]   0.00-10.04  sec  9.80 GBytes  8.38 Gbits/sec                  receiver", iperfInterval{}, false},
		{"[ ID] Interval           Transfer     Bitrate", iperfInterval{}, false},
		{"- - - - - - - - - - - - - - - - - - - - - - - - -", iperfInterval{}, false},
		{"Connecting to host 203.0.113.2, port 5201", iperfInterval{}, false},
		{"[  5]   0.50-0.25   sec  52.5 MBytes  1.76 Gbits/sec", iperfInterval{}, false},
		{"[  5]   0.25-0.50   sec  52.5 MBytes  1.76 Qbits/sec", iperfInterval{}, false},
		{"[105]   0.25-0.50   sec  52.5 MBytes  100 Kbits/sec", iperfInterval{250 * time.Millisecond, 1e5}, true},
	} {
		got, ok := parseIperfInterval(tc.line)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseIperfInterval(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

func TestQuartiles(t *testing.T) {
	if q1, m, q3 := quartiles([]float64{5, 1, 3, 2, 4}); q1 != 2 || m != 3 || q3 != 4 {
		t.Fatalf("quartiles(1..5) = %v %v %v", q1, m, q3)
	}
	if q1, m, q3 := quartiles([]float64{1, 2}); q1 != 1.25 || m != 1.5 || q3 != 1.75 {
		t.Fatalf("quartiles(1, 2) = %v %v %v", q1, m, q3)
	}
	if _, m, _ := quartiles([]float64{0.9}); m != 0.9 {
		t.Fatalf("quartiles(0.9) median %v", m)
	}
}

func FuzzParseIperfInterval(f *testing.F) {
	f.Add("[  5]   0.25-0.50   sec  52.5 MBytes  1.76 Gbits/sec")
	f.Add("[  5]  12.00-12.25  sec  2.71 MBytes  90.9 Mbits/sec  0.013 ms  123/11234 (1.1%)")
	f.Fuzz(func(t *testing.T, line string) {
		iv, ok := parseIperfInterval(line)
		if ok && (iv.Duration <= 0 || iv.BitsPerSecond < 0) {
			t.Fatalf("parseIperfInterval(%q) = %+v", line, iv)
		}
	})
}
