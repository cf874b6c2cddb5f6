package lease

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/portspace/portspace/tuple"
)

// env is one store under the contract tests, with the means to let time
// pass: a fake clock for bolt, real (bounded) waits for etcd, whose expiry
// is the server's lease TTL.
type env struct {
	s Store
	// ttl and q are the TTL and quarantine the tests use; etcd needs whole
	// seconds.
	ttl, q time.Duration
	// advance lets d pass.
	advance func(d time.Duration)
	// now is the store's clock (the fake clock for bolt, the wall clock for
	// etcd).
	now func() time.Time
	// settle is how long a state change caused by time may take to show
	// (etcd's lease expiry runs on the leader every 500 ms).
	settle time.Duration
}

// contract runs the suite both stores must pass; open returns a fresh,
// empty store.
func contract(t *testing.T, open func(t *testing.T) env) {
	t.Run("ApplyList", func(t *testing.T) { testApplyList(t, open(t)) })
	t.Run("ClaimTraits", func(t *testing.T) { testClaimTraits(t, open(t)) })
	t.Run("Exhaust", func(t *testing.T) { testExhaust(t, open(t)) })
	t.Run("RenewRelease", func(t *testing.T) { testRenewRelease(t, open(t)) })
	t.Run("Quarantine", func(t *testing.T) { testQuarantine(t, open(t)) })
	t.Run("Expiry", func(t *testing.T) { testExpiry(t, open(t)) })
	t.Run("RenewedExpiry", func(t *testing.T) { testRenewedExpiry(t, open(t)) })
	t.Run("StoppedSibling", func(t *testing.T) { testStoppedSibling(t, open(t)) })
	t.Run("ApplyKeepsHeld", func(t *testing.T) { testApplyKeepsHeld(t, open(t)) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, open(t)) })
	t.Run("Watch", func(t *testing.T) { testWatch(t, open(t)) })
}

func testPool(name string, q time.Duration, traits map[string]string, addrs ...string) Pool {
	p := Pool{Name: name, Traits: traits, Ports: tuple.MustParsePortSet("1024-2047"), Slice: 256, Quarantine: q}
	for _, a := range addrs {
		p.Addrs = append(p.Addrs, netip.MustParseAddr(a))
	}
	return p
}

