package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portspace/portspace/tuple"
)

// Roles of the processes of a multi-process run.
const (
	RoleListener = "listener"
	RoleDialer   = "dialer"
)

// WorkersOptions configures RunWorkers.
type WorkersOptions struct {
	// Workers is the number of dialer processes, and of listener
	// processes (TCP; a UDP run needs only as many listener processes as
	// its destinations' sockets require).
	Workers int
	// Command is the argument list that starts this program as a worker
	// (Command[0] is the executable); RunWorkers appends --role, --shard
	// and --dest-port. The worker must call RunRole.
	Command []string
	// Stderr receives the workers' standard error (nil: os.Stderr).
	Stderr io.Writer
	// Dialer is the name the dialer processes' figures are reported
	// under (empty: DialerPortspace).
	Dialer string
	// Progress, when set, is called with the number of dials the dialer
	// processes have finished so far (opened or failed), a few times a
	// second while they dial (see internal/progress).
	Progress func(done int64)
}

// progressEvery is how often a dialer process reports its finished dials.
const progressEvery = 500 * time.Millisecond

// WorkersFigures are the extra figures of a multi-process run: how many
// processes held the connections and how much memory they took at the peak.
type WorkersFigures struct {
	DialerProcs   int `json:"dialer_procs"`
	ListenerProcs int `json:"listener_procs"`
	// Accepted is the number of connections the listener processes
	// accepted (TCP).
	Accepted int64 `json:"accepted"`
	// RSSPeakBytes sums every worker's peak resident set (VmHWM);
	// RSSHeldBytes sums their resident sets while the connections are held.
	RSSPeakBytes int64 `json:"rss_peak_bytes"`
	RSSHeldBytes int64 `json:"rss_held_bytes"`
	// SockMemBytes is the kernel's buffer memory of the protocol from
	// /proc/net/sockstat while held; SlabDeltaBytes the growth of kernel
	// slab memory (/proc/meminfo Slab, machine-wide, so other load on the
	// machine shows in it) from before the run.
	SockMemBytes   int64 `json:"sock_mem_bytes"`
	SlabDeltaBytes int64 `json:"slab_delta_bytes"`
	// SocketsInUse is "inuse" of the protocol in /proc/net/sockstat
	// while held (machine-wide).
	SocketsInUse int64 `json:"sockets_in_use"`
}

// TotalBytes is the sum of the workers' resident sets and the kernel's
// slab growth: the memory the held connections cost.
func (w *WorkersFigures) TotalBytes() int64 {
	return w.RSSHeldBytes + w.SlabDeltaBytes + w.SockMemBytes
}

