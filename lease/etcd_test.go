package lease

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdCluster is a real etcd cluster (/usr/bin/etcd) on loopback with
// free ports and a temporary data directory, for tests and benchmarks.
type etcdCluster struct {
	t       testing.TB
	clients []string // host:port per member
	cmds    []*exec.Cmd
	names   []string
	dead    []bool
}

// freePorts returns n loopback TCP ports that were free a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// startEtcd starts an n-member cluster and waits until it has a leader.
// The members are killed (only these processes) when the test ends.
func startEtcd(t testing.TB, n int) *etcdCluster {
	t.Helper()
	netnstest.RequireCommand(t, "etcd")
	dir := t.TempDir()
	ports := freePorts(t, 2*n)
	c := &etcdCluster{t: t, dead: make([]bool, n)}
	var initial []string
	for i := range n {
		c.names = append(c.names, fmt.Sprintf("m%d", i))
		c.clients = append(c.clients, fmt.Sprintf("127.0.0.1:%d", ports[2*i]))
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	for i := range n {
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		client := "http://" + c.clients[i]
		log, err := os.Create(filepath.Join(dir, c.names[i]+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("etcd",
			"--name", c.names[i],
			"--data-dir", filepath.Join(dir, c.names[i]),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new", "--initial-cluster-token", filepath.Base(dir),
			"--heartbeat-interval", "100", "--election-timeout", "1000",
			"--logger", "zap", "--log-level", "error")
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c.cmds = append(c.cmds, cmd)
	}
	t.Cleanup(func() {
		for i, cmd := range c.cmds {
			if !c.dead[i] {
				cmd.Process.Kill()
				cmd.Wait()
			}
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for c.leader() < 0 {
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "m0.log"))
			t.Fatalf("etcd cluster has no leader after 20 s; m0 log:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

// url returns the store URL for the cluster under prefix.
func (c *etcdCluster) url(prefix string) string {
	return "etcd://" + strings.Join(c.clients, ",") + "/" + prefix
}

// leader returns the index of the current leader among live members, or -1.
func (c *etcdCluster) leader() int {
	for i, ep := range c.clients {
		if c.dead[i] {
			continue
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: time.Second, Logger: zap.NewNop()})
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := cli.Status(ctx, ep)
		cancel()
		cli.Close()
		if err == nil && st.Leader != 0 && st.Header.MemberId == st.Leader {
			return i
		}
	}
	return -1
}

// kill kills member i (a process this test started).
func (c *etcdCluster) kill(i int) {
	c.cmds[i].Process.Kill()
	c.cmds[i].Wait()
	c.dead[i] = true
}

var etcdPrefixSeq atomic.Int64

func openTestEtcd(t testing.TB, c *etcdCluster) *EtcdStore {
	t.Helper()
	loc, err := ParseURL(c.url(fmt.Sprintf("t%d", etcdPrefixSeq.Add(1))))
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
	url := c.url("kill")
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
				ld := c.leader()
				if ld >= 0 {
					c.kill(ld)
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