func mustApply(t *testing.T, s Store, pools ...Pool) {
	t.Helper()
	if err := s.Apply(context.Background(), pools); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func mustClaim(t *testing.T, e env, holder string, traits map[string]string) Lease {
	t.Helper()
	l, err := e.s.Claim(context.Background(), Request{Holder: holder, Traits: traits, TTL: e.ttl, Host: netip.MustParseAddr("10.0.0.1")})
	if err != nil {
		t.Fatalf("Claim(%s, %v): %v", holder, traits, err)
	}
	return l
}

func list(t *testing.T, s Store) map[string]Lease {
	t.Helper()
	ls, err := s.List(context.Background())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	m := map[string]Lease{}
	for _, l := range ls {
		if _, dup := m[l.ID]; dup {
			t.Fatalf("List: %s twice", l.ID)
		}
		m[l.ID] = l
	}
	return m
}

// waitState waits (at most e.settle) until List shows slice id in state st.
func waitState(t *testing.T, e env, id string, st State) Lease {
	t.Helper()
	deadline := time.Now().Add(e.settle)
	for {
		l := list(t, e.s)[id]
		if l.State == st {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("slice %s is %v after %v, want %v", id, l.State, e.settle, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testApplyList(t *testing.T, e env) {
	p := testPool("de", e.q, map[string]string{"geo": "de"}, "192.0.2.10", "192.0.2.11")
	mustApply(t, e.s, p)
	mustApply(t, e.s, p) // idempotent
	m := list(t, e.s)
	if len(m) != 8 {
		t.Fatalf("List: %d slices, want 2 addresses x 4", len(m))
	}
	l, ok := m["de/192.0.2.11/2"]
	if !ok {
		t.Fatalf("List has no de/192.0.2.11/2: %v", m)
	}
	want := tuple.MustParsePortSet("1536-1791")
	if l.State != Free || l.Pool != "de" || l.Addr != netip.MustParseAddr("192.0.2.11") || l.Ports != want || l.Holder != "" {
		t.Fatalf("slice 2 = %+v, want free de 192.0.2.11 %v", l, want)
	}
}

func testClaimTraits(t *testing.T, e env) {
	mustApply(t, e.s,
		testPool("de-res", e.q, map[string]string{"geo": "de", "category": "residential"}, "192.0.2.10"),
		testPool("fr", e.q, map[string]string{"geo": "fr"}, "192.0.2.20"),
		testPool("plain", e.q, nil, "192.0.2.30"))
	l := mustClaim(t, e, "h1", map[string]string{"geo": "de"})
	if l.Pool != "de-res" || l.Holder != "h1" || l.State != Held || l.Token == 0 || l.Expires.IsZero() {
		t.Fatalf("claim geo=de = %+v", l)
	}
	if l.Host != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("claim kept host %v", l.Host)
	}
	if !l.Ports.IsValid() || l.Ports.Len() != 256 {
		t.Fatalf("claim ports %v", l.Ports)
	}
	if l := mustClaim(t, e, "h1", map[string]string{"geo": "fr"}); l.Pool != "fr" {
		t.Fatalf("claim geo=fr from pool %s", l.Pool)
	}
	if l := mustClaim(t, e, "h1", map[string]string{"geo": "de", "category": "residential"}); l.Pool != "de-res" {
		t.Fatalf("claim geo=de,category=residential from pool %s", l.Pool)
	}
	_, err := e.s.Claim(context.Background(), Request{Holder: "h1", Traits: map[string]string{"geo": "us"}, TTL: e.ttl})
	if !errors.Is(err, ErrNoPool) {
		t.Fatalf("claim geo=us: %v, want ErrNoPool", err)
	}
	_, err = e.s.Claim(context.Background(), Request{Holder: "h1", Traits: map[string]string{"geo": "de", "category": "datacenter"}, TTL: e.ttl})
	if !errors.Is(err, ErrNoPool) {
		t.Fatalf("claim geo=de,category=datacenter: %v, want ErrNoPool", err)
	}
	// No traits: any pool.
	for range 9 {
		mustClaim(t, e, "h2", nil)
	}
	held := 0
	for _, l := range list(t, e.s) {
		if l.State == Held {
			held++
		}
	}
	if held != 12 {
		t.Fatalf("%d held after 12 claims", held)
	}
	if _, err := e.s.Claim(context.Background(), Request{Holder: "", TTL: e.ttl}); err == nil {
		t.Fatal("claim with no holder worked")
	}
	if _, err := e.s.Claim(context.Background(), Request{Holder: "x", TTL: 0}); err == nil {
		t.Fatal("claim with no TTL worked")
	}
}

func testExhaust(t *testing.T, e env) {
	mustApply(t, e.s, testPool("p", e.q, nil, "192.0.2.10", "2001:db8::1"))
	seen := map[string]bool{}
	for i := range 8 {
		l := mustClaim(t, e, fmt.Sprint("h", i%2), nil)
		if seen[l.ID] {
			t.Fatalf("claim %d: %s granted twice", i, l.ID)
		}
		seen[l.ID] = true
	}
	_, err := e.s.Claim(context.Background(), Request{Holder: "h9", TTL: e.ttl})
	if !errors.Is(err, ErrNoSlice) {
		t.Fatalf("ninth claim: %v, want ErrNoSlice", err)
	}
	m := list(t, e.s)
	for id := range seen {
		if m[id].State != Held || m[id].Holder == "" {
			t.Fatalf("List %s = %+v, want held", id, m[id])
		}
	}
}

func testRenewRelease(t *testing.T, e env) {
	ctx := context.Background()
	mustApply(t, e.s, testPool("p", e.q, nil, "192.0.2.10"))
	l := mustClaim(t, e, "h1", nil)
	e.advance(e.ttl / 2)
	r, err := e.s.Renew(ctx, l)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if r.ID != l.ID || r.Token != l.Token || !r.Expires.After(l.Expires) {
		t.Fatalf("Renew = %+v from %+v: want the same grant, later expiry", r, l)
	}
	bad := r
	bad.Token++
	if _, err := e.s.Renew(ctx, bad); !errors.Is(err, ErrLost) {
		t.Fatalf("Renew with token+1: %v, want ErrLost", err)
	}
	if err := e.s.Release(ctx, bad); !errors.Is(err, ErrLost) {
		t.Fatalf("Release with token+1: %v, want ErrLost", err)
	}
	bad.Token = r.Token - 1
	if err := e.s.Release(ctx, bad); !errors.Is(err, ErrLost) {
		t.Fatalf("Release with token-1: %v, want ErrLost", err)
	}
	if err := e.s.Release(ctx, r); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if _, err := e.s.Renew(ctx, r); !errors.Is(err, ErrLost) {
		t.Fatalf("Renew after release: %v, want ErrLost", err)
	}
	if err := e.s.Release(ctx, r); !errors.Is(err, ErrLost) {
		t.Fatalf("Release twice: %v, want ErrLost", err)
	}
	if l := list(t, e.s)[r.ID]; l.State != Quarantined || l.Holder != "" {
		t.Fatalf("after release %+v, want quarantined", l)
	}
}

func testQuarantine(t *testing.T, e env) {
	ctx := context.Background()
	p := testPool("p", e.q, nil, "192.0.2.10")
	p.Ports, p.Slice = tuple.MustParsePortSet("2000-2009"), 10 // one slice
	mustApply(t, e.s, p)
	l := mustClaim(t, e, "h1", nil)
	if err := e.s.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Claim(ctx, Request{Holder: "h2", TTL: e.ttl}); !errors.Is(err, ErrNoSlice) {
		t.Fatalf("claim during quarantine: %v, want ErrNoSlice", err)
	}
	e.advance(e.q)
	waitState(t, e, l.ID, Free)
	l2 := mustClaim(t, e, "h2", nil)
	if l2.ID != l.ID || l2.Token <= l.Token || l2.Holder != "h2" {
		t.Fatalf("claim after quarantine = %+v; first grant %+v: want the same slice, a larger token", l2, l)
	}
	// The old grant stays lost.
	if _, err := e.s.Renew(ctx, l); !errors.Is(err, ErrLost) {
		t.Fatalf("Renew of the first grant: %v, want ErrLost", err)
	}
}

func testExpiry(t *testing.T, e env) {
	ctx := context.Background()
	p := testPool("p", e.q, nil, "192.0.2.10")
	p.Ports, p.Slice = tuple.MustParsePortSet("2000-2009"), 10
	mustApply(t, e.s, p)
	l := mustClaim(t, e, "h1", nil)
	e.advance(e.ttl)
	q := waitState(t, e, l.ID, Quarantined)
	if q.Holder != "" {
		t.Fatalf("expired slice still lists holder %q", q.Holder)
	}
	if _, err := e.s.Renew(ctx, l); !errors.Is(err, ErrLost) {
		t.Fatalf("Renew after expiry: %v, want ErrLost", err)
	}
	if _, err := e.s.Claim(ctx, Request{Holder: "h2", TTL: e.ttl}); !errors.Is(err, ErrNoSlice) {
		t.Fatalf("claim right after expiry: %v, want ErrNoSlice (quarantine)", err)
	}
	e.advance(e.q)
	waitState(t, e, l.ID, Free)
	if l2 := mustClaim(t, e, "h2", nil); l2.Token <= l.Token {
		t.Fatalf("token %d after %d", l2.Token, l.Token)
	}
	if err := e.s.Release(ctx, l); !errors.Is(err, ErrLost) {
		t.Fatalf("Release of the expired grant: %v, want ErrLost", err)
	}
}

// testRenewedExpiry checks that a grant that was renewed and then expired
// still goes to nobody for the quarantine (a renew moves the quarantine's
// end along with the expiry).
func testRenewedExpiry(t *testing.T, e env) {
	ctx := context.Background()
	p := testPool("p", e.q, nil, "192.0.2.10")
	p.Ports, p.Slice = tuple.MustParsePortSet("2000-2009"), 10
	mustApply(t, e.s, p)
	l := mustClaim(t, e, "h1", nil)
	e.advance(e.ttl / 2)
	r, err := e.s.Renew(ctx, l)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	e.advance(e.ttl)
	waitState(t, e, r.ID, Quarantined)
	if _, err := e.s.Claim(ctx, Request{Holder: "h2", TTL: e.ttl}); !errors.Is(err, ErrNoSlice) {
		t.Fatalf("claim right after a renewed grant expired: %v, want ErrNoSlice (quarantine)", err)
	}
	e.advance(e.q)
	waitState(t, e, r.ID, Free)
	if l2 := mustClaim(t, e, "h2", nil); l2.ID != r.ID || l2.Token <= r.Token {
		t.Fatalf("claim after the quarantine = %+v, want %s with a token above %d", l2, r.ID, r.Token)
	}
}

// testStoppedSibling checks that a slice whose holder stops renewing it
// expires, and goes to another holder after its quarantine, while the
// holder keeps renewing another slice claimed with the same TTL (which the
// etcd store keeps on the same etcd lease).
func testStoppedSibling(t *testing.T, e env) {
	ctx := context.Background()
	p := testPool("p", e.q, nil, "192.0.2.10")
	p.Ports, p.Slice = tuple.MustParsePortSet("2000-2019"), 10 // two slices
	mustApply(t, e.s, p)
	a := mustClaim(t, e, "A", nil)
	b := mustClaim(t, e, "A", nil)
	step := e.ttl / 4
	// tick lets a step pass and renews b (only b) after it.
	tick := func() {
		t.Helper()
		e.advance(step)
		r, err := e.s.Renew(ctx, b)
		if err != nil {
			t.Fatalf("Renew of the renewed slice %s: %v", b.ID, err)
		}
		b = r
	}
	// a expires: quarantined (not free, not held) by the next renew of b
	// after its expiry, give or take the time a change takes to show.
	bound := e.now().Add(e.ttl + 2*step + e.settle)
	for {
		tick()
		got := list(t, e.s)[a.ID]
		if got.State == Quarantined {
			if got.Holder != "" {
				t.Fatalf("expired slice lists holder %q", got.Holder)
			}
			break
		}
		if got.State == Free {
			t.Fatalf("slice %s went free without a quarantine", a.ID)
		}
		if e.now().After(bound) {
			t.Fatalf("slice %s is %v by %s %v after its expiry while its holder renews %s; want quarantined",
				a.ID, got.State, got.Holder, e.now().Sub(a.Expires).Round(time.Millisecond), b.ID)
		}
	}
	if _, err := e.s.Claim(ctx, Request{Holder: "B", TTL: e.ttl}); !errors.Is(err, ErrNoSlice) {
		t.Fatalf("claim by B while %s is quarantined: %v, want ErrNoSlice", a.ID, err)
	}
	// After the quarantine B gets a, and never before it.
	bound = e.now().Add(e.q + 2*step + e.settle)
	for {
		tick()
		l, err := e.s.Claim(ctx, Request{Holder: "B", TTL: e.ttl})
		if err == nil {
			if l.ID != a.ID || l.Token <= a.Token || l.Holder != "B" {
				t.Fatalf("claim by B = %+v, want %s with a token above %d", l, a.ID, a.Token)
			}
			if end := a.Expires.Add(e.q); e.now().Before(end) {
				t.Fatalf("B got %s at %v, before the quarantine's end %v", a.ID, e.now(), end)
			}
			break
		}
		if !errors.Is(err, ErrNoSlice) {
			t.Fatalf("claim by B: %v", err)
		}
		if e.now().After(bound) {
			t.Fatalf("claim by B %v after %s's expiry, quarantine %v: %v", e.now().Sub(a.Expires).Round(time.Millisecond), a.ID, e.q, err)
		}
	}
	if _, err := e.s.Renew(ctx, a); !errors.Is(err, ErrLost) {
		t.Fatalf("Renew of the stopped grant: %v, want ErrLost", err)
	}
	if got := list(t, e.s)[b.ID]; got.State != Held || got.Holder != "A" || got.Token != b.Token {
		t.Fatalf("the renewed slice %+v, want held by A with token %d", got, b.Token)
	}
}

func testApplyKeepsHeld(t *testing.T, e env) {
	ctx := context.Background()
	p := testPool("p", e.q, map[string]string{"geo": "de"}, "192.0.2.10")
	mustApply(t, e.s, p)
	l := mustClaim(t, e, "h1", nil)
	// Re-cutting the pool (512-port slices) would take l's slice.
	recut := p
	recut.Slice = 512
	if err := e.s.Apply(ctx, []Pool{recut}); !errors.Is(err, ErrPools) {
		t.Fatalf("Apply re-cutting a held slice: %v, want ErrPools", err)
	}
	if err := e.s.Apply(ctx, nil); !errors.Is(err, ErrPools) {
		t.Fatalf("Apply removing the pool of a held slice: %v, want ErrPools", err)
	}
	if got := list(t, e.s)[l.ID]; got.State != Held || got.Token != l.Token {
		t.Fatalf("after refused Apply: %+v", got)
	}
	// Traits and a new address apply while held.
	p2 := p
	p2.Traits = map[string]string{"geo": "fr"}
	p2.Addrs = append(p2.Addrs, netip.MustParseAddr("192.0.2.11"))
	mustApply(t, e.s, p2)
	if _, err := e.s.Renew(ctx, l); err != nil {
		t.Fatalf("Renew after a traits change: %v", err)
	}
	if got := mustClaim(t, e, "h2", map[string]string{"geo": "fr"}); got.Pool != "p" {
		t.Fatalf("claim geo=fr after change: %+v", got)
	}
	if n := len(list(t, e.s)); n != 8 {
		t.Fatalf("%d slices after adding an address, want 8", n)
	}
	// Overlapping pools are refused.
	other := testPool("q", e.q, nil, "192.0.2.10")
	other.Ports = tuple.MustParsePortSet("2000-2255")
	if err := e.s.Apply(ctx, []Pool{p2, other}); !errors.Is(err, ErrPools) {
		t.Fatalf("Apply with overlapping pools: %v, want ErrPools", err)
	}
}

func testConcurrent(t *testing.T, e env) {
	p := testPool("p", e.q, nil, "192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14")
	p.Slice = 128 // 8 x 5 = 40 slices
	mustApply(t, e.s, p)
	const claimers = 60
	var (
		mu    sync.Mutex
		got   = map[string]int{}
		wg    sync.WaitGroup
		other []error
	)
	for i := range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := e.s.Claim(context.Background(), Request{Holder: fmt.Sprint("h", i), TTL: e.ttl})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				got[l.ID]++
			case !errors.Is(err, ErrNoSlice):
				other = append(other, err)
			}
		}()
	}
	wg.Wait()
	if len(other) > 0 {
		t.Fatalf("claims failed: %v", other)
	}
	if len(got) != 40 {
		t.Fatalf("%d slices granted, want all 40", len(got))
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("%s granted %d times", id, n)
		}
	}
}

func testWatch(t *testing.T, e env) {
	w, ok := e.s.(Watcher)
	if !ok {
		t.Fatal("store has no Watch")
	}
	mustApply(t, e.s, testPool("p", e.q, nil, "192.0.2.10"))
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := w.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	drain := func() {
		for {
			select {
			case <-ch:
			default:
				return
			}
		}
	}
	wait := func(what string) {
		t.Helper()
		select {
		case _, ok := <-ch:
			if !ok {
				t.Fatalf("%s: watch closed", what)
			}
		case <-time.After(e.settle + 3*time.Second):
			t.Fatalf("%s: no watch event", what)
		}
	}
	drain()
	l := mustClaim(t, e, "h1", nil)
	wait("claim")
	drain()
	e.advance(e.ttl)
	wait("expiry")
	_ = l
	cancel()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("watch not closed after cancel")
		}
	}
}
