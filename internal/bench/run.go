package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portspace/portspace/tuple"
)

// Result holds one dialer's figures for one phase of a run.
type Result struct {
	Dialer string `json:"dialer"`
	Proto  string `json:"proto"`
	// Mode is "hold" (the measured connections are held) or "fill" (a
	// pre-fill is held and each measured connection is closed once open).
	Mode        string  `json:"mode"`
	FillPercent float64 `json:"fill_percent"`
	Prefilled   int     `json:"prefilled"`
	// PrefillFailed counts pre-fill dials that failed (not measured).
	PrefillFailed int `json:"prefill_failed"`
	// Attempted and Opened count the measured dials.
	Attempted int `json:"attempted"`
	Opened    int `json:"opened"`
	// Failed counts the failed measured dials by kind (see ErrKinds);
	// FailSamples keeps the first error message of each kind.
	Failed      map[string]int    `json:"failed"`
	FailSamples map[string]string `json:"fail_samples,omitempty"`
	// Held is the number of connections held when the census was taken,
	// and Distinct the number of distinct 4-tuples among them, from the
	// connections' own addresses.
	Held     int    `json:"held"`
	Distinct int    `json:"distinct"`
	Census   Census `json:"census"`
	// EchoChecked and EchoFailed count UDP connections that sent a datagram
	// and whether its echo failed to come back to the same socket.
	EchoChecked int     `json:"echo_checked,omitempty"`
	EchoFailed  int     `json:"echo_failed,omitempty"`
	Seconds     float64 `json:"seconds"`
	ConnsPerSec float64 `json:"conns_per_sec"`
	// CPUPerConnUs is the process CPU time (user + system, the listeners'
	// accepts included) per opened connection: a cost that other load on
	// a shared machine disturbs much less than the rate.
	CPUPerConnUs float64 `json:"cpu_per_conn_us"`
	// RoundConnsPerSec is the rate of each round, in round order.
	RoundConnsPerSec []float64 `json:"round_conns_per_sec,omitempty"`
	P50us            float64   `json:"p50_us"`
	P99us            float64   `json:"p99_us"`
	MeanUs           float64   `json:"mean_us"`
	MaxUs            float64   `json:"max_us"`
}

// FailedTotal returns the number of failed measured dials.
func (r Result) FailedTotal() int {
	n := 0
	for _, v := range r.Failed {
		n += v
	}
	return n
}

// network returns the Go network name for proto and the address family.
func network(p tuple.Proto, v6 bool) string {
	n := "tcp"
	if p == tuple.UDP {
		n = "udp"
	}
	if v6 {
		return n + "6"
	}
	return n + "4"
}

// openFilesPerConn is the number of file descriptors one connection holds
// in an in-process run: the dialed socket, plus the accepted one for TCP.
func openFilesPerConn(p tuple.Proto) int {
	if p == tuple.TCP {
		return 2
	}
	return 1
}

// reserveFiles leaves room for the runtime, the listeners and the dials in
// flight.
func reserveFiles(c Config) int {
	return 64 + len(c.Dests) + 2*c.Concurrency*openFilesPerConn(c.Proto)
}