// MemorySummary renders the memory figures in one line.
func (w *WorkersFigures) MemorySummary() string {
	return fmt.Sprintf("%s = sum of worker RSS %s (sum of peaks %s) + kernel slab growth %s + socket buffers %s; %d sockets in use",
		mib(w.TotalBytes()), mib(w.RSSHeldBytes), mib(w.RSSPeakBytes), mib(w.SlabDeltaBytes), mib(w.SockMemBytes), w.SocketsInUse)
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// roleMsg is one JSON line from a worker to the coordinator.
type roleMsg struct {
	Ready    bool    `json:"ready,omitempty"`
	Accepted int64   `json:"accepted,omitempty"`
	Result   *Result `json:"result,omitempty"`
	LatNs    []int64 `json:"lat_ns,omitempty"`
	// CPUNs is the worker's CPU time (user + system) so far.
	CPUNs int64  `json:"cpu_ns,omitempty"`
	Err   string `json:"error,omitempty"`
	// Done is a dialer process's progress report: dials finished so far.
	Done int64 `json:"done,omitempty"`
}

// shard is a contiguous run of destination indices [First, Last].
type shard struct{ First, Last int }

func (s shard) String() string { return fmt.Sprintf("%d-%d", s.First, s.Last) }

func parseShard(in string, n int) (shard, error) {
	a, b, ok := strings.Cut(in, "-")
	lo, err1 := strconv.Atoi(a)
	hi, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || lo < 0 || hi < lo || hi >= n {
		return shard{}, &InputError{Flag: "--shard", In: in, Msg: fmt.Sprintf("want FIRST-LAST destination indices within 0-%d", n-1)}
	}
	return shard{lo, hi}, nil
}

// split cuts n destinations into k contiguous shards of near-equal size.
func split(n, k int) []shard {
	if k > n {
		k = n
	}
	out := make([]shard, 0, k)
	for i := 0; i < k; i++ {
		out = append(out, shard{i * n / k, (i+1)*n/k - 1})
	}
	return out
}

// connsFor returns how many of total connections go to destinations of s
// when they are spread round robin over n destinations.
func connsFor(total, n int, s shard) int {
	c := 0
	for j := s.First; j <= s.Last; j++ {
		c += total / n
		if j < total%n {
			c++
		}
	}
	return c
}

// RunWorkers runs cfg over several processes: listener processes that each
// accept (TCP) or echo (UDP) for a shard of the destinations, then dialer
// processes that each dial a shard of the destinations with the same
// portspace dialer settings (so they share the port set), hold the
// connections, and report. The coordinator takes the census and the memory
// figures while everything is held. One dialer runs (opts.Dialer).
func RunWorkers(ctx context.Context, cfg Config, opts WorkersOptions) (*Report, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.Fill) > 0 {
		return nil, fmt.Errorf("bench: --fill is for in-process runs, not with --workers")
	}
	if opts.Workers < 1 || len(opts.Command) == 0 {
		return nil, fmt.Errorf("bench: RunWorkers needs Workers >= 1 and a Command")
	}
	stderr := opts.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	limit := cfg.OpenFiles
	if limit <= 0 {
		limit = openFilesLimit()
	}
	rep := newReport(cfg)
	rep.OpenFilesLimit = limit
	rep.Rounds = 1 // a multi-process run has one round
	rep.Notes = append(rep.Notes, portNotes(cfg.Ports)...)
	room := limit - 256 - 2*cfg.Concurrency
	n := len(cfg.Dests)
	dshards := split(n, opts.Workers)
	for _, s := range dshards {
		if c := connsFor(cfg.Conns, n, s); c > room {
			need := (cfg.Conns + room - 1) / room
			return nil, fmt.Errorf("bench: %d workers give one dialer process %d connections; %d open files allow %d: use --workers %d or more (and at most %d, one per destination)",
				len(dshards), c, limit, room, need, n)
		}
	}
	lshards := dshards
	if cfg.Proto == tuple.UDP {
		lshards = split(n, (n+room-1)/room)
	}

	port := cfg.DestPort
	if port == 0 {
		var err error
		if port, err = freePort(cfg.Proto, cfg.Dests[0]); err != nil {
			return nil, err
		}
	}
	eps := make([]netip.AddrPort, n)
	for i, a := range cfg.Dests {
		eps[i] = netip.AddrPortFrom(a, port)
	}
	rep.DestEndpoints = eps
	slab0 := meminfo("Slab")

	var procs []*workerProc
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	start := func(role string, s shard) (*workerProc, error) {
		args := append(append([]string(nil), opts.Command...), "--role", role, "--shard", s.String(), "--dest-port", strconv.Itoa(int(port)))
		p, err := startWorker(ctx, args, stderr)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
		return p, nil
	}
	var listeners []*workerProc
	for _, s := range lshards {
		p, err := start(RoleListener, s)
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, p)
	}
	for _, p := range listeners {
		m, err := p.next()
		if err != nil {
			return nil, fmt.Errorf("bench: listener process: %w", err)
		}
		if !m.Ready {
			return nil, fmt.Errorf("bench: listener process: unexpected message %+v", m)
		}
	}

	t0 := time.Now()
	var dialers []*workerProc
	for _, s := range dshards {
		p, err := start(RoleDialer, s)
		if err != nil {
			return nil, err
		}
		dialers = append(dialers, p)
	}
	name := opts.Dialer
	if name == "" {
		name = DialerPortspace
	}
	res := Result{Dialer: name, Proto: cfg.Proto.String(), Mode: "hold", Failed: map[string]int{}, FailSamples: map[string]string{}}
	for _, k := range ErrKinds {
		res.Failed[k] = 0
	}
	var lats []time.Duration
	var cpu time.Duration
	finals := collectDialers(dialers, opts.Progress)
	for i := range dialers {
		f := <-finals[i]
		m, err := f.msg, f.err
		if err != nil {
			return nil, fmt.Errorf("bench: dialer process: %w", err)
		}
		if m.Result == nil {
			return nil, fmt.Errorf("bench: dialer process: %s", m.Err)
		}
		r := m.Result
		res.addCounts(*r) // shards have disjoint destinations: distinct counts add up
		for _, ns := range m.LatNs {
			lats = append(lats, time.Duration(ns))
		}
		cpu += time.Duration(m.CPUNs)
	}
	elapsed := time.Since(t0)
	res.Seconds = elapsed.Seconds()
	res.ConnsPerSec = Rate(res.Opened, elapsed)
	lat := Summarize(lats)
	res.P50us, res.P99us, res.MeanUs, res.MaxUs = us(lat.P50), us(lat.P99), us(lat.Mean), us(lat.Max)

	wf := &WorkersFigures{DialerProcs: len(dialers), ListenerProcs: len(listeners)}
	// A connect returns before the listener's accept does: poll the
	// listeners until they have accepted every connection (TCP) or for
	// at most 10 seconds.
	var listenCPU time.Duration
	for deadline := time.Now().Add(10 * time.Second); ; {
		var accepted int64
		listenCPU = 0
		for _, p := range listeners {
			if err := p.send("report"); err != nil {
				return nil, err
			}
			m, err := p.next()
			if err != nil {
				return nil, fmt.Errorf("bench: listener process: %w", err)
			}
			accepted += m.Accepted
			listenCPU += time.Duration(m.CPUNs)
		}
		wf.Accepted = accepted
		if cfg.Proto != tuple.TCP || accepted >= int64(res.Opened) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if res.Opened > 0 {
		res.CPUPerConnUs = us((cpu + listenCPU) / time.Duration(res.Opened))
	}
	for _, p := range procs {
		rss, hwm := procMemory(p.cmd.Process.Pid)
		wf.RSSHeldBytes += rss
		wf.RSSPeakBytes += hwm
	}
	wf.SocketsInUse, wf.SockMemBytes = sockstat(cfg.Proto)
	if s := meminfo("Slab"); s > slab0 {
		wf.SlabDeltaBytes = s - slab0
	}
	if cfg.Census == CensusOn {
		f := CensusFilter{Proto: cfg.Proto, Sources: cfg.Sources, Dests: eps}
		if name == DialerPortspace {
			f.Ports = cfg.Ports
		}
		res.Census = TakeCensus(f)
	}
	rep.Workers = wf
	rep.Results = append(rep.Results, res)
	if cfg.Proto == tuple.TCP && wf.Accepted != int64(res.Opened) {
		rep.Notes = append(rep.Notes, fmt.Sprintf("the listener processes accepted %d connections and the dialer processes opened %d (a dial that timed out after its handshake completed is accepted but not opened)", wf.Accepted, res.Opened))
	}
	rep.Notes = append(rep.Notes, fmt.Sprintf("time to open is wall time from starting %d dialer processes until the last reported its connections open", len(dialers)))
	if cfg.Hold > 0 {
		select {
		case <-time.After(cfg.Hold):
		case <-ctx.Done():
		}
	}
	for _, p := range procs {
		p.stop()
	}
	procs = nil
	rep.summarize()
	return rep, nil
}

