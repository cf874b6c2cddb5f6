package main

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
)

// TestProxyReloadBinary runs the portspace binary (this test binary
// re-executed as the CLI) and sends it SIGHUP: a reload changes a user's
// traits (the egress pool the origin sees) and limit (max-connections)
// while a tunnel opened before it keeps working; a reload that also
// changes the listener and the store applies the rest and logs that those
// two need a restart (the old listener keeps serving, the new one is not
// opened); a bad file is refused with file:line and the running
// configuration stays; a new pools file under the same path is logged as
// needing a restart; SIGTERM then drains and exits 0.
func TestProxyReloadBinary(t *testing.T) {
	netnstest.RequireCommand(t, "curl")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	origin := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, r.RemoteAddr) })}
	oln, err := net.Listen("tcp", "127.0.0.10:0")
	if err != nil {
		t.Fatal(err)
	}
	go origin.Serve(oln)
	defer origin.Close()
	url := "http://" + oln.Addr().String() + "/"

	writeFile(t, dir, "pools.yaml", "pools:\n"+
		"  - {name: de, addresses: [127.0.0.1], traits: {geo: de}, ports: 24100-24109, slice: 10, quarantine: 1s}\n"+
		"  - {name: fr, addresses: [127.0.0.1], traits: {geo: fr}, ports: 24120-24129, slice: 10, quarantine: 1s}\n")
	ports := quietPorts(t, 3)
	listen, listen2, metrics := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1]), fmt.Sprintf("127.0.0.1:%d", ports[2])
	conf := func(listen, store, geo string, maxConns int) string {
		return fmt.Sprintf("listen: [%s]\nmetrics: %s\nstore: bolt:%s\npools: pools.yaml\ndestinations: {allow: [127.0.0.10/32]}\n"+
			"users: [{name: alice, password: pw, traits: {geo: %s}, max-connections: %d}]\n", listen, metrics, filepath.Join(dir, store), geo, maxConns)
	}
	cfg := writeFile(t, dir, "proxy.yaml", conf(listen, "leases.db", "de", 1))

	var out, errb syncBuf
	cmd := exec.Command(exe, "proxy", "--config", cfg, "--holder", "reload-host")
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	waited := make(chan struct{})
	go func() { exited <- cmd.Wait(); close(waited) }()
	defer func() {
		select {
		case <-waited:
		default:
			cmd.Process.Kill() // only the child this test started
			<-waited
		}
	}()
	waitLog := func(what string, n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for strings.Count(errb.String(), what) < n {
			if time.Now().After(deadline) {
				t.Fatalf("no %q (%d times) in the log:\n%s", what, n, errb.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
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
	curlOut := func(args ...string) string {
		c := exec.Command("curl", append([]string{"-sS", "--max-time", "10", "--noproxy", ""}, args...)...)
		c.Env = []string{"PATH=/usr/bin:/bin"}
		b, _ := c.CombinedOutput()
		return string(b)
	}
	// egressPort fetches url as alice and returns the port the origin saw.
	egressPort := func(proxyAddr string) int {
		t.Helper()
		o := curlOut("-x", "http://alice:pw@"+proxyAddr, url)
		ap, err := netip.ParseAddrPort(o)
		if err != nil {
			t.Fatalf("curl through %s: %q\nlog:\n%s", proxyAddr, o, errb.String())
		}
		return int(ap.Port())
	}
	metricsText := func() string {
		r, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		m, _ := io.ReadAll(r.Body)
		return string(m)
	}
	waitMetric := func(line string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(metricsText(), line) {
			if time.Now().After(deadline) {
				t.Fatalf("/metrics never had %s", line)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	code := func() string {
		return curlOut("-x", "http://alice:pw@"+listen, "-o", "/dev/null", "-w", "%{http_code}", url)
	}
	sighup := func(n int) {
		t.Helper()
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for strings.Count(errb.String(), "proxy: reloaded")+strings.Count(errb.String(), "reload refused") < n {
			if time.Now().After(deadline) {
				t.Fatalf("SIGHUP %d: no reload in the log:\n%s", n, errb.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	if p := egressPort(listen); p < 24100 || p > 24109 {
		t.Fatalf("alice (geo=de) left from port %d, want the de pool 24100-24109", p)
	}
	// The proxy counts the request as finished (and alice's connection
	// as released) just after curl has the answer.
	waitMetric(`portspace_proxy_connections_total{protocol="http",result="ok"} 1`)
	// A tunnel that must survive the reloads; it is alice's one connection.
	tun, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	tun.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(tun, "CONNECT %s HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6cHc=\r\n\r\n", oln.Addr())
	buf := make([]byte, 39)
	if _, err := io.ReadFull(tun, buf); err != nil || !strings.HasPrefix(string(buf), "HTTP/1.1 200") {
		t.Fatalf("CONNECT: %q %v", buf, err)
	}
	if c := code(); c != "429" {
		t.Fatalf("alice's second connection at max-connections 1: %q, want 429", c)
	}

	// Reload 1: geo fr, two connections, and a new listener and store,
	// which need a restart.
	writeFile(t, dir, "proxy.yaml", conf(listen2, "other.db", "fr", 2))
	sighup(1)
	waitLog("proxy: reloaded", 1)
	waitLog("take effect only at a restart", 1)
	if !strings.Contains(errb.String(), "settings=listen,store") {
		t.Errorf("the restart warning does not name listen and store:\n%s", errb.String())
	}
	if p := egressPort(listen); p < 24120 || p > 24129 {
		t.Errorf("alice (now geo=fr) left from port %d, want the fr pool 24120-24129", p)
	}
	if c, err := net.Dial("tcp", listen2); err == nil {
		c.Close()
		t.Errorf("the reload opened the new listener %s", listen2)
	}
	if _, err := os.Stat(filepath.Join(dir, "other.db")); err == nil {
		t.Error("the reload opened the new store")
	}

	// Reload 2: a trait no pool offers, with the old listener back: refused
	// with file:line, alice stays fr with two connections.
	writeFile(t, dir, "proxy.yaml", conf(listen, "leases.db", "us", 2))
	sighup(2)
	waitLog("reload refused", 1)
	if !strings.Contains(errb.String(), "proxy.yaml:6") {
		t.Errorf("the refusal does not name proxy.yaml:6:\n%s", errb.String())
	}
	// Reload 3: not YAML at all.
	writeFile(t, dir, "proxy.yaml", "listen: [\n")
	sighup(3)
	waitLog("reload refused", 2)
	if p := egressPort(listen); p < 24120 || p > 24129 {
		t.Errorf("after refused reloads alice left from port %d, want the fr pool still", p)
	}

	// Reload 4: the pools file changes under the same path (and nothing
	// else does): the reload says that pools need a restart, and the fr
	// pool applied at start still serves alice.
	writeFile(t, dir, "pools.yaml", "pools:\n"+
		"  - {name: de, addresses: [127.0.0.1], traits: {geo: de}, ports: 24100-24109, slice: 10, quarantine: 1s}\n"+
		"  - {name: fr, addresses: [127.0.0.1], traits: {geo: fr}, ports: 24140-24149, slice: 10, quarantine: 1s}\n")
	writeFile(t, dir, "proxy.yaml", conf(listen, "leases.db", "fr", 2))
	sighup(4)
	waitLog("proxy: reloaded", 2)
	waitLog("take effect only at a restart", 2)
	if !strings.Contains(errb.String(), "settings=pools") {
		t.Errorf("the restart warning after a new pools file does not name pools:\n%s", errb.String())
	}
	if p := egressPort(listen); p < 24120 || p > 24129 {
		t.Errorf("after the pools file changed alice left from port %d, want the fr pool applied at start", p)
	}

	// The tunnel opened before the reloads still carries a request.
	fmt.Fprintf(tun, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if b, _ := io.ReadAll(tun); !strings.Contains(string(b), "200 OK") || !strings.Contains(string(b), "127.0.0.1:2410") {
		t.Errorf("the tunnel after the reloads: %q, want the origin's answer from the de slice it was opened on", b)
	}
	tun.Close() // else the drain waits for its client-to-origin half
	m := metricsText()
	for _, want := range []string{`portspace_proxy_reloads_total{result="ok"} 2`, `portspace_proxy_reloads_total{result="error"} 2`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("proxy exited with %v; log:\n%s", err, errb.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("proxy did not exit within 15 s of SIGTERM; log:\n%s", errb.String())
	}
}

// quietPorts returns n distinct loopback TCP ports that were free a moment
// ago, below the kernel's ephemeral range (32768 and up by default): a
// port the kernel hands out for bind(0) can be taken by anyone's outgoing
// connection on this shared machine before the child binds it.
func quietPorts(t *testing.T, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for try := 0; len(ports) < n; try++ {
		if try == 1000 {
			t.Fatal("no free port in 25000-32767")
		}
		p := 25000 + rand.IntN(7768) // above the pools of the proxy tests
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ls = append(ls, l)
		ports = append(ports, p)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}
