package punch

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
)

// The matrix test's flags: the full matrix and 20 attempts per pair is a
// command (docs/punch.md); the default is CI's representative subset.
var (
	matrixAll      = flag.Bool("punch.all", false, "run every NAT pair of the success matrix")
	matrixAttempts = flag.Int("punch.attempts", 3, "attempts per NAT pair")
	matrixOut      = flag.String("punch.out", "", "write the matrix as a Markdown table to this file")
)

// Environment variables of the re-executed test binary's roles.
const (
	envRole   = "PUNCH_TEST_ROLE"
	envListen = "PUNCH_TEST_LISTEN"
	envOpts   = "PUNCH_TEST_OPTS"
)

func TestMain(m *testing.M) {
	flag.Parse()
	switch os.Getenv(envRole) {
	case "rendezvous":
		os.Exit(roleRendezvous())
	case "peer":
		os.Exit(rolePeer())
	}
	os.Exit(m.Run())
}

// roleRendezvous serves on the listed endpoints until killed.
func roleRendezvous() int {
	s := &Server{}
	var addrs []string
	addrs = append(addrs, strings.Split(os.Getenv(envListen), ",")...)
	ready := make(chan struct{})
	go func() {
		// ListenAndServe listens first; a short wait tells the parent.
		time.Sleep(50 * time.Millisecond)
		close(ready)
	}()
	errc := make(chan error, 1)
	go func() { errc <- s.ListenAndServe(context.Background(), addrs) }()
	select {
	case err := <-errc:
		fmt.Fprintln(os.Stderr, err)
		return 1
	case <-ready:
	}
	fmt.Println("ready")
	fmt.Fprintln(os.Stderr, <-errc)
	return 1
}

// peerOut is what a peer process prints.
type peerOut struct {
	Result Result `json:"result"`
	Got    string `json:"got"`
	Err    string `json:"err,omitempty"`
}

type peerOpts struct {
	Options
	Send string
}

func rolePeer() int {
	var o peerOpts
	if err := json.Unmarshal([]byte(os.Getenv(envOpts)), &o); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var out peerOut
	c, res, err := Dial(context.Background(), o.Options)
	out.Result = res
	if err != nil {
		out.Err = err.Error()
	} else {
		var got strings.Builder
		if err := Copy(c, strings.NewReader(o.Send), &got); err != nil {
			out.Err = err.Error()
		}
		out.Got = got.String()
		c.Close()
	}
	json.NewEncoder(os.Stdout).Encode(out)
	return 0
}

// natKind is how one private network reaches the "internet".
type natKind string

const (
	masqDefault    natKind = "masquerade"
	masqPersistent natKind = "masquerade persistent"
	masqRandom     natKind = "masquerade fully-random"
)

// topo is two private networks behind their own NATs and an "internet"
// namespace between them that runs the rendezvous on two addresses:
//
//	A 10.1.0.2 -- natA [192.0.2.2] -- inet (192.0.2.1, 198.51.100.1) -- [198.51.100.2] natB -- B 10.2.0.2
type topo struct {
	a, natA, inet, natB, b *netnstest.NS
	rendezvous             string
}

