package natprobe

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/gwtest"
	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/nat"
)

// The agreement matrix (docs/natprobe.md): for each NAT, built from Linux
// nftables masquerade in a namespace of its own, every client classifies
// it against a real server, and all must agree with each other and with
// what the NAT is.
//
//	client ns (10.0.0.2) -- NAT ns (10.0.0.1 | 192.0.2.1, masquerade) -- server ns (192.0.2.10, 192.0.2.11)
//
// The server namespace runs coturn's turnserver (RFC 5780, ports 3478 and
// 3479), Debian's stund (RFC 3489, 3480 and 3481) and our server (3490 and
// 3491, UDP and TCP). Our probe and our server run as copies of this test
// binary (helperEnv) inside the namespaces.

const helperEnv = "PORTSPACE_NATPROBE_HELPER"

func TestMain(m *testing.M) {
	gwtest.Main() // a gateway process of internal/gwtest, when asked
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(runHelper(h))
	}
	os.Exit(m.Run())
}

// helperArgs is what the test passes to a helper copy of itself.
type helperArgs struct {
	Server, Alternate string
	AltLocal          string
	TCP, Lifetime     bool
	LifetimeMax       time.Duration
	LifetimeRes       time.Duration
	Padding           int
}

func runHelper(which string) int {
	var a helperArgs
	if err := json.Unmarshal([]byte(os.Getenv(helperEnv+"_ARGS")), &a); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	switch which {
	case "serve":
		return helperServe(a)
	case "probe":
		return helperProbe(a)
	case "padding":
		return helperPadding(a)
	}
	return 2
}

// agreeCase is one NAT of the matrix and what it is.
type agreeCase struct {
	name     string
	nft      string // masquerade flags
	mapping  Behavior
	filter   Behavior
	class    Class
	preserve *bool      // nil: not asserted
	alloc    Allocation // "": not asserted
	overlap  *bool      // nil: not asserted
}

var agreeCases = []agreeCase{
	{"masquerade", "", EndpointIndependent, AddressAndPortDependent, PortRestrictedCone, ptr(true), Preserving, ptr(true)},
	{"masquerade-persistent", "persistent", EndpointIndependent, AddressAndPortDependent, PortRestrictedCone, ptr(true), Preserving, ptr(true)},
	{"masquerade-fully-random", "fully-random", AddressAndPortDependent, AddressAndPortDependent, Symmetric, ptr(false), Random, nil},
}

type topo struct {
	s, n, c *netnstest.NS
	dir     string
}

func newTopo(t *testing.T, nftFlags string, setup ...[]string) *topo {
	return newTopoTB(t, nftFlags, setup...)
}

