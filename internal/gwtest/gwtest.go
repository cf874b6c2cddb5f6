// Package gwtest builds, for tests, a three-namespace topology with a
// portspace NAT gateway in the middle, so that any package's tests can run
// real clients and servers through a NAT of a chosen preset:
//
//	client (10.0.0.2, 10.0.0.3) --c0/g0-- router --g1/s0-- server (192.0.2.10, 192.0.2.11)
//	                        10.0.0.1/24        192.0.2.254/24
//
// The gateway's external address is 192.0.2.1 (on no interface; the router
// answers ARP for it by proxy). The server has no route to 10.0.0.0/24
// unless Options.Routed is set, so only translated traffic comes back.
//
// The gateway runs in the router namespace as a re-execution of the test
// binary: a package that uses Start calls Main first in its TestMain:
//
//	func TestMain(m *testing.M) { gwtest.Main(); os.Exit(m.Run()) }
package gwtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portspace/portspace/gateway"
	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/natlog"
)

// The topology's addresses.
var (
	Client   = netip.MustParseAddr("10.0.0.2")
	Client2  = netip.MustParseAddr("10.0.0.3")
	Inside   = netip.MustParsePrefix("10.0.0.0/24")
	RouterIn = netip.MustParseAddr("10.0.0.1")
	RouterEx = netip.MustParseAddr("192.0.2.254")
	External = netip.MustParseAddr("192.0.2.1")
	// External2 is the second external address of a gateway with
	// Spec.Shards > 1 (shard k owns Externals()[k]).
	External2 = netip.MustParseAddr("192.0.2.2")
	Server    = netip.MustParseAddr("192.0.2.10")
	Server2   = netip.MustParseAddr("192.0.2.11")
)

// Options shape the topology.
type Options struct {
	// Routed gives the server a route to the inside network via the
	// router (for plain routing and --passthrough baselines).
	Routed bool
}

// Topology is the three namespaces and their links.
type Topology struct {
	ClientNS, RouterNS, ServerNS *netnstest.NS
	dir                          string
}

