package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/steer"
	"github.com/portspace/portspace/tuple"
	"github.com/vishvananda/netns"
)

// The child proxy of the end-to-end test: with PORTSPACE_E2E_STORE set,
// TestE2EChildProxy runs a proxy in the current namespace (the parent
// starts it with ip netns exec) until its standard input closes.
const (
	envE2EStore  = "PORTSPACE_E2E_STORE"
	envE2EHolder = "PORTSPACE_E2E_HOLDER"
	envE2EHost   = "PORTSPACE_E2E_HOST"
)

func TestE2EChildProxy(t *testing.T) {
	path := os.Getenv(envE2EStore)
	if path == "" {
		t.Skip("the end-to-end test's child proxy; runs only under TestNamespaceFleetProxy")
	}
	ctx := context.Background()
	st, err := lease.OpenBolt(ctx, path, lease.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	eg := &LeaseEgress{Store: st, Holder: os.Getenv(envE2EHolder), Host: netip.MustParseAddr(os.Getenv(envE2EHost))}
	l, err := eg.Claim(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := ParseConfig("e2e.yaml", []byte("listen: [127.0.0.1:1080]\n"))
	srv, err := NewServer(cfg, eg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("holding %s %s\n", l.ID, l.Ports)
	os.Stdin.Read(make([]byte, 1)) // until the parent closes our stdin
	srv.Shutdown(ctx)
	eg.ReleaseAll(ctx)
}

func nsPath(ns *netnstest.NS) string { return filepath.Join("/run/netns", ns.Name) }

// inNS runs f on a thread in the namespace at path.
func inNS(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		h, err := netns.GetFromPath(path)
		if err == nil {
			err = netns.Set(h)
			h.Close()
		}
		if err == nil {
			err = f()
		}
		errc <- err
	}()
	return <-errc
}

var sharedAddr = netip.MustParseAddr("192.0.2.10")

// TestNamespaceFleetProxy is the end-to-end test: two hosts run the
// proxy as holders of different slices of one shared address behind the
// steering gateway; curl through each proxy reaches a server in the
// "internet" namespace, and the server sees the shared address with a
// port in that host's slice.
//
//	host1 10.0.1.2 --+
//	                 gw (steers 192.0.2.10 replies by port) -- inet 203.0.113.2:8080
//	host2 10.0.2.2 --+
func TestNamespaceFleetProxy(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireCommand(t, "ip")
	netnstest.RequireCommand(t, "nft")
	netnstest.RequireCommand(t, "curl")
	inet, gw := netnstest.New(t), netnstest.New(t)
	gw.MustRun(t, "ip", "link", "add", "name", "up0", "type", "veth", "peer", "name", "eth0", "netns", inet.Name)
	gw.MustRun(t, "ip", "addr", "add", "203.0.113.1/24", "dev", "up0")
	gw.MustRun(t, "ip", "link", "set", "up0", "up")
	inet.MustRun(t, "ip", "addr", "add", "203.0.113.2/24", "dev", "eth0")
	inet.MustRun(t, "ip", "link", "set", "eth0", "up")
	inet.MustRun(t, "ip", "route", "add", "192.0.2.0/24", "via", "203.0.113.1")
	gw.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
	var hosts []*netnstest.NS
	for i := 1; i <= 2; i++ {
		h := netnstest.New(t)
		dev := fmt.Sprintf("h%d", i)
		gw.MustRun(t, "ip", "link", "add", "name", dev, "type", "veth", "peer", "name", "eth0", "netns", h.Name)
		gw.MustRun(t, "ip", "addr", "add", fmt.Sprintf("10.0.%d.1/24", i), "dev", dev)
		gw.MustRun(t, "sysctl", "-qw", "net.ipv4.conf."+dev+".rp_filter=0")
		gw.MustRun(t, "ip", "link", "set", dev, "up")
		h.MustRun(t, "ip", "addr", "add", fmt.Sprintf("10.0.%d.2/24", i), "dev", "eth0")
		h.MustRun(t, "ip", "link", "set", "eth0", "up")
		h.MustRun(t, "ip", "route", "add", "default", "via", fmt.Sprintf("10.0.%d.1", i))
		if err := steer.HoldShared(nsPath(h), steer.Options{}, []netip.Addr{sharedAddr}); err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	// The internet's server answers with the address it saw.
	var ln net.Listener
	if err := inNS(nsPath(inet), func() (err error) { ln, err = net.Listen("tcp", "203.0.113.2:8080"); return }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, r.RemoteAddr) })}
	go srv.Serve(ln)
	defer srv.Close()

	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "leases.db")
	st, err := lease.OpenBolt(ctx, dbPath, lease.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Apply(ctx, []lease.Pool{{Name: "shared", Addrs: []netip.Addr{sharedAddr}, Ports: tuple.MustParsePortSet("40000-41999"), Slice: 1000, Quarantine: time.Second}}); err != nil {
		t.Fatal(err)
	}
	slices := make([]tuple.PortSet, len(hosts))
	for i, h := range hosts {
		cmd := exec.Command("ip", "netns", "exec", h.Name, os.Args[0], "-test.run=^TestE2EChildProxy$", "-test.v")
		cmd.Env = append(os.Environ(), envE2EStore+"="+dbPath, envE2EHolder+"="+fmt.Sprintf("host%d", i+1), envE2EHost+"="+fmt.Sprintf("10.0.%d.2", i+1))
		stdin, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stdin.Close(); cmd.Wait() })
		buf := make([]byte, 4096)
		var got string
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(got, "holding ") && time.Now().Before(deadline) {
			n, err := out.Read(buf)
			got += string(buf[:n])
			if err != nil {
				break
			}
		}
		_, rest, ok := strings.Cut(got, "holding ")
		f := strings.Fields(rest)
		if !ok || len(f) < 2 {
			t.Fatalf("host %d proxy did not start: %q", i+1, got)
		}
		if slices[i], err = tuple.ParsePortSet(f[1]); err != nil {
			t.Fatalf("host %d: %q: %v", i+1, f[1], err)
		}
		go func() { // drain the child's remaining output
			for {
				if _, err := out.Read(buf); err != nil {
					return
				}
			}
		}()
	}
	if slices[0] == slices[1] {
		t.Fatalf("both hosts hold %v", slices[0])
	}
	g, err := steer.OpenGateway(nsPath(gw))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	rec := &steer.Reconciler{Store: st, Gateway: g}
	if p, _, err := rec.Reconcile(ctx, time.Now()); err != nil || len(p.Slices) != 2 {
		t.Fatalf("reconcile: %d slices, %v", len(p.Slices), err)
	}
	for i, h := range hosts {
		for _, mode := range []string{"--socks5", "--socks5-hostname", "-x"} {
			px := "127.0.0.1:1080"
			if mode == "-x" {
				px = "http://" + px
			}
			out, err := h.Run("curl", "-sS", "--max-time", "10", "--noproxy", "", mode, px, "http://203.0.113.2:8080/")
			if err != nil {
				t.Fatalf("host %d curl %s: %v: %s", i+1, mode, err, out)
			}
			ap, err := netip.ParseAddrPort(strings.TrimSpace(out))
			if err != nil || ap.Addr() != sharedAddr || !slices[i].Contains(ap.Port()) {
				t.Errorf("host %d curl %s: the server saw %q, want %v with a port in %v", i+1, mode, out, sharedAddr, slices[i])
			}
		}
	}
}
