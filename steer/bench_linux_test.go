package steer

import (
	"bufio"
	"flag"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/lease"
)

var fwdTime = flag.Duration("steer.fwdtime", time.Second, "BenchmarkForward: measured time per segment (one plan) of each pair")

// BenchmarkApply1000 applies the plan of 1,000 slices held by 100 hosts to
// a fresh gateway namespace in each form (from nothing, as at start-up),
// and then once more (nothing to change); the target is under 1 s.
func BenchmarkApply1000(b *testing.B) {
	netnstest.RequireRoot(b)
	ls := manySlices(1000, 100)
	ns := netnstest.New(b)
	ns.MustRun(b, "ip", "link", "add", "name", "va", "type", "veth", "peer", "name", "vb")
	ns.MustRun(b, "ip", "link", "set", "va", "up")
	ns.MustRun(b, "ip", "link", "set", "vb", "up")
	ns.MustRun(b, "ip", "addr", "add", "10.0.0.1/16", "dev", "va")
	g, err := OpenGateway(nsPath(ns))
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	for _, f := range []Form{FormIP, FormNFT} {
		b.Run(f.String(), func(b *testing.B) {
			var again time.Duration
			for b.Loop() {
				b.StopTimer()
				if _, err := g.Clear(Options{}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				p, err := NewPlan(ls, t0, Options{}, nil)
				if err != nil {
					b.Fatal(err)
				}
				st, err := g.Apply(p, f)
				if err != nil {
					b.Fatal(err)
				}
				if !st.Changed() {
					b.Fatal("apply to a cleared gateway changed nothing")
				}
				b.StopTimer()
				t := time.Now()
				if st, err := g.Apply(p, f); err != nil || st.Changed() {
					b.Fatalf("second apply: %+v %v", st, err)
				}
				again += time.Since(t)
				b.StartTimer()
			}
			b.ReportMetric(float64(again.Nanoseconds())/float64(b.N), "ns/noop-apply")
		})
	}
}

// forwardSlack is how long after an apply's end an interval report may
// start and still be counted: under load iperf3's reports come a little late.
const forwardSlack = 20 * time.Millisecond

// forwardInterval is how often iperf3 reports the received rate in
// BenchmarkForward; a segment counts the reports that began after its
// plan was applied.
const forwardInterval = 250 * time.Millisecond

// stream is one iperf3 session from the measured host (source 192.0.2.10,
// ephemeral ports inside its slice) to the server in reverse mode, so that
// the data flows internet -> gateway -> host through the steering. It runs
// until stop and delivers the client's (the receiver's) interval reports,
// each stamped with its arrival, on reports.
type stream struct {
	cmd     *exec.Cmd
	reports chan iperfReport
	done    chan error
}

// iperfReport is one interval report, when it arrived, and the CPU time
// (ns) the two iperf3 processes had used by then.
type iperfReport struct {
	iperfInterval
	at  time.Time
	cpu int64
}

// cpuTime returns the on-CPU time in ns of processes pids (single-threaded
// iperf3 3.12) from /proc/PID/schedstat. With no IRQ time accounting in the
// kernel (CONFIG_IRQ_TIME_ACCOUNTING unset, as here), it includes the
// softirq work done in their context: the sender's packets cross the
// gateway's prerouting and routing in the sender's own softirq, unless the
// kernel defers them to ksoftirqd.
func cpuTime(pids ...int) int64 {
	var sum int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
		if err != nil {
			return -1
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return -1
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return -1
		}
		sum += n
	}
	return sum
}

// startStream starts the session; server is the iperf3 server's PID.
func startStream(b *testing.B, f *fleet, udp bool, server int) *stream {
	b.Helper()
	args := []string{"netns", "exec", f.hosts[0].Name, "iperf3", "-c", "203.0.113.2", "-p", "5201", "-B", shared.String(), "-R",
		"-t", "86400", "-i", fmt.Sprint(forwardInterval.Seconds()), "--forceflush"}
	if udp {
		args = append(args, "-u", "-b", "0", "-l", "256")
	}
	for try := 1; ; try++ {
		st := &stream{cmd: exec.Command("ip", args...), reports: make(chan iperfReport, 4096), done: make(chan error, 1)}
		out, err := st.cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		var stderr strings.Builder
		st.cmd.Stderr = &stderr
		if err := st.cmd.Start(); err != nil {
			b.Fatal(err)
		}
		var text strings.Builder
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if iv, ok := parseIperfInterval(sc.Text()); ok {
					st.reports <- iperfReport{iv, time.Now(), cpuTime(server, st.cmd.Process.Pid)}
				} else if text.Len() < 4096 {
					text.WriteString(sc.Text() + "\n")
				}
			}
			close(st.reports)
			st.done <- st.cmd.Wait()
		}()
		// The server serves one test at a time: the previous subtest's may
		// still be winding down.
		select {
		case _, ok := <-st.reports:
			if ok {
				return st
			}
		case <-time.After(10 * time.Second):
			st.stop()
			b.Fatalf("iperf3: no interval report within 10 s:\n%s%s", text.String(), stderr.String())
		}
		err = <-st.done
		if try == 5 || !strings.Contains(text.String()+stderr.String(), "busy") {
			b.Fatalf("iperf3: %v\n%s%s", err, text.String(), stderr.String())
		}
		time.Sleep(time.Second)
	}
}

// stop ends the session (SIGINT: iperf3 tells the server it is done).
func (st *stream) stop() {
	st.cmd.Process.Signal(os.Interrupt)
	for range st.reports {
	}
	<-st.done
}