// Run starts the listeners, runs every dialer (in order) for every fill
// level (or once, holding the connections, when cfg.Fill is empty), and
// returns the report. Between phases every connection is closed with a
// reset so that no TIME_WAIT entry carries over.
func Run(ctx context.Context, cfg Config, dialers []NamedDialer) (*Report, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(dialers) == 0 {
		return nil, fmt.Errorf("bench: no dialer to run")
	}
	rep := newReport(cfg)
	limit := cfg.OpenFiles
	if limit <= 0 {
		limit = openFilesLimit()
	}
	rep.OpenFilesLimit = limit
	maxHeld := (limit - reserveFiles(cfg)) / openFilesPerConn(cfg.Proto)
	if maxHeld < 1 {
		return nil, fmt.Errorf("bench: an open-files limit of %d leaves no room for connections", limit)
	}
	capacity := cfg.Capacity()
	if len(cfg.Fill) == 0 && cfg.Conns > maxHeld {
		rep.Notes = append(rep.Notes, fmt.Sprintf(
			"capped --conns from %d to %d: one process may hold %d open files and each %s connection held in-process takes %d (use --workers for more)",
			cfg.Conns, maxHeld, limit, cfg.Proto, openFilesPerConn(cfg.Proto)))
		cfg.Conns = maxHeld
	}
	for _, f := range cfg.Fill {
		if n := prefillCount(f, capacity); n > maxHeld {
			return nil, fmt.Errorf("bench: --fill %v%% of a capacity of %d is %d held connections, more than the %d that %d open files allow in one process; use fewer --ports or --dests",
				f, capacity, n, maxHeld, limit)
		}
	}
	rep.Conns = cfg.Conns
	rep.Notes = append(rep.Notes, portNotes(cfg.Ports)...)

	l, err := Listen(cfg.Proto, cfg.Dests, cfg.DestPort)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	rep.DestEndpoints = l.Endpoints()

	r := &runner{cfg: cfg, l: l, eps: l.Endpoints(), network: network(cfg.Proto, cfg.Sources[0].Is6())}
	levels := cfg.Fill
	if len(levels) == 0 {
		levels = []float64{-1}
	}
	if cfg.Progress != nil {
		r.done, r.progress, r.total = new(atomic.Int64), cfg.Progress, totalDials(cfg, len(dialers), levels, capacity)
	}
	if n := cfg.warmup(); n > 0 {
		for _, d := range dialers {
			r.open(ctx, d.Dialer, 0, n, true)
		}
	}
	for _, f := range levels {
		if cfg.warmup() > 0 {
			// One unmeasured round: the first phase at a level is slower
			// (the heap and the kernel's caches grow), and it would
			// always fall to the first dialer.
			for _, d := range dialers {
				if err := ctx.Err(); err != nil {
					return rep, err
				}
				r.phase(ctx, d, f, capacity)
			}
		}
		acc := make([]*accum, len(dialers))
		for round := 0; round < cfg.Rounds; round++ {
			for k := range dialers {
				i := k
				if round%2 == 1 { // alternate the order: A B, B A, ...
					i = len(dialers) - 1 - k
				}
				if err := ctx.Err(); err != nil {
					return rep, err
				}
				res, b := r.phase(ctx, dialers[i], f, capacity)
				if acc[i] == nil {
					acc[i] = &accum{res: res}
				} else {
					acc[i].add(res)
				}
				acc[i].lats = append(acc[i].lats, b.lats...)
				acc[i].elapsed += b.elapsed
				acc[i].cpu += b.cpu
				acc[i].rates = append(acc[i].rates, Rate(b.opened, b.elapsed))
			}
		}
		for _, a := range acc {
			rep.Results = append(rep.Results, a.result())
		}
	}
	rep.compare()
	return rep, nil
}

// totalDials is the number of dials an in-process Run makes: each dialer's
// warm-up, then for every fill level, round (and the unmeasured round of
// a warm-up) and dialer the pre-fill and the measured connections.
func totalDials(cfg Config, dialers int, levels []float64, capacity int) int64 {
	n := int64(cfg.warmup()) * int64(dialers)
	rounds := int64(cfg.Rounds)
	if cfg.warmup() > 0 {
		rounds++
	}
	for _, f := range levels {
		pre := 0
		if f >= 0 {
			pre = prefillCount(f, capacity)
		}
		n += rounds * int64(dialers) * int64(pre+cfg.Conns)
	}
	return n
}

func prefillCount(fill float64, capacity int) int {
	return int(math.Round(fill / 100 * float64(capacity)))
}

type runner struct {
	cfg     Config
	l       *Listeners
	eps     []netip.AddrPort
	network string
	// done, when set, counts the dials finished (opened or failed), for
	// progress reports.
	done *atomic.Int64
	// progress, when set, is called after each dial with done's count and
	// total.
	progress func(done, total int64)
	total    int64
}

