package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/natlog"
	"github.com/portspace/portspace/tuple"
)

func writeLog(t *testing.T, extra string) string {
	t.Helper()
	t0 := time.Date(2026, 11, 21, 5, 0, 0, 0, time.UTC)
	var buf bytes.Buffer
	w := natlog.NewLogWriter(&buf, natlog.LogOptions{})
	ext := netip.MustParseAddrPort("192.0.2.1:40000")
	w.Record(nat.Event{Time: t0, Kind: nat.MappingCreated, Proto: tuple.UDP, Subscriber: netip.MustParseAddr("10.0.0.1"),
		Internal: netip.MustParseAddrPort("10.0.0.1:1000"), External: ext})
	w.Record(nat.Event{Time: t0.Add(time.Minute), Kind: nat.MappingDeleted, Proto: tuple.UDP, Subscriber: netip.MustParseAddr("10.0.0.1"),
		Internal: netip.MustParseAddrPort("10.0.0.1:1000"), External: ext, Reason: nat.ReasonIdle})
	w.Flush()
	buf.WriteString(extra)
	w = natlog.NewLogWriter(&buf, natlog.LogOptions{})
	w.Record(nat.Event{Time: t0.Add(5 * time.Minute), Kind: nat.MappingCreated, Proto: tuple.UDP, Subscriber: netip.MustParseAddr("10.0.0.2"),
		Internal: netip.MustParseAddrPort("10.0.0.2:2000"), External: ext})
	w.Flush()
	p := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNatWhoisCLI(t *testing.T) {
	log := writeLog(t, "this is not json\n")
	out, errOut, err := runCLI(t, "nat", "whois", "--log", log, "192.0.2.1:40000", "2026-11-21T05:00:30Z")
	if err != nil || !strings.Contains(out, "held by 10.0.0.1 (10.0.0.1:1000)") {
		t.Fatalf("out %q err %v", out, err)
	}
	// The bad line (line 3) is reported with file:line and skipped.
	if !strings.Contains(errOut, log+":3:") || !strings.Contains(errOut, "1 bad log line") {
		t.Fatalf("stderr %q", errOut)
	}
	// The line after the bad one still counts.
	out, _, err = runCLI(t, "nat", "whois", "--log", log, "--json", "192.0.2.1:40000", "2026-11-21T06:00:00Z")
	var hs []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &hs) != nil || len(hs) != 1 || hs[0]["subscriber"] != "10.0.0.2" || hs[0]["open"] != true {
		t.Fatalf("json %q %v", out, err)
	}
	// Nobody between the deletion and the re-creation.
	_, _, err = runCLI(t, "nat", "whois", "--log", log, "192.0.2.1:40000", "2026-11-21T05:02:00Z")
	if !errors.Is(err, natlog.ErrNoHolder) {
		t.Fatalf("gap: %v", err)
	}
	// --strict stops at the bad line, naming it.
	_, _, err = runCLI(t, "nat", "whois", "--strict", "--log", log, "192.0.2.1:40000", "2026-11-21T05:00:30Z")
	if err == nil || !strings.Contains(err.Error(), log+":3:") {
		t.Fatalf("strict: %v", err)
	}
}

func TestNatWhoisRemoteCLI(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 5, 0, 0, 0, time.UTC)
	var buf bytes.Buffer
	w := natlog.NewLogWriter(&buf, natlog.LogOptions{Destinations: true})
	ext := netip.MustParseAddrPort("192.0.2.1:5000")
	for i, r := range []string{"198.51.100.1:443", "198.51.100.2:443"} {
		in := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 1000)
		w.Record(nat.Event{Time: t0, Kind: nat.MappingCreated, Proto: tuple.TCP, Subscriber: in.Addr(), Internal: in,
			External: ext, Remote: netip.MustParseAddrPort(r)})
	}
	w.Flush()
	p := filepath.Join(t.TempDir(), "d.jsonl")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, "nat", "whois", "--log", p, "192.0.2.1:5000", "2026-11-21T05:00:01Z")
	if err != nil || !strings.Contains(out, "10.0.0.1") || !strings.Contains(out, "10.0.0.2") || !strings.Contains(out, "note: 2 different subscribers") {
		t.Fatalf("%q %v", out, err)
	}
	out, _, err = runCLI(t, "nat", "whois", "--log", p, "--remote", "198.51.100.2:443", "192.0.2.1:5000", "2026-11-21T05:00:01Z")
	if err != nil || strings.Contains(out, "10.0.0.1") || !strings.Contains(out, "held by 10.0.0.2 (10.0.0.2:1000) to 198.51.100.2:443") {
		t.Fatalf("%q %v", out, err)
	}
	if _, _, err := runCLI(t, "nat", "whois", "--log", p, "--remote", "x", "192.0.2.1:5000", "2026-11-21T05:00:01Z"); err == nil || !strings.Contains(err.Error(), `--remote "x"`) {
		t.Fatal(err)
	}
}

