package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/gwtest"
	"github.com/portspace/portspace/internal/netnstest"
)

// TestNatGatewayCommand runs `portspace nat gateway` in a router namespace
// and checks, while it runs, traffic through it, `nat sessions`, `nat
// stats`, the metrics endpoint and SIGHUP; then that SIGTERM stops it with
// status 0.
func TestNatGatewayCommand(t *testing.T) {
	netnstest.RequireCommand(t, "curl")
	netnstest.RequireCommand(t, "ping")
	topo := gwtest.New(t, gwtest.Options{})
	dir := topo.Dir()
	control := filepath.Join(dir, "gw.sock")
	conf := filepath.Join(dir, "gw.yaml")
	os.WriteFile(conf, []byte("preset: port-restricted-cone\nudp_timeout: 3m\n"), 0o644)
	cmd := exec.Command("ip", "netns", "exec", topo.RouterNS.Name, os.Args[0], "-test.run=^$", "--",
		"nat", "gateway", "--external", "192.0.2.1", "--inside", "10.0.0.0/24", "--config", conf,
		"--control", control, "--state-dir", dir, "--metrics", "127.0.0.1:9310", "--log", filepath.Join(dir, "ev.jsonl"))
	cmd.Env = append(os.Environ(), envMain+"=1")
	var out gwtest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	for i := 0; ; i++ {
		if _, _, err := runCLI(t, "nat", "stats", "--control", control); err == nil {
			break
		}
		if i > 300 {
			t.Fatalf("the gateway did not come up:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if o, err := topo.ClientNS.Run("ping", "-c", "2", "-i", "0.2", "-W", "2", gwtest.Server.String()); err != nil {
		t.Fatalf("ping: %v\n%s", err, o)
	}
	so, _, err := runCLI(t, "nat", "sessions", "--control", control)
	if err != nil || !strings.Contains(so, "icmp") || !strings.Contains(so, "10.0.0.2:") || !strings.Contains(so, "1 sessions") {
		t.Errorf("nat sessions: %v\n%s", err, so)
	}
	st, _, err := runCLI(t, "nat", "stats", "--control", control)
	if err != nil || !strings.Contains(st, "outbound forwarded") || !strings.Contains(st, "ports in use 192.0.2.1") {
		t.Errorf("nat stats: %v\n%s", err, st)
	}
	m, err := topo.RouterNS.Run("curl", "-s", "http://127.0.0.1:9310/metrics")
	if err != nil || !strings.Contains(m, `portspace_gateway_packets_total{direction="outbound",verdict="forward"} 2`) ||
		!strings.Contains(m, "portspace_gateway_sessions 1") {
		t.Errorf("metrics: %v\n%s", err, m)
	}
	wait := func(what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(out.String(), what) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if !strings.Contains(out.String(), what) {
			t.Errorf("SIGHUP: no %q in:\n%s", what, out.String())
		}
	}
	cmd.Process.Signal(syscall.SIGHUP)
	wait("SIGHUP: configuration unchanged")
	wait("SIGHUP: log reopened")
	os.WriteFile(conf, []byte("preset: port-restricted-cone\nudp_timeout: 4m\n"), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	wait("SIGHUP: reloaded, sessions kept\" settings=[udp_timeout]")
	if so, _, _ := runCLI(t, "nat", "sessions", "--control", control); !strings.Contains(so, "1 sessions") {
		t.Errorf("the session did not survive the reload:\n%s", so)
	}
	os.WriteFile(conf, []byte("preset: symmetric\nudp_timeout: 4m\n"), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	wait("need a restart")
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no exit after SIGTERM:\n%s", out.String())
	}
	if o := topo.RouterNS.MustRun(t, "ip", "rule"); strings.Contains(o, "7300") {
		t.Errorf("rule left after SIGTERM:\n%s", o)
	}
}