// finalMsg is a dialer process's last message, or the error reading it.
type finalMsg struct {
	msg roleMsg
	err error
}

// collectDialers reads every dialer process's messages in a goroutine of
// its own: progress reports (Done) go to progress as the sum over the
// processes, and the final message (the result or an error) to the
// process's channel.
func collectDialers(dialers []*workerProc, progress func(int64)) []chan finalMsg {
	finals := make([]chan finalMsg, len(dialers))
	var mu sync.Mutex
	done := make([]int64, len(dialers))
	for i, p := range dialers {
		finals[i] = make(chan finalMsg, 1)
		go func() {
			for {
				m, err := p.next()
				if err == nil && m.Result == nil && m.Err == "" && m.Done > 0 {
					if progress != nil {
						mu.Lock()
						done[i] = m.Done
						var sum int64
						for _, d := range done {
							sum += d
						}
						progress(sum)
						mu.Unlock()
					}
					continue
				}
				finals[i] <- finalMsg{m, err}
				return
			}
		}()
	}
	return finals
}

// reportProgress sends a Done message on enc at every tick until stop is
// closed; the returned channel is closed when it has stopped writing.
func reportProgress(enc *json.Encoder, done *atomic.Int64, tick <-chan time.Time, stop <-chan struct{}) <-chan struct{} {
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			case <-tick:
				if n := done.Load(); n > 0 {
					_ = enc.Encode(roleMsg{Done: n})
				}
			}
		}
	}()
	return stopped
}

