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
		{[]string{"--subscribers", "-3"}, "Subscribers"},
	} {
		_, _, err := runCLI(t, append([]string{"nat", "simulate"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}
