package main

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/tuple"
)

// steerStore makes a bolt store with one pool of four 1024-port slices of
// 192.0.2.10 and two claims from two hosts, and returns its URL.
func steerStore(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "leases.db")
	ctx := context.Background()
	s, err := lease.Open(ctx, "bolt:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pools := []lease.Pool{{Name: "de", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")},
		Traits: map[string]string{"geo": "de"}, Ports: tuple.MustParsePortSet("1024-5119"), Slice: 1024, Quarantine: time.Minute}}
	if err := s.Apply(ctx, pools); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"10.0.1.2", "10.0.2.2"} {
		if _, err := s.Claim(ctx, lease.Request{Holder: "h" + h, TTL: time.Hour, Host: netip.MustParseAddr(h)}); err != nil {
			t.Fatal(err)
		}
	}
	return "bolt:" + path
}

// TestSteerRender renders a real store's two held slices in each format.
func TestSteerRender(t *testing.T) {
	url := steerStore(t)
	out, _, err := runCLI(t, "steer", "render", "--store", url, "--format", "ip")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ip route replace default via 10.0.1.2 table 23001",
		"ipproto tcp dport ", "lookup 23002",
		"ip rule add priority 23090 to 192.0.2.10/32 lookup 23000",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("--format ip lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "ip rule add priority 23010"); n != 4 {
		t.Errorf("%d slice rules, want 4 (2 slices x tcp, udp):\n%s", n, out)
	}
	out, _, err = runCLI(t, "steer", "render", "--store", url, "--format", "nft", "--nft-table", "gw")
	if err != nil || !strings.Contains(out, "table inet gw {") || strings.Count(out, ": goto host_") != 2 {
		t.Errorf("--format nft: %v\n%s", err, out)
	}
	out, _, err = runCLI(t, "steer", "render", "--store", url, "--format", "hosts")
	if err != nil || strings.Count(out, "ip addr add 192.0.2.10/32 dev lo label lo:portspace") != 2 {
		t.Errorf("--format hosts: %v\n%s", err, out)
	}
	// An hour later both grants have expired: nothing is steered, the
	// catch-all stays.
	later := time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339)
	out, _, err = runCLI(t, "steer", "render", "--store", url, "--at", later)
	if err != nil || strings.Contains(out, "23010") || !strings.Contains(out, "23090") {
		t.Errorf("--at %s: %v\n%s", later, err, out)
	}
}

// TestSteerBadInput checks that bad flags are errors naming the flag.
func TestSteerBadInput(t *testing.T) {
	url := steerStore(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"render", "--store", url, "--format", "json"}, "--format"},
		{[]string{"render", "--store", url, "--at", "yesterday"}, `--at "yesterday"`},
		{[]string{"render", "--store", url, "--priority", "32700"}, "--priority"},
		{[]string{"render", "--store", url, "--nft-table", "a b"}, "--nft-table"},
		{[]string{"render", "--store", "bolt"}, `--store "bolt"`},
		{[]string{"apply", "--store", url, "--form", "iptables"}, "--form"},
		{[]string{"watch", "--store", url, "--resync", "0s"}, "--resync"},
		{[]string{"host", "--store", url, "--host", "gw1"}, `--host "gw1"`},
	} {
		_, _, err := runCLI(t, append([]string{"steer"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("steer %v: err = %v, want it to name %s", c.args, err, c.want)
		}
	}
	// A bolt store that does not exist is refused, not made: its empty
	// plan would remove a gateway's steering.
	missing := filepath.Join(t.TempDir(), "typo", "leases.db")
	for _, sub := range []string{"render", "apply"} { // watch opens the same way (steerFlags.open)
		_, _, err := runCLI(t, "steer", sub, "--store", "bolt:"+missing)
		if !errors.Is(err, lease.ErrNoStore) || !strings.Contains(err.Error(), `--store "bolt:`+missing+`"`) {
			t.Errorf("steer %s on a missing store: err = %v, want ErrNoStore naming --store", sub, err)
		}
	}
	if _, err := os.Stat(filepath.Dir(missing)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the missing store's directory was made (%v)", err)
	}
}

// TestSteerApplyNetns applies a real store's slices to a namespace twice:
// the second run changes nothing; then host holds the shared address there.
func TestSteerApplyNetns(t *testing.T) {
	netnstest.RequireRoot(t)
	url := steerStore(t)
	ns := netnstest.New(t)
	ns.MustRun(t, "ip", "link", "add", "name", "va", "type", "veth", "peer", "name", "vb")
	ns.MustRun(t, "ip", "link", "set", "va", "up")
	ns.MustRun(t, "ip", "link", "set", "vb", "up")
	ns.MustRun(t, "ip", "addr", "add", "10.0.0.1/16", "dev", "va")
	path := "/run/netns/" + ns.Name
	for _, form := range []string{"ip", "nft"} {
		out, _, err := runCLI(t, "steer", "apply", "--store", url, "--form", form, "--netns", path)
		if err != nil || !strings.Contains(out, "2 slices, 2 hosts") {
			t.Fatalf("apply --form %s: %v\n%s", form, err, out)
		}
		out, _, err = runCLI(t, "steer", "apply", "--store", url, "--form", form, "--netns", path)
		if err != nil || !strings.Contains(out, "rules +0 -0, routes +0 -0, nft table replaced: false") {
			t.Errorf("second apply --form %s: %v\n%s", form, err, out)
		}
	}
	if rules := ns.MustRun(t, "ip", "rule", "show"); !strings.Contains(rules, "fwmark 0x70730002 lookup 23002") {
		t.Errorf("rules:\n%s", rules)
	}
	out, _, err := runCLI(t, "steer", "host", "--store", url, "--host", "10.0.1.2", "--netns", path)
	if err != nil || !strings.Contains(out, "holds 1 shared addresses on lo") {
		t.Fatalf("host: %v\n%s", err, out)
	}
	if a := ns.MustRun(t, "ip", "addr", "show", "dev", "lo"); !strings.Contains(a, "192.0.2.10/32 scope global lo:portspace") {
		t.Errorf("lo:\n%s", a)
	}
	if v := ns.MustRun(t, "sysctl", "-n", "net.ipv4.conf.all.arp_ignore"); strings.TrimSpace(v) != "1" {
		t.Errorf("arp_ignore = %q", v)
	}
}

// TestSteerWatchNetns runs steer watch against a namespace until its first
// reconcile has steered the store's two slices, then interrupts it.
func TestSteerWatchNetns(t *testing.T) {
	netnstest.RequireRoot(t)
	url := steerStore(t)
	ns := netnstest.New(t)
	ns.MustRun(t, "ip", "link", "add", "name", "va", "type", "veth", "peer", "name", "vb")
	ns.MustRun(t, "ip", "link", "set", "va", "up")
	ns.MustRun(t, "ip", "link", "set", "vb", "up")
	ns.MustRun(t, "ip", "addr", "add", "10.0.0.1/16", "dev", "va")
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs([]string{"steer", "watch", "--store", url, "--form", "ip", "--netns", "/run/netns/" + ns.Name, "--resync", "1h"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rules := ns.MustRun(t, "ip", "rule", "show")
		if strings.Count(rules, "dport") == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch did not steer the two slices within 10 s:\n%s\n%s", rules, errb.String())
		}
		time.Sleep(20 * time.Millisecond) // polling another process's effect, not timing a timer
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("interrupted watch returned %v", err)
	}
	if !strings.Contains(errb.String(), "steer: reconciled") {
		t.Errorf("no reconcile logged:\n%s", errb.String())
	}
}