// freePort finds a port free on dest for proto by binding port 0.
func freePort(p tuple.Proto, dest netip.Addr) (uint16, error) {
	ap := netip.AddrPortFrom(dest, 0)
	if p == tuple.UDP {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		if err != nil {
			return 0, fmt.Errorf("bench: pick a destination port: %w", err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).AddrPort().Port(), nil
	}
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	if err != nil {
		return 0, fmt.Errorf("bench: pick a destination port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort().Port(), nil
}

// workerProc is a running worker with a line protocol on stdin/stdout.
type workerProc struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	once  sync.Once
	shard string
}

func startWorker(ctx context.Context, args []string, stderr io.Writer) (*workerProc, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stderr = stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start worker %s: %w", strings.Join(args, " "), err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 0, 1<<16), 256<<20)
	return &workerProc{cmd: cmd, in: in, out: sc, shard: strings.Join(args[len(args)-5:], " ")}, nil
}

func (p *workerProc) next() (roleMsg, error) {
	var m roleMsg
	if !p.out.Scan() {
		err := p.out.Err()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return m, fmt.Errorf("worker (%s) ended: %w", p.shard, err)
	}
	if err := json.Unmarshal(p.out.Bytes(), &m); err != nil {
		return m, fmt.Errorf("worker (%s): bad message %q: %w", p.shard, p.out.Bytes(), err)
	}
	if m.Err != "" && m.Result == nil {
		return m, fmt.Errorf("worker (%s): %s", p.shard, m.Err)
	}
	return m, nil
}

func (p *workerProc) send(line string) error {
	_, err := io.WriteString(p.in, line+"\n")
	return err
}

// stop closes the worker's stdin (its signal to close everything and
// exit) and waits for it.
func (p *workerProc) stop() {
	p.once.Do(func() {
		p.in.Close()
		_ = p.cmd.Wait()
	})
}

// RunRole runs this process as one worker of RunWorkers: role is
// RoleListener or RoleDialer, shardSpec its destination indices
// ("FIRST-LAST"), cfg the run's settings (cfg.DestPort must be set), d the
// dialer (for RoleDialer). It writes JSON lines to out and ends when in
// reaches EOF.
func RunRole(ctx context.Context, role, shardSpec string, cfg Config, d Dialer, in io.Reader, out io.Writer) error {
	cfg = cfg.withDefaults()
	s, err := parseShard(shardSpec, len(cfg.Dests))
	if err != nil {
		return err
	}
	if cfg.DestPort == 0 {
		return fmt.Errorf("bench: a %s process needs --dest-port", role)
	}
	enc := json.NewEncoder(out)
	dests := cfg.Dests[s.First : s.Last+1]
	switch role {
	case RoleListener:
		l, err := Listen(cfg.Proto, dests, cfg.DestPort)
		if err != nil {
			_ = enc.Encode(roleMsg{Err: err.Error()})
			return err
		}
		defer l.Close()
		if err := enc.Encode(roleMsg{Ready: true}); err != nil {
			return err
		}
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			if sc.Text() == "report" {
				if err := enc.Encode(roleMsg{Accepted: int64(l.Accepted()), CPUNs: int64(processCPU())}); err != nil {
					return err
				}
			}
		}
		return nil
	case RoleDialer:
		if d == nil {
			return errors.New("bench: a dialer process needs a dialer")
		}
		eps := make([]netip.AddrPort, len(dests))
		for i, a := range dests {
			eps[i] = netip.AddrPortFrom(a, cfg.DestPort)
		}
		r := &runner{cfg: cfg, eps: eps, network: network(cfg.Proto, cfg.Sources[0].Is6()), done: new(atomic.Int64)}
		n := connsFor(cfg.Conns, len(cfg.Dests), s)
		stop := make(chan struct{})
		ticker := time.NewTicker(progressEvery)
		stopped := reportProgress(enc, r.done, ticker.C, stop)
		b := r.open(ctx, d, 0, n, false)
		close(stop)
		<-stopped // no progress message after the result
		ticker.Stop()
		held := appendConns(nil, b.conns)
		defer func() {
			for _, c := range held {
				abort(c)
			}
		}()
		res := &Result{Dialer: DialerPortspace, Proto: cfg.Proto.String(), Mode: "hold",
			Attempted: n, Opened: b.opened, Failed: b.failed, FailSamples: b.samples, Held: len(held)}
		distinct := make(map[tuple.Tuple]bool, len(held))
		for _, c := range held {
			if t, ok := connTuple(cfg.Proto, c); ok {
				distinct[t] = true
			}
		}
		res.Distinct = len(distinct)
		distinct = nil
		if cfg.Proto == tuple.UDP {
			res.EchoChecked, res.EchoFailed = r.echoCheck(held)
		}
		lat := make([]int64, len(b.lats))
		for i, l := range b.lats {
			lat[i] = int64(l)
		}
		if err := enc.Encode(roleMsg{Result: res, LatNs: lat, CPUNs: int64(processCPU())}); err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, in)
		return nil
	}
	return fmt.Errorf("bench: --role %q: want %s or %s", role, RoleListener, RoleDialer)
}
