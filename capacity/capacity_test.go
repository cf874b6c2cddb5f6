package capacity

import (
	"encoding/json"
	"errors"
	"go/parser"
	"go/token"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/tuple"
)

// fakeProfiles is a stand-in profile source for the parser tests; the CLI
// uses the acl package's table.
type fakeProfiles map[string]tuple.PortSet

func (f fakeProfiles) Profile(name string) (tuple.PortSet, bool) { s, ok := f[name]; return s, ok }
func (f fakeProfiles) ProfileNames() []string {
	var n []string
	for k := range f {
		n = append(n, k)
	}
	return n
}

var testProfiles = fakeProfiles{
	"linux":   tuple.MustParsePortSet("32768-60999"),
	"iana":    tuple.MustParsePortSet("49152-65535"),
	"freebsd": tuple.MustParsePortSet("10000-65535"),
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// TestRatesFromInputs checks the rate arithmetic of the seed text
// (ports / TIME-WAIT) against figures computed from the inputs, and the
// rounded figures the text quotes.
func TestRatesFromInputs(t *testing.T) {
	for _, tc := range []struct {
		ports  string
		lo, hi int     // the same ports, for the independent computation
		quoted float64 // the figure the seed text quotes, truncated
	}{
		{"1000-1999", 1000, 1999, 16.6},
		{"32768-60999", 32768, 60999, 470},
		{"49152-65535", 49152, 65535, 273},
		{"0-65535", 0, 65535, 1092},
	} {
		set := tuple.MustParsePortSet(tc.ports)
		r, err := Compute(Input{Ports: set, Destinations: 1})
		if err != nil {
			t.Fatalf("%s: %v", tc.ports, err)
		}
		n := tc.hi - tc.lo + 1
		want := float64(n) / DefaultTimeWait.Seconds()
		if r.PortCount != n || r.MaxConcurrentPerDestination != int64(n) {
			t.Errorf("%s: port count %d, concurrent %d, want %d", tc.ports, r.PortCount, r.MaxConcurrentPerDestination, n)
		}
		if !near(r.MaxNewPerSecond, want) || !near(r.TotalMaxNewPerSecond, want) {
			t.Errorf("%s: rate %v (total %v), want %v", tc.ports, r.MaxNewPerSecond, r.TotalMaxNewPerSecond, want)
		}
		if got := math.Floor(r.MaxNewPerSecond*10) / 10; tc.quoted == 16.6 && got != tc.quoted {
			t.Errorf("%s: rate %.3f does not round down to the quoted %v", tc.ports, r.MaxNewPerSecond, tc.quoted)
		}
		if got := math.Floor(r.MaxNewPerSecond); tc.quoted != 16.6 && got != tc.quoted {
			t.Errorf("%s: rate %.3f does not truncate to the quoted %v", tc.ports, r.MaxNewPerSecond, tc.quoted)
		}
		if r.TimeWaitSeconds != 60 {
			t.Errorf("%s: default TIME-WAIT %v s, want 60", tc.ports, r.TimeWaitSeconds)
		}
	}
}

// TestScaling checks how destinations, sources, hold and sharing scale the
// figures, each against the formula of the package doc.
func TestScaling(t *testing.T) {
	set := tuple.MustParsePortSet("1024-2047,4000-4095") // 1024 + 96 ports
	n := int64(1024 + 96)
	for _, tc := range []struct {
		name     string
		in       Input
		perDest  int64
		total    int64
		periodS  float64
		perSrcTW float64
	}{
		{"one dest", Input{Destinations: 1}, n, n, 60, 60},
		{"ten dests 4-tuple", Input{Destinations: 10}, n, 10 * n, 60, 60},
		{"ten dests exclusive", Input{Destinations: 10, Sharing: Exclusive}, n, n, 60, 60},
		{"three sources", Input{Destinations: 2, Sources: 3}, 3 * n, 6 * n, 60, 60},
		{"exclusive sources", Input{Destinations: 5, Sources: 3, Sharing: Exclusive}, 3 * n, 3 * n, 60, 60},
		{"hold", Input{Destinations: 1, Hold: 30 * time.Second, TimeWait: 2 * time.Minute}, n, n, 150, 150},
		{"zero dests", Input{Destinations: 0}, n, 0, 60, 60},
		{"zero dests exclusive", Input{Destinations: 0, Sharing: Exclusive}, n, 0, 60, 60},
	} {
		in := tc.in
		in.Ports = set
		r, err := Compute(in)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.MaxConcurrentPerDestination != tc.perDest || r.TotalMaxConcurrent != tc.total {
			t.Errorf("%s: concurrent per dest %d total %d, want %d %d", tc.name, r.MaxConcurrentPerDestination, r.TotalMaxConcurrent, tc.perDest, tc.total)
		}
		if !near(r.MaxNewPerSecond, float64(tc.perDest)/tc.periodS) || !near(r.TotalMaxNewPerSecond, float64(tc.total)/tc.periodS) {
			t.Errorf("%s: rate per dest %v total %v, want %v %v", tc.name, r.MaxNewPerSecond, r.TotalMaxNewPerSecond, float64(tc.perDest)/tc.periodS, float64(tc.total)/tc.periodS)
		}
		if r.PerSourceMaxConcurrentPerDestination != n || !near(r.PerSourceMaxNewPerSecond, float64(n)/tc.perSrcTW) {
			t.Errorf("%s: per source %d, %v", tc.name, r.PerSourceMaxConcurrentPerDestination, r.PerSourceMaxNewPerSecond)
		}
		wantSources := max(in.Sources, 1)
		if r.Sources != wantSources || r.Destinations != in.Destinations || r.Sharing != in.Sharing || r.Ports != set.String() {
			t.Errorf("%s: inputs not echoed: %+v", tc.name, r)
		}
	}
}

// TestSubSecondTimeWait: the rate is ports over the period in seconds, also
// below a second and down to a nanosecond.
func TestSubSecondTimeWait(t *testing.T) {
	set := tuple.MustParsePortSet("40000-40999")
	for _, tw := range []time.Duration{500 * time.Millisecond, 250 * time.Millisecond, time.Millisecond, time.Nanosecond} {
		r, err := Compute(Input{Ports: set, TimeWait: tw, Destinations: 1})
		if err != nil {
			t.Fatalf("%v: %v", tw, err)
		}
		want := 1000 / tw.Seconds()
		if !near(r.MaxNewPerSecond, want) || r.TimeWaitSeconds != tw.Seconds() {
			t.Errorf("time-wait %v: rate %v, want %v (tw %v s)", tw, r.MaxNewPerSecond, want, r.TimeWaitSeconds)
		}
		if math.IsInf(r.MaxNewPerSecond, 0) || math.IsNaN(r.MaxNewPerSecond) {
			t.Errorf("time-wait %v: rate %v is not finite", tw, r.MaxNewPerSecond)
		}
	}
}

// TestHugeInputs: the whole port space times every IPv4 address as sources
// still fits; beyond int64 the error says so instead of wrapping around.
func TestHugeInputs(t *testing.T) {
	all := tuple.MustParsePortSet("0-65535")
	r, err := Compute(Input{Ports: all, Sources: 1 << 32, Destinations: 1<<15 - 1})
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(1<<48) * (1<<15 - 1); r.TotalMaxConcurrent != want || r.MaxConcurrentPerDestination != 1<<48 {
		t.Errorf("total %d per dest %d, want %d %d", r.TotalMaxConcurrent, r.MaxConcurrentPerDestination, want, int64(1<<48))
	}
	for _, in := range []Input{
		{Ports: all, Sources: 1 << 32, Destinations: 1 << 15}, // exactly 2^63
		{Ports: all, Sources: math.MaxInt64, Destinations: 1},
		{Ports: all, Sources: 1, Destinations: math.MaxInt64},
	} {
		_, err := Compute(in)
		if !errors.Is(err, ErrTooLarge) {
			t.Errorf("%+v: err %v, want ErrTooLarge", in, err)
		}
	}
	// Exclusive sharing does not multiply by destinations, so it fits.
	r, err = Compute(Input{Ports: all, Sources: 1, Destinations: math.MaxInt64, Sharing: Exclusive})
	if err != nil || r.TotalMaxConcurrent != 65536 {
		t.Errorf("exclusive with MaxInt64 destinations: %v, %d", err, r.TotalMaxConcurrent)
	}
}

func TestBadInputNamesInput(t *testing.T) {
	set := tuple.MustParsePortSet("1000-1999")
	for _, tc := range []struct {
		in   Input
		name string
	}{
		{Input{}, "ports"},
		{Input{Ports: set, TimeWait: -time.Second}, "time-wait"},
		{Input{Ports: set, Hold: -time.Second}, "hold"},
		{Input{Ports: set, Destinations: -1}, "destinations"},
		{Input{Ports: set, Sources: -2}, "sources"},
		{Input{Ports: set, Sharing: 7}, "sharing"},
	} {
		_, err := Compute(tc.in)
		if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), tc.name) || !strings.HasPrefix(err.Error(), "capacity: ") {
			t.Errorf("%+v: err %v, want ErrInput naming %q", tc.in, err, tc.name)
		}
	}
}

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"1024-2047,4000-4095", "1024-2047,4000-4095"},
		{"linux", "32768-60999"},
		{"LINUX", "32768-60999"},
		{"linux, iana", "32768-65535"},
		{"freebsd,1024-2047", "1024-2047,10000-65535"},
		{"8080", "8080"},
		{"a=6,k=8,psid=18", "a=6,k=8,psid=18"},
	} {
		got, err := ParsePorts(tc.in, testProfiles)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		want, _ := tuple.ParsePortSet(tc.want)
		if !got.Equal(want) {
			t.Errorf("%q: got %v, want %v", tc.in, got, want)
		}
	}
	for _, tc := range []struct {
		in     string
		target error
		names  string
	}{
		{"", ErrInput, `ports ""`},
		{"1024-", tuple.ErrSyntax, `"1024-"`},
		{"2000-1000", tuple.ErrSyntax, `"2000-1000"`},
		{"linux,,iana", ErrInput, "empty item"},
		{"openbsd", ErrUnknownProfile, `"openbsd"`},
		{"linux,70000", tuple.ErrSyntax, `"70000"`},
		{"a=6,k=20,psid=1", tuple.ErrSyntax, "psid"},
	} {
		_, err := ParsePorts(tc.in, testProfiles)
		if !errors.Is(err, tc.target) || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), tc.names) {
			t.Errorf("%q: err %v, want %v naming %s", tc.in, err, tc.target, tc.names)
		}
	}
	if _, err := ParsePorts("linux", nil); !errors.Is(err, ErrUnknownProfile) {
		t.Errorf("nil profiles: err %v, want ErrUnknownProfile", err)
	}
	_, err := ParsePorts("bsd", testProfiles)
	if err == nil || !strings.Contains(err.Error(), "freebsd") {
		t.Errorf("unknown profile error %v does not list the known names", err)
	}
}

