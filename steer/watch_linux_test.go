package steer

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/tuple"
)

// TestReconcilerRun follows a bolt store: a claim is steered and a release
// unsteered by the reconciles that the store's Watch triggers (the resync
// is an hour, so no timer does it).
func TestReconcilerRun(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := gatewayNS(t)
	g := openGW(t, ns)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store, err := lease.OpenBolt(ctx, filepath.Join(t.TempDir(), "leases.db"), lease.BoltOptions{PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	pool := lease.Pool{Name: "de", Addrs: []netip.Addr{shared}, Ports: tuple.MustParsePortSet("40000-41999"), Slice: 1000, Quarantine: time.Minute}
	if err := store.Apply(ctx, []lease.Pool{pool}); err != nil {
		t.Fatal(err)
	}
	type result struct {
		p   Plan
		st  Stats
		err error
	}
	results := make(chan result, 16)
	r := &Reconciler{Store: store, Gateway: g, Form: FormIP}
	done := make(chan error, 1)
	go func() {
		done <- r.Run(ctx, WatchOptions{Resync: time.Hour, OnReconcile: func(p Plan, st Stats, err error) { results <- result{p, st, err} }})
	}()
	// wait returns the first reconcile whose plan steers n slices.
	wait := func(n int) result {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case res := <-results:
				if res.err != nil {
					t.Fatal(res.err)
				}
				if len(res.p.Slices) == n {
					return res
				}
			case <-timeout:
				t.Fatalf("no reconcile steered %d slices within 10 s", n)
			}
		}
	}
	wait(0)
	l, err := store.Claim(ctx, lease.Request{Holder: "h1", TTL: time.Hour, Host: netip.MustParseAddr("10.0.1.2")})
	if err != nil {
		t.Fatal(err)
	}
	if res := wait(1); res.st.RulesAdded != 2 || res.p.Slices[0].ID != l.ID {
		t.Errorf("after the claim: %+v, %+v", res.st, res.p.Slices)
	}
	if err := store.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if res := wait(0); res.st.RulesDeleted != 2 {
		t.Errorf("after the release: %+v", res.st)
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("Run returned %v, want context.Canceled", err)
	}
}
