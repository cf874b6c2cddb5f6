package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/portspace/portspace/internal/bench"
)

type benchProxyFlags struct {
	duration    time.Duration
	rounds      int
	concurrency int
	bulkMiB     int
	idle        int
	peers       string
	json        bool
	origin      string
	also        []string
	phases      string

	fleet                              bool
	fleetProcs, fleetConns, fleetDests int
	role, roleArg                      string
}

func newBenchProxyCmd() *cobra.Command {
	var f benchProxyFlags
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Compare portspace proxy with microsocks and Dante: setup rate, latency, bulk throughput, memory per idle tunnel",
		Long: `proxy starts loopback origin servers, "portspace proxy" (as a child process,
with a bolt store and a pool of 127.0.0.1 slices), and, when installed,
microsocks and Dante (danted) as peers, all on 127.0.0.1, and drives each
with the same SOCKS5 client:

  setup   connections per second and p50/p99 setup latency (connect, SOCKS5
          handshake, CONNECT, first byte from the origin), --concurrency
          clients for --duration
  bulk    throughput of one tunnel carrying --bulk-mib MiB from the origin
  idle    memory per open idle tunnel: the proxy's PSS (all its processes)
          before and after opening --idle tunnels, divided by --idle

Setup and bulk run in --rounds rounds; each round measures every row back to
back, starting one row later than the round before, so that a change in the
machine's load during the run does not favour the row measured first. The
setup rate is all rounds' connections over all rounds' time (latency
percentiles over all samples); bulk is the median of the rounds. The CPU
columns are the proxy's own processes' user+system time (/proc/PID/stat)
per connection set up and per GiB carried: a machine shared with other work
moves the rates, much less these. "load CPU ms/GiB" is this process's own
user+system time per GiB in the bulk phase (the client and the origin, which
live here), for every row including direct: the whole path's CPU per GiB is
that plus the proxy's.

bulk_vs_direct is the ratio of the two rows' medians; bulk_vs_direct_paired
the median of the per-round ratios (each round's tunnel against the direct
connection measured next to it), which a change of load between rounds
moves less. With --also, portspace-N_bulk_vs_direct and its paired twin
give the other builds' ratios.

--phases runs only the phases named (setup, bulk, idle).

A direct connection (no proxy) is measured as the baseline for setup and
bulk. A peer that is not installed is skipped and the table says so.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case f.role != "":
				return runFleetRole(cmd, f.role, f.roleArg)
			case f.fleet:
				return runBenchProxyFleet(cmd, f)
			}
			return runBenchProxy(cmd, f)
		},
	}
	fl := cmd.Flags()
	fl.DurationVar(&f.duration, "duration", 6*time.Second, "setup phase length per proxy (split over --rounds)")
	fl.IntVar(&f.rounds, "rounds", 3, "rounds of the setup and bulk phases, rows interleaved")
	fl.IntVar(&f.concurrency, "concurrency", 16, "concurrent clients in the setup phase")
	fl.IntVar(&f.bulkMiB, "bulk-mib", 1024, "MiB carried by the bulk tunnel")
	fl.IntVar(&f.idle, "idle", 5000, "idle tunnels opened per proxy for the memory figure (0: skip)")
	fl.StringVar(&f.peers, "peers", "microsocks,dante", "peers to compare (comma-separated: microsocks, dante; empty: none)")
	fl.StringVar(&f.origin, "origin", "127.0.0.10", "loopback address of the origin servers")
	fl.BoolVar(&f.json, "json", false, "print JSON instead of a table")
	fl.StringVar(&f.phases, "phases", "setup,bulk,idle", "phases to run (comma-separated: setup, bulk, idle); --idle 0 skips idle too")
	fl.StringArrayVar(&f.also, "also", nil, "also measure the proxy of this portspace `binary` (another build, for an A/B comparison of a change in the same run; repeatable; rows portspace-2, ...)")
	fl.BoolVar(&f.fleet, "fleet", false, "instead: --fleet-procs proxy processes, each with its own 1,000-port slice of 127.0.0.1, carry --fleet-conns tunnels each to --fleet-dests destinations; report time, memory and a sock_diag census of duplicate 4-tuples")
	fl.IntVar(&f.fleetProcs, "fleet-procs", 8, "--fleet: proxy processes")
	fl.IntVar(&f.fleetConns, "fleet-conns", 9000, "--fleet: tunnels per proxy process")
	fl.IntVar(&f.fleetDests, "fleet-dests", 100, "--fleet: loopback destinations (127.0.1.1 up, port 9000)")
	fl.StringVar(&f.role, "role", "", "internal: run as a --fleet worker (origin or client)")
	fl.StringVar(&f.roleArg, "role-arg", "", "internal: the worker's argument")
	_ = fl.MarkHidden("role")
	_ = fl.MarkHidden("role-arg")
	return cmd
}

// proxyFigures are one proxy's measurements.
type proxyFigures struct {
	Name        string    `json:"name"`
	Skipped     string    `json:"skipped,omitempty"`
	SetupPerSec float64   `json:"setup_per_sec"`
	SetupP50us  float64   `json:"setup_p50_us"`
	SetupP99us  float64   `json:"setup_p99_us"`
	SetupErrors int       `json:"setup_errors"`
	SetupCPUus  float64   `json:"setup_cpu_us_per_conn,omitempty"`
	BulkMiBps   float64   `json:"bulk_mib_per_sec"`
	BulkCPUms   float64   `json:"bulk_cpu_ms_per_gib,omitempty"`
	BulkLoadCPU float64   `json:"bulk_load_cpu_ms_per_gib,omitempty"`
	BulkRounds  []float64 `json:"bulk_rounds_mib_per_sec,omitempty"` // MiB/s of each round carried, in round order
	IdleConns   int       `json:"idle_conns,omitempty"`
	KiBPerIdle  float64   `json:"kib_per_idle_conn,omitempty"`
	IdleErrors  int       `json:"idle_errors,omitempty"`
	socks       string
	pid         int
	stop        func()

	samples  []time.Duration // setup latencies of all rounds
	setupDur time.Duration   // setup time of all rounds
	setupCPU time.Duration   // the proxy's CPU time in the setup phases
	bulks    []float64       // MiB/s of each round
	bulkRnd  []int           // the round of each bulks entry (a round with an error has none)
	bulkCPU  time.Duration   // the proxy's CPU time in the bulk phases
	loadCPU  time.Duration   // this process's (client and origin) CPU time in the bulk phases
	bulkN    int64           // bytes carried in the bulk phases
}

// proxyReport is the whole run.
type proxyReport struct {
	Load    string             `json:"load"`
	Command string             `json:"command"`
	Proxies []*proxyFigures    `json:"proxies"`
	Ratios  map[string]float64 `json:"ratios"`
}

func runBenchProxy(cmd *cobra.Command, f benchProxyFlags) error {
	if f.duration <= 0 || f.concurrency < 1 || f.bulkMiB < 1 || f.idle < 0 || f.rounds < 1 {
		return errors.New("bench proxy: --duration, --rounds, --concurrency and --bulk-mib must be positive, --idle not negative")
	}
	phases := map[string]bool{}
	for _, ph := range strings.Split(f.phases, ",") {
		switch ph = strings.TrimSpace(ph); ph {
		case "setup", "bulk", "idle":
			phases[ph] = true
		case "":
		default:
			return fmt.Errorf("bench proxy: --phases: unknown phase %q (want setup, bulk, idle)", ph)
		}
	}
	origin, err := netip.ParseAddr(f.origin)
	if err != nil || !origin.IsLoopback() || !origin.Is4() {
		return fmt.Errorf("bench proxy: --origin %q: want an IPv4 loopback address", f.origin)
	}
	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()
	o, err := startBenchOrigins(ctx, origin, int64(f.bulkMiB)<<20)
	if err != nil {
		return err
	}
	defer o.close()
	dir, err := os.MkdirTemp("", "portspace-bench-proxy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	direct := &proxyFigures{Name: "direct"}
	ours, err := startOurProxy(ctx, dir, origin)
	if err != nil {
		return err
	}
	all := []*proxyFigures{direct, ours}
	for i, exe := range f.also {
		sub := filepath.Join(dir, fmt.Sprintf("also-%d", i+2))
		if err := os.Mkdir(sub, 0o700); err != nil {
			return err
		}
		p, err := startProxyBinary(ctx, sub, origin, fmt.Sprintf("portspace-%d", i+2), exe, nil)
		if err != nil {
			return fmt.Errorf("--also %s: %w", exe, err)
		}
		all = append(all, p)
	}
	for _, p := range strings.Split(f.peers, ",") {
		switch strings.TrimSpace(p) {
		case "":
		case "microsocks":
			all = append(all, startMicrosocks(ctx, dir))
		case "dante":
			all = append(all, startDante(ctx, dir))
		default:
			return fmt.Errorf("bench proxy: --peers: unknown peer %q (want microsocks, dante)", p)
		}
	}
	for _, p := range all {
		if p.stop != nil {
			defer p.stop()
		}
	}
	progress := func(phase string, p *proxyFigures, start time.Time) {
		if !f.json {
			fmt.Fprintf(cmd.ErrOrStderr(), "bench proxy: %s %s: %v\n", phase, p.Name, time.Since(start).Round(time.Millisecond))
		}
	}
	var live []*proxyFigures
	for _, p := range all {
		if p.Skipped == "" {
			live = append(live, p)
		}
	}
	// Each round starts one row later, so that no row is always measured
	// first (or right after the same neighbour).
	roundOrder := func(r int) []*proxyFigures {
		out := make([]*proxyFigures, 0, len(live))
		for i := range live {
			out = append(out, live[(r+i)%len(live)])
		}
		return out
	}
	per := max(f.duration/time.Duration(f.rounds), 10*time.Millisecond)
	for r := range f.rounds {
		if !phases["setup"] {
			break
		}
		for _, p := range roundOrder(r) {
			start := time.Now()
			measureSetup(ctx, p, o.setup, f.concurrency, per)
			progress(fmt.Sprintf("setup round %d", r+1), p, start)
		}
	}
	for r := range f.rounds {
		if !phases["bulk"] {
			break
		}
		for _, p := range roundOrder(r) {
			start := time.Now()
			if measureBulk(p, o.bulk, int64(f.bulkMiB)<<20) {
				p.bulkRnd = append(p.bulkRnd, r)
			}
			progress(fmt.Sprintf("bulk round %d", r+1), p, start)
		}
	}
	for _, p := range live {
		p.finishRounds()
	}
	if f.idle > 0 && phases["idle"] {
		for _, p := range all {
			if p.Skipped == "" && p.pid != 0 {
				start := time.Now()
				measureIdle(p, o, f.idle)
				progress("idle", p, start)
			}
		}
	}
	rep := &proxyReport{Load: loadavg(), Command: "portspace bench proxy " + strings.Join(os.Args[min(len(os.Args), 3):], " "), Proxies: all, Ratios: ratios(all)}
	if f.json {
		return printJSONObject(cmd, rep)
	}
	printProxyTable(cmd.OutOrStdout(), rep)
	return nil
}

func ratios(all []*proxyFigures) map[string]float64 {
	by := map[string]*proxyFigures{}
	for _, p := range all {
		if p.Skipped == "" {
			by[p.Name] = p
		}
	}
	r := map[string]float64{}
	ours := by["portspace"]
	if ours == nil {
		return r
	}
	var bestSetup, bestBulk float64
	for _, n := range []string{"microsocks", "dante"} {
		if p := by[n]; p != nil {
			bestSetup = max(bestSetup, p.SetupPerSec)
			bestBulk = max(bestBulk, p.BulkMiBps)
		}
	}
	if bestSetup > 0 {
		r["setup_vs_best_peer"] = ours.SetupPerSec / bestSetup
	}
	if bestBulk > 0 {
		r["bulk_vs_best_peer"] = ours.BulkMiBps / bestBulk
	}
	if d := by["direct"]; d != nil && d.BulkMiBps > 0 {
		r["bulk_vs_direct"] = ours.BulkMiBps / d.BulkMiBps
		if x, ok := pairedBulkRatio(ours, d); ok {
			r["bulk_vs_direct_paired"] = x
		}
		// The other builds of --also, for an A/B comparison in one run.
		for _, p := range all {
			if p.Skipped == "" && strings.HasPrefix(p.Name, "portspace-") && p.BulkMiBps > 0 {
				r[p.Name+"_bulk_vs_direct"] = p.BulkMiBps / d.BulkMiBps
				if x, ok := pairedBulkRatio(p, d); ok {
					r[p.Name+"_bulk_vs_direct_paired"] = x
				}
			}
		}
	}
	if m := by["microsocks"]; m != nil && m.KiBPerIdle > 0 && ours.KiBPerIdle > 0 {
		r["idle_kib_vs_microsocks"] = ours.KiBPerIdle / m.KiBPerIdle
	}
	return r
}

// pairedBulkRatio is the median over the rounds of p's bulk rate divided
// by d's in the same round. The rows of a round run back to back (one row
// later each round, so neither always goes first), so each ratio compares
// two measurements a second or two apart: a change of the machine's load
// between rounds moves both, where the ratio of the two medians can pair a
// quiet round of one row with a busy round of the other. It needs two
// rounds in common.
func pairedBulkRatio(p, d *proxyFigures) (float64, bool) {
	at := map[int]float64{}
	for i, r := range d.bulkRnd {
		at[r] = d.bulks[i]
	}
	var x []float64
	for i, r := range p.bulkRnd {
		if v, ok := at[r]; ok && v > 0 {
			x = append(x, p.bulks[i]/v)
		}
	}
	if len(x) < 2 {
		return 0, false
	}
	sort.Float64s(x)
	if len(x)%2 == 0 {
		return (x[len(x)/2-1] + x[len(x)/2]) / 2, true
	}
	return x[len(x)/2], true
}

func printProxyTable(w io.Writer, rep *proxyReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "proxy\tsetup/s\tp50 µs\tp99 µs\tCPU µs/conn\terrors\tbulk MiB/s\tCPU ms/GiB\tload CPU ms/GiB\tidle conns\tKiB/idle conn\t")
	for _, p := range rep.Proxies {
		if p.Skipped != "" {
			fmt.Fprintf(tw, "%s\tskipped: %s\t\t\t\t\t\t\t\t\t\t\n", p.Name, p.Skipped)
			continue
		}
		idle, kib := "-", "-"
		if p.IdleConns > 0 {
			idle, kib = strconv.Itoa(p.IdleConns), fmt.Sprintf("%.1f", p.KiBPerIdle)
		}
		cpuConn, cpuGiB := "-", "-"
		if p.pid != 0 {
			cpuConn, cpuGiB = fmt.Sprintf("%.0f", p.SetupCPUus), fmt.Sprintf("%.0f", p.BulkCPUms)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%s\t%d\t%.0f\t%s\t%.0f\t%s\t%s\t\n", p.Name, p.SetupPerSec, p.SetupP50us, p.SetupP99us, cpuConn, p.SetupErrors+p.IdleErrors, p.BulkMiBps, cpuGiB, p.BulkLoadCPU, idle, kib)
	}
	tw.Flush()
	keys := make([]string, 0, len(rep.Ratios))
	for k := range rep.Ratios {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%s: %.2f\n", k, rep.Ratios[k])
	}
	fmt.Fprintf(w, "load average: %s\n", rep.Load)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// benchOrigins are the loopback servers: setup writes one byte and closes
// (so TIME_WAIT stays on the origin's side), bulk writes its bytes and
// closes, idle holds connections open.
type benchOrigins struct {
	setup, bulk, idle netip.AddrPort
	lns               []net.Listener
	mu                sync.Mutex
	held              []net.Conn
}

func startBenchOrigins(ctx context.Context, ip netip.Addr, bulk int64) (*benchOrigins, error) {
	o := &benchOrigins{}
	listen := func(serve func(net.Conn)) (netip.AddrPort, error) {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("bench proxy: origin: %w", err)
		}
		o.lns = append(o.lns, ln)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go serve(c)
			}
		}()
		return ln.Addr().(*net.TCPAddr).AddrPort(), nil
	}
	var err error
	if o.setup, err = listen(func(c net.Conn) { c.Write([]byte{'x'}); c.Close() }); err != nil {
		return nil, err
	}
	buf := make([]byte, 256<<10)
	if o.bulk, err = listen(func(c net.Conn) {
		defer c.Close()
		for left := bulk; left > 0; {
			n := min(left, int64(len(buf)))
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
			left -= n
		}
	}); err != nil {
		return nil, err
	}
	if o.idle, err = listen(func(c net.Conn) {
		o.mu.Lock()
		o.held = append(o.held, c)
		o.mu.Unlock()
		c.Write([]byte{'i'})
	}); err != nil {
		return nil, err
	}
	return o, nil
}

func (o *benchOrigins) close() {
	for _, ln := range o.lns {
		ln.Close()
	}
	o.mu.Lock()
	for _, c := range o.held {
		c.Close()
	}
	o.mu.Unlock()
}

// socksConnect opens a tunnel to dst through the SOCKS5 proxy at proxy
// (no authentication), or dials dst directly when proxy is empty.
func socksConnect(proxy string, dst netip.AddrPort) (net.Conn, error) {
	if proxy == "" {
		return net.DialTimeout("tcp", dst.String(), 10*time.Second)
	}
	c, err := net.DialTimeout("tcp", proxy, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	a := dst.Addr().As4()
	var b [10]byte
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, b[:2]); err != nil || b[1] != 0 {
		c.Close()
		return nil, fmt.Errorf("socks5 method selection: % x %v", b[:2], err)
	}
	if _, err := c.Write([]byte{5, 1, 0, 1, a[0], a[1], a[2], a[3], byte(dst.Port() >> 8), byte(dst.Port())}); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, b[:10]); err != nil || b[1] != 0 {
		c.Close()
		return nil, fmt.Errorf("socks5 reply: % x %v", b[:], err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func measureSetup(ctx context.Context, p *proxyFigures, dst netip.AddrPort, conc int, d time.Duration) {
	var mu sync.Mutex
	var samples []time.Duration
	var errs atomic.Int64
	cpu0 := treeCPU(p.pid)
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			var b [1]byte
			for time.Now().Before(end) && ctx.Err() == nil {
				start := time.Now()
				c, err := socksConnect(p.socks, dst)
				if err != nil {
					errs.Add(1)
					continue
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				_, err = io.ReadFull(c, b[:])
				el := time.Since(start)
				if err == nil {
					_, err = c.Read(b[:]) // the origin's FIN
					if err == io.EOF {
						err = nil
					}
				}
				c.Close()
				if err != nil {
					errs.Add(1)
					continue
				}
				local = append(local, el)
			}
			mu.Lock()
			samples = append(samples, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	p.setupCPU += treeCPU(p.pid) - cpu0
	p.samples = append(p.samples, samples...)
	p.setupDur += d
	p.SetupErrors += int(errs.Load())
}

// finishRounds turns the rounds' measurements into the figures.
func (p *proxyFigures) finishRounds() {
	p.SetupPerSec = bench.Rate(len(p.samples), p.setupDur)
	p.SetupP50us = float64(bench.Percentile(p.samples, 0.50).Microseconds())
	p.SetupP99us = float64(bench.Percentile(p.samples, 0.99).Microseconds())
	if p.pid != 0 && len(p.samples) > 0 {
		p.SetupCPUus = float64(p.setupCPU.Microseconds()) / float64(len(p.samples))
	}
	if len(p.bulks) > 0 {
		p.BulkRounds = p.bulks
		b := append([]float64(nil), p.bulks...)
		sort.Float64s(b)
		p.BulkMiBps = b[len(b)/2]
	}
	if p.bulkN > 0 {
		gib := float64(p.bulkN) / (1 << 30)
		p.BulkLoadCPU = float64(p.loadCPU.Milliseconds()) / gib
		if p.pid != 0 {
			p.BulkCPUms = float64(p.bulkCPU.Milliseconds()) / gib
		}
	}
}

// measureBulk carries n bytes from the bulk origin through p and reports
// whether it did (an error is counted in SetupErrors).
func measureBulk(p *proxyFigures, dst netip.AddrPort, n int64) bool {
	c, err := socksConnect(p.socks, dst)
	if err != nil {
		p.SetupErrors++
		return false
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	cpu0, self0 := treeCPU(p.pid), selfCPU()
	start := time.Now()
	var got int64
	for {
		k, err := c.Read(buf)
		got += int64(k)
		if err != nil {
			break
		}
	}
	el := time.Since(start)
	if got != n {
		p.SetupErrors++
		return false
	}
	p.bulkCPU += treeCPU(p.pid) - cpu0
	p.loadCPU += selfCPU() - self0
	p.bulkN += n
	p.bulks = append(p.bulks, float64(n)/(1<<20)/el.Seconds())
	return true
}

func measureIdle(p *proxyFigures, o *benchOrigins, n int) {
	dst := o.idle
	runtimeSettle()
	before := treePSS(p.pid)
	var mu sync.Mutex
	var conns []net.Conn
	defer func() { closeOriginFirst(o, conns) }()
	// Open them from 16 clients at once: a peer that is slow per connection
	// (microsocks starts a thread for each) still finishes in time.
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [1]byte
			for next.Add(1) <= int64(n) {
				c, err := socksConnect(p.socks, dst)
				if err == nil {
					c.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err = io.ReadFull(c, b[:]); err != nil {
						c.Close()
					}
				}
				mu.Lock()
				if err != nil {
					p.IdleErrors++
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	runtimeSettle()
	after := treePSS(p.pid)
	p.IdleConns = len(conns)
	if len(conns) > 0 {
		p.KiBPerIdle = float64(after-before) / float64(len(conns))
	}
}

func runtimeSettle() { time.Sleep(time.Second) }

// closeOriginFirst ends idle tunnels from the origin's side and closes the
// clients once the proxy has passed the FIN on, so that the TIME_WAIT
// sockets stay on the origin's and the proxy's listening ports. Closing the
// clients first would leave thousands on ephemeral ports of 127.0.0.1 for a
// minute, where they slow the bind(127.0.0.1:0) of microsocks (-b) and
// Dante (external:) in a run started meanwhile (measured: about 1.8 ms of
// CPU per connection instead of 0.23) but not the proxy's connect-time
// port choice: an unfair next run.
func closeOriginFirst(o *benchOrigins, conns []net.Conn) {
	o.mu.Lock()
	for _, c := range o.held {
		c.Close()
	}
	o.held = nil
	o.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, c) // until the FIN the proxy passes on
			c.Close()
		}()
	}
	wg.Wait()
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times (100 on every
// Linux architecture Go supports).
const clockTicks = 100

// treeCPU sums the user and system time of pid and its descendants
// (/proc/PID/stat utime and stime, plus cutime and cstime for children
// already reaped); 0 for pid 0.
func treeCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	var ticks int64
	forTree(pid, func(id int) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", id))
		if err != nil {
			return
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			return
		}
		// After the command: state(3) ... utime(14) stime(15) cutime(16)
		// cstime(17); f[0] is field 3.
		f := strings.Fields(s[i+1:])
		if len(f) < 15 {
			return
		}
		for _, k := range f[11:15] {
			v, _ := strconv.ParseInt(k, 10, 64)
			ticks += v
		}
	})
	return time.Duration(ticks) * time.Second / clockTicks
}

// selfCPU is this process's user and system time (all threads): the load
// client's and the origins' CPU (getrusage RUSAGE_SELF).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// treePSS sums the proportional set size (KiB, /proc/PID/smaps_rollup) of
// pid and its descendants, so shared pages count once across a forking
// server's processes.
func treePSS(pid int) int64 {
	var total int64
	forTree(pid, func(id int) { total += pss(id) })
	return total
}

// forTree calls fn for pid and each of its descendants.
func forTree(pid int, fn func(int)) {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		id, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			f := strings.Fields(s[i+1:])
			if len(f) > 1 {
				pp, _ := strconv.Atoi(f[1])
				children[pp] = append(children[pp], id)
			}
		}
	}
	var walk func(int)
	walk = func(id int) {
		fn(id)
		for _, c := range children[id] {
			walk(c)
		}
	}
	walk(pid)
}

func pss(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// freeLoopbackPort returns a free TCP port on 127.0.0.1.
func freeLoopbackPort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startChild starts a proxy process and waits until it accepts.
func startChild(ctx context.Context, p *proxyFigures, name string, args ...string) {
	cmd := exec.CommandContext(ctx, name, args...)
	// No pipes: a forking peer's children would keep them open and Wait
	// would never return.
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		p.Skipped = err.Error()
		return
	}
	p.pid = cmd.Process.Pid
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	p.stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", p.socks); err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			p.Skipped = name + " exited at start"
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.Skipped = name + " did not accept within 10 s"
}

// ourExecutable is the program that runs "portspace proxy" (tests replace
// it with the test binary).
var ourExecutable = func() (string, []string, error) {
	exe, err := os.Executable()
	return exe, nil, err
}

func startOurProxy(ctx context.Context, dir string, origin netip.Addr) (*proxyFigures, error) {
	exe, pre, err := ourExecutable()
	if err != nil {
		return nil, err
	}
	return startProxyBinary(ctx, dir, origin, "portspace", exe, pre)
}

// startProxyBinary starts "exe pre... proxy" with its files in dir.
func startProxyBinary(ctx context.Context, dir string, origin netip.Addr, name, exe string, pre []string) (*proxyFigures, error) {
	addr, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	p := &proxyFigures{Name: name, socks: addr}
	// Four 5,000-port slices of 127.0.0.1 inside the default ephemeral
	// range, so the kernel strategy (IP_LOCAL_PORT_RANGE) serves them.
	pools := filepath.Join(dir, "pools.yaml")
	cfg := filepath.Join(dir, "proxy.yaml")
	if err := os.WriteFile(pools, []byte("pools:\n  - {name: bench, addresses: [127.0.0.1], ports: 33000-52999, slice: 5000, quarantine: 1s}\n"), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("listen: [%s]\npools: %s\ndestinations: {allow: [%s/32]}\ntimeouts: {idle: 10m}\n", addr, pools, origin)), 0o600); err != nil {
		return nil, err
	}
	startChild(ctx, p, exe, append(pre, "proxy", "--config", cfg, "--store", "bolt:"+filepath.Join(dir, "leases.db"), "--holder", "bench", "--log-level", "error")...)
	if p.Skipped != "" {
		return nil, fmt.Errorf("bench proxy: portspace proxy: %s", p.Skipped)
	}
	return p, nil
}

func startMicrosocks(ctx context.Context, dir string) *proxyFigures {
	p := &proxyFigures{Name: "microsocks"}
	exe, err := exec.LookPath("microsocks")
	if err != nil {
		p.Skipped = "microsocks is not installed"
		return p
	}
	addr, err := freeLoopbackPort()
	if err != nil {
		p.Skipped = err.Error()
		return p
	}
	p.socks = addr
	_, port, _ := net.SplitHostPort(addr)
	startChild(ctx, p, exe, "-i", "127.0.0.1", "-p", port, "-b", "127.0.0.1")
	return p
}

func startDante(ctx context.Context, dir string) *proxyFigures {
	p := &proxyFigures{Name: "dante"}
	exe, err := exec.LookPath("danted")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/danted"); serr != nil {
			p.Skipped = "danted is not installed"
			return p
		}
		exe = "/usr/sbin/danted"
	}
	addr, err := freeLoopbackPort()
	if err != nil {
		p.Skipped = err.Error()
		return p
	}
	p.socks = addr
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "danted.conf")
	text := fmt.Sprintf(`logoutput: /dev/null
internal: 127.0.0.1 port = %s
external: 127.0.0.1
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 0.0.0.0/0 to: 0.0.0.0/0 }
socks pass { from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect }
`, port)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		p.Skipped = err.Error()
		return p
	}
	startChild(ctx, p, exe, "-f", conf, "-p", filepath.Join(dir, "danted.pid"))
	return p
}
