package lease

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/portspace/portspace/dial"
	"github.com/portspace/portspace/tuple"
)

// timerClock is a fake Clock with timers that fire when Advance passes
// their time.
type timerClock struct {
	*fakeClock
	mu     sync.Mutex
	timers []fakeTimer
	armed  chan struct{} // receives when a timer is set
}

type fakeTimer struct {
	at int64
	ch chan time.Time
}

func newTimerClock() *timerClock {
	return &timerClock{fakeClock: newFakeClock(), armed: make(chan struct{}, 100)}
}

func (c *timerClock) After(d time.Duration) (<-chan time.Time, func()) {
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	at := c.ns.Load() + int64(d)
	if d <= 0 {
		ch <- c.Now()
	} else {
		c.timers = append(c.timers, fakeTimer{at, ch})
	}
	c.mu.Unlock()
	c.armed <- struct{}{}
	return ch, func() {}
}

func (c *timerClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.ns.Add(int64(d))
	now := c.ns.Load()
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at <= now {
			t.ch <- time.Unix(0, now)
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
	c.mu.Unlock()
}

// flakyStore wraps a Store and fails renews with a transport error while
// down is set (an unreachable store).
type flakyStore struct {
	Store
	mu   sync.Mutex
	down bool
}

func (f *flakyStore) setDown(v bool) { f.mu.Lock(); f.down = v; f.mu.Unlock() }

func (f *flakyStore) Renew(ctx context.Context, l Lease) (Lease, error) {
	f.mu.Lock()
	down := f.down
	f.mu.Unlock()
	if down {
		return Lease{}, errors.New("lease: bolt:x: connection refused")
	}
	return f.Store.Renew(ctx, l)
}

type keeperEnv struct {
	clk    *timerClock
	store  *flakyStore
	k      *Keeper
	renews chan error
}

func newKeeperEnv(t *testing.T, addr string) *keeperEnv {
	clk := newTimerClock()
	bs := openTestBolt(t, clk.fakeClock)
	fs := &flakyStore{Store: bs}
	p := Pool{Name: "p", Addrs: []netip.Addr{netip.MustParseAddr(addr)}, Ports: tuple.MustParsePortSet("40000-40099"), Slice: 100, Quarantine: time.Minute}
	mustApply(t, bs, p)
	l, err := bs.Claim(context.Background(), Request{Holder: "h", TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e := &keeperEnv{clk: clk, store: fs, renews: make(chan error, 100)}
	e.k = Keep(fs, l, 30*time.Second, KeeperOptions{Clock: clk, OnRenew: func(_ Lease, err error) { e.renews <- err }})
	t.Cleanup(e.k.Stop)
	<-clk.armed
	return e
}

// step advances the clock by d and waits for the keeper's renew attempt.
func (e *keeperEnv) step(t *testing.T, d time.Duration) error {
	t.Helper()
	e.clk.Advance(d)
	select {
	case err := <-e.renews:
		<-e.clk.armed // the keeper set its next timer
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("no renew attempt")
		return nil
	}
}

func TestKeeperRenews(t *testing.T) {
	e := newKeeperEnv(t, "192.0.2.10")
	first := e.k.Lease()
	for i := range 5 {
		if err := e.step(t, 10*time.Second); err != nil {
			t.Fatalf("renew %d: %v", i, err)
		}
	}
	// 50 s after a 30 s claim: held only because of the renews.
	if err := e.k.Valid(); err != nil {
		t.Fatalf("Valid after renews: %v", err)
	}
	if l := e.k.Lease(); !l.Expires.After(first.Expires.Add(40*time.Second)) || l.Token != first.Token {
		t.Fatalf("lease after renews %+v, first %+v", l, first)
	}
	if err := e.k.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := e.k.Valid(); !errors.Is(err, ErrLost) {
		t.Fatalf("Valid after release: %v", err)
	}
}

// TestKeeperUnreachable: with the store down, the lease stays valid until
// its expiry and is lost (reported on Lost) when the expiry passes.
func TestKeeperUnreachable(t *testing.T) {
	e := newKeeperEnv(t, "192.0.2.10")
	if err := e.step(t, 10*time.Second); err != nil { // renewed at t=10: valid until t=40
		t.Fatal(err)
	}
	e.store.setDown(true)
	// Retries come every 1.5-4.5 s (a tenth of the TTL, jittered), so a
	// 5 s step always reaches the next one.
	elapsed := 10 * time.Second
	for elapsed+5*time.Second < 40*time.Second {
		d := 5 * time.Second
		if elapsed == 10*time.Second {
			d = 10 * time.Second // the regular renew at a third of the TTL
		}
		err := e.step(t, d)
		elapsed += d
		if err == nil {
			t.Fatal("renew worked while the store was down")
		}
		if verr := e.k.Valid(); verr != nil {
			t.Fatalf("Valid at t=%v (expiry t=40s): %v", elapsed, verr)
		}
	}
	e.clk.Advance(40*time.Second - elapsed)
	if err := e.k.Valid(); !errors.Is(err, ErrLost) {
		t.Fatalf("Valid at the expiry: %v, want ErrLost", err)
	}
	select {
	case err := <-e.k.Lost():
		if !errors.Is(err, ErrLost) {
			t.Fatalf("Lost sent %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no loss reported")
	}
}

// TestKeeperLost: a renew that the store refuses (another grant now) is
// reported at once.
func TestKeeperLost(t *testing.T) {
	e := newKeeperEnv(t, "192.0.2.10")
	bs := e.store.Store.(*BoltStore)
	if err := bs.Release(context.Background(), e.k.Lease()); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(10 * time.Second)
	if err := <-e.renews; !errors.Is(err, ErrLost) {
		t.Fatalf("renew after release: %v", err)
	}
	if err := <-e.k.Lost(); !errors.Is(err, ErrLost) {
		t.Fatalf("Lost: %v", err)
	}
	if err := e.k.Valid(); !errors.Is(err, ErrLost) {
		t.Fatalf("Valid: %v", err)
	}
}

// TestDialerStopsAtExpiry dials from a kept lease of a loopback address
// while the store is unreachable: dials work until the expiry and fail with
// ErrLost (in a *net.OpError) from then on; the open connection lives on.
func TestDialerStopsAtExpiry(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	e := newKeeperEnv(t, "127.0.0.1")
	e.store.setDown(true)
	for _, strategy := range []dial.Strategy{dial.Kernel, dial.Search} {
		d := NewDialer(func(d *dial.Dialer) { d.Strategy = strategy; d.Timeout = 5 * time.Second }, e.k)
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("%v: dial while valid: %v", strategy, err)
		}
		if p := c.LocalAddr().(*net.TCPAddr).Port; p < 40000 || p > 40099 {
			t.Fatalf("%v: source port %d outside the slice", strategy, p)
		}
		defer c.Close()
	}
	d := NewDialer(nil, e.k)
	kd := e.k.Dialer(nil)
	e.clk.Advance(30 * time.Second)
	for name, dialFn := range map[string]func(string, string) (net.Conn, error){"lease.Dialer": d.Dial, "Keeper.Dialer": kd.Dial} {
		_, err = dialFn("tcp", ln.Addr().String())
		if !errors.Is(err, ErrLost) {
			t.Fatalf("%s: dial after expiry: %v, want ErrLost", name, err)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) {
			t.Fatalf("%s: dial error %T is not a *net.OpError", name, err)
		}
	}
}
