package lease

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portspace/portspace/dial"
	"github.com/portspace/portspace/lease/leasetest"
	"github.com/portspace/portspace/tuple"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The cluster helpers live in lease/leasetest so that other packages'
// tests can start clusters too.
type etcdCluster = leasetest.Etcd

var (
	startEtcd = leasetest.StartEtcd
	freePorts = leasetest.FreePorts
)

var etcdPrefixSeq atomic.Int64

func openTestEtcd(t testing.TB, c *etcdCluster) *EtcdStore {
	t.Helper()
	loc, err := ParseURL(c.URL(fmt.Sprintf("t%d", etcdPrefixSeq.Add(1))))
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenEtcd(context.Background(), loc, EtcdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestEtcdContract runs the contract suite against a real three-member
// etcd cluster. Expiry is etcd's lease TTL, so this suite lets real time
// pass: TTLs of 2 s, quarantines of 1 s, and state changes awaited for at
// most 3 s (the leader checks lease expiry every 500 ms).
func TestEtcdContract(t *testing.T) {
	c := startEtcd(t, 3)
	contract(t, func(t *testing.T) env {
		return env{
			s:       openTestEtcd(t, c),
			ttl:     2 * time.Second,
			q:       time.Second,
			advance: time.Sleep,
			now:     time.Now,
			settle:  3 * time.Second,
		}
	})
}

// TestEtcdUnreachable checks that a store no member answers is an error
// naming the URL within a few seconds.
func TestEtcdUnreachable(t *testing.T) {
	port := freePorts(t, 1)[0]
	url := fmt.Sprintf("etcd://127.0.0.1:%d", port)
	start := time.Now()
	_, err := Open(context.Background(), url)
	if err == nil {
		t.Fatal("Open of a closed port worked")
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Fatalf("Open took %v", d)
	}
	if !strings.Contains(err.Error(), url) {
		t.Fatalf("error %q does not name %s", err, url)
	}
}

// TestEtcdLeaderKill claims from four stores (four hosts) at once and
// kills the etcd leader when a third of the claims are done: every slice
// is granted exactly once, and claims resume on the two live members.
func TestEtcdLeaderKill(t *testing.T) {
	c := startEtcd(t, 3)
	url := c.URL("kill")
	var stores []Store
	for range 4 {
		s, err := Open(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		stores = append(stores, s)
	}
	p := Pool{Name: "p", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}, Ports: tuple.MustParsePortSet("1024-1823"), Slice: 10, Quarantine: time.Minute}
	mustApply(t, stores[0], p) // 80 slices
	const claimers = 120
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		results []childResult
		done    atomic.Int64
		killed  = make(chan int, 1)
		start   = make(chan struct{})
	)
	for i := range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			// Spread the claims over time so that some run after the kill.
			time.Sleep(time.Duration(i) * 8 * time.Millisecond)
			holder := fmt.Sprint("h", i)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			l, err := stores[i%4].Claim(ctx, Request{Holder: holder, TTL: time.Minute})
			r := childResult{Holder: holder, ID: l.ID, Token: l.Token}
			switch {
			case errors.Is(err, ErrNoSlice):
				r.NoSlice = true
			case err != nil:
				r.Err = err.Error()
			}
			mu.Lock()
			results = append(results, r)
			mu.Unlock()
			if done.Add(1) == claimers/3 {
				ld := c.Leader()
				if ld >= 0 {
					c.Kill(ld)
				}
				killed <- ld
			}
		}()
	}
	close(start)
	wg.Wait()
	if ld := <-killed; ld < 0 {
		t.Fatal("found no leader to kill")
	}
	checkExactlyOnce(t, results, claimers, 80)
	// The store agrees: 80 held, each by the holder its claim returned.
	byID := map[string]string{}
	for _, r := range results {
		if r.ID != "" {
			byID[r.ID] = r.Holder
		}
	}
	ls, err := stores[1].List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.State != Held || byID[l.ID] != l.Holder {
			t.Fatalf("List: %s %v by %q, claim returned %q", l.ID, l.State, l.Holder, byID[l.ID])
		}
	}
	// Claims resume: a release and a claim (quarantine 0 in a new pool).
	p2 := Pool{Name: "q", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.11")}, Ports: tuple.MustParsePortSet("1024-1033"), Slice: 10, Quarantine: 0}
	mustApply(t, stores[2], p, p2)
	l, err := stores[3].Claim(context.Background(), Request{Holder: "after", TTL: time.Minute})
	if err != nil || l.Pool != "q" {
		t.Fatalf("claim after the kill: %+v, %v", l, err)
	}
}

