package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/portspace/portspace/internal/bench"
	"github.com/portspace/portspace/tuple"
)

// runBenchDial runs "portspace bench dial args..." through the shared runCLI
// and returns its standard output.
func runBenchDial(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, _, err := runCLI(t, append([]string{"bench", "dial"}, args...)...)
	return out, err
}

// TestBenchDialFlags checks that the flags become the right Config.
func TestBenchDialFlags(t *testing.T) {
	f := benchDialFlags{proto: "udp", sources: "127.0.0.1,127.0.0.2", ports: "40000-40009", dests: "127.0.0.5,127.0.0.6,127.0.0.7",
		fill: "0,95", dialers: "net.Dialer", conns: 201, concurrency: 2, rounds: 1}
	cfg, names, err := f.config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Proto != tuple.UDP || len(cfg.Sources) != 2 || cfg.Ports.Len() != 10 || len(cfg.Dests) != 3 ||
		cfg.Conns != 201 || cfg.Concurrency != 2 || len(cfg.Fill) != 2 || cfg.Fill[1] != 95 || cfg.Capacity() != 60 {
		t.Errorf("config %+v", cfg)
	}
	if len(names) != 1 || names[0] != bench.DialerBaseline {
		t.Errorf("dialers %v", names)
	}
	if !errors.Is(cfg.Exhausted, portspaceExhausted) {
		t.Errorf("the exhaustion sentinel is not wired")
	}
}

// TestBenchDialBadFlags checks that each bad flag value is refused with an
// error that names the flag and the input.
func TestBenchDialBadFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--proto", "icmp"}, `--proto "icmp"`},
		{[]string{"--dests", "10.0.0.1"}, `--dests "10.0.0.1"`},
		{[]string{"--dests", "0"}, `--dests "0"`},
		{[]string{"--sources", "192.0.2.1"}, `--sources "192.0.2.1"`},
		{[]string{"--ports", "40000-39000"}, `--ports`},
		{[]string{"--fill", "100"}, `--fill "100"`},
		{[]string{"--conns", "0"}, `--conns 0`},
		{[]string{"--dialers", "curl"}, `unknown dialer "curl"`},
		{[]string{"--strategy", "magic"}, `--strategy "magic"`},
		{[]string{"--strategy", "magic", "--dialers", "net.Dialer"}, `--strategy "magic"`},
		{[]string{"--udp-lock", "flock"}, `--udp-lock "flock": want auto, file, dump, registry or owner`},
		{[]string{"--rounds", "0"}, `--rounds 0`},
		{[]string{"--hold", "-1s"}, `--hold -1s`},
		{[]string{"--timeout", "-2s"}, `--timeout -2s`},
		{[]string{"--sources", "::1"}, `use --ipv6`},
		{[]string{"--ports", "0"}, `--ports "0": port 0 is not a source port`},
		{[]string{"--ports", "0-10"}, `--ports "0-10": port 0`},
		{[]string{"--workers", "5", "--dests", "2"}, `--workers 5: more than the 2 destinations of --dests`},
		{[]string{"--workers", "3", "--destinations", "2"}, `--workers 3: more than the 2 destinations of --destinations`},
		{[]string{"--warmup", "-2"}, `--warmup -2`},
		{[]string{"--role", "bogus"}, `--role "bogus": want listener or dialer`},
		{[]string{"--destinations", "0"}, `--destinations "0"`},
		{[]string{"--ipv6", "--destinations", "0"}, `--destinations "0"`},
	} {
		_, err := runBenchDial(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("bench dial %v: error %v, want one containing %q", tt.args, err, tt.want)
		}
	}
}

// TestBenchDialRunsJSON runs a small bench through the CLI and checks the
// JSON it prints.
func TestBenchDialRunsJSON(t *testing.T) {
	out, err := runBenchDial(t, "--dests", "2", "--conns", "20", "--ports", "40000-40099", "--rounds", "1", "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rep.Results) != 2 || rep.Results[0].Dialer != bench.DialerPortspace || rep.Results[1].Dialer != bench.DialerBaseline {
		t.Fatalf("results %+v", rep.Results)
	}
	for _, r := range rep.Results {
		if r.Opened != 20 || r.Distinct != 20 || r.Census.Duplicates != 0 {
			t.Errorf("%s: opened %d distinct %d census %+v", r.Dialer, r.Opened, r.Distinct, r.Census)
		}
	}
}

// TestBenchDialNoneOpenedFails checks that a run in which a dialer opened
// none of its connections is an error (exit status 1), and one that opened
// some is not.
func TestBenchDialNoneOpenedFails(t *testing.T) {
	rep := &bench.Report{Results: []bench.Result{
		{Dialer: bench.DialerPortspace, Mode: "hold", Attempted: 10, Opened: 10},
		{Dialer: bench.DialerBaseline, Mode: "hold", Attempted: 10, Opened: 0},
	}}
	if err := noneOpened(rep); err == nil || !strings.Contains(err.Error(), "net.Dialer opened none of its 10 connections") {
		t.Errorf("every dial failed: err = %v", err)
	}
	rep.Results[1].Opened = 1
	if err := noneOpened(rep); err != nil {
		t.Errorf("some dials opened: %v", err)
	}
}

// TestBenchDialDestsAlias checks that --dests still works as the alias of
// --destinations.
func TestBenchDialDestsAlias(t *testing.T) {
	for _, flag := range []string{"--destinations", "--dests"} {
		f := benchDialFlags{proto: "tcp", sources: "127.0.0.1", ports: "40000-40009", dialers: "net.Dialer", conns: 1, concurrency: 1, rounds: 1}
		cmd := newBenchDialCmd()
		if err := cmd.ParseFlags([]string{flag, "3"}); err != nil {
			t.Fatal(err)
		}
		f.dests = cmd.Flags().Lookup("destinations").Value.String()
		if flag == "--dests" {
			f.dests = cmd.Flags().Lookup("dests").Value.String()
		}
		cfg, _, err := f.config()
		if err != nil || len(cfg.Dests) != 3 {
			t.Errorf("%s 3: %d destinations, %v", flag, len(cfg.Dests), err)
		}
	}
}

// TestBenchDialFirstScreen runs bench dial with its default port slice and
// destinations (fewer connections, to stay quick) and checks that the
// first screen compares the slice's capacity with portspace (20,000) and
// with binding each port (1,000), explains the columns and ends with a
// summary.
func TestBenchDialFirstScreen(t *testing.T) {
	out, err := runBenchDial(t, "--rounds", "1", "--conns", "200", "--warmup", "-1")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"portspace (4-tuple sharing)  20,000", "bind each port               1,000",
		"columns (", "conn/s         connections opened per second (higher is better)",
		"(higher is better)", "(lower is better)",
		"summary: the 1,000 ports hold 20,000 connections at once with portspace against 1,000 when binding each port (20.00x)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("first screen lacks %q:\n%s", want, out)
		}
	}
	if i, j := strings.Index(out, "bind each port"), strings.Index(out, "dialer  phase"); i < 0 || j < 0 || i > j {
		t.Errorf("the capacity comparison does not come before the measured table:\n%s", out)
	}
}
