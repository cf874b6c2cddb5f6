package lease

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portspace/portspace/tuple"
)

// fakeClock is a clock that moves only when told.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func openTestBolt(t testing.TB, clk *fakeClock) *BoltStore {
	t.Helper()
	o := BoltOptions{PollInterval: 20 * time.Millisecond}
	if clk != nil {
		o.Now = clk.Now
	}
	s, err := OpenBolt(context.Background(), filepath.Join(t.TempDir(), "leases.db"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestBoltContract(t *testing.T) {
	contract(t, func(t *testing.T) env {
		clk := newFakeClock()
		return env{
			s:       openTestBolt(t, clk),
			ttl:     30 * time.Second,
			q:       DefaultQuarantine,
			advance: clk.Advance,
			now:     clk.Now,
			settle:  0,
		}
	})
}

// TestBoltFairReuse checks that claims take the slice free the longest: a
// released slice comes back after every never-used one.
func TestBoltFairReuse(t *testing.T) {
	clk := newFakeClock()
	s := openTestBolt(t, clk)
	e := env{s: s, ttl: time.Minute, q: time.Second, advance: clk.Advance}
	mustApply(t, s, testPool("p", time.Second, nil, "192.0.2.10"))
	a := mustClaim(t, e, "h", nil)
	if err := s.Release(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Second)
	for i := range 3 {
		if l := mustClaim(t, e, "h", nil); l.ID == a.ID {
			t.Fatalf("claim %d reused released %s before the unused slices", i, a.ID)
		}
	}
	if l := mustClaim(t, e, "h", nil); l.ID != a.ID {
		t.Fatalf("last claim got %s, want the released %s", l.ID, a.ID)
	}
}

// TestBoltLockTimeout holds the side lock and checks that a claim fails
// with ErrLockTimeout within its bound instead of hanging.
func TestBoltLockTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s, err := OpenBolt(context.Background(), path, BoltOptions{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	unlock, err := lockFile(context.Background(), path+".lock", false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = s.List(context.Background())
	if !errors.Is(err, ErrLockTimeout) {
		t.Fatalf("List under a held lock: %v, want ErrLockTimeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("List took %v", d)
	}
	unlock()
	if _, err := s.List(context.Background()); err != nil {
		t.Fatalf("List after unlock: %v", err)
	}
}

const childEnv = "PORTSPACE_LEASE_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(claimChild())
	}
	os.Exit(m.Run())
}

// claimChild is a claiming process for the multi-process tests: it opens
// the bolt store named in the environment, runs PORTSPACE_CLAIMERS
// concurrent claims, and prints one JSON line per result.
func claimChild() int {
	path := os.Getenv("PORTSPACE_BOLT")
	n, _ := strconv.Atoi(os.Getenv("PORTSPACE_CLAIMERS"))
	s, err := OpenBolt(context.Background(), path, BoltOptions{LockTimeout: time.Minute})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer s.Close()
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		out = bufio.NewWriter(os.Stdout)
		enc = json.NewEncoder(out)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			holder := fmt.Sprintf("%s-%d", os.Getenv(childEnv), i)
			l, err := s.Claim(context.Background(), Request{Holder: holder, TTL: time.Hour})
			r := childResult{Holder: holder, ID: l.ID, Token: l.Token}
			switch {
			case errors.Is(err, ErrNoSlice):
				r.NoSlice = true
			case err != nil:
				r.Err = err.Error()
			}
			mu.Lock()
			enc.Encode(r)
			mu.Unlock()
		}()
	}
	wg.Wait()
	out.Flush()
	return 0
}

type childResult struct {
	Holder  string `json:"holder"`
	ID      string `json:"id,omitempty"`
	Token   uint64 `json:"token,omitempty"`
	NoSlice bool   `json:"no_slice,omitempty"`
	Err     string `json:"err,omitempty"`
}

// runClaimers starts procs processes of the test binary, each running per
// concurrent claims against the bolt store in path, and returns every
// result.
func runClaimers(t testing.TB, path string, procs, per int) []childResult {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		all []childResult
		wg  sync.WaitGroup
	)
	errs := make(chan error, procs)
	for p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(exe, "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"=p"+strconv.Itoa(p), "PORTSPACE_BOLT="+path, "PORTSPACE_CLAIMERS="+strconv.Itoa(per))
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				errs <- fmt.Errorf("claimer process %d: %v", p, err)
				return
			}
			sc := bufio.NewScanner(bytes.NewReader(out))
			for sc.Scan() {
				var r childResult
				if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
					errs <- fmt.Errorf("claimer process %d: %q: %v", p, sc.Text(), err)
					return
				}
				mu.Lock()
				all = append(all, r)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return all
}

// checkExactlyOnce checks that the results grant exactly slices distinct
// slices and that the rest found none.
func checkExactlyOnce(t testing.TB, rs []childResult, claimers, slices int) {
	t.Helper()
	if len(rs) != claimers {
		t.Fatalf("%d results from %d claimers", len(rs), claimers)
	}
	got := map[string]string{}
	none := 0
	for _, r := range rs {
		switch {
		case r.Err != "":
			t.Fatalf("claim by %s failed: %s", r.Holder, r.Err)
		case r.NoSlice:
			none++
		default:
			if prev, dup := got[r.ID]; dup {
				t.Fatalf("slice %s granted to %s and %s", r.ID, prev, r.Holder)
			}
			got[r.ID] = r.Holder
		}
	}
	if len(got) != slices || none != claimers-slices {
		t.Fatalf("%d slices granted and %d ErrNoSlice, want %d and %d", len(got), none, slices, claimers-slices)
	}
}

// TestBoltProcesses claims from four processes at once: every slice is
// granted exactly once, and the claimers beyond the slices get ErrNoSlice.
func TestBoltProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s, err := OpenBolt(context.Background(), path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := Pool{Name: "p", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}, Ports: tuple.MustParsePortSet("1024-1823"), Slice: 16, Quarantine: time.Minute}
	mustApply(t, s, p) // 50 slices
	rs := runClaimers(t, path, 4, 25)
	checkExactlyOnce(t, rs, 100, 50)
	held := 0
	for _, l := range list(t, s) {
		if l.State == Held {
			held++
		}
	}
	if held != 50 {
		t.Fatalf("List shows %d held, want 50", held)
	}
}

// TestBoltMustExist: with MustExist a missing database file is ErrNoStore,
// and neither the file nor its directory is made; an existing store opens.
func TestBoltMustExist(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "dir", "leases.db")
	if _, err := OpenBolt(ctx, path, BoltOptions{MustExist: true}); !errors.Is(err, ErrNoStore) {
		t.Fatalf("OpenBolt(missing, MustExist) = %v, want ErrNoStore", err)
	}
	if _, err := os.Stat(filepath.Dir(path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the directory was made: %v", err)
	}
	s, err := OpenBolt(ctx, path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = OpenBolt(ctx, path, BoltOptions{MustExist: true})
	if err != nil {
		t.Fatalf("OpenBolt(existing, MustExist) = %v", err)
	}
	s.Close()
}