// TestEtcdOneLeasePerHolder checks that a claim reuses the holder's etcd
// lease for its TTL (one transaction per claim, no lease grant), and that
// another holder or TTL gets its own.
func TestEtcdOneLeasePerHolder(t *testing.T) {
	c := startEtcd(t, 1)
	s := openTestEtcd(t, c)
	e := env{s: s, ttl: 30 * time.Second}
	mustApply(t, s, testPool("p", time.Second, nil, "192.0.2.10", "192.0.2.11"))
	leaseOfKey := func(id string) int64 {
		resp, err := s.cli.Get(context.Background(), s.pfxH+id)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get %s: %v", id, err)
		}
		return resp.Kvs[0].Lease
	}
	var ids []int64
	for range 4 {
		ids = append(ids, leaseOfKey(mustClaim(t, e, "h1", nil).ID))
	}
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("one holder's claims use etcd leases %v, want one", ids)
		}
	}
	if other := leaseOfKey(mustClaim(t, e, "h2", nil).ID); other == ids[0] {
		t.Fatal("another holder got the same etcd lease")
	}
	e.ttl = time.Minute
	if other := leaseOfKey(mustClaim(t, e, "h1", nil).ID); other == ids[0] {
		t.Fatal("another TTL got the same etcd lease")
	}
}

// TestEtcdAbandonedGrant: a grant that committed after its claim gave up
// on it (the reply was lost, a read did not show it yet) is taken back
// when claims would otherwise find no slice.
func TestEtcdAbandonedGrant(t *testing.T) {
	c := startEtcd(t, 1)
	s := openTestEtcd(t, c)
	p := testPool("p", time.Minute, nil, "192.0.2.10")
	p.Ports, p.Slice = tuple.MustParsePortSet("2000-2009"), 10
	mustApply(t, s, p)
	id := "p/192.0.2.10/0"
	// What the lost claim left behind.
	ctx := context.Background()
	if _, err := s.cli.Txn(ctx).Then(
		clientv3.OpPut(s.pfxH+id, `{"holder":"h1","ttl":30000000000,"expires":0,"nonce":"lost-reply"}`),
		clientv3.OpPut(s.pfxB+id, "lost-reply")).Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, Request{Holder: "h2", TTL: 30 * time.Second}); !errors.Is(err, ErrNoSlice) {
		t.Fatalf("claim with a foreign grant in place: %v, want ErrNoSlice", err)
	}
	s.mu.Lock()
	s.abandoned["lost-reply"] = true
	s.mu.Unlock()
	l, err := s.Claim(ctx, Request{Holder: "h2", TTL: 30 * time.Second})
	if err != nil || l.ID != id {
		t.Fatalf("claim after the abandoned grant: %+v, %v", l, err)
	}
}

// TestEtcdUnreachableKeeper kills the only etcd member under a kept lease
// (real time: a 3 s TTL): dials from the lease's Dialer work until the
// expiry, fail with ErrLost after it, and the Keeper reports the loss.
func TestEtcdUnreachableKeeper(t *testing.T) {
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
			c.Close()
		}
	}()
	c := startEtcd(t, 1)
	s := openTestEtcd(t, c)
	p := Pool{Name: "lo", Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ports: tuple.MustParsePortSet("41000-41099"), Slice: 100, Quarantine: time.Second}
	mustApply(t, s, p)
	const ttl = 3 * time.Second
	l, err := s.Claim(context.Background(), Request{Holder: "h", TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	k := Keep(s, l, ttl, KeeperOptions{})
	defer k.Stop()
	d := NewDialer(func(d *dial.Dialer) { d.Timeout = time.Second }, k)
	c.Kill(0)
	killed := time.Now()
	conn, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial right after the store went away: %v", err)
	}
	conn.Close()
	select {
	case err := <-k.Lost():
		if !errors.Is(err, ErrLost) {
			t.Fatalf("Lost: %v", err)
		}
	case <-time.After(ttl + 3*time.Second):
		t.Fatal("no loss reported")
	}
	if d := time.Since(killed); d > ttl+time.Second {
		t.Errorf("loss reported %v after the kill, TTL %v", d, ttl)
	}
	if _, err := d.Dial("tcp", ln.Addr().String()); !errors.Is(err, ErrLost) {
		t.Fatalf("dial after the expiry: %v, want ErrLost", err)
	}
}

