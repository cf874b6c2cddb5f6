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

// fakeClock is the clock of the store, the keepers and the plans: Now,
// and timers (lease.Clock) that fire when Add moves the time past them.
type fakeClock struct {
	mu     sync.Mutex
	cond   *sync.Cond
	now    time.Time
	timers map[*fakeTimer]bool
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(now time.Time) *fakeClock {
	c := &fakeClock{now: now, timers: map[*fakeTimer]bool{}}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

// After implements lease.Clock.
func (c *fakeClock) After(d time.Duration) (<-chan time.Time, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
		return t.ch, func() {}
	}
	c.timers[t] = true
	c.cond.Broadcast()
	return t.ch, func() { c.mu.Lock(); delete(c.timers, t); c.cond.Broadcast(); c.mu.Unlock() }
}

// Add moves the clock and fires the timers that are due.
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for t := range c.timers {
		if !t.at.After(c.now) {
			t.ch <- c.now
			delete(c.timers, t)
		}
	}
}

// waitTimers waits (10 s at most, in real time) until n timers are
// pending: every keeper has finished its renew and set its next timer.
func (c *fakeClock) waitTimers(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	stop := time.AfterFunc(10*time.Second, func() { c.mu.Lock(); c.cond.Broadcast(); c.mu.Unlock() })
	defer stop.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.timers) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d keeper timers pending, want %d", len(c.timers), n)
		}
		c.cond.Wait()
	}
}

// partition is the real store as one host sees it: when down, its renews
// fail as if the store were unreachable (the only stand-in in this test:
// cutting one host's path to a store on the same machine would also cut
// the others').
type partition struct {
	lease.Store
	mu   sync.Mutex
	down bool
}

