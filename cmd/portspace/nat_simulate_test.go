package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/natlog"
)

func TestNatSimulateCLI(t *testing.T) {
	out, _, err := runCLI(t, "nat", "simulate", "--compare-overlapping", "--subscribers", "20", "--destinations", "4",
		"--flow-rate", "20", "--duration", "1m", "--ports", "2000-2099")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"no overlapping", "overlapping", "peak concurrent flows", "drops: ports-exhausted", "log bytes per flow"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = runCLI(t, "nat", "simulate", "--json", "--duration", "30s", "--udp-share", "0.5", "--preset", "cgn")
	var r map[string]any
	if err != nil || json.Unmarshal([]byte(out), &r) != nil || r["preset"] != "cgn" || r["flows"].(float64) == 0 {
		t.Fatalf("%v %s", err, out)
	}
}

// TestNatSimulateLogThenWhois runs a simulation that writes its log, then
// asks whois about every mapping in it: each answer names the subscriber the
// log says created it.
func TestNatSimulateLogThenWhois(t *testing.T) {
	log := filepath.Join(t.TempDir(), "sim.jsonl")
	if _, _, err := runCLI(t, "nat", "simulate", "--duration", "1m", "--subscribers", "5", "--log", log); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	r := natlog.NewLogReader(fh, log)
	n := 0
	for ; n < 20; n++ {
		ev, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.Kind != nat.MappingCreated {
			continue
		}
		at := ev.Time.Add(time.Millisecond).Format(time.RFC3339Nano)
		out, _, err := runCLI(t, "nat", "whois", "--log", log, ev.External.String(), at)
		if err != nil || !strings.Contains(out, "held by "+ev.Subscriber.String()+" ") {
			t.Fatalf("whois %v at %s: %q %v", ev.External, at, out, err)
		}
	}
	if n == 0 {
		t.Fatal("empty log")
	}
	if _, _, err := runCLI(t, "nat", "simulate", "--compare-overlapping", "--log", log); err == nil {
		t.Fatal("--log with --compare-overlapping must be refused")
	}
}

func TestNatSimulateCLIBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--external", "nope"}, `--external "nope"`},
		{[]string{"--ports", "9-1"}, "--ports"},
		{[]string{"--overlapping", "maybe"}, `--overlapping "maybe"`},
		{[]string{"--preset", "nope"}, `unknown preset "nope"`},
		{[]string{"--subscribers", "-3"}, "--subscribers -3: must be at least 1"},
		{[]string{"--subscribers", "0"}, "--subscribers 0: must be at least 1"},
		{[]string{"--destinations", "0"}, "--destinations 0: must be at least 1"},
		{[]string{"--duration", "0"}, "--duration 0s: must be above 0"},
		{[]string{"--duration", "-5s"}, "--duration -5s"},
		{[]string{"--flow-rate", "0"}, "--flow-rate 0: must be above 0"},
		{[]string{"--udp-share", "-5"}, "--udp-share -5: must be between 0 and 1"},
		{[]string{"--icmp-share", "1.5"}, "--icmp-share 1.5"},
		{[]string{"--udp-share", "0.7", "--icmp-share", "0.7"}, "--icmp-share: 0.7 plus the UDP share 0.7 is above 1"},
		{[]string{"--subscribers", "99999999"}, "--subscribers: 99999999 is outside"},
		{[]string{"--dest-zipf", "0.5"}, "--dest-zipf: 0.5 must be above 1"},
		{[]string{"--tick", "10ms"}, "--tick: 10ms is below"},
		{[]string{"--keepalive", "10ms"}, "--keepalive: 10ms is below"},
		{[]string{"--flow-rate", "1e6", "--duration", "1h"}, "--flow-rate: "},
		{[]string{"--ports", "0-100"}, "--ports: contains port 0"},
		{[]string{"--log-compact"}, "--log-compact needs --log"},
		{[]string{"--progress", "loud"}, `--progress "loud"`},
	} {
		_, _, err := runCLI(t, append([]string{"nat", "simulate"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "SimConfig") {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}

// TestNatSimulateFailedRunKeepsLog: a run refused for a bad flag leaves an
// existing --log FILE as it was (not truncated) and no temporary file
// behind; a good run replaces it.
func TestNatSimulateFailedRunKeepsLog(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "events.jsonl")
	const old = "the previous run's log\n"
	if err := os.WriteFile(log, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{
		{"--duration", "-5s"}, {"--preset", "bogus"}, {"--subscribers", "0"}, {"--ports", "0-100"},
		{"--compare-overlapping"}, {"--udp-share", "-5"},
	} {
		args := append([]string{"nat", "simulate", "--log", log}, bad...)
		if _, _, err := runCLI(t, args...); err == nil {
			t.Fatalf("%v succeeded", bad)
		}
		if b, err := os.ReadFile(log); err != nil || string(b) != old {
			t.Fatalf("after the failed run %v the log holds %q (%v)", bad, b, err)
		}
	}
	if _, _, err := runCLI(t, "nat", "simulate", "--log", log, "--duration", "30s", "--subscribers", "3"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(log)
	if err != nil || strings.Contains(string(b), old) || !strings.Contains(string(b), `"kind":"mapping-created"`) {
		t.Fatalf("after a good run the log holds %q (%v)", b, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("files left in the log's directory: %v", entries)
	}
	// A --log that names a directory is refused and the directory kept.
	if _, _, err := runCLI(t, "nat", "simulate", "--log", dir, "--duration", "30s"); err == nil {
		t.Fatal("--log of a directory accepted")
	}
}

// TestNatSimulateCompletionAndProgress: --preset completes to the preset
// names (and nothing else), and --progress always draws the progress line
// on stderr while stdout keeps the table.
func TestNatSimulateCompletionAndProgress(t *testing.T) {
	out, _, err := runCLI(t, "__complete", "nat", "simulate", "--preset", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range nat.Presets() {
		if !strings.Contains(out, p.Name+"\n") {
			t.Errorf("completion lacks %q:\n%s", p.Name, out)
		}
	}
	if strings.Contains(out, "--") {
		t.Errorf("completion offers flags for a --preset value:\n%s", out)
	}
	out, errOut, err := runCLI(t, "nat", "simulate", "--duration", "2m", "--subscribers", "3", "--progress", "always")
	if err != nil || !strings.Contains(errOut, "simulated: 120/120 s (100.0%)") || strings.Contains(out, "simulated:") ||
		!strings.Contains(out, "flows started") {
		t.Fatalf("stdout %q stderr %q %v", out, errOut, err)
	}
	if _, errOut, _ := runCLI(t, "nat", "simulate", "--duration", "1m", "--subscribers", "3"); errOut != "" {
		t.Fatalf("progress on a stderr that is not a terminal: %q", errOut)
	}
}
