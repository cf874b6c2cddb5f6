package main

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func TestCapacityJSON(t *testing.T) {
	out, _, err := runCLI(t, "capacity", "--ports", "1000-1999", "--time-wait", "60s", "--destinations", "3", "--source-count", "2", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	const ports, tw, dests, srcs = 1000.0, 60.0, 3.0, 2.0
	for k, want := range map[string]any{
		"ports_spec": "1000-1999", "ports": "1000-1999", "port_count": ports,
		"time_wait_seconds": tw, "destinations": dests, "sources": srcs, "sharing": "4-tuple",
		"max_concurrent_per_destination": ports * srcs,
		"max_new_per_second":             ports * srcs / tw,
		"total_max_concurrent":           ports * srcs * dests,
		"total_max_new_per_second":       ports * srcs * dests / tw,
		"per_source_max_new_per_second":  ports / tw,
	} {
		g := got[k]
		if f, ok := want.(float64); ok {
			if gf, ok := g.(float64); !ok || math.Abs(gf-f) > 1e-9 {
				t.Errorf("%s = %v, want %v", k, g, f)
			}
		} else if g != want {
			t.Errorf("%s = %v, want %v", k, g, want)
		}
	}
}

func TestCapacityTableProfile(t *testing.T) {
	out, _, err := runCLI(t, "capacity", "--ports", "linux")
	if err != nil {
		t.Fatal(err)
	}
	// linux is 32768-60999: 28232 ports, 28232/60 = 470.53 per second.
	for _, want := range []string{"linux = 32768-60999 (28232 ports)", "470.53/s", "1m0s"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestCapacityBadInputNamesFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--ports", "nosuch"}, `--ports: capacity: ports "nosuch"`},
		{[]string{"--ports", "1024-"}, `--ports`},
		{[]string{"--time-wait", "0s"}, "--time-wait 0s"},
		{[]string{"--time-wait", "-5s"}, "--time-wait -5s"},
		{[]string{"--time-wait", "soon"}, "--time-wait"},
		{[]string{"--destinations", "-1"}, "--destinations -1"},
		{[]string{"--destinations", "many"}, "--destinations"},
		{[]string{"--source-count", "0"}, "--source-count 0"},
		{[]string{"--sources", "192.0.2.1,nope"}, `--sources "192.0.2.1,nope": "nope" is not an IP address`},
		{[]string{"--sources", "192.0.2.1,192.0.2.1"}, "listed twice"},
		{[]string{"--sources", "192.0.2.1", "--source-count", "2"}, "not both"},
		{[]string{"--ports", "0"}, `--ports: capacity: ports "0": port 0 is not a source port`},
		{[]string{"--ports", "0-1023"}, `port 0 is not a source port`},
		{[]string{"--sharing", "5-tuple"}, `--sharing: capacity: sharing "5-tuple"`},
		{[]string{"--hold", "-1s"}, "--hold -1s"},
	} {
		_, _, err := runCLI(t, append([]string{"capacity"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err %v, want it to contain %q", tc.args, err, tc.want)
		}
	}
}

// TestCapacityExclusiveSharing checks --sharing exclusive through the CLI:
// a port bound before connect serves one destination at a time, so the
// totals do not grow with the number of destinations.
func TestCapacityExclusiveSharing(t *testing.T) {
	out, _, err := runCLI(t, "capacity", "--ports", "1000-1999", "--destinations", "3", "--sharing", "exclusive", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Sharing  string  `json:"sharing"`
		PerDest  float64 `json:"max_concurrent_per_destination"`
		Total    float64 `json:"total_max_concurrent"`
		TotalNew float64 `json:"total_max_new_per_second"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got.Sharing != "exclusive" || got.PerDest != 1000 || got.Total != 1000 || math.Abs(got.TotalNew-1000.0/60) > 1e-9 {
		t.Errorf("exclusive sharing over 3 destinations: %+v; want totals equal to one destination's 1000 and 16.67/s", got)
	}
}

// TestCapacitySourcesList checks that --sources is a list of addresses whose
// number counts, the same spelling as bench dial's --sources.
func TestCapacitySourcesList(t *testing.T) {
	out, _, err := runCLI(t, "capacity", "--ports", "1000-1999", "--sources", "192.0.2.1, 192.0.2.2,2001:db8::1", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Sources int64 `json:"sources"`
		Total   int64 `json:"total_max_concurrent"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got.Sources != 3 || got.Total != 3000 {
		t.Errorf("three listed sources: %+v, want sources 3 and 3000 concurrent", got)
	}
}
