package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/lease"
)

func writeFile(t *testing.T, dir, name, s string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestProxyCheckConfig: --check-config accepts a good file and refuses a
// bad one (and a bad pools file) with file:line.
func TestProxyCheckConfig(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "pools.yaml", "pools:\n  - {name: de, addresses: [192.0.2.1], traits: {geo: de}, ports: 40000-40999, slice: 100}\n")
	good := writeFile(t, dir, "good.yaml", "pools: pools.yaml\nusers:\n  - {name: alice, password: secret, traits: {geo: de}}\n")
	out, _, err := runCLI(t, "proxy", "--check-config", good)
	if err != nil || !strings.Contains(out, "ok") {
		t.Fatalf("good file: %q %v", out, err)
	}
	bad := writeFile(t, dir, "bad.yaml", "pools: pools.yaml\nusers:\n  - {name: alice, password: secret, traits: {geo: fr}}\n")
	if _, _, err := runCLI(t, "proxy", "--check-config", bad); err == nil || !strings.Contains(err.Error(), "bad.yaml:3: user \"alice\": trait geo=fr is offered by no pool") {
		t.Errorf("unknown trait: %v", err)
	}
	typo := writeFile(t, dir, "typo.yaml", "listen: [127.0.0.1:1080]\nlisten-on: x\n")
	if _, _, err := runCLI(t, "proxy", "--check-config", typo); err == nil || !strings.Contains(err.Error(), "typo.yaml:2:") {
		t.Errorf("unknown key: %v", err)
	}
}

// TestProxyRefusesOpenListener: a non-loopback listener without users is
// refused with a message naming it, and --allow-open is the way out.
func TestProxyRefusesOpenListener(t *testing.T) {
	_, _, err := runCLI(t, "proxy", "--listen", "0.0.0.0:1080", "--store", "bolt:"+filepath.Join(t.TempDir(), "l.db"))
	if err == nil || !strings.Contains(err.Error(), "listener 0.0.0.0:1080") || !strings.Contains(err.Error(), "--allow-open") {
		t.Fatalf("got %v", err)
	}
	if _, _, err := runCLI(t, "proxy", "--listen", "localhost:1080"); err == nil || !strings.Contains(err.Error(), `--listen "localhost:1080"`) {
		t.Errorf("bad --listen: %v", err)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestProxyCommand runs "portspace proxy" with a bolt store and the
// default pool, sends curl through it, checks /metrics and /readyz,
// reloads users with SIGHUP while a tunnel stays open, and drains on
// cancel.
func TestProxyCommand(t *testing.T) {
	netnstest.RequireCommand(t, "curl")
	dir := t.TempDir()
	origin := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "origin saw "+r.RemoteAddr) })}
	oln, err := net.Listen("tcp", "127.0.0.10:0")
	if err != nil {
		t.Fatal(err)
	}
	go origin.Serve(oln)
	defer origin.Close()
	ports := quietPorts(t, 2)
	listen, metrics := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	cfgText := "listen: [%s]\nmetrics: %s\ndestinations: {allow: [127.0.0.10/32]}\nusers: [{name: %s, password: pw}]\n"
	cfg := writeFile(t, dir, "proxy.yaml", fmt.Sprintf(cfgText, listen, metrics, "alice"))
	ctx, cancel := context.WithCancel(context.Background())
	root := newRootCmd()
	var out, errb syncBuf
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs([]string{"proxy", "--config", cfg, "--store", "bolt:" + filepath.Join(dir, "leases.db"), "--holder", "test-host"})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	defer func() {
		defer cancel()
		select {
		case err := <-done:
			// It stopped early, and with it its SIGTERM handler: a
			// SIGTERM now would kill the test binary.
			t.Fatalf("proxy exited early with %v; log:\n%s", err, errb.String())
		default:
		}
		// SIGTERM drains and stops the proxy (the cancel is the fallback).
		syscall.Kill(os.Getpid(), syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("proxy exited with %v; log:\n%s", err, errb.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("proxy did not drain within 10 s of SIGTERM")
		}
		if !strings.Contains(errb.String(), "proxy: draining") {
			t.Errorf("no drain on SIGTERM; log:\n%s", errb.String())
		}
		// Its slices were released: they are in quarantine, held by nobody.
		st, err := lease.Open(context.Background(), "bolt:"+filepath.Join(dir, "leases.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		ls, _ := st.List(context.Background())
		for _, l := range ls {
			if l.State == lease.Held {
				t.Errorf("slice %s still held by %s after SIGTERM", l.ID, l.Holder)
			}
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r, err := http.Get("http://" + metrics + "/readyz"); err == nil && r.StatusCode == 200 {
			r.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never ready; log:\n%s", errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	curlOut := func(args ...string) (string, error) {
		cmd := exec.Command("curl", append([]string{"-sS", "--max-time", "10", "--noproxy", ""}, args...)...)
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	url := "http://" + oln.Addr().String() + "/"
	if o, err := curlOut("-x", "socks5h://alice:pw@"+listen, url); err != nil || !strings.Contains(o, "origin saw") {
		t.Fatalf("curl socks5h: %q %v\nlog:\n%s", o, err, errb.String())
	}
	// A tunnel that must survive the reload.
	tun, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	fmt.Fprintf(tun, "CONNECT %s HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6cHc=\r\n\r\n", oln.Addr())
	tun.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 39)
	if _, err := io.ReadFull(tun, buf); err != nil || !strings.HasPrefix(string(buf), "HTTP/1.1 200") {
		t.Fatalf("CONNECT: %q %v", buf, err)
	}
	writeFile(t, dir, "proxy.yaml", fmt.Sprintf(cfgText, listen, metrics, "bob"))
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	deadline = time.Now().Add(5 * time.Second)
	for !strings.Contains(errb.String(), "proxy: reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload; log:\n%s", errb.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if o, err := curlOut("-x", "http://bob:pw@"+listen, url); err != nil || !strings.Contains(o, "origin saw") {
		t.Errorf("bob after reload: %q %v", o, err)
	}
	if o, _ := curlOut("-x", "http://alice:pw@"+listen, "-o", "/dev/null", "-w", "%{http_code}", url); o != "407" {
		t.Errorf("alice after reload: %q, want 407", o)
	}
	fmt.Fprintf(tun, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if b, _ := io.ReadAll(tun); !strings.Contains(string(b), "origin saw") {
		t.Errorf("tunnel after reload: %q", b)
	}
	// A bad file is refused and the running configuration stays.
	writeFile(t, dir, "proxy.yaml", "users: [{name: carol}]\n")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	deadline = time.Now().Add(5 * time.Second)
	for !strings.Contains(errb.String(), "reload refused") {
		if time.Now().After(deadline) {
			t.Fatalf("bad reload not reported; log:\n%s", errb.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if o, err := curlOut("-x", "http://bob:pw@"+listen, url); err != nil || !strings.Contains(o, "origin saw") {
		t.Errorf("bob after a refused reload: %q %v", o, err)
	}
	r, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(r.Body)
	r.Body.Close()
	for _, want := range []string{`portspace_proxy_connections_total{protocol="socks5",result="ok"} 1`, `portspace_proxy_connections_total{protocol="http",result="auth_failed"} 1`, `portspace_proxy_leases_held{pool="default"} 1`, `portspace_proxy_reloads_total{result="error"} 1`, "portspace_proxy_dial_duration_seconds_bucket"} {
		if !strings.Contains(string(m), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