// TestEtcdLateRenewWhileSiblingRenewed checks that a renew after a grant's
// expiry is ErrLost even while the same holder renews another slice with
// the same TTL (which keeps their shared etcd lease alive), and that the
// late renew puts the slice in its quarantine.
func TestEtcdLateRenewWhileSiblingRenewed(t *testing.T) {
	c := startEtcd(t, 1)
	e := env{s: openTestEtcd(t, c), ttl: 2 * time.Second, q: time.Second}
	ctx := context.Background()
	mustApply(t, e.s, testPool("p", e.q, nil, "192.0.2.10"))
	a := mustClaim(t, e, "h1", nil)
	b := mustClaim(t, e, "h1", nil)
	for range 6 { // 3.6 s: past a's expiry, b renewed throughout
		time.Sleep(600 * time.Millisecond)
		var err error
		if b, err = e.s.Renew(ctx, b); err != nil {
			t.Fatalf("Renew of the other slice: %v", err)
		}
	}
	if _, err := e.s.Renew(ctx, a); !errors.Is(err, ErrLost) {
		t.Fatalf("Renew %.1f s after the claim with a 2 s TTL: %v, want ErrLost", time.Since(a.Expires.Add(-e.ttl)).Seconds(), err)
	}
	if got := list(t, e.s)[a.ID]; got.State != Quarantined {
		t.Fatalf("after the late renew: %+v, want quarantined", got)
	}
	if got := list(t, e.s)[b.ID]; got.State != Held || got.Token != b.Token {
		t.Fatalf("the renewed slice: %+v, want held", got)
	}
}

// TestEtcdSweepSparesRenewed checks the guard of the sweep of stale
// grants: a grant that the view still shows past its expiry, but that was
// renewed since (its key's ModRevision moved on), is not ended.
func TestEtcdSweepSparesRenewed(t *testing.T) {
	c := startEtcd(t, 1)
	s := openTestEtcd(t, c)
	e := env{s: s, ttl: 30 * time.Second, q: time.Second}
	ctx := context.Background()
	mustApply(t, s, testPool("p", e.q, nil, "192.0.2.10"))
	a := mustClaim(t, e, "h1", nil)
	ref := func() grantRef {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.view.slot[a.ID].g
	}
	waitRef := func(pred func(grantRef) bool) grantRef {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if g := ref(); pred(g) {
				return g
			}
			if time.Now().After(deadline) {
				t.Fatalf("the view's grant of %s is %+v", a.ID, ref())
			}
		}
	}
	old := waitRef(func(g grantRef) bool { return g.lease != 0 })
	if _, err := s.Renew(ctx, a); err != nil {
		t.Fatal(err)
	}
	waitRef(func(g grantRef) bool { return g.mod > old.mod })
	// The view lags: it shows the grant as of the claim, long expired.
	s.mu.Lock()
	sl := s.view.slot[a.ID]
	stale := old
	stale.expires = time.Now().Add(-time.Minute).UnixNano()
	s.view.setGrantLocked(a.ID, &sl, stale)
	s.view.slot[a.ID] = sl
	s.mu.Unlock()
	s.sweepLease(ctx, clientv3.LeaseID(old.lease), "")
	if got := list(t, s)[a.ID]; got.State != Held || got.Token != a.Token {
		t.Fatalf("after a sweep with a stale view: %+v, want held with token %d", got, a.Token)
	}
	// With the view current and the expiry past, the same sweep ends it.
	resp, err := s.cli.Get(ctx, s.pfxH+a.ID)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get %s: %v", a.ID, err)
	}
	cur := grantRefOf(resp.Kvs[0])
	s.mu.Lock()
	sl = s.view.slot[a.ID]
	cur.expires = time.Now().Add(-time.Minute).UnixNano()
	s.view.setGrantLocked(a.ID, &sl, cur)
	s.view.slot[a.ID] = sl
	s.mu.Unlock()
	s.sweepLease(ctx, clientv3.LeaseID(old.lease), "")
	if got := list(t, s)[a.ID]; got.State != Quarantined {
		t.Fatalf("after a sweep of a grant past its expiry: %+v, want quarantined", got)
	}
	if _, err := s.Renew(ctx, a); !errors.Is(err, ErrLost) {
		t.Fatalf("Renew of the swept grant: %v, want ErrLost", err)
	}
}

