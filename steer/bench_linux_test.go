package steer

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/lease"
)

var fwdTime = flag.Duration("steer.fwdtime", time.Second, "iperf3 run time per BenchmarkForward measurement")

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

// iperf runs iperf3 from host h (source 192.0.2.10, ephemeral ports inside
// its slice) to the server in reverse mode, so that the data flows
// internet -> gateway -> host through the steering, and returns the
// received rate in bit/s.
func iperf(b *testing.B, f *fleet, udp bool) float64 {
	b.Helper()
	args := []string{"iperf3", "-c", "203.0.113.2", "-p", "5201", "-B", shared.String(), "-R", "-J",
		"-t", fmt.Sprintf("%.1f", fwdTime.Seconds())}
	if udp {
		args = append(args, "-u", "-b", "0", "-l", "256")
	}
	out, err := f.hosts[0].Run(args[0], args[1:]...)
	if err != nil {
		b.Fatal(err)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			Sum struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				LostPercent   float64 `json:"lost_percent"`
			} `json:"sum"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		b.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	if udp {
		return r.End.Sum.BitsPerSecond * (1 - r.End.Sum.LostPercent/100)
	}
	return r.End.SumReceived.BitsPerSecond
}

// BenchmarkForward measures iperf3's rate through the gateway to a host
// whose slice is steered among 1 slice and among 1,000 (101 hosts; the
// measured host's slice and table are the last, the worst case of both
// forms' rule walks), for each form,
// back to back in one run, TCP and 256-byte UDP datagrams. It reports each
// rate and the ratio 1000/1 (the nft target: at least 0.9). Use
// -steer.fwdtime for longer runs (docs/steer.md).
func BenchmarkForward(b *testing.B) {
	netnstest.RequireRoot(b)
	netnstest.RequireCommand(b, "iperf3")
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
	g, err := OpenGateway(nsPath(f.gw))
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	all := manySlices(1000, 100)
	one := all[len(all)-1:]
	for _, proto := range []string{"tcp", "udp"} {
		for _, form := range []Form{FormNFT, FormIP} {
			b.Run(proto+"/"+form.String(), func(b *testing.B) {
				var r1, rN float64
				for b.Loop() {
					for _, c := range []struct {
						ls   []lease.Lease
						rate *float64
					}{{one, &r1}, {all, &rN}} {
						p, err := NewPlan(c.ls, t0, Options{}, nil)
						if err != nil {
							b.Fatal(err)
						}
						if _, err := g.Apply(p, form); err != nil {
							b.Fatal(err)
						}
						*c.rate += iperf(b, f, proto == "udp")
					}
				}
				b.ReportMetric(r1/float64(b.N)/1e6, "Mbit/s-1slice")
				b.ReportMetric(rN/float64(b.N)/1e6, "Mbit/s-1000slices")
				b.ReportMetric(rN/r1, "ratio")
			})
		}
	}
}
