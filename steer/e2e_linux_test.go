package steer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portspace/portspace/dial"
	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/tuple"
	"github.com/vishvananda/netns"
)

// inNS runs f on an OS thread inside the namespace at path; sockets made
// there stay in that namespace whichever thread uses them later.
func inNS(t testing.TB, path string, f func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		h, err := netns.GetFromPath(path)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// fakeClock is the store's and the plans' clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// fleet is the test network: an "internet" namespace with TCP and UDP echo
// servers on 203.0.113.2, a gateway, and hosts 10.0.N.2 behind it, each on
// its own veth pair (gateway side 10.0.N.1). The internet routes the shared
// address 192.0.2.10 to the gateway; nothing routes it to any one host.
type fleet struct {
	inet, gw *netnstest.NS
	hosts    []*netnstest.NS
	servers  []netip.AddrPort
}

var shared = netip.MustParseAddr("192.0.2.10")

func newFleet(t testing.TB, nhosts int) *fleet {
	t.Helper()
	f := &fleet{inet: netnstest.New(t), gw: netnstest.New(t)}
	f.gw.MustRun(t, "ip", "link", "add", "name", "up0", "type", "veth", "peer", "name", "eth0", "netns", f.inet.Name)
	f.gw.MustRun(t, "ip", "addr", "add", "203.0.113.1/24", "dev", "up0")
	f.gw.MustRun(t, "ip", "link", "set", "up0", "up")
	f.inet.MustRun(t, "ip", "addr", "add", "203.0.113.2/24", "dev", "eth0")
	f.inet.MustRun(t, "ip", "link", "set", "eth0", "up")
	f.inet.MustRun(t, "ip", "route", "add", "192.0.2.0/24", "via", "203.0.113.1")
	f.gw.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
	for i := 1; i <= nhosts; i++ {
		h := netnstest.New(t)
		dev := fmt.Sprintf("h%d", i)
		f.gw.MustRun(t, "ip", "link", "add", "name", dev, "type", "veth", "peer", "name", "eth0", "netns", h.Name)
		f.gw.MustRun(t, "ip", "addr", "add", fmt.Sprintf("10.0.%d.1/24", i), "dev", dev)
		f.gw.MustRun(t, "sysctl", "-qw", "net.ipv4.conf."+dev+".rp_filter=0")
		f.gw.MustRun(t, "ip", "link", "set", dev, "up")
		h.MustRun(t, "ip", "addr", "add", fmt.Sprintf("10.0.%d.2/24", i), "dev", "eth0")
		h.MustRun(t, "ip", "link", "set", "eth0", "up")
		h.MustRun(t, "ip", "route", "add", "default", "via", fmt.Sprintf("10.0.%d.1", i))
		f.hosts = append(f.hosts, h)
	}
	// Echo servers: each reply starts with the client's address as the
	// server saw it, so the client can check it dialed from its slice.
	for _, port := range []uint16{7001, 7002} {
		ap := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.2"), port)
		f.servers = append(f.servers, ap)
		var ln net.Listener
		var pc net.PacketConn
		err := inNS(t, nsPath(f.inet), func() (err error) {
			if ln, err = net.Listen("tcp", ap.String()); err != nil {
				return err
			}
			pc, err = net.ListenPacket("udp", ap.String())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close(); pc.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					r := bufio.NewReader(c)
					for {
						line, err := r.ReadString('\n')
						if err != nil {
							return
						}
						fmt.Fprintf(c, "%s %s", c.RemoteAddr(), line)
					}
				}()
			}
		}()
		go func() {
			buf := make([]byte, 1500)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo([]byte(from.String()+" "+string(buf[:n])), from)
			}
		}()
	}
	return f
}

func hostAddr(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("10.0.%d.2", i+1)) }

// echo sends one line on c and checks the reply: the server saw the shared
// address and a port of ports, and echoed the line.
func echo(c net.Conn, ports tuple.PortSet, line string) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		return err
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	got := strings.TrimSpace(string(buf[:n]))
	from, rest, _ := strings.Cut(got, " ")
	ap, err := netip.ParseAddrPort(from)
	if err != nil {
		return fmt.Errorf("reply %q: %v", got, err)
	}
	if ap.Addr() != shared || !ports.Contains(ap.Port()) {
		return fmt.Errorf("server saw %s, outside the slice %s of %s", ap, ports, shared)
	}
	if rest != line {
		return fmt.Errorf("reply %q, want %q", rest, line)
	}
	return nil
}