func TestSharingText(t *testing.T) {
	for _, s := range []Sharing{FourTuple, Exclusive} {
		b, err := s.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Sharing
		if err := back.UnmarshalText(b); err != nil || back != s {
			t.Errorf("%v: round trip gave %v, %v", s, back, err)
		}
	}
	if _, err := Sharing(9).MarshalText(); !errors.Is(err, ErrInput) {
		t.Errorf("Sharing(9).MarshalText: err %v", err)
	}
	if s, err := ParseSharing("BIND"); err != nil || s != Exclusive {
		t.Errorf("ParseSharing(BIND) = %v, %v", s, err)
	}
	if _, err := ParseSharing("5-tuple"); !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), `"5-tuple"`) {
		t.Errorf("ParseSharing(5-tuple): err %v", err)
	}
}

// TestJSONFields pins the JSON names that scripts rely on.
func TestJSONFields(t *testing.T) {
	r, err := Compute(Input{Ports: tuple.MustParsePortSet("1000-1999"), Destinations: 2, Sources: 1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"ports": "1000-1999", "port_count": 1000.0, "time_wait_seconds": 60.0, "hold_seconds": 0.0,
		"destinations": 2.0, "sources": 1.0, "sharing": "4-tuple",
		"max_concurrent_per_destination": 1000.0, "max_new_per_second": 1000 / 60.0,
		"total_max_concurrent": 2000.0, "total_max_new_per_second": 2000 / 60.0,
		"per_source_max_concurrent_per_destination": 1000.0, "per_source_max_new_per_second": 1000 / 60.0,
	} {
		if got, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		} else if f, isF := want.(float64); isF && !near(got.(float64), f) || !isF && got != want {
			t.Errorf("JSON %q = %v, want %v", k, got, want)
		}
	}
	if len(m) != 13 {
		t.Errorf("JSON has %d fields, want 13: %s", len(m), b)
	}
}

