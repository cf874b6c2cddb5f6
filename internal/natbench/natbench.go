// Package natbench measures NAT datapaths between network namespaces it
// builds (client | router | server, joined by veth pairs): plain routing,
// Linux nftables masquerade, and the portspace gateway (translating and
// --passthrough), with TCP throughput from iperf3 (one and eight streams)
// and the 64-byte UDP rate of a sender of its own (sendmmsg batches; one
// flow and many flows over two destination addresses), both the rate
// received at full offered load and the RFC 2544 zero-loss rate found by a
// binary search. It backs `portspace bench nat`.
package natbench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/portspace/portspace/gateway"
)

// Modes are the datapaths measured.
const (
	ModeRouting     = "routing"
	ModeMasquerade  = "nft-masquerade"
	ModeGateway     = "gateway"
	ModePassthrough = "gateway-passthrough"
	// ModeSharded is the gateway translating with Config.Shards engines
	// (default 2) over as many external addresses (192.0.2.1, .2, ...).
	ModeSharded = "gateway-sharded"
)

// AllModes lists the default modes in report order.
var AllModes = []string{ModeRouting, ModeMasquerade, ModePassthrough, ModeGateway}

// KnownModes lists every mode: AllModes and ModeSharded.
var KnownModes = append(append([]string(nil), AllModes...), ModeSharded)

// Config configures a run. Zero values are the documented defaults.
type Config struct {
	// Modes to measure (default AllModes).
	Modes []string
	// Preset of the gateway (default "rfc-recommended").
	Preset string
	// TCPDuration of each iperf3 run (default 5 s).
	TCPDuration time.Duration
	// Trial is the length of one UDP trial (default 2 s).
	Trial time.Duration
	// Flows is the many-flow UDP count (default 100,000, over two
	// destination addresses and 50,000 ports each).
	Flows int
	// MaxRate caps the offered rate of the zero-loss search in packets/s
	// (default: the full-load sending rate).
	MaxRate float64
	// Resolution of the zero-loss search as a fraction (default 0.03).
	Resolution float64
	// Exe is the portspace binary (default os.Executable): the gateway and
	// the UDP sender run as `Exe nat gateway ...` and `Exe bench nat
	// --role ...` inside the namespaces.
	Exe string
	// Workers of the gateway (0: its default).
	Workers int
	// Shards of the gateway in ModeSharded (default 2).
	Shards int
	// Subscribers is the number of client addresses (10.0.0.2, .3, ...)
	// the UDP sender spreads its flows over (default 1). Sharding by
	// subscriber needs more than one to use more than one shard. TCP
	// (iperf3) always runs from 10.0.0.2.
	Subscribers int
	// SplitGSO runs the gateway with --split-gso.
	SplitGSO bool
	// Rounds runs every mode this many times, round-robin, and reports
	// each figure's median (default 1): on a machine others load, the
	// modes then see the same noise.
	Rounds int
	// Progress receives one line per step (nil: none).
	Progress io.Writer
}

// Result is one mode's figures.
type Result struct {
	Mode string `json:"mode"`
	// TCP throughput in Gbit/s.
	TCP1 float64 `json:"tcp_1_stream_gbps"`
	TCP8 float64 `json:"tcp_8_streams_gbps"`
	// UDP at full offered load: packets/s sent and received, one flow and
	// many flows.
	UDP1Sent     float64 `json:"udp_1_flow_sent_pps"`
	UDP1Recv     float64 `json:"udp_1_flow_received_pps"`
	UDPManySent  float64 `json:"udp_many_flows_sent_pps"`
	UDPManyRecv  float64 `json:"udp_many_flows_received_pps"`
	UDP1ZeroLoss float64 `json:"udp_1_flow_zero_loss_pps"`
	// UDPManyZeroLoss is the zero-loss rate with many flows.
	UDPManyZeroLoss float64 `json:"udp_many_flows_zero_loss_pps"`
	// GatewayDrops are the gateway's drops by reason during the run.
	GatewayDrops map[string]uint64 `json:"gateway_drops,omitempty"`
}

// Report is a whole run.
type Report struct {
	Started time.Time `json:"started"`
	Load    string    `json:"load"`
	Preset  string    `json:"preset"`
	Flows   int       `json:"flows"`
	Rounds  int       `json:"rounds"`
	// LoadEnd is /proc/loadavg when the run ended.
	LoadEnd string   `json:"load_end"`
	Results []Result `json:"results"`
	// Ratios of each mode to nft-masquerade and of the gateway to its
	// passthrough, by figure name.
	Ratios map[string]map[string]float64 `json:"ratios"`
}