// hostConns dials n TCP connections and n UDP sockets from host i's lease
// to the servers, concurrently, with a dial.Dialer built from the lease,
// on a thread in the host's namespace.
func (f *fleet) hostConns(t *testing.T, i int, l lease.Lease, n int) ([]net.Conn, error) {
	d := &dial.Dialer{Sources: []netip.Addr{l.Addr}, Ports: l.Ports, Timeout: 3 * time.Second}
	var conns []net.Conn
	err := inNS(t, nsPath(f.hosts[i]), func() error {
		for k := 0; k < n; k++ {
			for _, network := range []string{"tcp", "udp"} {
				c, err := d.DialContext(context.Background(), network, f.servers[k%len(f.servers)].String())
				if err != nil {
					return fmt.Errorf("host %d: dial %s: %w", i+1, network, err)
				}
				conns = append(conns, c)
			}
		}
		return nil
	})
	return conns, err
}

// exchange runs one echo on every connection of every host at once and
// returns the errors by host.
func exchange(hosts [][]net.Conn, leases []lease.Lease, round string) [][]error {
	errs := make([][]error, len(hosts))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, cs := range hosts {
		for k, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := echo(c, leases[i].Ports, fmt.Sprintf("%s-h%d-c%d", round, i+1, k)); err != nil {
					mu.Lock()
					errs[i] = append(errs[i], fmt.Errorf("%s %s: %w", c.LocalAddr().Network(), c.LocalAddr(), err))
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	return errs
}

// TestFleetSharesAddress is the end-to-end test: three hosts hold the same
// shared address, two with slices from the start; they dial the servers
// concurrently through the gateway, and every reply reaches the host that
// owns its port. Host 2 then stops renewing: once its grant expires the
// gateway stops steering its slice, host 3 gets the slice only after the
// quarantine, and host 1's connections never break.
func TestFleetSharesAddress(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireCommand(t, "ip")
	netnstest.RequireCommand(t, "nft")
	for _, form := range []Form{FormNFT, FormIP} {
		t.Run(form.String(), func(t *testing.T) { testFleet(t, form) })
	}
}

func testFleet(t *testing.T, form Form) {
	const ttl, quarantine = 30 * time.Second, 2 * time.Minute
	f := newFleet(t, 3)
	clock := &fakeClock{now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	ctx := context.Background()
	store, err := lease.OpenBolt(ctx, filepath.Join(t.TempDir(), "leases.db"), lease.BoltOptions{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	pool := lease.Pool{Name: "de", Addrs: []netip.Addr{shared}, Traits: map[string]string{"geo": "de"},
		Ports: tuple.MustParsePortSet("40000-41999"), Slice: 1000, Quarantine: quarantine}
	if err := store.Apply(ctx, []lease.Pool{pool}); err != nil {
		t.Fatal(err)
	}
	claim := func(i int) (lease.Lease, error) {
		return store.Claim(ctx, lease.Request{Holder: fmt.Sprintf("host%d", i+1), Traits: map[string]string{"geo": "de"},
			TTL: ttl, Host: hostAddr(i)})
	}
	leases := make([]lease.Lease, 2)
	for i := range leases {
		if leases[i], err = claim(i); err != nil {
			t.Fatal(err)
		}
	}
	gw, err := OpenGateway(nsPath(f.gw))
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	rec := &Reconciler{Store: store, Gateway: gw, Form: form}
	reconcile := func() Plan {
		t.Helper()
		p, _, err := rec.Reconcile(ctx, clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if p := reconcile(); len(p.Slices) != 2 {
		t.Fatalf("plan steers %d slices, want 2", len(p.Slices))
	}
	for i, h := range f.hosts {
		if err := HoldShared(nsPath(h), Options{}, []netip.Addr{shared}); err != nil {
			t.Fatalf("host %d: %v", i+1, err)
		}
	}
	// No host answers ARP for the shared address.
	for i := range f.hosts {
		if v := f.hosts[i].MustRun(t, "sysctl", "-n", "net.ipv4.conf.all.arp_ignore"); strings.TrimSpace(v) != "1" {
			t.Fatalf("host %d: arp_ignore %q", i+1, v)
		}
	}
	if out, err := f.gw.Run("ping", "-c1", "-W1", shared.String()); err == nil {
		t.Fatalf("the gateway reached the shared address itself (someone answers for it):\n%s", out)
	}

	// Both hosts dial at once; every reply reaches the host owning its port.
	conns := make([][]net.Conn, 2)
	var wg sync.WaitGroup
	dialErr := make([]error, 2)
	for i := range conns {
		wg.Add(1)
		go func() { defer wg.Done(); conns[i], dialErr[i] = f.hostConns(t, i, leases[i], 10) }()
	}
	wg.Wait()
	for i, err := range dialErr {
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conns[i] {
			defer c.Close()
		}
	}
	for i, es := range exchange(conns, leases, "r1") {
		if len(es) > 0 {
			t.Fatalf("host %d: %d of %d exchanges failed: %v", i+1, len(es), len(conns[i]), es[0])
		}
	}

	// Host 2 stops renewing; host 1 renews. At the expiry the gateway
	// stops steering host 2's slice: its replies are dropped.
	clock.Add(ttl / 2)
	if leases[0], err = store.Renew(ctx, leases[0]); err != nil {
		t.Fatal(err)
	}
	clock.Add(ttl/2 + time.Second)
	p := reconcile()
	if len(p.Slices) != 1 || p.Slices[0].Host != hostAddr(0) {
		t.Fatalf("after host 2's expiry the plan steers %+v", p.Slices)
	}
	errs := exchange(conns, leases, "r2")
	if len(errs[0]) > 0 {
		t.Fatalf("host 1 (live) lost %d connections after host 2 expired: %v", len(errs[0]), errs[0][0])
	}
	if len(errs[1]) != len(conns[1]) {
		t.Errorf("host 2's slice is no longer steered, yet %d of %d exchanges worked", len(conns[1])-len(errs[1]), len(conns[1]))
	}
	if _, err := store.Renew(ctx, leases[1]); !errors.Is(err, lease.ErrLost) {
		t.Errorf("host 2's late renew: %v, want ErrLost", err)
	}

	// Host 3 gets nothing during the quarantine, then host 2's old slice.
	if _, err := claim(2); !errors.Is(err, lease.ErrNoSlice) {
		t.Fatalf("host 3 claimed during the quarantine: %v", err)
	}
	for step := time.Duration(0); step < quarantine; step += ttl / 3 {
		clock.Add(ttl / 3)
		if leases[0], err = store.Renew(ctx, leases[0]); err != nil {
			t.Fatal(err)
		}
		if step+ttl/3 < quarantine-time.Second {
			if _, err := claim(2); !errors.Is(err, lease.ErrNoSlice) {
				t.Fatalf("host 3 claimed %v into the quarantine: %v", step+ttl/3, err)
			}
		}
	}
	l3, err := claim(2)
	if err != nil {
		t.Fatalf("host 3 after the quarantine: %v", err)
	}
	if l3.ID != leases[1].ID || l3.Token <= leases[1].Token {
		t.Errorf("host 3 got %s token %d, want host 2's old slice %s with a token above %d", l3.ID, l3.Token, leases[1].ID, leases[1].Token)
	}
	p = reconcile()
	if len(p.Slices) != 2 {
		t.Fatalf("plan steers %d slices, want 2", len(p.Slices))
	}
	c3, err := f.hostConns(t, 2, l3, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range c3 {
		defer c.Close()
	}
	errs = exchange([][]net.Conn{conns[0], c3}, []lease.Lease{leases[0], l3}, "r3")
	if len(errs[0]) > 0 {
		t.Fatalf("host 1 (live) lost %d connections: %v", len(errs[0]), errs[0][0])
	}
	if len(errs[1]) > 0 {
		t.Fatalf("host 3: %d of %d exchanges failed: %v", len(errs[1]), len(c3), errs[1][0])
	}
}
