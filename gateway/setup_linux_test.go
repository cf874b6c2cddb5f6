package gateway_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/gateway"
	"github.com/portspace/portspace/internal/gwtest"
	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/natlog"
)

// plumbing returns the router's rules, routes of all tables, proxy
// entries and the sysctls the gateway touches.
func plumbing(t *testing.T, r *netnstest.NS) string {
	t.Helper()
	var b strings.Builder
	b.WriteString(r.MustRun(t, "ip", "rule"))
	b.WriteString(r.MustRun(t, "ip", "route", "show", "table", "all"))
	b.WriteString(r.MustRun(t, "ip", "neigh", "show", "proxy"))
	b.WriteString(r.MustRun(t, "ip", "link", "show"))
	b.WriteString(r.MustRun(t, "sysctl", "net.ipv4.ip_forward", "net.ipv4.neigh.g1.proxy_delay"))
	return b.String()
}

// TestCleanup checks that the gateway removes everything it set up on
// SIGTERM, and that after a SIGKILL the next start removes the leftovers
// (and works), so that a stop after it leaves the router as it was.
func TestCleanup(t *testing.T) {
	netnstest.RequireCommand(t, "ping")
	topo := gwtest.New(t, gwtest.Options{})
	before := plumbing(t, topo.RouterNS)
	g := topo.Start(t, gwtest.Spec{Preset: "full-cone"})
	during := plumbing(t, topo.RouterNS)
	for _, want := range []string{"iif g0 lookup 7300", "default dev psnat0 table 7300", "192.0.2.1 dev psnat0", "192.0.2.1 dev g1 proxy", "proxy_delay = 0"} {
		if !strings.Contains(during, want) {
			t.Errorf("while running, the router lacks %q:\n%s", want, during)
		}
	}
	g.Stop(t)
	if after := plumbing(t, topo.RouterNS); after != before {
		t.Fatalf("after SIGTERM the router differs.\nbefore:\n%s\nafter:\n%s", before, after)
	}

	g = topo.Start(t, gwtest.Spec{Preset: "full-cone"})
	g.Kill(t)
	left := plumbing(t, topo.RouterNS)
	if !strings.Contains(left, "iif g0 lookup 7300") || !strings.Contains(left, "192.0.2.1 dev g1 proxy") {
		t.Fatalf("after SIGKILL the rule and proxy entry should be left for the next start to remove:\n%s", left)
	}
	g = topo.Start(t, gwtest.Spec{Preset: "full-cone"})
	if out, err := topo.ClientNS.Run("ping", "-c", "1", "-W", "2", gwtest.Server.String()); err != nil {
		t.Fatalf("ping after recovery: %v\n%s", err, out)
	}
	if n := strings.Count(plumbing(t, topo.RouterNS), "iif g0 lookup 7300"); n != 1 {
		t.Errorf("after recovery the rule is there %d times, want 1", n)
	}
	g.Stop(t)
	if after := plumbing(t, topo.RouterNS); after != before {
		t.Fatalf("after SIGKILL, restart and SIGTERM the router differs.\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestBadInput runs New inside the router namespace (re-executed) with bad
// addresses and checks each error names its input.
func TestBadInput(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	ns, _ := netnstest.Inside()
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := (&netnstest.NS{Name: ns}).Run(name, args...); err != nil {
			t.Fatal(err, out)
		}
	}
	run("ip", "link", "add", "g0", "type", "veth", "peer", "name", "g1")
	run("ip", "addr", "add", "10.0.0.1/24", "dev", "g0")
	run("ip", "addr", "add", "192.0.2.254/24", "dev", "g1")
	run("ip", "link", "set", "g0", "up")
	run("ip", "link", "set", "g1", "up")
	cfg, _ := nat.Preset("full-cone")
	opts := func(ext string, inside string) gateway.Options {
		c := cfg
		c.External = []netip.Addr{netip.MustParseAddr(ext)}
		c.Internal = []netip.Prefix{netip.MustParsePrefix(inside)}
		return gateway.Options{Engine: c, StateDir: t.TempDir()}
	}
	_, err := gateway.New(opts("10.0.0.5", "10.0.0.0/24"))
	if !errors.Is(err, gateway.ErrOverlap) || !strings.Contains(err.Error(), "10.0.0.0/24 contains 10.0.0.5") {
		t.Errorf("overlap: %v", err)
	}
	_, err = gateway.New(opts("192.0.2.254", "10.0.0.0/24"))
	if !errors.Is(err, gateway.ErrAddressConfigured) || !strings.Contains(err.Error(), "192.0.2.254 is on g1") {
		t.Errorf("configured address: %v", err)
	}
	o := opts("192.0.2.1", "10.0.0.0/24")
	o.TUN = "this-name-is-too-long-for-linux"
	_, err = gateway.New(o)
	if err == nil || !strings.Contains(err.Error(), "this-name-is-too-long-for-linux") {
		t.Errorf("bad TUN name: %v", err)
	}
	o = opts("192.0.2.1", "10.9.0.0/24")
	_, err = gateway.New(o)
	if err == nil || !strings.Contains(err.Error(), "inside network 10.9.0.0/24") {
		t.Errorf("unrouted inside network: %v", err)
	}
	// A second gateway with the same TUN name is refused, not attached.
	o = opts("192.0.2.1", "10.0.0.0/24")
	g, err := gateway.New(o)
	if err != nil {
		t.Fatal(err)
	}
	_, err = gateway.New(o)
	if err == nil || !strings.Contains(err.Error(), "psnat0 exists") {
		t.Errorf("second gateway: %v", err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if out, _ := (&netnstest.NS{Name: ns}).Run("ip", "rule"); strings.Contains(out, "7300") {
		t.Errorf("Close left a rule:\n%s", out)
	}
}

// TestEventLogWhois runs a gateway with an event log, opens a UDP flow
// through it, and answers whois for the flow's external endpoint from the
// log the running gateway wrote.
func TestEventLogWhois(t *testing.T) {
	topo := gwtest.New(t, gwtest.Options{})
	servers(t, topo)
	log := filepath.Join(topo.Dir(), "events.jsonl")
	g := topo.Start(t, gwtest.Spec{Preset: "symmetric", Log: log})
	time.Sleep(200 * time.Millisecond)
	out := topo.ClientNS.MustRun(t, python, filepath.Join("testdata", "nettool.py"), "udp-client", gwtest.Server.String(), "7000", "3")
	_, mapped, ok := strings.Cut(strings.TrimSpace(out), "mapped ")
	if !ok {
		t.Fatalf("udp-client: %s", out)
	}
	ext := netip.MustParseAddrPort(mapped)
	at := time.Now()
	ss := g.Sessions(t)
	if len(ss) != 1 || ss[0].External != ext || ss[0].Internal.Addr() != gwtest.Client {
		t.Fatalf("sessions %+v, want the one flow on %v", ss, ext)
	}
	g.Stop(t) // flushes the log
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ix, err := natlog.ReadIndex(natlog.NewLogReader(f, log), nil)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := ix.Whois(ext, at)
	if err != nil || len(hs) != 1 || hs[0].Internal.Addr() != gwtest.Client {
		t.Fatalf("whois %v at %v: %+v, %v", ext, at, hs, err)
	}
}

// TestICMPErrorsThroughEngine checks the ICMP errors the router's kernel
// sends about packets leaving the TUN reach the inside client through the
// engine's ICMP error translation (RFC 5508): time exceeded for TTL 2, and
// fragmentation needed for a DF packet over a smaller outside MTU.
func TestICMPErrorsThroughEngine(t *testing.T) {
	netnstest.RequireCommand(t, "ping")
	topo := gwtest.New(t, gwtest.Options{})
	topo.RouterNS.MustRun(t, "ip", "link", "set", "g1", "mtu", "1400")
	topo.ServerNS.MustRun(t, "ip", "link", "set", "s0", "mtu", "1400")
	g := topo.Start(t, gwtest.Spec{Preset: "symmetric"})
	out, _ := topo.ClientNS.Run("ping", "-c", "1", "-t", "2", "-W", "2", gwtest.Server.String())
	if !strings.Contains(out, "Time to live exceeded") {
		t.Errorf("TTL 2: %s", out)
	}
	out, _ = topo.ClientNS.Run("ping", "-c", "1", "-M", "do", "-s", "1450", "-W", "2", gwtest.Server.String())
	if !strings.Contains(out, "mtu = 1400") {
		t.Errorf("DF over the MTU: %s", out)
	}
	if st := g.Stats(t); st.InForwarded < 2 {
		t.Errorf("the errors did not go through the engine: %+v", st.Counters)
	}
}