func (p *partition) Renew(ctx context.Context, l lease.Lease) (lease.Lease, error) {
	p.mu.Lock()
	down := p.down
	p.mu.Unlock()
	if down {
		return lease.Lease{}, errors.New("test: store unreachable from this host")
	}
	return p.Store.Renew(ctx, l)
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

// hostConns dials n TCP connections and n UDP sockets from host i to the
// servers with d (built from the host's kept lease), on a thread in the
// host's namespace.
func (f *fleet) hostConns(t *testing.T, i int, d *dial.Dialer, n int) ([]net.Conn, error) {
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
	clock := newFakeClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
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
	views := []*partition{{Store: store}, {Store: store}, {Store: store}}
	claim := func(i int) (lease.Lease, error) {
		return views[i].Claim(ctx, lease.Request{Holder: fmt.Sprintf("host%d", i+1), Traits: map[string]string{"geo": "de"},
			TTL: ttl, Host: hostAddr(i)})
	}
	keep := func(i int, l lease.Lease) (*lease.Keeper, *dial.Dialer) {
		k := lease.Keep(views[i], l, ttl, lease.KeeperOptions{Clock: clock})
		t.Cleanup(k.Stop)
		return k, k.Dialer(func(d *dial.Dialer) { d.Timeout = 3 * time.Second })
	}
	leases := make([]lease.Lease, 2)
	keepers := make([]*lease.Keeper, 2)
	dialers := make([]*dial.Dialer, 2)
	for i := range leases {
		if leases[i], err = claim(i); err != nil {
			t.Fatal(err)
		}
		keepers[i], dialers[i] = keep(i, leases[i])
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
	// No host answers ARP for the shared address, while each answers for
	// its own (the probe works).
	for i := range f.hosts {
		dev, gwAddr := fmt.Sprintf("h%d", i+1), netip.MustParseAddr(fmt.Sprintf("10.0.%d.1", i+1))
		if arpAnswered(t, nsPath(f.gw), dev, gwAddr, shared) {
			t.Errorf("host %d answers ARP for the shared address %s", i+1, shared)
		}
		if !arpAnswered(t, nsPath(f.gw), dev, gwAddr, hostAddr(i)) {
			t.Errorf("host %d does not answer ARP for its own address %s", i+1, hostAddr(i))
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Both hosts dial at once; every reply reaches the host owning its port.
	conns := make([][]net.Conn, 2)
	var wg sync.WaitGroup
	dialErr := make([]error, 2)
	for i := range conns {
		wg.Add(1)
		go func() { defer wg.Done(); conns[i], dialErr[i] = f.hostConns(t, i, dialers[i], 10) }()
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

	// Host 2 loses the store: its keeper's renews fail. Until its grant
	// expires it keeps dialing and its replies keep arriving.
	views[1].mu.Lock()
	views[1].down = true
	views[1].mu.Unlock()
	for range 2 {
		clock.waitTimers(t, 2)
		clock.Add(ttl / 3)
	}
	clock.waitTimers(t, 2)
	if keepers[1].Valid() != nil {
		t.Fatalf("host 2's lease is invalid before its expiry: %v", keepers[1].Valid())
	}
	reconcile()
	more, err := f.hostConns(t, 1, dialers[1], 1)
	if err != nil {
		t.Fatalf("host 2 could not dial while its lease was valid: %v", err)
	}
	conns[1] = append(conns[1], more...)
	for i, es := range exchange(conns, leases, "r2") {
		if len(es) > 0 {
			t.Fatalf("host %d before host 2's expiry: %d exchanges failed: %v", i+1, len(es), es[0])
		}
	}
	// The expiry passes: host 2's keeper reports the loss and its dialer
	// refuses; the gateway stops steering the slice, so replies to it are
	// dropped; host 1, which renewed, keeps every connection.
	clock.Add(ttl/3 + time.Second)
	if err := <-keepers[1].Lost(); !errors.Is(err, lease.ErrLost) {
		t.Fatalf("host 2's keeper reported %v, want ErrLost", err)
	}
	if _, err := f.hostConns(t, 1, dialers[1], 1); !errors.Is(err, lease.ErrLost) {
		t.Errorf("host 2 dialed after its expiry: %v", err)
	}
	p := reconcile()
	if len(p.Slices) != 1 || p.Slices[0].Host != hostAddr(0) {
		t.Fatalf("after host 2's expiry the plan steers %+v", p.Slices)
	}
	errs := exchange(conns, leases, "r3")
	if len(errs[0]) > 0 {
		t.Fatalf("host 1 (live) lost %d connections after host 2 expired: %v", len(errs[0]), errs[0][0])
	}
	if len(errs[1]) != len(conns[1]) {
		t.Errorf("host 2's slice is no longer steered, yet %d of %d exchanges worked", len(conns[1])-len(errs[1]), len(conns[1]))
	}

	// Host 3 gets nothing during the quarantine, then host 2's old slice.
	expired := clock.Now().Add(-time.Second)
	for clock.Now().Before(expired.Add(quarantine)) {
		if _, err := claim(2); !errors.Is(err, lease.ErrNoSlice) {
			t.Fatalf("host 3 claimed %v into the quarantine: %v", clock.Now().Sub(expired), err)
		}
		clock.waitTimers(t, 1) // host 1's keeper
		clock.Add(ttl / 3)
	}
	clock.waitTimers(t, 1)
	if err := keepers[0].Valid(); err != nil {
		t.Fatalf("host 1's lease: %v", err)
	}
	l3, err := claim(2)
	if err != nil {
		t.Fatalf("host 3 after the quarantine: %v", err)
	}
	if l3.ID != leases[1].ID || l3.Token <= leases[1].Token {
		t.Errorf("host 3 got %s token %d, want host 2's old slice %s with a token above %d", l3.ID, l3.Token, leases[1].ID, leases[1].Token)
	}
	_, d3 := keep(2, l3)
	p = reconcile()
	if len(p.Slices) != 2 {
		t.Fatalf("plan steers %d slices, want 2", len(p.Slices))
	}
	c3, err := f.hostConns(t, 2, d3, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range c3 {
		defer c.Close()
	}
	errs = exchange([][]net.Conn{conns[0], c3}, []lease.Lease{leases[0], l3}, "r4")
	if len(errs[0]) > 0 {
		t.Fatalf("host 1 (live) lost %d connections: %v", len(errs[0]), errs[0][0])
	}
	if len(errs[1]) > 0 {
		t.Fatalf("host 3: %d of %d exchanges failed: %v", len(errs[1]), len(c3), errs[1][0])
	}
}