// TestPlatformProfiles: the ephemeral table resolves through ParsePorts, and the
// Linux default gives the seed text's ≈470 connections per second.
func TestPlatformProfiles(t *testing.T) {
	var p Profiles = PlatformProfiles{}
	if len(p.ProfileNames()) == 0 {
		t.Fatal("no platform profiles")
	}
	for _, name := range p.ProfileNames() {
		want, ok := p.Profile(name)
		got, err := ParsePorts(strings.ToUpper(name), p)
		if !ok || err != nil || !got.Equal(want) {
			t.Errorf("%s: ParsePorts gave %v, %v; profile %v, %v", name, got, err, want, ok)
		}
	}
	linux, err := ParsePorts("linux", p)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Compute(Input{Ports: linux, Destinations: 1})
	if err != nil {
		t.Fatal(err)
	}
	lr := linux.Range(0)
	if want := float64(lr.Len()) / 60; !near(r.MaxNewPerSecond, want) || math.Floor(r.MaxNewPerSecond) != 470 {
		t.Errorf("linux: %v/s, want %v (≈470)", r.MaxNewPerSecond, want)
	}
}

// TestDoesNotImportACL keeps capacity independent of the ACL generator: the
// platform profiles come from the ephemeral package.
func TestDoesNotImportACL(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); p == "github.com/portspace/portspace/acl" {
				t.Errorf("%s imports %s", name, p)
			}
		}
	}
}