// batch is the outcome of opening a number of connections.
type batch struct {
	conns   []net.Conn // held connections (nil where a dial failed or churned)
	lats    []time.Duration
	opened  int
	failed  map[string]int
	samples map[string]string
	elapsed time.Duration
	cpu     time.Duration // process CPU time (user + system) spent
}

// open dials n connections, the i-th to endpoint (first+i) mod len(eps),
// with cfg.Concurrency workers. With churn, each connection is closed (and
// its accepted side released) as soon as it is open.
func (r *runner) open(ctx context.Context, d Dialer, first, n int, churn bool) batch {
	b := batch{conns: make([]net.Conn, n), lats: make([]time.Duration, n), failed: map[string]int{}, samples: map[string]string{}}
	for _, k := range ErrKinds {
		b.failed[k] = 0
	}
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	ok := make([]bool, n)
	cpu0 := processCPU()
	start := time.Now()
	for w := 0; w < r.cfg.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				ep := r.eps[(first+i)%len(r.eps)]
				dctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
				t0 := time.Now()
				c, err := d.DialContext(dctx, r.network, ep.String())
				lat := time.Since(t0)
				cancel()
				if r.done != nil {
					n := r.done.Add(1)
					if r.progress != nil {
						r.progress(n, r.total)
					}
				}
				if err != nil {
					kind := Classify(err, r.cfg.Exhausted)
					mu.Lock()
					b.failed[kind]++
					if _, seen := b.samples[kind]; !seen {
						b.samples[kind] = err.Error()
					}
					mu.Unlock()
					continue
				}
				b.lats[i], ok[i] = lat, true
				if churn {
					t, _ := connTuple(r.cfg.Proto, c)
					abort(c)
					r.l.Release(t)
					continue
				}
				b.conns[i] = c
			}
		}()
	}
	wg.Wait()
	b.elapsed = time.Since(start)
	b.cpu = processCPU() - cpu0
	lats := b.lats[:0]
	for i, l := range b.lats {
		if ok[i] {
			lats = append(lats, l)
		}
	}
	b.lats = lats
	b.opened = len(lats)
	return b
}

// accum adds up one dialer's phases over the rounds.
type accum struct {
	res     Result
	lats    []time.Duration
	elapsed time.Duration
	cpu     time.Duration
	rates   []float64
}

func (a *accum) add(r Result) {
	x := &a.res
	x.Prefilled += r.Prefilled
	x.PrefillFailed += r.PrefillFailed
	x.addCounts(r)
	x.Census.Taken = x.Census.Taken && r.Census.Taken
	x.Census.Seen += r.Census.Seen
	x.Census.Distinct += r.Census.Distinct
	x.Census.Duplicates += r.Census.Duplicates
	x.Census.OutsidePorts += r.Census.OutsidePorts
	if x.Census.Err == "" {
		x.Census.Err = r.Census.Err
	}
}

// addCounts adds r's dial, hold and echo counts to x, and keeps x's first
// failure sample of each kind. x.Failed and x.FailSamples must not be nil.
func (x *Result) addCounts(r Result) {
	x.Attempted += r.Attempted
	x.Opened += r.Opened
	for k, v := range r.Failed {
		x.Failed[k] += v
	}
	for k, v := range r.FailSamples {
		if _, ok := x.FailSamples[k]; !ok {
			x.FailSamples[k] = v
		}
	}
	x.Held += r.Held
	x.Distinct += r.Distinct
	x.EchoChecked += r.EchoChecked
	x.EchoFailed += r.EchoFailed
}