func newTopo(t *testing.T, ka, kb natKind) *topo {
	t.Helper()
	netnstest.RequireCommand(t, "nft")
	tp := &topo{a: netnstest.New(t), natA: netnstest.New(t), inet: netnstest.New(t), natB: netnstest.New(t), b: netnstest.New(t)}
	link := func(x *netnstest.NS, xname, xaddr string, y *netnstest.NS, yname, yaddr string) {
		x.MustRun(t, "ip", "link", "add", xname, "type", "veth", "peer", "name", yname, "netns", y.Name)
		x.MustRun(t, "ip", "addr", "add", xaddr, "dev", xname)
		y.MustRun(t, "ip", "addr", "add", yaddr, "dev", yname)
		x.MustRun(t, "ip", "link", "set", xname, "up")
		y.MustRun(t, "ip", "link", "set", yname, "up")
	}
	link(tp.a, "a0", "10.1.0.2/24", tp.natA, "in0", "10.1.0.1/24")
	link(tp.natA, "ex0", "192.0.2.2/24", tp.inet, "ia", "192.0.2.1/24")
	link(tp.inet, "ib", "198.51.100.1/24", tp.natB, "ex0", "198.51.100.2/24")
	link(tp.natB, "in0", "10.2.0.1/24", tp.b, "b0", "10.2.0.2/24")
	tp.a.MustRun(t, "ip", "route", "add", "default", "via", "10.1.0.1")
	tp.b.MustRun(t, "ip", "route", "add", "default", "via", "10.2.0.1")
	tp.natA.MustRun(t, "ip", "route", "add", "default", "via", "192.0.2.1")
	tp.natB.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.1")
	for _, ns := range []*netnstest.NS{tp.natA, tp.inet, tp.natB} {
		ns.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	}
	for _, x := range []struct {
		ns   *netnstest.NS
		kind natKind
	}{{tp.natA, ka}, {tp.natB, kb}} {
		x.ns.MustRun(t, "nft", "add", "table", "ip", "nat")
		x.ns.MustRun(t, "nft", "add", "chain", "ip", "nat", "post", "{ type nat hook postrouting priority 100 ; }")
		x.ns.MustRun(t, "nft", append([]string{"add", "rule", "ip", "nat", "post", "oifname", "ex0"}, strings.Fields(string(x.kind))...)...)
	}
	if os.Getenv("PUNCH_TCPDUMP") != "" {
		for _, ns := range []*netnstest.NS{tp.natA, tp.natB} {
			cmd := exec.Command("ip", "netns", "exec", ns.Name, "tcpdump", "-l", "-n", "-i", "any", "tcp", "and", "not", "port", "7000", "and", "not", "port", "7001")
			var buf strings.Builder
			cmd.Stdout = &buf
			cmd.Start()
			name := ns.Name
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); t.Logf("tcpdump %s:\n%s", name, buf.String()) })
		}
		time.Sleep(time.Second)
	}
	tp.rendezvous = "192.0.2.1:7000"
	startRole(t, tp.inet, "rendezvous", map[string]string{envListen: "192.0.2.1:7000,192.0.2.1:7001,198.51.100.1:7000"}, true)
	return tp
}

// startRole runs this test binary in ns in a role and, if wait, waits for
// its "ready" line; it is killed when t ends.
func startRole(t *testing.T, ns *netnstest.NS, role string, env map[string]string, wait bool) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.Name, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"="+role)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if wait {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "ready" {
			t.Fatalf("%s did not start: %q %v: %s", role, line, err, stderr.String())
		}
	}
	return cmd
}

// runPeer runs one peer to completion in ns.
func runPeer(ns *netnstest.NS, o peerOpts) (peerOut, error) {
	j, _ := json.Marshal(o)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.Name, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"=peer", envOpts+"="+string(j))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	if err != nil {
		return peerOut{}, fmt.Errorf("peer %s: %v: %s", o.ID, err, stderr.String())
	}
	var out peerOut
	if err := json.Unmarshal(raw, &out); err != nil {
		return peerOut{}, fmt.Errorf("peer %s: %v: %q", o.ID, err, raw)
	}
	return out, nil
}

// attempt connects A and B once and checks the bytes both ways.
func (tp *topo) attempt(t *testing.T, n int, noRelay bool) (peerOut, peerOut) {
	t.Helper()
	ida, idb := fmt.Sprintf("a%d", n), fmt.Sprintf("b%d", n)
	var wg sync.WaitGroup
	var a, b peerOut
	var ea, eb error
	wg.Add(2)
	go func() {
		defer wg.Done()
		a, ea = runPeer(tp.a, peerOpts{Options: Options{Rendezvous: tp.rendezvous, ID: ida, Peer: idb, NoRelay: noRelay}, Send: "hello from " + ida})
	}()
	go func() {
		defer wg.Done()
		b, eb = runPeer(tp.b, peerOpts{Options: Options{Rendezvous: tp.rendezvous, ID: idb, Peer: ida, NoRelay: noRelay}, Send: "hello from " + idb})
	}()
	wg.Wait()
	if ea != nil || eb != nil {
		t.Fatalf("attempt %d: %v / %v", n, ea, eb)
	}
	if a.Err == "" && b.Err == "" {
		if a.Got != "hello from "+idb || b.Got != "hello from "+ida {
			t.Errorf("attempt %d: bytes: A got %q, B got %q", n, a.Got, b.Got)
		}
		if a.Result.Method != b.Result.Method {
			t.Errorf("attempt %d: the sides disagree on the method: %s / %s", n, a.Result.Method, b.Result.Method)
		}
	}
	return a, b
}