func TestNatWhoisCLIBadInput(t *testing.T) {
	log := writeLog(t, "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--log", log, "192.0.2.1", "2026-11-21T05:00:30Z"}, `external endpoint "192.0.2.1"`},
		{[]string{"--log", log, "192.0.2.1:1", "yesterday"}, `time "yesterday"`},
		{[]string{"--log", log, "192.0.2.1:1"}, "TIME"},
		{[]string{"192.0.2.1:1", "2026-11-21T05:00:30Z"}, "--log"},
		{[]string{"--log", filepath.Join(t.TempDir(), "missing"), "192.0.2.1:1", "2026-11-21T05:00:30Z"}, "missing"},
		{[]string{"--deterministic", "192.0.2.1:1"}, "--inside"},
		{[]string{"--deterministic", "--inside", "100.64.0.0/33", "--outside", "192.0.2.1", "192.0.2.1:1"}, `--inside "100.64.0.0/33"`},
		{[]string{"--deterministic", "--inside", "100.64.0.0/24", "--outside", "nope", "192.0.2.1:1"}, `--outside "nope"`},
		{[]string{"--deterministic", "--inside", "100.64.0.0/24", "--external", "nope", "192.0.2.1:1"}, `--external "nope"`},
	} {
		_, _, err := runCLI(t, append([]string{"nat", "whois"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want mention of %s", c.args, err, c.want)
		}
	}
}

func TestNatWhoisDeterministicCLI(t *testing.T) {
	// 256 inside addresses over 2 outside addresses: 128 per address,
	// 504 ports each from 1024; 192.0.2.2 port 1024+3*504 is the 132nd
	// subscriber's first port: 100.64.0.131.
	args := []string{"nat", "whois", "--deterministic", "--inside", "100.64.0.0/24", "--external", "192.0.2.1,192.0.2.2"}
	out, _, err := runCLI(t, append(args, "192.0.2.2:2536")...)
	if err != nil || !strings.Contains(out, "held by 100.64.0.131") || !strings.Contains(out, "2536-3039") {
		t.Fatalf("%q %v", out, err)
	}
	// No log was read, so the answer does not talk about one.
	if strings.Contains(out, "log") || !strings.Contains(out, "deterministic") {
		t.Fatalf("deterministic answer: %q", out)
	}
	out, _, err = runCLI(t, append(args, "--json", "192.0.2.2:2536")...)
	var hs []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &hs) != nil || len(hs) != 1 || hs[0]["deterministic"] != true || hs[0]["open"] != false {
		t.Fatalf("json %q %v", out, err)
	}
	// --outside is kept as an alias of --external.
	args[5] = "--outside"
	if out, _, err := runCLI(t, append(args, "192.0.2.2:2536")...); err != nil || !strings.Contains(out, "held by 100.64.0.131") {
		t.Fatalf("--outside: %q %v", out, err)
	}
	if _, _, err := runCLI(t, append(args, "192.0.2.3:2536")...); !errors.Is(err, natlog.ErrNoHolder) {
		t.Fatalf("unknown address: %v", err)
	}
}

// TestNatWhoisExitCodes: nat whois exits 0 when it found a holder, 1 when
// nobody held the endpoint, 2 for an error (bad flag, bad argument, missing
// log, a bad line with --strict), for the log and the deterministic form.
func TestNatWhoisExitCodes(t *testing.T) {
	log := writeLog(t, "this is not json\n")
	det := []string{"--deterministic", "--inside", "100.64.0.0/24", "--external", "192.0.2.1,192.0.2.2"}
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"--log", log, "192.0.2.1:40000", "2026-11-21T05:00:30Z"}, 0},
		{append(det, "192.0.2.2:2536"), 0},
		{[]string{"--log", log, "192.0.2.1:40000", "2026-11-21T05:02:00Z"}, 1},
		{[]string{"--log", log, "192.0.2.9:40000", "2026-11-21T05:00:30Z"}, 1},
		{append(det, "192.0.2.3:2536"), 1},
		{[]string{"--log", log, "--strict", "192.0.2.1:40000", "2026-11-21T05:00:30Z"}, 2},
		{[]string{"--log", filepath.Join(t.TempDir(), "missing"), "192.0.2.1:1", "2026-11-21T05:00:30Z"}, 2},
		{[]string{"--log", log, "192.0.2.1", "2026-11-21T05:00:30Z"}, 2},
		{[]string{"--no-such-flag", "192.0.2.1:1"}, 2},
		{[]string{}, 2},
		{[]string{"--deterministic", "192.0.2.1:1"}, 2},
	} {
		_, _, err := runCLI(t, append([]string{"nat", "whois"}, c.args...)...)
		code := 0
		if err != nil {
			code = exitCode(err)
		}
		if code != c.code {
			t.Errorf("nat whois %v: exit %d (%v), want %d", c.args, code, err, c.code)
		}
	}
}