// New creates the namespaces and links; they are removed when tb ends.
func New(tb testing.TB, o Options) *Topology {
	tb.Helper()
	t := &Topology{ClientNS: netnstest.New(tb), RouterNS: netnstest.New(tb), ServerNS: netnstest.New(tb), dir: tb.TempDir()}
	c, r, s := t.ClientNS, t.RouterNS, t.ServerNS
	run := func(ns *netnstest.NS, args ...string) { ns.MustRun(tb, args[0], args[1:]...) }
	// veth pairs are created in the router namespace and one end moved.
	run(r, "ip", "link", "add", "g0", "type", "veth", "peer", "name", "c0", "netns", c.Name)
	run(r, "ip", "link", "add", "g1", "type", "veth", "peer", "name", "s0", "netns", s.Name)
	run(r, "ip", "addr", "add", "10.0.0.1/24", "dev", "g0")
	run(r, "ip", "addr", "add", "192.0.2.254/24", "dev", "g1")
	run(r, "ip", "link", "set", "g0", "up")
	run(r, "ip", "link", "set", "g1", "up")
	run(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(c, "ip", "addr", "add", "10.0.0.2/24", "dev", "c0")
	run(c, "ip", "addr", "add", "10.0.0.3/24", "dev", "c0")
	run(c, "ip", "link", "set", "c0", "up")
	run(c, "ip", "route", "add", "default", "via", "10.0.0.1")
	run(s, "ip", "addr", "add", "192.0.2.10/24", "dev", "s0")
	run(s, "ip", "addr", "add", "192.0.2.11/24", "dev", "s0")
	run(s, "ip", "link", "set", "s0", "up")
	if o.Routed {
		run(s, "ip", "route", "add", "10.0.0.0/24", "via", "192.0.2.254")
	}
	for _, ns := range []*netnstest.NS{c, r, s} {
		run(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
	}
	return t
}

// Dir is a temporary directory for the topology's files.
func (t *Topology) Dir() string { return t.dir }

// envRun carries the gateway's spec to the re-executed test binary.
const envRun = "PORTSPACE_GWTEST_GATEWAY"

// Spec says how Start runs the gateway.
type Spec struct {
	// Preset names the engine preset (default "rfc-recommended").
	Preset string `json:"preset"`
	// Config is a --config YAML document (optional).
	Config string `json:"config,omitempty"`
	// Passthrough runs the gateway untranslating.
	Passthrough bool `json:"passthrough,omitempty"`
	// Workers is the number of TUN queues (default: CPUs).
	Workers int `json:"workers,omitempty"`
	// Shards is the number of engines (default 1); more than one runs the
	// gateway with External and External2 (at most two shards).
	Shards int `json:"shards,omitempty"`
	// Log is an event-log file the gateway appends to (optional).
	Log string `json:"log,omitempty"`

	Control  string `json:"control"`
	StateDir string `json:"state_dir"`
}

// Externals returns the gateway's external addresses: External, and
// External2 when Shards > 1.
func (s Spec) Externals() []netip.Addr {
	if s.Shards > 1 {
		return []netip.Addr{External, External2}
	}
	return []netip.Addr{External}
}

// MappedAddr returns the external address the gateway maps the inside
// address a to (its shard's, gateway.ShardOf).
func (s Spec) MappedAddr(a netip.Addr) netip.Addr {
	return s.Externals()[gateway.ShardOf(a, max(s.Shards, 1))]
}

// Gateway is a gateway process started by Start.
type Gateway struct {
	Spec Spec
	cmd  *exec.Cmd
	out  *SyncBuffer
	done chan error
}

// Start runs a gateway in the router namespace with external address
// External and inside network Inside, and waits until its control socket
// answers. It is stopped (SIGTERM) when tb ends, unless stopped before.
func (t *Topology) Start(tb testing.TB, spec Spec) *Gateway {
	tb.Helper()
	if spec.Preset == "" {
		spec.Preset = "rfc-recommended"
	}
	if spec.StateDir == "" {
		spec.StateDir = filepath.Join(t.dir, "state")
	}
	// A short path: a Unix socket's name is limited to 107 bytes, and a
	// test's TempDir carries the test's name.
	spec.Control = filepath.Join(os.TempDir(), fmt.Sprintf("psgw-%d-%d.sock", os.Getpid(), time.Now().UnixNano()))
	tb.Cleanup(func() { os.Remove(spec.Control) })
	b, _ := json.Marshal(spec)
	cmd := exec.Command("ip", "netns", "exec", t.RouterNS.Name, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRun+"="+string(b))
	g := &Gateway{Spec: spec, cmd: cmd, out: &SyncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = g.out, g.out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("gwtest: start gateway: %v", err)
	}
	go func() { g.done <- cmd.Wait() }()
	tb.Cleanup(func() { g.Stop(tb) })
	deadline := time.Now().Add(15 * time.Second)
	for {
		var s gateway.Stats
		if err := gateway.Query(spec.Control, "stats", &s); err == nil {
			return g
		}
		select {
		case err := <-g.done:
			g.done <- err
			tb.Fatalf("gwtest: gateway exited: %v:\n%s", err, g.out)
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("gwtest: gateway did not answer on %s:\n%s", spec.Control, g.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Output returns what the gateway printed so far.
func (g *Gateway) Output() string { return g.out.String() }

// Stats queries the running gateway.
func (g *Gateway) Stats(tb testing.TB) gateway.Stats {
	tb.Helper()
	var s gateway.Stats
	if err := gateway.Query(g.Spec.Control, "stats", &s); err != nil {
		tb.Fatal(err)
	}
	return s
}

// Sessions queries the running gateway's sessions.
func (g *Gateway) Sessions(tb testing.TB) []gateway.SessionRecord {
	tb.Helper()
	var s []gateway.SessionRecord
	if err := gateway.Query(g.Spec.Control, "sessions", &s); err != nil {
		tb.Fatal(err)
	}
	return s
}

// Stop sends SIGTERM and waits for the gateway to exit; it fails tb if the
// gateway exits with an error. Stopping twice is a no-op.
func (g *Gateway) Stop(tb testing.TB) {
	tb.Helper()
	g.signal(tb, syscall.SIGTERM)
}

// Kill sends SIGKILL and waits (no clean-up runs: the next Start recovers).
func (g *Gateway) Kill(tb testing.TB) {
	tb.Helper()
	g.signal(tb, syscall.SIGKILL)
}

func (g *Gateway) signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	if g.cmd.ProcessState != nil {
		return
	}
	// ip netns exec execs the binary, so the pid is the gateway's.
	_ = g.cmd.Process.Signal(sig)
	select {
	case err := <-g.done:
		if err != nil && sig != syscall.SIGKILL {
			tb.Errorf("gwtest: gateway exited with %v:\n%s", err, g.out)
		}
	case <-time.After(15 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.done
		tb.Errorf("gwtest: gateway did not stop on %v:\n%s", sig, g.out)
	}
}

// Main runs the gateway when the test binary was re-executed by Start, and
// returns at once otherwise. Call it first in TestMain.
func Main() {
	js := os.Getenv(envRun)
	if js == "" {
		return
	}
	var spec Spec
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "gwtest:", err)
		os.Exit(2)
	}
	os.Exit(runSpec(spec))
}

func runSpec(spec Spec) int {
	cfg, err := nat.Preset(spec.Preset)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if spec.Config != "" {
		if cfg, _, err = gateway.ParseConfig("spec.yaml", []byte(spec.Config), cfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	cfg.External = spec.Externals()
	cfg.Internal = []netip.Prefix{Inside}
	var logf *os.File
	if spec.Log != "" {
		if logf, err = os.OpenFile(spec.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		defer logf.Close()
		lw := natlog.NewLogWriter(logf, natlog.LogOptions{Destinations: cfg.LogDestinations})
		defer lw.Flush()
		cfg.Events = lw
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	g, err := gateway.New(gateway.Options{Engine: cfg, Passthrough: spec.Passthrough, Workers: spec.Workers, Shards: spec.Shards,
		StateDir: spec.StateDir, TUN: "psnat0", Logger: logger})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if err := g.ServeControl(ctx, spec.Control); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	if err := g.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// SyncBuffer is a bytes.Buffer safe for one writer (a process's output)
// and concurrent readers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
