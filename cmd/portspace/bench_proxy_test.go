package main

import (
	"encoding/json"
	"testing"
)

// TestBenchProxySmall runs a small bench proxy against every installed
// peer and checks that each phase measured something without errors, and
// that the ratios compare the right rows.
func TestBenchProxySmall(t *testing.T) {
	out, _, err := runCLI(t, "bench", "proxy", "--duration", "300ms", "--concurrency", "4", "--bulk-mib", "16", "--idle", "50", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep proxyReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	seen := map[string]bool{}
	for _, p := range rep.Proxies {
		seen[p.Name] = true
		if p.Skipped != "" {
			t.Logf("%s skipped: %s", p.Name, p.Skipped)
			continue
		}
		if p.SetupPerSec <= 0 || p.SetupErrors != 0 || p.BulkMiBps <= 0 || p.SetupP99us < p.SetupP50us {
			t.Errorf("%s: %+v", p.Name, p)
		}
		if p.Name != "direct" && (p.IdleConns != 50 || p.KiBPerIdle <= 0 || p.IdleErrors != 0) {
			t.Errorf("%s idle: %+v", p.Name, p)
		}
	}
	if !seen["direct"] || !seen["portspace"] || !seen["microsocks"] || !seen["dante"] {
		t.Errorf("rows %v, want direct, portspace, microsocks and dante (skipped or not)", seen)
	}
	for _, k := range []string{"bulk_vs_direct", "bulk_vs_direct_paired"} {
		if _, ok := rep.Ratios[k]; !ok {
			t.Errorf("ratios %v lack %s", rep.Ratios, k)
		}
	}
	for _, p := range rep.Proxies {
		if p.Skipped == "" && len(p.BulkRounds) != 3 {
			t.Errorf("%s: bulk rounds %v, want the 3 rounds' rates", p.Name, p.BulkRounds)
		}
	}
}

// TestPairedBulkRatio: the paired ratio is the median of the per-round
// ratios, over the rounds both rows carried.
func TestPairedBulkRatio(t *testing.T) {
	d := &proxyFigures{bulks: []float64{100, 200, 400, 1000}, bulkRnd: []int{0, 1, 2, 3}}
	p := &proxyFigures{bulks: []float64{90, 100, 360}, bulkRnd: []int{0, 1, 2}} // round 3 failed
	if x, ok := pairedBulkRatio(p, d); !ok || x != 0.9 {
		t.Errorf("paired ratio %v %v, want 0.9 (the median of 0.9, 0.5, 0.9)", x, ok)
	}
	p = &proxyFigures{bulks: []float64{50, 150}, bulkRnd: []int{1, 3}}
	if x, ok := pairedBulkRatio(p, d); !ok || x != 0.2 {
		t.Errorf("paired ratio %v %v, want 0.2 (the mean of 0.25 and 0.15)", x, ok)
	}
	if _, ok := pairedBulkRatio(&proxyFigures{bulks: []float64{1}, bulkRnd: []int{0}}, d); ok {
		t.Error("a paired ratio from one round")
	}
}

// TestBenchProxyFleetSmall runs a small --fleet: two proxy processes with
// their own slices carry every tunnel, and the sock_diag census finds each
// 4-tuple once and every source port inside the slices.
func TestBenchProxyFleetSmall(t *testing.T) {
	out, _, err := runCLI(t, "bench", "proxy", "--fleet", "--fleet-procs", "2", "--fleet-conns", "300", "--fleet-dests", "4", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var fig fleetFigures
	if err := json.Unmarshal([]byte(out), &fig); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if fig.Opened != 600 || fig.Errors != 0 {
		t.Errorf("opened %d with %d errors, want 600 and 0", fig.Opened, fig.Errors)
	}
	if c := fig.Census; !c.Taken || c.Seen != 600 || c.Distinct != 600 || c.Duplicates != 0 || c.OutsidePorts != 0 {
		t.Errorf("census %+v, want 600 distinct sockets inside the slices", c)
	}
}