// pairCase is one NAT pair of the matrix and what theory says of it.
type pairCase struct {
	a, b     natKind
	possible bool     // theory: punching can work
	methods  []Method // methods accepted when it does
}

var matrix = []pairCase{
	{masqDefault, masqDefault, true, []Method{MethodSimultaneousOpen}},
	{masqDefault, masqPersistent, true, []Method{MethodSimultaneousOpen}},
	{masqPersistent, masqPersistent, true, []Method{MethodSimultaneousOpen}},
	{masqDefault, masqRandom, false, nil},
	{masqRandom, masqRandom, false, nil},
}

// ciSubset are the pairs CI asserts: cone x cone and symmetric-random x
// symmetric-random (which must fall back to the relay).
var ciSubset = map[[2]natKind]bool{{masqDefault, masqDefault}: true, {masqRandom, masqRandom}: true}

func TestPunchMatrix(t *testing.T) {
	netnstest.RequireRoot(t)
	type row struct {
		c                  pairCase
		tries, ok, relayed int
		methods            map[Method]int
		ms                 []float64
		reasons            map[string]int
	}
	var rows []*row
	for _, c := range matrix {
		if !*matrixAll && !ciSubset[[2]natKind{c.a, c.b}] {
			continue
		}
		r := &row{c: c, methods: map[Method]int{}, reasons: map[string]int{}}
		rows = append(rows, r)
		t.Run(strings.ReplaceAll(string(c.a)+"_x_"+string(c.b), " ", "-"), func(t *testing.T) {
			tp := newTopo(t, c.a, c.b)
			for i := range *matrixAttempts {
				a, b := tp.attempt(t, i, false)
				r.tries++
				if a.Err != "" || b.Err != "" {
					t.Errorf("attempt %d: no connection: A: %s; B: %s", i, a.Err, b.Err)
					continue
				}
				r.methods[a.Result.Method]++
				if a.Result.Method == MethodRelay {
					r.relayed++
					r.reasons[shortReason(a.Result.Reason)]++
				} else {
					r.ok++
					r.ms = append(r.ms, max(a.Result.MS, b.Result.MS))
				}
				t.Logf("attempt %d: %s in %.1f ms (A %+v, B %+v) %s", i, a.Result.Method, a.Result.MS, a.Result.NAT, b.Result.NAT, a.Result.Reason)
			}
			if c.possible && r.ok != r.tries {
				t.Errorf("theory says punching works for %s x %s, but %d of %d attempts punched", c.a, c.b, r.ok, r.tries)
			}
			if !c.possible && r.relayed != r.tries {
				t.Errorf("theory says punching cannot work for %s x %s, but %d of %d attempts did not relay", c.a, c.b, r.tries-r.relayed, r.tries)
			}
			for m := range r.methods {
				if m != MethodRelay && !contains(c.methods, m) {
					t.Errorf("method %s for %s x %s, want one of %v", m, c.a, c.b, c.methods)
				}
			}
		})
	}
	if *matrixOut != "" {
		var sb strings.Builder
		sb.WriteString("| NAT A | NAT B | theory | attempts | punched | methods | relayed | median ms | why relayed |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, r := range rows {
			theory := "impossible"
			if r.c.possible {
				theory = "possible"
			}
			fmt.Fprintf(&sb, "| %s | %s | %s | %d | %d | %s | %d | %s | %s |\n", r.c.a, r.c.b, theory, r.tries, r.ok,
				fmtCounts(r.methods), r.relayed, median(r.ms), fmtReasons(r.reasons))
		}
		if err := os.WriteFile(*matrixOut, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func contains(ms []Method, m Method) bool {
	for _, x := range ms {
		if x == m {
			return true
		}
	}
	return false
}

func shortReason(r string) string {
	if i := strings.Index(r, "; SYNs"); i > 0 {
		return r[:i]
	}
	return r
}

func fmtCounts(m map[Method]int) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func fmtReasons(m map[string]int) string {
	var parts []string
	for k := range m {
		parts = append(parts, k)
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

func median(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return fmt.Sprintf("%.1f", s[len(s)/2])
}