// result returns the summed Result with rate and latencies over all rounds.
func (a *accum) result() Result {
	x := a.res
	x.Seconds = a.elapsed.Seconds()
	x.ConnsPerSec = Rate(x.Opened, a.elapsed)
	if x.Opened > 0 {
		x.CPUPerConnUs = us(a.cpu / time.Duration(x.Opened))
	}
	if len(a.rates) > 1 {
		x.RoundConnsPerSec = a.rates
	}
	lat := Summarize(a.lats)
	x.P50us, x.P99us = us(lat.P50), us(lat.P99)
	x.MeanUs, x.MaxUs = us(lat.Mean), us(lat.Max)
	return x
}

// phase runs one dialer at one fill level (fill < 0: hold mode).
func (r *runner) phase(ctx context.Context, nd NamedDialer, fill float64, capacity int) (Result, batch) {
	res := Result{Dialer: nd.Name, Proto: r.cfg.Proto.String(), Mode: "hold"}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			abort(c)
		}
		r.l.CloseAccepted()
	}()
	pre := 0
	if fill >= 0 {
		res.Mode, res.FillPercent = "fill", fill
		pre = prefillCount(fill, capacity)
		pb := r.open(ctx, nd.Dialer, 0, pre, false)
		held = appendConns(held, pb.conns)
		res.Prefilled = pb.opened
		res.PrefillFailed = pre - pb.opened
	}
	b := r.open(ctx, nd.Dialer, pre, r.cfg.Conns, fill >= 0)
	held = appendConns(held, b.conns)
	res.Attempted, res.Opened = r.cfg.Conns, b.opened
	res.Failed, res.FailSamples = b.failed, b.samples

	res.Held = len(held)
	res.Distinct = distinctTuples(r.cfg.Proto, held)
	if r.cfg.Census == CensusOn {
		f := CensusFilter{Proto: r.cfg.Proto, Sources: r.cfg.Sources, Dests: r.eps}
		if nd.Name == DialerPortspace {
			f.Ports = r.cfg.Ports
		}
		res.Census = TakeCensus(f)
	}
	if r.cfg.Proto == tuple.UDP {
		res.EchoChecked, res.EchoFailed = r.echoCheck(held)
	}
	if r.cfg.Hold > 0 {
		select {
		case <-time.After(r.cfg.Hold):
		case <-ctx.Done():
		}
	}
	return res, b
}

func appendConns(dst, src []net.Conn) []net.Conn {
	for _, c := range src {
		if c != nil {
			dst = append(dst, c)
		}
	}
	return dst
}

// echoCheck sends one datagram on every held UDP connection and counts the
// connections whose echo does not come back to them within a second: a
// 4-tuple shared by two sockets delivers the echo to only one of them.
func (r *runner) echoCheck(held []net.Conn) (checked, failed int) {
	var next atomic.Int64
	var bad atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < r.cfg.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out, in [16]byte
			for {
				i := int(next.Add(1) - 1)
				if i >= len(held) {
					return
				}
				c := held[i]
				binary.BigEndian.PutUint64(out[:], uint64(i))
				_ = c.SetDeadline(time.Now().Add(time.Second))
				good := false
				if _, err := c.Write(out[:8]); err == nil {
					n, err := c.Read(in[:])
					good = err == nil && n == 8 && bytes.Equal(in[:8], out[:8])
				}
				_ = c.SetDeadline(time.Time{})
				if !good {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return len(held), int(bad.Load())
}

// connTuple returns the client-side tuple of c.
// distinctTuples counts the distinct 4-tuples among conns.
func distinctTuples(p tuple.Proto, conns []net.Conn) int {
	distinct := make(map[tuple.Tuple]bool, len(conns))
	for _, c := range conns {
		if t, ok := connTuple(p, c); ok {
			distinct[t] = true
		}
	}
	return len(distinct)
}

func connTuple(p tuple.Proto, c net.Conn) (tuple.Tuple, bool) {
	l, ok1 := addrPort(c.LocalAddr())
	rm, ok2 := addrPort(c.RemoteAddr())
	return tuple.From(p, l, rm), ok1 && ok2
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
	case nil:
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), err == nil
}

func us(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Microsecond)*10) / 10 }