// measure applies p in form and returns the mean received rate (bit/s)
// over the next d of interval reports that began after the apply ended,
// and the iperf3 processes' CPU time per received bit over those reports
// (ns/bit; NaN when /proc cannot tell).
func (st *stream) measure(b *testing.B, g *Gateway, p Plan, form Form, d time.Duration) (rate, cost float64) {
	b.Helper()
	if _, err := g.Apply(p, form); err != nil {
		b.Fatal(err)
	}
	applied := time.Now()
	var bits, secs float64
	var cpu0, cpu1 int64 = -1, -1
	for secs < d.Seconds() {
		var r iperfReport
		var ok bool
		select {
		case r, ok = <-st.reports:
		case <-time.After(10 * time.Second):
			b.Fatal("iperf3: no interval report for 10 s")
		}
		if !ok {
			b.Fatal("iperf3 ended")
		}
		if r.at.Add(-r.Duration).Before(applied.Add(forwardSlack)) {
			cpu0 = r.cpu // began before (or while) the plan was applied
			continue
		}
		bits += r.BitsPerSecond * r.Duration.Seconds()
		secs += r.Duration.Seconds()
		cpu1 = r.cpu
	}
	cost = math.NaN()
	if cpu0 >= 0 && cpu1 >= cpu0 && bits > 0 {
		cost = float64(cpu1-cpu0) / bits
	}
	return bits / secs, cost
}

// BenchmarkForward measures the received rate through the gateway at a
// host whose slice is steered among 1 slice and among 1,000 (101 hosts;
// the measured host's slice and table are the last, the worst case of both
// forms' rule walks), for each form, TCP and 256-byte UDP datagrams.
//
// One iperf3 session runs through each subtest while the gateway's plan
// switches between the two: every iteration is a pair of segments, one
// with each plan (1 then 1,000, then 1,000 then 1, and so on, so that a
// steady drift in the machine's load cancels), each counting
// -steer.fwdtime of iperf3's quarter-second reports that began after its
// plan was applied. It reports the mean rates and the median of the pairs'
// ratios 1000/1 with its quartiles (the nft target: at least 0.9): adjacent
// segments see nearly the same load from the rest of the machine, and the
// median drops the pairs that a burst of it hit. It also reports
// cpuratio, the median of the pairs' ratios of the iperf3 processes' CPU
// time per received bit (1 slice over 1,000), which does not depend on the
// share of the CPU that the rest of the machine leaves them
// (docs/steer.md).
func BenchmarkForward(b *testing.B) {
	netnstest.RequireRoot(b)
	netnstest.RequireCommand(b, "iperf3")
	if *fwdTime <= 0 {
		b.Fatalf("-steer.fwdtime %v: want a positive duration", *fwdTime)
	}
	f := newFleet(b, 1)
	f.hosts[0].MustRun(b, "sysctl", "-qw", "net.ipv4.ip_local_port_range=64960 65023")
	// The other 100 hosts (10.0.0.3-102) exist only as next hops on-link.
	f.gw.MustRun(b, "ip", "addr", "add", "10.0.0.1/24", "dev", "h1")
	if err := HoldShared(nsPath(f.hosts[0]), Options{}, []netip.Addr{shared}); err != nil {
		b.Fatal(err)
	}
	srv := exec.Command("ip", "netns", "exec", f.inet.Name, "iperf3", "-s", "-B", "203.0.113.2", "-p", "5201")
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	time.Sleep(200 * time.Millisecond) // the server's listen
	g, err := OpenGateway(nsPath(f.gw))
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	all := manySlices(1000, 100)
	plan := func(ls []lease.Lease) Plan {
		p, err := NewPlan(ls, t0, Options{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	one, many := plan(all[len(all)-1:]), plan(all)
	for _, proto := range []string{"tcp", "udp"} {
		for _, form := range []Form{FormNFT, FormIP} {
			b.Run(proto+"/"+form.String(), func(b *testing.B) {
				if _, err := g.Apply(one, form); err != nil {
					b.Fatal(err)
				}
				st := startStream(b, f, proto == "udp", srv.Process.Pid)
				defer st.stop()
				st.measure(b, g, one, form, 500*time.Millisecond) // warm-up: slow start, ARP
				var r1, rN float64
				var ratios, cpuRatios []float64
				for i := 0; b.Loop(); i++ {
					var a, n, ca, cn float64
					if i%2 == 0 {
						a, ca = st.measure(b, g, one, form, *fwdTime)
						n, cn = st.measure(b, g, many, form, *fwdTime)
					} else {
						n, cn = st.measure(b, g, many, form, *fwdTime)
						a, ca = st.measure(b, g, one, form, *fwdTime)
					}
					r1, rN = r1+a, rN+n
					ratios = append(ratios, n/a)
					if c := ca / cn; !math.IsNaN(c) && !math.IsInf(c, 0) {
						cpuRatios = append(cpuRatios, c)
					}
				}
				q1, med, q3 := quartiles(ratios)
				b.ReportMetric(r1/float64(len(ratios))/1e6, "Mbit/s-1slice")
				b.ReportMetric(rN/float64(len(ratios))/1e6, "Mbit/s-1000slices")
				b.ReportMetric(med, "ratio")
				b.ReportMetric(q1, "ratio-q1")
				b.ReportMetric(q3, "ratio-q3")
				q1, med, q3 = quartiles(cpuRatios)
				b.ReportMetric(med, "cpuratio")
				b.ReportMetric(q1, "cpuratio-q1")
				b.ReportMetric(q3, "cpuratio-q3")
			})
		}
	}
}
