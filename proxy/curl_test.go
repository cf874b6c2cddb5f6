package proxy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portspace/portspace/internal/netnstest"
)

// curl runs curl with args and returns its output and exit code.
func curl(t *testing.T, args ...string) (string, int) {
	t.Helper()
	return curlIn(t, nil, args...)
}

// curlIn runs curl with args and stdin as its standard input.
func curlIn(t *testing.T, stdin []byte, args ...string) (string, int) {
	t.Helper()
	netnstest.RequireCommand(t, "curl")
	cmd := exec.Command("curl", append([]string{"-sS", "--max-time", "10", "--noproxy", ""}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.Env = []string{"PATH=/usr/bin:/bin"} // no *_proxy variables from the environment
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// TestCurlSOCKS5 sends curl through every SOCKS5 path: --socks5 (curl
// resolves), --socks5-hostname (the proxy resolves), with and without
// credentials, and checks the origin saw the request.
func TestCurlSOCKS5(t *testing.T) {
	o := startOrigin(t, "127.0.0.10")
	url := fmt.Sprintf("http://%s/x", o.addr)
	hostURL := fmt.Sprintf("http://origin.test:%d/y", o.addr.Port())

	open := startProxy(t, "", nil)
	out, code := curl(t, "--socks5", open.addr.String(), url)
	if code != 0 {
		t.Fatalf("curl --socks5: exit %d: %s", code, out)
	}
	mustContain(t, out, "hello from "+o.addr.String())
	out, code = curl(t, "--socks5-hostname", open.addr.String(), hostURL)
	if code != 0 {
		t.Fatalf("curl --socks5-hostname: exit %d: %s", code, out)
	}
	mustContain(t, out, "path /y")
	open.waitCount("socks5", resultOK, 2)

	auth := startProxy(t, `
users:
  - {name: alice, password: secret}
`, nil)
	out, code = curl(t, "-x", "socks5h://alice:secret@"+auth.addr.String(), hostURL)
	if code != 0 {
		t.Fatalf("curl socks5h with credentials: exit %d: %s", code, out)
	}
	mustContain(t, out, "path /y")
	out, code = curl(t, "-x", "socks5://alice,geo=xx,session=s1:secret@"+auth.addr.String(), url)
	if code == 0 {
		t.Fatalf("curl asked for a trait no egress offers and got through: %s", out)
	}
	auth.waitCount("socks5", resultNoEgress, 1)
	out, code = curl(t, "-x", "socks5h://alice:wrong@"+auth.addr.String(), hostURL)
	if code == 0 {
		t.Fatalf("curl with a wrong password got through: %s", out)
	}
	auth.waitCount("socks5", resultAuth, 1)
	out, code = curl(t, "--socks5-hostname", auth.addr.String(), hostURL)
	if code == 0 {
		t.Fatalf("curl without credentials got through a proxy with users: %s", out)
	}
	auth.waitCount("socks5", resultAuth, 2)
}

// TestCurlHTTP sends curl through the HTTP paths: -x http:// (absolute-form
// forwarding), -p (CONNECT), Proxy-Authorization, 407, 403.
func TestCurlHTTP(t *testing.T) {
	o := startOrigin(t, "127.0.0.10")
	url := fmt.Sprintf("http://%s/fwd", o.addr)
	p := startProxy(t, `
users:
  - {name: alice, password: secret}
`, nil)
	px := "http://" + p.addr.String()

	out, code := curl(t, "-x", px, "-U", "alice:secret", "-H", "Connection: X-Secret", "-H", "X-Secret: 1", "-H", "Keep-Alive: 5", url)
	if code != 0 {
		t.Fatalf("curl -x http: exit %d: %s", code, out)
	}
	mustContain(t, out, "path /fwd")
	h := o.lastHeader()
	for _, f := range []string{"Proxy-Authorization", "X-Secret", "Keep-Alive", "Proxy-Connection"} {
		if h.Get(f) != "" {
			t.Errorf("origin got hop-by-hop field %s: %q", f, h.Get(f))
		}
	}

	out, code = curl(t, "-p", "-x", px, "-U", "alice:secret", fmt.Sprintf("http://origin.test:%d/tun", o.addr.Port()))
	if code != 0 {
		t.Fatalf("curl -p: exit %d: %s", code, out)
	}
	mustContain(t, out, "path /tun")

	out, _ = curl(t, "-x", px, "-o", "/dev/null", "-w", "%{http_code} %header{proxy-authenticate}", url)
	if out != `407 Basic realm="portspace"` {
		t.Errorf("no credentials: got %q, want 407 with Proxy-Authenticate", out)
	}
	out, _ = curl(t, "-x", px, "-U", "alice:nope", "-o", "/dev/null", "-w", "%{http_code}", url)
	if out != "407" {
		t.Errorf("wrong password: got %q, want 407", out)
	}
	out, _ = curl(t, "-x", px, "-U", "alice:secret", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9/")
	if out != "403" {
		t.Errorf("loopback 127.0.0.1 (not allowed): got %q, want 403", out)
	}
	out, _ = curl(t, "-x", px, "-U", "alice:secret", "-o", "/dev/null", "-w", "%{http_code}", "http://private.test/")
	if out != "403" {
		t.Errorf("a name resolving to 10.1.2.3: got %q, want 403", out)
	}
	out, _ = curl(t, "-x", px, "-U", "alice:secret", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.11:1/")
	if out != "502" {
		t.Errorf("refused port: got %q, want 502", out)
	}
	out, code = curl(t, "-p", "-x", px, "-U", "alice:secret", "http://127.0.0.1:9/")
	if code == 0 || !strings.Contains(out, "403") {
		t.Errorf("CONNECT to a refused destination: exit %d, %q; want a 403 failure", code, out)
	}
	p.waitCount("http", resultAuth, 2)
	p.waitCount("http", resultRefused, 3)
	p.waitCount("http", resultDialFailed, 1)
}

// TestCurlIPv6Listener: a listener on ::1 serves SOCKS5 and HTTP too.
func TestCurlIPv6Listener(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback")
	}
	o := startOrigin(t, "127.0.0.10")
	cfg, _ := ParseConfig("v6.yaml", []byte(baseConfig))
	srv, err := NewServer(cfg, &DialerEgress{Dialer: testDialer()}, Options{Resolver: testResolver})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	for _, args := range [][]string{{"--socks5", ln.Addr().String()}, {"-x", "http://" + ln.Addr().String()}} {
		out, code := curl(t, append(args, "http://"+o.addr.String()+"/v6")...)
		if code != 0 || !strings.Contains(out, "path /v6") {
			t.Errorf("curl %v: exit %d: %s", args, code, out)
		}
	}
}

// TestCurlBulkShortHop: curl downloads 8 MiB from a loopback origin
// through a SOCKS5 tunnel and an HTTP CONNECT tunnel; every byte arrives,
// the bytes metric counts them, and the tunnels took the bulk short-hop
// path (the proxy's socket toward curl left BBR, where BBR is the
// system's congestion control).
func TestCurlBulkShortHop(t *testing.T) {
	body := bytes.Repeat([]byte("portspace bulk."), 8<<20/15)
	ln, err := net.Listen("tcp", "127.0.0.10:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	url := fmt.Sprintf("http://%s/bulk", ln.Addr())
	p := startProxy(t, "", nil)
	bbr := systemCongestionControl(t) == "bbr"
	for i, args := range [][]string{
		{"--socks5", p.addr.String(), url},
		{"-p", "-x", "http://" + p.addr.String(), url},
	} {
		before := testutil.ToFloat64(p.srv.metrics.ShortHopSwitched)
		down0 := testutil.ToFloat64(p.srv.metrics.Bytes.WithLabelValues("down"))
		out, code := curl(t, args...)
		if code != 0 || out != string(body) {
			t.Fatalf("curl %v: exit %d, %d bytes, want the %d served", args, code, len(out), len(body))
		}
		if bbr && testutil.ToFloat64(p.srv.metrics.ShortHopSwitched) == before {
			t.Errorf("curl %v: no socket of the tunnel left BBR", args)
		}
		deadline := time.Now().Add(5 * time.Second)
		for testutil.ToFloat64(p.srv.metrics.Bytes.WithLabelValues("down"))-down0 < float64(len(body)) {
			if time.Now().After(deadline) {
				t.Fatalf("tunnel %d: bytes_total{down} grew by %v, want at least %d",
					i, testutil.ToFloat64(p.srv.metrics.Bytes.WithLabelValues("down"))-down0, len(body))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// systemCongestionControl is net.ipv4.tcp_congestion_control.
func systemCongestionControl(t *testing.T) string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