// exercise runs a claim's life on s under a fresh pool: apply, claim,
// watch event, renew, list, release.
func exercise(t *testing.T, s Store) {
	t.Helper()
	ctx := context.Background()
	mustApply(t, s, testPool("p", time.Second, nil, "192.0.2.10"))
	ch, err := s.(Watcher).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := env{s: s, ttl: 30 * time.Second}
	l := mustClaim(t, e, "h1", nil)
	// The watch may start after the claim: renew until it reports one.
	var r Lease
	for deadline := time.Now().Add(5 * time.Second); ; {
		if r, err = s.Renew(ctx, l); err != nil {
			t.Fatalf("Renew: %v", err)
		}
		select {
		case <-ch:
		case <-time.After(200 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no watch event after a claim and renews")
			}
			continue
		}
		break
	}
	if got := list(t, s)[l.ID]; got.State != Held || got.Token != l.Token || got.Holder != "h1" {
		t.Fatalf("List: %+v", got)
	}
	if err := s.Release(ctx, r); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// openFails opens url with dial timeout d and returns the error, failing
// the test if the open works or does not name the URL as shown.
func openFails(t *testing.T, url, shown string, d time.Duration) error {
	t.Helper()
	loc, err := ParseURL(url)
	if err != nil {
		t.Fatalf("ParseURL(%q): %v", url, err)
	}
	s, err := OpenEtcd(context.Background(), loc, EtcdOptions{DialTimeout: d})
	if err == nil {
		s.Close()
		t.Fatalf("Open(%q) worked", shown)
	}
	if !strings.Contains(err.Error(), shown) {
		t.Fatalf("Open(%q): error %q does not name the URL", shown, err)
	}
	return err
}

// TestEtcdTLS runs a store against a real etcd member that serves clients
// only over TLS and wants client certificates (a throwaway CA made by the
// test): it works with the CA and the client certificate, and fails,
// naming the URL, without the client certificate, with another CA, over
// plain etcd://, and with a CA file that is missing or not PEM.
func TestEtcdTLS(t *testing.T) {
	c := leasetest.StartEtcdTLS(t)
	url := c.URL("tls")
	s, err := Open(context.Background(), url)
	if err != nil {
		t.Fatalf("Open(%q): %v", url, err)
	}
	defer s.Close()
	exercise(t, s)

	ep := c.Clients[0]
	f := c.TLS
	other := leasetest.NewTLSFiles(t, "127.0.0.1")
	for _, tc := range []struct{ name, url, why string }{
		{"no client certificate", "etcds://" + ep + "/tls?cacert=" + f.CA, "no member answered within 1s (TLS with " + ep + ": remote error: tls: "},
		{"another CA", "etcds://" + ep + "/tls?cacert=" + other.CA + "&cert=" + f.ClientCert + "&key=" + f.ClientKey, "certificate signed by unknown authority"},
		{"another CA's client certificate", "etcds://" + ep + "/tls?cacert=" + f.CA + "&cert=" + other.ClientCert + "&key=" + other.ClientKey, "no member answered within 1s (TLS with " + ep + ": remote error: tls: "},
		{"plain etcd://", "etcd://" + ep + "/tls", ep + " speaks TLS: use etcds://"},
		{"missing CA file", "etcds://" + ep + "/tls?cacert=" + f.CA + ".missing", "cacert=" + f.CA + ".missing: open"},
		{"CA file not PEM", "etcds://" + ep + "/tls?cacert=" + f.ClientKey + "x", "cacert=" + f.ClientKey + "x"},
		{"key of another certificate", "etcds://" + ep + "/tls?cacert=" + f.CA + "&cert=" + f.ClientCert + "&key=" + f.ServerKey, "cert=" + f.ClientCert + ", key=" + f.ServerKey},
	} {
		if tc.name == "CA file not PEM" {
			if err := os.WriteFile(f.ClientKey+"x", []byte("not a certificate\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		err := openFails(t, tc.url, tc.url, time.Second)
		if !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s: %v, want it to say %q", tc.name, err, tc.why)
		}
	}
}

// TestEtcdAuth runs a store against a real etcd member with
// authentication enabled (a root user, and user ps whose role may read and
// write /auth/ only): USER:PASSWORD@ and password-file= work; a wrong
// password, no credentials and a prefix outside the role fail, naming the
// URL with the password redacted.
func TestEtcdAuth(t *testing.T) {
	c := startEtcd(t, 1)
	c.EnableAuth("ps", "s3cr%t", "/auth/", "r00t")
	ep := c.Clients[0]
	url := "etcd://ps:s3cr%25t@" + ep + "/auth"
	slow := Options{Etcd: EtcdOptions{DialTimeout: 10 * time.Second}} // bcrypt on a loaded machine
	s, err := OpenWith(context.Background(), url, slow)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	exercise(t, s)

	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cr%t\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenWith(context.Background(), "etcd://ps@"+ep+"/auth?password-file="+pw, slow)
	if err != nil {
		t.Fatalf("Open with password-file: %v", err)
	}
	defer s2.Close()
	if got := list(t, s2); len(got) != 4 {
		t.Fatalf("List with password-file: %d slices, want 4", len(got))
	}

	for _, tc := range []struct{ name, url, shown, why string }{
		{"wrong password", "etcd://ps:wrong@" + ep + "/auth", "etcd://ps:xxxxx@" + ep + "/auth", "authentication failed"},
		{"no credentials", "etcd://" + ep + "/auth", "etcd://" + ep + "/auth", "user name is empty"},
		{"outside the role", "etcd://ps:s3cr%25t@" + ep + "/other", "etcd://ps:xxxxx@" + ep + "/other", "permission denied"},
		{"missing password file", "etcd://ps@" + ep + "/auth?password-file=" + pw + ".missing", "etcd://ps@" + ep + "/auth?password-file=" + pw + ".missing", "password-file=" + pw + ".missing: open"},
	} {
		// Generous: the server checks passwords with bcrypt, slow on a
		// loaded machine.
		err := openFails(t, tc.url, tc.shown, 10*time.Second)
		if !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s: %v, want it to say %q", tc.name, err, tc.why)
		}
		if strings.Contains(err.Error(), "wrong") || strings.Contains(err.Error(), "s3cr") {
			t.Errorf("%s: error %q shows the password", tc.name, err)
		}
	}
}

// TestEtcdMustExist: with EtcdOptions.MustExist a prefix that holds no
// pools (a mistyped URL) is ErrNoStore naming the URL, and the same prefix
// opens once pools were applied there.
func TestEtcdMustExist(t *testing.T) {
	c := startEtcd(t, 1)
	ctx := context.Background()
	loc, err := ParseURL(c.URL(fmt.Sprintf("t%d", etcdPrefixSeq.Add(1))))
	if err != nil {
		t.Fatal(err)
	}
	if s, err := OpenEtcd(ctx, loc, EtcdOptions{MustExist: true}); !errors.Is(err, ErrNoStore) || !strings.Contains(err.Error(), loc.String()) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("OpenEtcd(empty prefix, MustExist) = %v, want ErrNoStore naming %s", err, loc)
	}
	s, err := OpenEtcd(ctx, loc, EtcdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, testPool("p", time.Second, nil, "192.0.2.10"))
	s.Close()
	s, err = OpenEtcd(ctx, loc, EtcdOptions{MustExist: true})
	if err != nil {
		t.Fatalf("OpenEtcd(applied prefix, MustExist) = %v", err)
	}
	s.Close()
}