func newTopoTB(t testing.TB, nftFlags string, setup ...[]string) *topo {
	t.Helper()
	tp := &topo{s: netnstest.New(t), n: netnstest.New(t), c: netnstest.New(t), dir: t.TempDir()}
	var b [3]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	sv, no, cv, ni := "s"+id, "no"+id, "c"+id, "ni"+id
	run := func(args ...string) {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("link", "add", sv, "netns", tp.s.Name, "type", "veth", "peer", "name", no, "netns", tp.n.Name)
	run("link", "add", cv, "netns", tp.c.Name, "type", "veth", "peer", "name", ni, "netns", tp.n.Name)
	tp.s.MustRun(t, "ip", "addr", "add", "192.0.2.10/24", "dev", sv)
	tp.s.MustRun(t, "ip", "addr", "add", "192.0.2.11/24", "dev", sv)
	tp.s.MustRun(t, "ip", "link", "set", sv, "up")
	tp.n.MustRun(t, "ip", "addr", "add", "192.0.2.1/24", "dev", no)
	tp.n.MustRun(t, "ip", "addr", "add", "10.0.0.1/24", "dev", ni)
	tp.n.MustRun(t, "ip", "link", "set", no, "up")
	tp.n.MustRun(t, "ip", "link", "set", ni, "up")
	tp.c.MustRun(t, "ip", "addr", "add", "10.0.0.2/24", "dev", cv)
	tp.c.MustRun(t, "ip", "addr", "add", "10.0.0.3/24", "dev", cv) // the overlapping test's second address
	tp.c.MustRun(t, "ip", "link", "set", cv, "up")
	tp.c.MustRun(t, "ip", "route", "add", "default", "via", "10.0.0.1")
	tp.n.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	rules := filepath.Join(tp.dir, "nat.nft")
	ruleset := fmt.Sprintf("table ip nat {\n chain post {\n  type nat hook postrouting priority 100;\n  oifname %q masquerade %s\n }\n}\n", no, nftFlags)
	if err := os.WriteFile(rules, []byte(ruleset), 0o644); err != nil {
		t.Fatal(err)
	}
	tp.n.MustRun(t, "nft", "-f", rules)
	for _, c := range setup {
		tp.n.MustRun(t, c[0], c[1:]...)
	}
	return tp
}

// start runs a long-lived program in ns and kills it (only it) at cleanup.
func start(t testing.TB, ns *netnstest.NS, env []string, name string, args ...string) *bytes.Buffer {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return &out
}

func helperCmd(which string, a helperArgs) []string {
	j, _ := json.Marshal(a)
	return []string{helperEnv + "=" + which, helperEnv + "_ARGS=" + string(j)}
}

// startServers starts coturn, stund and our server in the server namespace
// and waits until all their UDP ports are bound.
func (tp *topo) startServers(t *testing.T) { tp.startServersTB(t) }

func (tp *topo) startServersTB(t testing.TB) {
	t.Helper()
	conf := filepath.Join(tp.dir, "turnserver.conf")
	// Our own configuration: Debian's /etc/turnserver.conf sets
	// no-rfc5780. Two listening addresses turn RFC 5780 on.
	err := os.WriteFile(conf, []byte("listening-ip=192.0.2.10\nlistening-ip=192.0.2.11\nlistening-port=3478\n"+
		"no-tls\nno-dtls\nno-cli\nno-auth\nsimple-log\nlog-file=stdout\npidfile="+filepath.Join(tp.dir, "turn.pid")+"\n"), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	start(t, tp.s, nil, "turnserver", "-c", conf)
	start(t, tp.s, nil, "stund", "-h", "192.0.2.10", "-a", "192.0.2.11", "-p", "3480", "-o", "3481")
	start(t, tp.s, helperCmd("serve", helperArgs{Server: "192.0.2.10:3490", Alternate: "192.0.2.11:3491", TCP: true}), os.Args[0])
	waitUDPListening(t, tp.s, "192.0.2.11:3479", "192.0.2.11:3481", "192.0.2.11:3491")
}

// waitUDPListening waits up to 10 s until the namespace has UDP sockets
// listening on every one of addrs (as ss prints them), and fails the test
// otherwise.
func waitUDPListening(t testing.TB, ns *netnstest.NS, addrs ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := ns.Run("ss", "-Hlun")
		missing := ""
		for _, a := range addrs {
			if !strings.Contains(out, a) {
				missing = a
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listening on %s after 10 s:\n%s", missing, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// verdict is what one client said about the NAT.
type verdict struct {
	tool, server string
	mapping      Behavior
	filter       Behavior
	class        Class
	preserve     *bool
	hairpin      *bool
	overlap      *bool
	origin       *bool
	alloc        Allocation
	tcp          *TCPResult
	// The lifetime search's fields (helperArgs.Lifetime), and what the
	// probe skipped.
	lifetime       *float64
	atLeast        bool
	inboundRefresh *bool
	skipped        []string
	raw            string
	elapsed        time.Duration
	err            error
}

func (tp *topo) probe(ctx context.Context, server string, a helperArgs) verdict {
	a.Server = server
	v := verdict{tool: "natprobe", server: server}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", tp.c.Name, os.Args[0])
	cmd.Env = append(os.Environ(), helperCmd("probe", a)...)
	t0 := time.Now()
	out, err := cmd.Output()
	v.elapsed = time.Since(t0)
	v.raw = string(out)
	if err != nil {
		v.err = fmt.Errorf("probe %s: %v: %s", server, err, out)
		return v
	}
	var r struct {
		Mapping      Behavior
		Filtering    Behavior
		RFC3489      Class
		Preservation *bool
		Hairpinning  *bool
		Overlapping  *bool
		Origin       *bool `json:"origin_rewritten"`
		Allocation   Allocation
		TCP          *struct {
			Mapping      Behavior
			Preservation *bool
		}
		LifetimeSeconds *float64 `json:"lifetime_seconds"`
		AtLeast         bool     `json:"lifetime_at_least"`
		InboundRefresh  *bool    `json:"inbound_refresh"`
		Skipped         []string
		ElapsedMS       int64 `json:"elapsed_ms"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		v.err = fmt.Errorf("probe %s: %v: %s", server, err, out)
		return v
	}
	v.mapping, v.filter, v.class, v.preserve = r.Mapping, r.Filtering, r.RFC3489, r.Preservation
	v.hairpin, v.alloc, v.overlap, v.origin = r.Hairpinning, r.Allocation, r.Overlapping, r.Origin
	v.lifetime, v.atLeast, v.inboundRefresh, v.skipped = r.LifetimeSeconds, r.AtLeast, r.InboundRefresh, r.Skipped
	v.elapsed = time.Duration(r.ElapsedMS) * time.Millisecond // the UDP run, without process start-up or TCP
	if r.TCP != nil {
		v.tcp = &TCPResult{Mapping: r.TCP.Mapping, Preservation: r.TCP.Preservation}
	}
	return v
}

var (
	ndMapping = regexp.MustCompile(`NAT with (.+) Mapping!`)
	ndFilter  = regexp.MustCompile(`NAT with (.+) Filtering!`)
	stunLine  = regexp.MustCompile(`Primary: ([^\n]*)`)
)

func behaviorOf(words string) Behavior {
	switch strings.TrimSpace(words) {
	case "Endpoint Independent", "Independent":
		return EndpointIndependent
	case "Address Dependent", "Dependent":
		return AddressDependent
	case "Address and Port Dependent", "Port Dependent":
		return AddressAndPortDependent
	}
	return Behavior("unparsed: " + words)
}

func (tp *topo) natdiscovery(ctx context.Context, host, port string) verdict {
	v := verdict{tool: "turnutils_natdiscovery -m -f", server: host + ":" + port}
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", tp.c.Name, "turnutils_natdiscovery", "-m", "-f", "-p", port, host).CombinedOutput()
	v.elapsed = time.Since(t0)
	v.raw = string(out)
	if err != nil {
		v.err = fmt.Errorf("natdiscovery: %v: %s", err, out)
		return v
	}
	if m := ndMapping.FindStringSubmatch(v.raw); m != nil {
		v.mapping = behaviorOf(m[1])
	}
	if m := ndFilter.FindStringSubmatch(v.raw); m != nil {
		v.filter = behaviorOf(m[1])
	}
	return v
}

// stunClasses decodes Debian stun's exit status (its classification code;
// bit 0 "preserves ports" and bit 4 are flags): 0x06 and 0x08 were
// observed with the text "Port Dependent Filter" and "Dependent Mapping".
var stunClasses = map[int]Class{0x00: Open, 0x02: FullCone, 0x04: RestrictedCone, 0x06: PortRestrictedCone,
	0x08: Symmetric, 0x0a: SymmetricFirewall, 0x0c: Blocked}

func (tp *topo) stunClient(ctx context.Context, server string) verdict {
	v := verdict{tool: "stun (stun-client)", server: server}
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", tp.c.Name, "stun", server).CombinedOutput()
	v.elapsed = time.Since(t0)
	v.raw = string(out)
	var ee *exec.ExitError
	code := 0
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		v.err = err
		return v
	}
	v.class = stunClasses[code&0x0e]
	m := stunLine.FindStringSubmatch(v.raw)
	if m == nil {
		v.err = fmt.Errorf("stun: no Primary line: %s", out)
		return v
	}
	for _, part := range strings.Split(m[1], ",") {
		part = strings.TrimSpace(part)
		switch {
		case strings.HasSuffix(part, " Mapping"):
			v.mapping = behaviorOf(strings.TrimSuffix(part, " Mapping"))
			if v.mapping == AddressDependent {
				v.mapping = "" // "Dependent Mapping": symmetric, without saying on what
			}
		case strings.HasSuffix(part, " Filter"):
			v.filter = behaviorOf(strings.TrimSuffix(part, " Filter"))
		case part == "preserves ports":
			v.preserve = ptr(true)
		case part == "random port":
			v.preserve = ptr(false)
		case part == "will hairpin":
			v.hairpin = ptr(true)
		case part == "no hairpin":
			v.hairpin = ptr(false)
		}
	}
	return v
}

// TestAgreement runs the matrix: each NAT case in its own three namespaces,
// in parallel, every client at once.
func TestAgreement(t *testing.T) {
	for _, prog := range []string{"ip", "nft", "ss", "turnserver", "turnutils_natdiscovery", "stun", "stund"} {
		netnstest.RequireCommand(t, prog)
	}
	netnstest.RequireRoot(t)
	t.Parallel()
	for _, c := range agreeCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tp := newTopo(t, c.nft)
			tp.startServers(t)
			tp.runMatrix(t, c)
		})
	}
}

// runMatrix runs every client against the servers of tp at once and checks
// each answer against what the NAT is, c.
func (tp *topo) runMatrix(t *testing.T, c agreeCase) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	var vs []verdict
	var wg sync.WaitGroup
	run := func(f func() verdict) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := f()
			mu.Lock()
			vs = append(vs, v)
			mu.Unlock()
		}()
	}
	run(func() verdict { return tp.probe(ctx, "192.0.2.10:3478", helperArgs{TCP: true}) })
	run(func() verdict { return tp.probe(ctx, "192.0.2.10:3480", helperArgs{}) })
	run(func() verdict { return tp.probe(ctx, "192.0.2.10:3490", helperArgs{TCP: true, AltLocal: "10.0.0.3"}) })
	run(func() verdict { return tp.natdiscovery(ctx, "192.0.2.10", "3490") })
	run(func() verdict { return tp.natdiscovery(ctx, "192.0.2.10", "3478") })
	run(func() verdict { return tp.stunClient(ctx, "192.0.2.10:3490") })
	run(func() verdict { return tp.stunClient(ctx, "192.0.2.10:3480") })
	wg.Wait()
	hairpin := map[string]bool{}
	for _, v := range vs {
		tcp := "-"
		if v.tcp != nil {
			tcp = orDash(string(v.tcp.Mapping)) + " preserving " + fmtPtr(v.tcp.Preservation)
		}
		t.Logf("| %s | %s -> %s | %s | %s | %s | preserving %s | %s | hairpin %s | tcp %s | %v |", c.name, v.tool, v.server,
			orDash(string(v.mapping)), orDash(string(v.filter)), orDash(string(v.class)), fmtPtr(v.preserve),
			orDash(string(v.alloc)), fmtPtr(v.hairpin), tcp, v.elapsed.Round(time.Millisecond))
		if v.err != nil {
			t.Errorf("%s -> %s: %v", v.tool, v.server, v.err)
			continue
		}
		// Every tool must report what the NAT is, where it
		// reports that dimension at all.
		if v.mapping != "" || v.tool != "stun (stun-client)" {
			if v.mapping != c.mapping {
				t.Errorf("%s -> %s: mapping %q, the NAT is %q\n%s", v.tool, v.server, v.mapping, c.mapping, v.raw)
			}
		}
		if v.filter != "" || v.tool != "stun (stun-client)" {
			if v.filter != c.filter {
				t.Errorf("%s -> %s: filtering %q, the NAT is %q\n%s", v.tool, v.server, v.filter, c.filter, v.raw)
			}
		}
		if v.tool != "turnutils_natdiscovery -m -f" && v.class != c.class {
			t.Errorf("%s -> %s: class %q, the NAT is %q\n%s", v.tool, v.server, v.class, c.class, v.raw)
		}
		if v.preserve != nil && c.preserve != nil && *v.preserve != *c.preserve {
			t.Errorf("%s -> %s: preservation %v, the NAT's is %v", v.tool, v.server, *v.preserve, *c.preserve)
		}
		if v.hairpin != nil {
			hairpin[v.tool+" -> "+v.server] = *v.hairpin
		}
		// coturn and ours name their own sockets in RESPONSE-ORIGIN and
		// nothing on the path rewrites them (RFC 5780 section 7.3);
		// stund (RFC 3489) sends none.
		if v.tool == "natprobe" {
			want := "false"
			if v.server == "192.0.2.10:3480" {
				want = "-"
			}
			if fmtPtr(v.origin) != want {
				t.Errorf("natprobe -> %s: origin rewritten %s, want %s\n%s", v.server, fmtPtr(v.origin), want, v.raw)
			}
		}
		if v.tool == "natprobe" && v.server == "192.0.2.10:3490" {
			t.Logf("| %s | natprobe --alt-local -> %s | overlapping %s |", c.name, v.server, fmtPtr(v.overlap))
			if c.overlap != nil && (v.overlap == nil || *v.overlap != *c.overlap) {
				t.Errorf("natprobe (second address) -> %s: overlapping %s, the NAT's is %v\n%s", v.server, fmtPtr(v.overlap), *c.overlap, v.raw)
			}
		}
		if v.tool == "natprobe" && v.server != "192.0.2.10:3480" {
			if v.tcp == nil || v.tcp.Mapping != c.mapping || v.tcp.Preservation == nil || (c.preserve != nil && *v.tcp.Preservation != *c.preserve) {
				t.Errorf("natprobe --tcp -> %s: %+v, the NAT maps TCP %q, preserving %v\n%s", v.server, v.tcp, c.mapping, fmtPtr(c.preserve), v.raw)
			}
		}
	}
	// The allocation pattern, from a probe that runs alone: the others'
	// mappings, made meanwhile, would be gaps in a sequence and could
	// interleave out of order.
	if c.alloc != "" {
		v := tp.probe(ctx, "192.0.2.10:3490", helperArgs{})
		t.Logf("| %s | natprobe (alone) -> %s | allocation %s |", c.name, v.server, orDash(string(v.alloc)))
		if v.err != nil || v.alloc != c.alloc {
			t.Errorf("natprobe alone -> %s: allocation %q (%v), the NAT's is %q\n%s", v.server, v.alloc, v.err, c.alloc, v.raw)
		}
	}
	// natprobe and stun both report hairpinning: they must agree.
	var first *bool
	for who, h := range hairpin {
		if first == nil {
			first = ptr(h)
		} else if *first != h {
			t.Errorf("hairpinning disagrees: %v (%s)", hairpin, who)
			break
		}
	}
}

// TestAgreementGateway runs the matrix through every preset of the
// portspace NAT gateway (internal/gwtest: client | router | server
// namespaces, the gateway on a TUN in the router), expecting the preset's
// own mapping and filtering (nat.Presets) from every client.
func TestAgreementGateway(t *testing.T) {
	for _, prog := range []string{"ip", "ss", "turnserver", "turnutils_natdiscovery", "stun", "stund"} {
		netnstest.RequireCommand(t, prog)
	}
	netnstest.RequireRoot(t)
	t.Parallel()
	beh := func(m string) Behavior {
		switch m {
		case "EIM", "EIF":
			return EndpointIndependent
		case "ADM", "ADF":
			return AddressDependent
		}
		return AddressAndPortDependent
	}
	for _, p := range nat.Presets() {
		c := agreeCase{name: "gateway " + p.Name}
		switch p.Mapping {
		case nat.MappingEIM:
			c.mapping = beh("EIM")
		case nat.MappingADM:
			c.mapping = beh("ADM")
		default:
			c.mapping = beh("APDM")
		}
		switch p.Filtering {
		case nat.FilterEIF:
			c.filter = beh("EIF")
		case nat.FilterADF:
			c.filter = beh("ADF")
		default:
			c.filter = beh("APDF")
		}
		c.class = class(ptr(true), c.mapping, c.filter)
		switch p.Name {
		case "full-cone", "restricted-cone", "port-restricted-cone":
			c.preserve, c.alloc, c.overlap = ptr(true), Preserving, ptr(false)
		case "linux-masquerade":
			c.overlap = ptr(true)
		case "pion-vnet":
			c.preserve, c.alloc = ptr(false), Sequential
		}
		t.Run(p.Name, func(t *testing.T) {
			t.Parallel()
			g := gwtest.New(t, gwtest.Options{})
			g.Start(t, gwtest.Spec{Preset: p.Name})
			tp := &topo{s: g.ServerNS, n: g.RouterNS, c: g.ClientNS, dir: g.Dir()}
			tp.startServers(t)
			tp.runMatrix(t, c)
		})
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// TestLifetimeBehindNAT measures the binding lifetime (RFC 5780 section
// 4.6) through masquerade whose UDP conntrack timeouts are set to 2 s in
// the NAT's namespace: the search must find about 2 s.
func TestLifetimeBehindNAT(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, prog := range []string{"ip", "nft", "ss", "sysctl"} {
		netnstest.RequireCommand(t, prog)
	}
	t.Parallel()
	tp := newTopo(t, "", []string{"sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=2"},
		[]string{"sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout_stream=2"})
	start(t, tp.s, helperCmd("serve", helperArgs{Server: "192.0.2.10:3490", Alternate: "192.0.2.11:3491"}), os.Args[0])
	waitUDPListening(t, tp.s, "192.0.2.11:3491")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v := tp.probe(ctx, "192.0.2.10:3490", helperArgs{Lifetime: true, LifetimeMax: 5 * time.Second, LifetimeRes: 500 * time.Millisecond})
	if v.err != nil {
		t.Fatal(v.err)
	}
	if v.lifetime == nil || v.atLeast || *v.lifetime < 1.2 || *v.lifetime > 2.6 {
		t.Fatalf("lifetime %v (at least %v), want about 2 s; skipped %v", v.lifetime, v.atLeast, v.skipped)
	}
	// Conntrack refreshes an entry on packets of either direction.
	if v.inboundRefresh == nil || !*v.inboundRefresh {
		t.Errorf("inbound refresh %v behind conntrack, want true; skipped %v", fmtPtr(v.inboundRefresh), v.skipped)
	}
	t.Logf("lifetime %.2f s with conntrack UDP timeouts of 2 s, inbound refresh %v, search and refresh test took %v", *v.lifetime, fmtPtr(v.inboundRefresh), v.elapsed)
}

// TestRefreshThroughGateway runs the lifetime search and the refresh test
// (RFC 5780 section 4.6) through the portspace NAT gateway with a UDP
// timeout of 2 s, once with inbound_refresh off (RFC 4787 REQ-6: only
// outbound packets refresh) and once on: the probe must tell them apart.
func TestRefreshThroughGateway(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, prog := range []string{"ip", "ss"} {
		netnstest.RequireCommand(t, prog)
	}
	t.Parallel()
	for _, inbound := range []bool{false, true} {
		t.Run(fmt.Sprintf("inbound_refresh=%v", inbound), func(t *testing.T) {
			t.Parallel()
			g := gwtest.New(t, gwtest.Options{})
			g.Start(t, gwtest.Spec{Preset: "port-restricted-cone", Config: fmt.Sprintf("udp_timeout: 2s\ninbound_refresh: %v\n", inbound)})
			tp := &topo{s: g.ServerNS, n: g.RouterNS, c: g.ClientNS, dir: g.Dir()}
			start(t, tp.s, helperCmd("serve", helperArgs{Server: "192.0.2.10:3490", Alternate: "192.0.2.11:3491"}), os.Args[0])
			waitUDPListening(t, tp.s, "192.0.2.11:3491")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			v := tp.probe(ctx, "192.0.2.10:3490", helperArgs{Lifetime: true, LifetimeMax: 3500 * time.Millisecond, LifetimeRes: 500 * time.Millisecond})
			if v.err != nil {
				t.Fatal(v.err)
			}
			if v.lifetime == nil || *v.lifetime < 1.2 || *v.lifetime > 3.1 {
				t.Fatalf("lifetime %v, want about 2 s; skipped %v", v.lifetime, v.skipped)
			}
			if v.inboundRefresh == nil || *v.inboundRefresh != inbound {
				t.Fatalf("inbound refresh %s, the gateway's is %v; skipped %v", fmtPtr(v.inboundRefresh), inbound, v.skipped)
			}
			t.Logf("lifetime %.2f s, inbound refresh %v, in %v", *v.lifetime, *v.inboundRefresh, v.elapsed)
		})
	}
}

// TestIPv6 runs the probe and our server over IPv6: a client namespace
// (fd00:5::2) and a server namespace (fd00:5::10 and fd00:5::11, our
// server on ports 3490/3491 with TCP, coturn's turnserver on 3478/3479) on
// one veth link with unique local addresses and no NAT. Our probe against
// both servers and coturn's natdiscovery against ours must find no NAT:
// endpoint-independent mapping and filtering, "open", ports preserved, over
// UDP and (our probe) TCP.
func TestIPv6(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, prog := range []string{"ip", "ss", "turnserver", "turnutils_natdiscovery"} {
		netnstest.RequireCommand(t, prog)
	}
	t.Parallel()
	tp := &topo{s: netnstest.New(t), c: netnstest.New(t), dir: t.TempDir()}
	var b [3]byte
	_, _ = rand.Read(b[:])
	sv, cv := "s6"+hex.EncodeToString(b[:]), "c6"+hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "link", "add", sv, "netns", tp.s.Name, "type", "veth", "peer", "name", cv, "netns", tp.c.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v: %s", err, out)
	}
	for _, a := range []string{"fd00:5::10/64", "fd00:5::11/64"} {
		tp.s.MustRun(t, "ip", "addr", "add", a, "dev", sv, "nodad")
	}
	tp.s.MustRun(t, "ip", "link", "set", sv, "up")
	tp.c.MustRun(t, "ip", "addr", "add", "fd00:5::2/64", "dev", cv, "nodad")
	tp.c.MustRun(t, "ip", "link", "set", cv, "up")
	conf := filepath.Join(tp.dir, "turnserver.conf")
	err := os.WriteFile(conf, []byte("listening-ip=fd00:5::10\nlistening-ip=fd00:5::11\nlistening-port=3478\n"+
		"no-tls\nno-dtls\nno-cli\nno-auth\nsimple-log\nlog-file=stdout\npidfile="+filepath.Join(tp.dir, "turn.pid")+"\n"), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	start(t, tp.s, nil, "turnserver", "-c", conf)
	start(t, tp.s, helperCmd("serve", helperArgs{Server: "[fd00:5::10]:3490", Alternate: "[fd00:5::11]:3491", TCP: true}), os.Args[0])
	waitUDPListening(t, tp.s, "[fd00:5::11]:3491", "[fd00:5::11]:3479")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	var vs []verdict
	var wg sync.WaitGroup
	for _, f := range []func() verdict{
		func() verdict { return tp.probe(ctx, "[fd00:5::10]:3490", helperArgs{TCP: true}) },
		func() verdict { return tp.probe(ctx, "[fd00:5::10]:3478", helperArgs{TCP: true}) },
		func() verdict { return tp.natdiscovery(ctx, "fd00:5::10", "3490") },
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := f()
			mu.Lock()
			vs = append(vs, v)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, v := range vs {
		t.Logf("| IPv6, no NAT | %s -> %s | %s | %s | %s | preserving %s | origin rewritten %s | %v |", v.tool, v.server,
			orDash(string(v.mapping)), orDash(string(v.filter)), orDash(string(v.class)), fmtPtr(v.preserve), fmtPtr(v.origin), v.elapsed.Round(time.Millisecond))
		if v.err != nil {
			t.Errorf("%s -> %s: %v", v.tool, v.server, v.err)
			continue
		}
		if v.mapping != EndpointIndependent || v.filter != EndpointIndependent {
			t.Errorf("%s -> %s: mapping %q filtering %q, want endpoint-independent without a NAT\n%s", v.tool, v.server, v.mapping, v.filter, v.raw)
		}
		if v.tool != "natprobe" {
			continue
		}
		if v.class != Open || v.preserve == nil || !*v.preserve || fmtPtr(v.origin) != "false" {
			t.Errorf("natprobe -> %s: class %q preservation %s origin rewritten %s, want open, true, false\n%s", v.server, v.class, fmtPtr(v.preserve), fmtPtr(v.origin), v.raw)
		}
		if !strings.Contains(v.raw, `"mapped":"[fd00:5::2]:`) || !strings.Contains(v.raw, `"other":"[fd00:5::11]:`) {
			t.Errorf("natprobe -> %s: not an IPv6 run\n%s", v.server, v.raw)
		}
		if v.tcp == nil || v.tcp.Mapping != EndpointIndependent || v.tcp.Preservation == nil || !*v.tcp.Preservation {
			t.Errorf("natprobe --tcp -> %s: %+v, want endpoint-independent, preserving\n%s", v.server, v.tcp, v.raw)
		}
	}
}

// TestPaddingFragments sends Binding requests with 1,600 and 2,000 bytes
// of PADDING (RFC 5780 sections 3.5 and 7.6) through masquerade on links
// of MTU 1,500, so that request and answer travel as IP fragments both
// ways: our server must answer each with PADDING of the request's length
// and the right mapping.
func TestPaddingFragments(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, prog := range []string{"ip", "nft", "ss"} {
		netnstest.RequireCommand(t, prog)
	}
	t.Parallel()
	tp := newTopo(t, "")
	start(t, tp.s, helperCmd("serve", helperArgs{Server: "192.0.2.10:3490", Alternate: "192.0.2.11:3491"}), os.Args[0])
	waitUDPListening(t, tp.s, "192.0.2.11:3491")
	for _, pad := range []int{1600, 2000} {
		cmd := exec.Command("ip", "netns", "exec", tp.c.Name, os.Args[0])
		cmd.Env = append(os.Environ(), helperCmd("padding", helperArgs{Server: "192.0.2.10:3490", Padding: pad})...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("padding %d: %v: %s", pad, err, out)
		}
		var r struct {
			Request, Size, Padding int
			Mapped                 string
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("padding %d: %v: %s", pad, err, out)
		}
		if r.Padding != pad || r.Size <= 1500 || !strings.HasPrefix(r.Mapped, "192.0.2.1:") {
			t.Errorf("padding %d: answer %+v, want PADDING %d in a datagram over the MTU, mapped to 192.0.2.1", pad, r, pad)
		}
		t.Logf("request %d bytes, answer %d bytes with %d bytes of PADDING, mapped %s", r.Request, r.Size, r.Padding, r.Mapped)
	}
}

// TestOriginBehindServerNAT puts our server behind a NAT of its own: in
// the server's namespace nftables DNAT sends 192.0.2.10:3492 to the
// server's 192.0.2.10:3490, so its answers leave the namespace from :3492
// while RESPONSE-ORIGIN names :3490. The probe (itself behind masquerade:
// a double NAT on the path) must say the origin was rewritten (RFC 5780
// section 7.3).
func TestOriginBehindServerNAT(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, prog := range []string{"ip", "nft", "ss"} {
		netnstest.RequireCommand(t, prog)
	}
	t.Parallel()
	tp := newTopo(t, "")
	rules := filepath.Join(tp.dir, "dnat.nft")
	if err := os.WriteFile(rules, []byte("table ip dn {\n chain pre {\n  type nat hook prerouting priority -100;\n  udp dport 3492 dnat to :3490\n }\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tp.s.MustRun(t, "nft", "-f", rules)
	start(t, tp.s, helperCmd("serve", helperArgs{Server: "192.0.2.10:3490", Alternate: "192.0.2.11:3491"}), os.Args[0])
	waitUDPListening(t, tp.s, "192.0.2.11:3491")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v := tp.probe(ctx, "192.0.2.10:3492", helperArgs{})
	if v.err != nil {
		t.Fatal(v.err)
	}
	var r struct {
		Origin *bool    `json:"origin_rewritten"`
		Notes  []string `json:"origin_notes"`
	}
	_ = json.Unmarshal([]byte(v.raw), &r)
	if r.Origin == nil || !*r.Origin || len(r.Notes) == 0 || !strings.Contains(strings.Join(r.Notes, " "), "192.0.2.10:3490") {
		t.Fatalf("origin rewritten %s, notes %q, want true naming 192.0.2.10:3490\n%s", fmtPtr(r.Origin), r.Notes, v.raw)
	}
	t.Logf("origin notes: %q", r.Notes)
}

// BenchmarkClassify times a full UDP classification behind default
// masquerade: our probe against coturn's turnserver and coturn's
// turnutils_natdiscovery -m -f against the same server, back to back in
// the same run (wall time of each process, start-up included). It reports
// probe-s and natdiscovery-s per classification, and probe-udp-s, the
// probe's own UDP run time.
func BenchmarkClassify(b *testing.B) {
	for _, prog := range []string{"ip", "nft", "ss", "turnserver", "turnutils_natdiscovery", "stund"} {
		netnstest.RequireCommand(b, prog)
	}
	netnstest.RequireRoot(b)
	tp := newTopoTB(b, "")
	tp.startServersTB(b)
	ctx := context.Background()
	var probe, nd, udp time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		v := tp.probe(ctx, "192.0.2.10:3478", helperArgs{})
		probe += time.Since(t0)
		udp += v.elapsed
		if v.err != nil || v.mapping != EndpointIndependent {
			b.Fatalf("probe: %v %q", v.err, v.mapping)
		}
		t0 = time.Now()
		w := tp.natdiscovery(ctx, "192.0.2.10", "3478")
		nd += time.Since(t0)
		if w.err != nil || w.mapping != EndpointIndependent {
			b.Fatalf("natdiscovery: %v %q", w.err, w.mapping)
		}
	}
	n := float64(b.N)
	b.ReportMetric(probe.Seconds()/n, "probe-s")
	b.ReportMetric(udp.Seconds()/n, "probe-udp-s")
	b.ReportMetric(nd.Seconds()/n, "natdiscovery-s")
}
