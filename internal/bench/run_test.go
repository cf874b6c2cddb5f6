package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/portspace/portspace/tuple"
)

// envWorker makes the test binary act as a RunWorkers worker (TestMain).
const envWorker = "PORTSPACE_BENCH_TEST_WORKER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(envWorker); spec != "" {
		os.Exit(workerMain(spec, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// workerMain runs a worker for TestRunWorkers: spec is the run's config as
// JSON, args the --role/--shard/--dest-port flags RunWorkers appends.
func workerMain(spec string, args []string) int {
	var cfg Config
	var js struct {
		Proto string
		Conns int
		Dests int
	}
	if err := json.Unmarshal([]byte(spec), &js); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg.Proto, _ = tuple.ParseProto(js.Proto)
	cfg.Conns = js.Conns
	cfg.Dests, _ = CountDests(js.Dests)
	var role, shard string
	for i := 0; i+1 < len(args); i += 2 {
		switch args[i] {
		case "--role":
			role = args[i+1]
		case "--shard":
			shard = args[i+1]
		case "--dest-port":
			p, _ := strconv.Atoi(args[i+1])
			cfg.DestPort = uint16(p)
		}
	}
	d := NewBaseline(cfg.Proto, []netip.Addr{netip.MustParseAddr(DefaultSource)})
	if err := RunRole(context.Background(), role, shard, cfg, d, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// small is a quick loopback run: 4 destinations, 200 connections.
func small(p tuple.Proto) Config {
	dests, _ := CountDests(4)
	return Config{Proto: p, Ports: tuple.MustParsePortSet("40000-40099"), Dests: dests, Conns: 200}
}

func checkHeld(t *testing.T, r Result, want int) {
	t.Helper()
	if r.Opened != want || r.FailedTotal() != 0 {
		t.Errorf("%s: opened %d of %d, failures %v %v", r.Dialer, r.Opened, want, r.Failed, r.FailSamples)
	}
	if r.Held != want || r.Distinct != r.Held {
		t.Errorf("%s: held %d, distinct 4-tuples %d, want %d and %d", r.Dialer, r.Held, r.Distinct, want, want)
	}
	if !r.Census.Taken || r.Census.Seen != want || r.Census.Duplicates != 0 || r.Census.Distinct != want {
		t.Errorf("%s: census %+v, want %d sockets, no duplicate", r.Dialer, r.Census, want)
	}
	if r.P50us <= 0 || r.P99us < r.P50us || r.ConnsPerSec <= 0 {
		t.Errorf("%s: p50 %vµs p99 %vµs rate %v: want 0 < p50 <= p99, rate > 0", r.Dialer, r.P50us, r.P99us, r.ConnsPerSec)
	}
}

// TestRunBaseline runs the harness end to end on loopback with the
// net.Dialer baseline, for TCP and UDP.
func TestRunBaseline(t *testing.T) {
	for _, p := range []tuple.Proto{tuple.TCP, tuple.UDP} {
		t.Run(p.String(), func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent()) // Run stops every goroutine it starts
			cfg := small(p)
			rep, err := Run(context.Background(), cfg, []NamedDialer{{DialerBaseline, NewBaseline(p, nil)}})
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Results) != 1 {
				t.Fatalf("%d results, want 1", len(rep.Results))
			}
			r := rep.Results[0]
			checkHeld(t, r, cfg.Conns)
			if r.CPUPerConnUs <= 0 {
				t.Errorf("CPU time per connection %vµs, want > 0", r.CPUPerConnUs)
			}
			if p == tuple.UDP && (r.EchoChecked != cfg.Conns || r.EchoFailed != 0) {
				t.Errorf("UDP echo: %d checked, %d failed; want %d, 0", r.EchoChecked, r.EchoFailed, cfg.Conns)
			}
		})
	}
}

// TestRunCapsToOpenFiles checks that an in-process run holds no more
// connections than the open-files limit allows, and says so.
func TestRunCapsToOpenFiles(t *testing.T) {
	cfg := small(tuple.TCP)
	cfg.Conns, cfg.OpenFiles = 1000, 300
	rep, err := Run(context.Background(), cfg, []NamedDialer{{DialerBaseline, NewBaseline(tuple.TCP, nil)}})
	if err != nil {
		t.Fatal(err)
	}
	want := (300 - reserveFiles(cfg.withDefaults())) / 2
	if rep.Conns != want || rep.Results[0].Attempted != want {
		t.Errorf("conns %d, attempted %d; want both capped to %d", rep.Conns, rep.Results[0].Attempted, want)
	}
	if len(rep.Notes) == 0 || !strings.Contains(rep.Notes[0], "capped --conns from 1000 to "+strconv.Itoa(want)) {
		t.Errorf("notes %q do not say the run was capped", rep.Notes)
	}
	cfg.Fill = []float64{90} // 90% of 400 = 360 held: more than fits
	if _, err := Run(context.Background(), cfg, []NamedDialer{{DialerBaseline, NewBaseline(tuple.TCP, nil)}}); err == nil || !strings.Contains(err.Error(), "--fill 90%") {
		t.Errorf("a fill beyond the open-files limit gave %v, want an error naming --fill", err)
	}
}

// TestRunFill checks the fill mode: the pre-fill is held (and counted by
// the census) while every measured connection is closed once open.
func TestRunFill(t *testing.T) {
	cfg := small(tuple.TCP)
	cfg.Ports = tuple.MustParsePortSet("40000-40009") // capacity 40
	cfg.Fill, cfg.Conns = []float64{0, 50}, 30
	rep, err := Run(context.Background(), cfg, []NamedDialer{{DialerBaseline, NewBaseline(tuple.TCP, nil)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 2 {
		t.Fatalf("%d results, want 2", len(rep.Results))
	}
	for i, pre := range []int{0, 20} {
		r := rep.Results[i]
		if r.Mode != "fill" || r.Prefilled != pre || r.Held != pre || r.Census.Seen != pre || r.Opened != 30 {
			t.Errorf("fill %v: mode %s prefilled %d held %d census %d opened %d; want fill, %d, %d, %d, 30",
				r.FillPercent, r.Mode, r.Prefilled, r.Held, r.Census.Seen, r.Opened, pre, pre, pre)
		}
	}
	found := false
	for _, c := range rep.Comparisons {
		found = found || strings.HasPrefix(c.What, "net.Dialer p50 at 50% fill / at 0% fill")
	}
	if !found {
		t.Errorf("comparisons %+v lack the p50 fill ratio", rep.Comparisons)
	}
}

// TestCensusFindsDuplicateUDPTuple builds two UDP sockets on one 4-tuple
// (SO_REUSEADDR on both, the overshadowing case) and checks that the census
// reports the duplicate.
func TestCensusFindsDuplicateUDPTuple(t *testing.T) {
	src := netip.MustParseAddrPort("127.0.0.1:0")
	dst := netip.MustParseAddrPort("127.1.0.9:9")
	reuse := func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
		if err != nil {
			return err
		}
		return serr
	}
	d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(src), Control: reuse}
	c1, err := d.Dial("udp4", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	d.LocalAddr = c1.LocalAddr()
	c2, err := d.Dial("udp4", dst.String())
	if err != nil {
		t.Skipf("this kernel refuses a second UDP socket on one 4-tuple: %v", err)
	}
	defer c2.Close()
	f := CensusFilter{Proto: tuple.UDP, Sources: []netip.Addr{src.Addr()}, Dests: []netip.AddrPort{dst},
		Ports: tuple.PortSetOf(tuple.SinglePort(1))}
	c := TakeCensus(f)
	if !c.Taken || c.Seen != 2 || c.Distinct != 1 || c.Duplicates != 1 || c.OutsidePorts != 2 {
		t.Errorf("census %+v, want 2 sockets on 1 distinct 4-tuple, 1 duplicate, 2 outside the port set", c)
	}
}

// TestRunWorkers runs a small multi-process run (the test binary is the
// worker) and checks that the figures add up across processes.
func TestRunWorkers(t *testing.T) {
	t.Setenv(envWorker, `{"Proto":"tcp","Conns":120,"Dests":6}`)
	dests, _ := CountDests(6)
	cfg := Config{Proto: tuple.TCP, Dests: dests, Conns: 120}
	rep, err := RunWorkers(context.Background(), cfg, WorkersOptions{Workers: 2, Command: []string{os.Args[0]}, Dialer: DialerBaseline})
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Results[0]
	checkHeld(t, r, 120)
	w := rep.Workers
	if w == nil || w.DialerProcs != 2 || w.ListenerProcs != 2 || w.Accepted != 120 {
		t.Fatalf("workers %+v, want 2 dialer and 2 listener processes and 120 accepted", w)
	}
	if r.CPUPerConnUs <= 0 {
		t.Errorf("CPU time per connection %vµs, want > 0 (summed over the workers)", r.CPUPerConnUs)
	}
	if w.RSSHeldBytes <= 0 || w.RSSPeakBytes < w.RSSHeldBytes {
		t.Errorf("RSS held %d, peak %d: want 0 < held <= peak", w.RSSHeldBytes, w.RSSPeakBytes)
	}
	var table strings.Builder
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if r.Seconds <= 0 || !strings.Contains(table.String(), fmt.Sprintf("time to open: %.1f s; peak memory: ", r.Seconds)) {
		t.Errorf("the table does not report the time to open (%v s) next to the memory:\n%s", r.Seconds, table.String())
	}
}

func TestSplitAndConnsFor(t *testing.T) {
	s := split(1000, 53)
	if len(s) != 53 || s[0].First != 0 || s[52].Last != 999 {
		t.Fatalf("split(1000, 53) = %v", s)
	}
	total := 0
	for i, sh := range s {
		if i > 0 && sh.First != s[i-1].Last+1 {
			t.Fatalf("shards %v and %v are not contiguous", s[i-1], sh)
		}
		total += connsFor(1_000_000, 1000, sh)
	}
	if total != 1_000_000 {
		t.Errorf("shards hold %d connections, want 1000000", total)
	}
	if got := connsFor(201, 20, shard{0, 0}); got != 11 {
		t.Errorf("connsFor(201, 20, first) = %d, want 11", got)
	}
	if _, err := parseShard("5-3", 10); err == nil {
		t.Errorf("parseShard(5-3) succeeded")
	}
}

// TestWorkerProgress checks the progress path of a multi-process run
// without processes or sleeping: a dialer process reports its finished
// dials at each tick (and nothing once stopped), and the coordinator sums
// the reports of all processes and hands on each one's final message.
func TestWorkerProgress(t *testing.T) {
	msgs := make(chan string, 10)
	enc := json.NewEncoder(chanWriter(msgs))
	var done atomic.Int64
	tick := make(chan time.Time)
	stop := make(chan struct{})
	stopped := reportProgress(enc, &done, tick, stop)
	tick <- time.Time{} // nothing done yet: no message
	tick <- time.Time{}
	close(stop)
	<-stopped
	if len(msgs) != 0 {
		t.Fatalf("a progress message with nothing done: %q", <-msgs)
	}
	stop = make(chan struct{})
	stopped = reportProgress(enc, &done, tick, stop)
	done.Store(7)
	tick <- time.Time{}
	if m := <-msgs; m != "{\"done\":7}\n" {
		t.Fatalf("first progress message %q, want done 7", m)
	}
	done.Store(9)
	tick <- time.Time{}
	if m := <-msgs; m != "{\"done\":9}\n" {
		t.Fatalf("second progress message %q, want done 9", m)
	}
	close(stop)
	<-stopped
	if len(msgs) != 0 {
		t.Fatalf("%d messages besides done 7 and 9", len(msgs))
	}

	proc := func(lines string) *workerProc {
		return &workerProc{out: bufio.NewScanner(strings.NewReader(lines)), shard: "test"}
	}
	a := proc(`{"done":5}` + "\n" + `{"done":10}` + "\n" + `{"result":{"dialer":"portspace","opened":10}}` + "\n")
	b := proc(`{"done":3}` + "\n" + `{"result":{"dialer":"portspace","opened":4}}` + "\n")
	var mu sync.Mutex
	var sums []int64
	finals := collectDialers([]*workerProc{a, b}, func(n int64) { mu.Lock(); sums = append(sums, n); mu.Unlock() })
	fa, fb := <-finals[0], <-finals[1]
	if fa.err != nil || fa.msg.Result == nil || fa.msg.Result.Opened != 10 || fb.err != nil || fb.msg.Result == nil || fb.msg.Result.Opened != 4 {
		t.Fatalf("finals %+v %+v", fa, fb)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sums) != 3 || slices.Max(sums) != 13 {
		t.Errorf("progress sums %v, want three reports reaching 10+3 = 13", sums)
	}
	c := proc(`{"done":2}` + "\n") // ends without a result
	if f := <-collectDialers([]*workerProc{c}, nil)[0]; f.err == nil {
		t.Errorf("a process that ended without a result: %+v, want an error", f)
	}
}

// chanWriter sends each Write to a channel, so that a test reads the
// messages of a goroutine one by one.
type chanWriter chan string

func (w chanWriter) Write(b []byte) (int, error) { w <- string(b); return len(b), nil }

// TestRunProgress checks that an in-process run reports every dial it
// makes against the total it announced: warm-up, pre-fill and measured
// dials of both fill levels, two rounds and two dialers.
func TestRunProgress(t *testing.T) {
	cfg := small(tuple.TCP)
	cfg.Conns, cfg.Rounds, cfg.Warmup, cfg.Fill = 50, 2, 10, []float64{0, 50}
	var mu sync.Mutex
	var last, total, calls int64
	cfg.Progress = func(done, tot int64) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		last, total = max(last, done), tot
	}
	d := NewBaseline(cfg.Proto, []netip.Addr{netip.MustParseAddr(DefaultSource)})
	if _, err := Run(context.Background(), cfg, []NamedDialer{{Name: DialerBaseline, Dialer: d}, {Name: "second", Dialer: d}}); err != nil {
		t.Fatal(err)
	}
	// capacity 100 ports x 4 destinations = 400; 50% fill pre-fills 200;
	// each level has two measured rounds and the warm-up's unmeasured one.
	want := int64(2*10 + 3*2*(0+50) + 3*2*(200+50))
	if total != want || last != want || calls != want {
		t.Errorf("progress: total %d, last %d, calls %d; want %d each", total, last, calls, want)
	}
}
