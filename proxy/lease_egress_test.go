package proxy

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portspace/portspace/dial"
	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/tuple"
)

// boltStore opens a real bolt store in a temporary directory with pools.
func boltStore(t *testing.T, pools []lease.Pool) *lease.BoltStore {
	t.Helper()
	st, err := lease.OpenBolt(context.Background(), filepath.Join(t.TempDir(), "leases.db"), lease.BoltOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Apply(context.Background(), pools); err != nil {
		t.Fatal(err)
	}
	return st
}

func rangePorts(lo, hi uint16) tuple.PortSet { return tuple.PortSetOf(tuple.PortRangeFrom(lo, hi)) }

var lo1 = netip.MustParseAddr("127.0.0.1")

// TestLeaseEgressSliceCapacity is the target: one 10-port slice and
// two destinations carry exactly 20 concurrent proxied connections; the 21st
// gets X'01' when the pool has no other slice, and succeeds on a newly
// claimed slice when it has one.
func TestLeaseEgressSliceCapacity(t *testing.T) {
	for _, second := range []bool{false, true} {
		base := uint16(21400)
		ports := rangePorts(base, base+9)
		if second {
			base = 21420 // the first round's connections are still open
			ports = rangePorts(base, base+19)
		}
		pools := []lease.Pool{{Name: "de", Addrs: []netip.Addr{lo1}, Traits: map[string]string{"geo": "de"}, Ports: ports, Slice: 10, Quarantine: time.Second}}
		st := boltStore(t, pools)
		eg := &LeaseEgress{Store: st, Holder: "host-a", Pools: pools, Strategy: dial.Search}
		p := startProxy(t, "", eg)
		dsts := []netip.AddrPort{echoServer(t, "127.0.0.10"), echoServer(t, "127.0.0.11")}
		seen := map[tuple.Tuple]bool{}
		for i := range 20 {
			c, rep, bnd, err := socksDial(t, p.addr, "", "", cmdConnect, addrBytes(dsts[i%2]))
			if err != nil || rep != 0 {
				t.Fatalf("connection %d: reply %d err %v", i, rep, err)
			}
			t.Cleanup(func() { c.Close() })
			if bnd.Port() < base || bnd.Port() > base+9 {
				t.Fatalf("connection %d from %v, outside the first slice", i, bnd)
			}
			k := tuple.From(tuple.TCP, bnd, dsts[i%2])
			if seen[k] {
				t.Fatalf("duplicate 4-tuple %v", k)
			}
			seen[k] = true
		}
		c, rep, bnd, err := socksDial(t, p.addr, "", "", cmdConnect, addrBytes(dsts[0]))
		if !second {
			if err != nil || rep != RepGeneralFailure {
				t.Fatalf("21st with no other slice: reply %d err %v, want X'01'", rep, err)
			}
			p.waitCount("socks5", resultExhausted, 1)
			continue
		}
		if err != nil || rep != 0 || bnd.Port() < base+10 {
			t.Fatalf("21st with a second slice: reply %d from %v err %v, want success from the second slice", rep, bnd, err)
		}
		c.Close()
		if n := len(eg.Held()); n != 2 {
			t.Errorf("holds %d slices, want 2", n)
		}
	}
}

// TestLeaseEgressLifecycle: a lost lease stops dials from its slice at
// once; an idle surplus slice is released after IdleRelease (fake clock);
// the first slice stays.
func TestLeaseEgressLifecycle(t *testing.T) {
	pools := []lease.Pool{{Name: "p", Addrs: []netip.Addr{lo1}, Ports: rangePorts(21500, 21502), Slice: 1, Quarantine: time.Millisecond}}
	st := boltStore(t, pools)
	var now atomic.Int64
	now.Store(time.Unix(1e9, 0).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	eg := &LeaseEgress{Store: st, Holder: "h", Pools: pools, Strategy: dial.Search, MaxSlices: 2, IdleRelease: time.Minute, Now: clock}
	dst := echoServer(t, "127.0.0.10")
	ctx := context.Background()
	c1, err := eg.Dial(ctx, "tcp", dst, EgressRequest{})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := eg.Dial(ctx, "tcp", dst, EgressRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eg.Dial(ctx, "tcp", dst, EgressRequest{}); !errors.Is(err, ErrExhausted) {
		t.Fatalf("third dial with max-slices 2 of 1 port: %v, want ErrExhausted", err)
	}
	held := eg.Held()
	if len(held) != 2 {
		t.Fatalf("held %d", len(held))
	}
	c2.Close()
	now.Add(int64(59 * time.Second))
	eg.Tick(ctx)
	if len(eg.Held()) != 2 {
		t.Fatal("a surplus slice was released before IdleRelease")
	}
	now.Add(int64(2 * time.Second))
	eg.Tick(ctx)
	if h := eg.Held(); len(h) != 1 || h[0].ID != held[0].ID {
		t.Fatalf("after IdleRelease hold %v, want only the first slice", h)
	}
	// Someone else ends our grant (as an expiry would): the next Tick
	// drops the slice and no dial uses it again.
	if err := st.Release(ctx, eg.Held()[0]); err != nil {
		t.Fatal(err)
	}
	eg.Tick(ctx)
	if len(eg.Held()) != 0 {
		t.Fatal("a lost lease is still held")
	}
	c1.Close()
	c3, err := eg.Dial(ctx, "tcp", dst, EgressRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if h := eg.Held(); len(h) != 1 || h[0].ID == held[0].ID && h[0].Token == held[0].Token {
		t.Fatalf("after the loss hold %v: want a new grant", h)
	}
}

// TestLeaseEgressTraitsAndSessions: requests go to pools by traits; a
// sticky session keeps its address; a trait no pool offers is ErrNoEgress.
func TestLeaseEgressTraitsAndSessions(t *testing.T) {
	a2 := netip.MustParseAddr("127.0.0.2")
	pools := []lease.Pool{
		{Name: "de", Addrs: []netip.Addr{lo1, a2}, Traits: map[string]string{"geo": "de"}, Ports: rangePorts(21600, 21601), Slice: 2, Quarantine: time.Millisecond},
		{Name: "fr", Addrs: []netip.Addr{lo1}, Traits: map[string]string{"geo": "fr"}, Ports: rangePorts(21610, 21611), Slice: 2, Quarantine: time.Millisecond},
	}
	st := boltStore(t, pools)
	eg := &LeaseEgress{Store: st, Holder: "h", Pools: pools, Strategy: dial.Search}
	dst := echoServer(t, "127.0.0.10")
	ctx := context.Background()
	fr, err := eg.Dial(ctx, "tcp", dst, EgressRequest{Traits: map[string]string{"geo": "fr"}})
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	if p := localAddr(fr).Port(); p < 21610 || p > 21611 {
		t.Errorf("geo=fr dialed from %v", localAddr(fr))
	}
	if _, err := eg.Dial(ctx, "tcp", dst, EgressRequest{Traits: map[string]string{"geo": "us"}}); !errors.Is(err, ErrNoEgress) {
		t.Errorf("geo=us: %v, want ErrNoEgress", err)
	}
	de := map[string]string{"geo": "de"}
	s1, err := eg.Dial(ctx, "tcp", dst, EgressRequest{Traits: de, Session: "u/s1"})
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	addr := localAddr(s1).Addr()
	// Fill the session's slice toward dst, so that a non-session dial
	// claims the other address's slice, then check the session stays.
	other, err := eg.Dial(ctx, "tcp", dst, EgressRequest{Traits: de})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	x, err := eg.Dial(ctx, "tcp", dst, EgressRequest{Traits: de})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	if localAddr(x).Addr() == addr {
		t.Fatalf("expected the third de dial on the second address, got %v", localAddr(x))
	}
	if _, err := eg.Dial(ctx, "tcp", dst, EgressRequest{Traits: de, Session: "u/s1"}); !errors.Is(err, ErrExhausted) {
		t.Errorf("session whose address is full toward dst: %v, want ErrExhausted rather than another address", err)
	}
	dst2 := echoServer(t, "127.0.0.11")
	s2, err := eg.Dial(ctx, "tcp", dst2, EgressRequest{Traits: de, Session: "u/s1"})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if localAddr(s2).Addr() != addr {
		t.Errorf("session moved from %v to %v", addr, localAddr(s2).Addr())
	}
}