func (c Config) withDefaults() Config {
	if len(c.Modes) == 0 {
		c.Modes = AllModes
	}
	if c.Preset == "" {
		c.Preset = "rfc-recommended"
	}
	if c.TCPDuration <= 0 {
		c.TCPDuration = 5 * time.Second
	}
	if c.Trial <= 0 {
		c.Trial = 2 * time.Second
	}
	if c.Flows <= 0 {
		c.Flows = 100000
	}
	if c.Resolution <= 0 {
		c.Resolution = 0.03
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Rounds <= 0 {
		c.Rounds = 1
	}
	if c.Shards <= 0 {
		c.Shards = 2
	}
	if c.Subscribers <= 0 {
		c.Subscribers = 1
	}
	return c
}

type topo struct {
	client, router, server string
	dir                    string
}

func sh(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("natbench: %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func (t *topo) in(ns string, args ...string) []string {
	return append([]string{"ip", "netns", "exec", ns}, args...)
}

func newTopo(ctx context.Context, subscribers int) (*topo, error) {
	var b [3]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	t := &topo{client: "psnb-c-" + id, router: "psnb-r-" + id, server: "psnb-s-" + id}
	dir, err := os.MkdirTemp("", "psnatbench")
	if err != nil {
		return nil, err
	}
	t.dir = dir
	steps := [][]string{
		{"ip", "netns", "add", t.client}, {"ip", "netns", "add", t.router}, {"ip", "netns", "add", t.server},
		{"ip", "-n", t.router, "link", "add", "g0", "type", "veth", "peer", "name", "c0", "netns", t.client},
		{"ip", "-n", t.router, "link", "add", "g1", "type", "veth", "peer", "name", "s0", "netns", t.server},
		{"ip", "-n", t.router, "addr", "add", "10.0.0.1/24", "dev", "g0"},
		{"ip", "-n", t.router, "addr", "add", "192.0.2.254/24", "dev", "g1"},
		{"ip", "-n", t.client, "addr", "add", "10.0.0.2/24", "dev", "c0"},
		{"ip", "-n", t.server, "addr", "add", "192.0.2.10/24", "dev", "s0"},
		{"ip", "-n", t.server, "addr", "add", "192.0.2.11/24", "dev", "s0"},
	}
	for i := 1; i < subscribers; i++ {
		steps = append(steps, []string{"ip", "-n", t.client, "addr", "add", SubscriberAddr(i).String() + "/24", "dev", "c0"})
	}
	for _, ns := range []string{t.client, t.router, t.server} {
		steps = append(steps, []string{"ip", "-n", ns, "link", "set", "lo", "up"})
	}
	steps = append(steps,
		[]string{"ip", "-n", t.router, "link", "set", "g0", "up"}, []string{"ip", "-n", t.router, "link", "set", "g1", "up"},
		[]string{"ip", "-n", t.client, "link", "set", "c0", "up"}, []string{"ip", "-n", t.server, "link", "set", "s0", "up"},
		[]string{"ip", "-n", t.client, "route", "add", "default", "via", "10.0.0.1"},
		// Routed: plain routing and passthrough need the way back.
		[]string{"ip", "-n", t.server, "route", "add", "10.0.0.0/24", "via", "192.0.2.254"},
		t.in(t.router, "sysctl", "-qw", "net.ipv4.ip_forward=1"),
		// The router's outside veth segments UDP GSO super-packets (the
		// gateway coalesces a flow's datagrams on write) in software, as
		// for a NIC without UDP segmentation offload: the router pays for
		// the segmentation and the server receives datagrams, as from
		// the other modes.
		t.in(t.router, "ethtool", "-K", "g1", "tx-udp-segmentation", "off"),
		// The receiver counts and drops in nftables (no ICMP back).
		t.in(t.server, "nft", "add", "table", "ip", "psbench"),
		t.in(t.server, "nft", "add", "chain", "ip", "psbench", "rx", "{ type filter hook input priority 0; }"),
		t.in(t.server, "nft", "add", "rule", "ip", "psbench", "rx", "udp", "dport", "10000-59999", "counter", "drop"),
	)
	for _, s := range steps {
		if _, err := sh(ctx, s...); err != nil {
			t.close()
			return nil, err
		}
	}
	return t, nil
}

func (t *topo) close() {
	for _, ns := range []string{t.client, t.router, t.server} {
		exec.Command("ip", "netns", "del", ns).Run()
	}
	os.RemoveAll(t.dir)
}

// received reads the server's nftables counter of UDP packets and returns
// the datagrams it counted and the socket buffers (skbs) they came in.
// The counter counts skbs: a datagram train the gateway wrote to the TUN
// as one UDP GSO super-packet (wireguard/tun coalesces on write) crosses
// the veth into the server whole, counted once. Every datagram carries
// Payload bytes behind a 28-byte IPv4 and UDP header, and a super-packet
// one header in all, so the datagrams are (bytes - 28*skbs) / Payload.
func (t *topo) received(ctx context.Context) (datagrams, skbs uint64, err error) {
	out, err := sh(ctx, t.in(t.server, "nft", "-j", "list", "table", "ip", "psbench")...)
	if err != nil {
		return 0, 0, err
	}
	i := strings.Index(out, `"counter"`)
	if i < 0 {
		return 0, 0, errors.New("natbench: no counter in the server's table")
	}
	field := func(name string) (uint64, error) {
		j := strings.Index(out[i:], `"`+name+`":`)
		if j < 0 {
			return 0, fmt.Errorf("natbench: no %s in the counter", name)
		}
		s := strings.TrimSpace(out[i+j+len(name)+3:])
		k := strings.IndexAny(s, ",}")
		if k < 0 {
			return 0, fmt.Errorf("natbench: counter %s: %q", name, s)
		}
		return strconv.ParseUint(strings.TrimSpace(s[:k]), 10, 64)
	}
	if skbs, err = field("packets"); err != nil {
		return 0, 0, err
	}
	bytes, err := field("bytes")
	if err != nil {
		return 0, 0, err
	}
	return datagramsOf(bytes, skbs), skbs, nil
}

// datagramsOf returns the Payload-byte datagrams in skbs socket buffers
// of bytes bytes (IPv4 headers included).
func datagramsOf(bytes, skbs uint64) uint64 {
	if bytes < 28*skbs {
		return 0
	}
	return (bytes - 28*skbs) / Payload
}

// setup puts the router in mode and returns a function that undoes it.
func (t *topo) setup(ctx context.Context, c Config, mode string) (func() map[string]uint64, error) {
	switch mode {
	case ModeRouting:
		return func() map[string]uint64 { return nil }, nil
	case ModeMasquerade:
		for _, c := range [][]string{
			{"nft", "add", "table", "ip", "psnat"},
			{"nft", "add", "chain", "ip", "psnat", "post", "{ type nat hook postrouting priority 100; }"},
			{"nft", "add", "rule", "ip", "psnat", "post", "oifname", "g1", "masquerade"},
		} {
			if _, err := sh(ctx, t.in(t.router, c...)...); err != nil {
				return nil, err
			}
		}
		return func() map[string]uint64 {
			sh(context.Background(), t.in(t.router, "nft", "delete", "table", "ip", "psnat")...)
			sh(context.Background(), t.in(t.router, "conntrack", "-F")...)
			return nil
		}, nil
	case ModeGateway, ModePassthrough, ModeSharded:
		control := filepath.Join(t.dir, "control-"+mode+".sock")
		external := "192.0.2.1"
		if mode == ModeSharded {
			var ext []string
			for i := 0; i < c.Shards; i++ {
				ext = append(ext, fmt.Sprintf("192.0.2.%d", 1+i))
			}
			external = strings.Join(ext, ",")
		}
		args := []string{c.Exe, "nat", "gateway", "--preset", c.Preset, "--external", external,
			"--inside", "10.0.0.0/24", "--control", control, "--state-dir", t.dir}
		if mode == ModeSharded {
			args = append(args, "--shards", strconv.Itoa(c.Shards))
		}
		if mode == ModePassthrough {
			args = append(args, "--passthrough")
		}
		if c.SplitGSO {
			args = append(args, "--split-gso")
		}
		if c.Workers > 0 {
			args = append(args, "--workers", strconv.Itoa(c.Workers))
		}
		if mode != ModePassthrough {
			// Enough room for the many-flow sessions without growing.
			cfg := filepath.Join(t.dir, "gw.yaml")
			if err := os.WriteFile(cfg, []byte(fmt.Sprintf("expected_sessions: %d\n", c.Flows+1000)), 0o644); err != nil {
				return nil, err
			}
			args = append(args, "--config", cfg)
		}
		cmd := exec.Command("ip", t.in(t.router, args...)[1:]...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		deadline := time.Now().Add(20 * time.Second)
		for {
			var s gateway.Stats
			if gateway.Query(control, "stats", &s) == nil {
				break
			}
			select {
			case err := <-done:
				return nil, fmt.Errorf("natbench: gateway exited: %v: %s", err, out.String())
			default:
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				return nil, fmt.Errorf("natbench: gateway did not start: %s", out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		return func() map[string]uint64 {
			var s gateway.Stats
			gateway.Query(control, "stats", &s)
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			return s.Drops
		}, nil
	}
	return nil, fmt.Errorf("natbench: unknown mode %q (known: %s)", mode, strings.Join(AllModes, ", "))
}

// iperf runs an iperf3 TCP test with streams and returns Gbit/s received.
func (t *topo) iperf(ctx context.Context, d time.Duration, streams int) (float64, error) {
	out, err := sh(ctx, t.in(t.client, "iperf3", "-c", "192.0.2.10", "-t", strconv.Itoa(int(d/time.Second)),
		"-P", strconv.Itoa(streams), "-J")...)
	if err != nil {
		return 0, err
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, fmt.Errorf("natbench: iperf3 output: %w", err)
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

// udp runs one UDP trial: the sender offers rate packets/s (0 = as fast
// as it can) over flows flows for the trial's length; it returns the
// packets sent and received and the seconds the sender sent for.
func (t *topo) udp(ctx context.Context, c Config, flows int, rate float64) (sent, recv uint64, secs float64, err error) {
	before, skb0, err := t.received(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	out, err := sh(ctx, t.in(t.client, c.Exe, "bench", "nat", "--role", "sender", "--flows", strconv.Itoa(flows),
		"--subscribers", strconv.Itoa(c.Subscribers),
		"--rate", strconv.FormatFloat(rate, 'f', 0, 64), "--trial", c.Trial.String())...)
	if err != nil {
		return 0, 0, 0, err
	}
	var s SenderResult
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		return 0, 0, 0, fmt.Errorf("natbench: sender output %q: %w", out, err)
	}
	time.Sleep(300 * time.Millisecond) // the last packets drain
	after, skb1, err := t.received(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	if n := skb1 - skb0; n != after-before {
		fmt.Fprintf(c.Progress, "    (%d datagrams arrived in %d skbs: coalesced)\n", after-before, n)
	}
	return s.Sent, after - before, s.Seconds, nil
}

// zeroLoss finds the highest offered rate with no packet lost (RFC 2544
// §26.1 throughput), by binary search between 0 and hi.
func (t *topo) zeroLoss(ctx context.Context, c Config, flows int, hi float64) (float64, error) {
	lo := 0.0
	for hi-lo > c.Resolution*hi && hi > 1000 {
		mid := (lo + hi) / 2
		sent, recv, _, err := t.udp(ctx, c, flows, mid)
		if err != nil {
			return 0, err
		}
		fmt.Fprintf(c.Progress, "    offered %.0f pps: sent %d, received %d\n", mid, sent, recv)
		if recv >= sent {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, nil
}

// Run builds the topology, measures every mode and removes it. It needs
// root, iperf3, nft and ethtool.
func Run(ctx context.Context, c Config) (*Report, error) {
	c = c.withDefaults()
	if os.Geteuid() != 0 {
		return nil, errors.New("natbench: needs root (it creates network namespaces)")
	}
	for _, p := range []string{"ip", "nft", "iperf3", "ethtool"} {
		if _, err := exec.LookPath(p); err != nil {
			return nil, fmt.Errorf("natbench: %s is not installed", p)
		}
	}
	if c.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		c.Exe = exe
	}
	t, err := newTopo(ctx, c.Subscribers)
	if err != nil {
		return nil, err
	}
	defer t.close()
	iperfd := exec.Command("ip", t.in(t.server, "iperf3", "-s")[1:]...)
	if err := iperfd.Start(); err != nil {
		return nil, err
	}
	defer func() { iperfd.Process.Kill(); iperfd.Wait() }()
	time.Sleep(300 * time.Millisecond)
	load, _ := os.ReadFile("/proc/loadavg")
	rep := &Report{Started: time.Now().UTC(), Load: strings.TrimSpace(string(load)), Preset: c.Preset, Flows: c.Flows, Rounds: c.Rounds}
	runs := map[string][]Result{}
	for round := 0; round < c.Rounds; round++ {
		for _, mode := range c.Modes {
			fmt.Fprintf(c.Progress, "%s (round %d of %d)\n", mode, round+1, c.Rounds)
			stop, err := t.setup(ctx, c, mode)
			if err != nil {
				return nil, err
			}
			r, err := t.measure(ctx, c)
			r.Mode = mode
			r.GatewayDrops = stop()
			if err != nil {
				return nil, fmt.Errorf("natbench: %s: %w", mode, err)
			}
			runs[mode] = append(runs[mode], r)
		}
	}
	for _, mode := range c.Modes {
		rep.Results = append(rep.Results, median(runs[mode]))
	}
	load, _ = os.ReadFile("/proc/loadavg")
	rep.LoadEnd = strings.TrimSpace(string(load))
	rep.Ratios = ratios(rep.Results)
	return rep, nil
}

func (t *topo) measure(ctx context.Context, c Config) (Result, error) {
	var r Result
	var err error
	if r.TCP1, err = t.iperf(ctx, c.TCPDuration, 1); err != nil {
		return r, err
	}
	fmt.Fprintf(c.Progress, "  tcp 1 stream %.2f Gbit/s\n", r.TCP1)
	if r.TCP8, err = t.iperf(ctx, c.TCPDuration, 8); err != nil {
		return r, err
	}
	fmt.Fprintf(c.Progress, "  tcp 8 streams %.2f Gbit/s\n", r.TCP8)
	for _, flows := range []int{1, c.Flows} {
		// The first trial at full load also creates the many flows' state.
		sent, recv, secs, err := t.udp(ctx, c, flows, 0)
		if err != nil {
			return r, err
		}
		rate := float64(sent) / secs
		fmt.Fprintf(c.Progress, "  udp %d flows full load: sent %.0f pps, received %.0f pps\n", flows, rate, float64(recv)/secs)
		hi := rate
		if c.MaxRate > 0 {
			hi = min(hi, c.MaxRate)
		}
		zl, err := t.zeroLoss(ctx, c, flows, hi)
		if err != nil {
			return r, err
		}
		fmt.Fprintf(c.Progress, "  udp %d flows zero-loss %.0f pps\n", flows, zl)
		if flows == 1 {
			r.UDP1Sent, r.UDP1Recv, r.UDP1ZeroLoss = rate, float64(recv)/secs, zl
		} else {
			r.UDPManySent, r.UDPManyRecv, r.UDPManyZeroLoss = rate, float64(recv)/secs, zl
		}
	}
	return r, nil
}

// median returns the per-figure median of rs (the upper one of an even
// count), with the drops of the last run.
func median(rs []Result) Result {
	out := rs[len(rs)-1]
	pick := func(get func(Result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	out.TCP1 = pick(func(r Result) float64 { return r.TCP1 })
	out.TCP8 = pick(func(r Result) float64 { return r.TCP8 })
	out.UDP1Sent = pick(func(r Result) float64 { return r.UDP1Sent })
	out.UDP1Recv = pick(func(r Result) float64 { return r.UDP1Recv })
	out.UDP1ZeroLoss = pick(func(r Result) float64 { return r.UDP1ZeroLoss })
	out.UDPManySent = pick(func(r Result) float64 { return r.UDPManySent })
	out.UDPManyRecv = pick(func(r Result) float64 { return r.UDPManyRecv })
	out.UDPManyZeroLoss = pick(func(r Result) float64 { return r.UDPManyZeroLoss })
	return out
}

// figures returns a result's figures by name.
func figures(r Result) map[string]float64 {
	return map[string]float64{
		"tcp_1_stream": r.TCP1, "tcp_8_streams": r.TCP8,
		"udp_1_flow_received": r.UDP1Recv, "udp_many_flows_received": r.UDPManyRecv,
		"udp_1_flow_zero_loss": r.UDP1ZeroLoss, "udp_many_flows_zero_loss": r.UDPManyZeroLoss,
	}
}

// ratios divides each mode's figures by nft-masquerade's, and the
// gateway's by its passthrough's ("gateway/gateway-passthrough").
func ratios(rs []Result) map[string]map[string]float64 {
	by := map[string]Result{}
	for _, r := range rs {
		by[r.Mode] = r
	}
	out := map[string]map[string]float64{}
	div := func(name string, a, b Result) {
		fa, fb := figures(a), figures(b)
		m := map[string]float64{}
		for k, v := range fa {
			if fb[k] > 0 {
				m[k] = v / fb[k]
			}
		}
		out[name] = m
	}
	if m, ok := by[ModeMasquerade]; ok {
		for _, r := range rs {
			if r.Mode != ModeMasquerade {
				div(r.Mode+"/"+ModeMasquerade, r, m)
			}
		}
	}
	if g, ok := by[ModeGateway]; ok {
		if p, ok := by[ModePassthrough]; ok {
			div(ModeGateway+"/"+ModePassthrough, g, p)
		}
		if sh, ok := by[ModeSharded]; ok {
			div(ModeSharded+"/"+ModeGateway, sh, g)
		}
	}
	return out
}
