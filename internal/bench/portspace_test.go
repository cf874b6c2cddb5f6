package bench

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"

	"github.com/portspace/portspace/dial"
	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
)

func portspaceDialer(c Config) NamedDialer {
	c = c.withDefaults()
	return NamedDialer{DialerPortspace, &dial.Dialer{Sources: c.Sources, Ports: c.Ports, Timeout: c.Timeout}}
}

// isolate moves the test into a fresh network namespace when root, so that
// other sockets on the machine cannot take ports of the set; it returns
// false when the caller must return (the test ran inside the namespace).
// Without root the test runs on the host's loopback.
func isolate(t *testing.T) bool {
	if os.Geteuid() != 0 {
		return true
	}
	return netnstest.InNetNS(t)
}

// TestRunPortspace runs the harness end to end with the portspace dialer:
// every connection opens, their 4-tuples are distinct, and the independent
// sock_diag census finds them all, with no duplicate and none outside the
// port set.
func TestRunPortspace(t *testing.T) {
	if !isolate(t) {
		return
	}
	for _, p := range []tuple.Proto{tuple.TCP, tuple.UDP} {
		t.Run(p.String(), func(t *testing.T) {
			cfg := small(p)
			cfg.Exhausted = dial.ErrExhausted
			rep, err := Run(context.Background(), cfg, []NamedDialer{portspaceDialer(cfg)})
			if err != nil {
				t.Fatal(err)
			}
			r := rep.Results[0]
			checkHeld(t, r, cfg.Conns)
			if r.Distinct != r.Opened || r.Census.Duplicates != 0 || r.Census.OutsidePorts != 0 {
				t.Errorf("distinct %d, opened %d, census duplicates %d, outside the port set %d",
					r.Distinct, r.Opened, r.Census.Duplicates, r.Census.OutsidePorts)
			}
			if p == tuple.UDP && (r.EchoChecked != cfg.Conns || r.EchoFailed != 0) {
				t.Errorf("UDP echo: %d checked, %d failed", r.EchoChecked, r.EchoFailed)
			}
		})
	}
}

// TestRunPortspaceExhaustion checks the capacity arithmetic: 10 ports × 20
// destinations carry exactly 200 connections, and the 201st fails with
// dial.ErrExhausted, for TCP and UDP. The dials run one at a time: with
// concurrent UDP dials, dial's cooperative lock (SO_REUSEADDR cleared while
// it checks the 4-tuple) makes a port another dial is locking look taken,
// and a dial near exhaustion can fail early (see docs/bench-dial.md).
func TestRunPortspaceExhaustion(t *testing.T) {
	if !isolate(t) {
		return
	}
	for _, p := range []tuple.Proto{tuple.TCP, tuple.UDP} {
		t.Run(p.String(), func(t *testing.T) {
			dests, _ := CountDests(20)
			cfg := Config{Proto: p, Ports: tuple.MustParsePortSet("40000-40009"), Dests: dests, Conns: 201,
				Exhausted: dial.ErrExhausted, Warmup: -1, Concurrency: 1}
			rep, err := Run(context.Background(), cfg, []NamedDialer{portspaceDialer(cfg)})
			if err != nil {
				t.Fatal(err)
			}
			r := rep.Results[0]
			if r.Opened != 200 || r.Failed[ErrKindExhausted] != 1 || r.FailedTotal() != 1 {
				t.Errorf("opened %d, failures %v (%v); want 200 and one exhausted", r.Opened, r.Failed, r.FailSamples)
			}
			if r.Distinct != 200 || r.Census.Seen != 200 || r.Census.Duplicates != 0 {
				t.Errorf("distinct %d, census %+v; want 200 sockets, no duplicate", r.Distinct, r.Census)
			}
		})
	}
}

// BenchmarkDial measures one dial and close per op, for the portspace
// dialer and the net.Dialer baseline, TCP and UDP, on loopback with 20
// destinations and the default 1,000-port set. It reports ns/op (dial and
// close) and p50/p99 dial latency, the per-dial figures of
// docs/bench-dial.md; the conn/s figures come from "portspace bench dial",
// which holds the connections.
func BenchmarkDial(b *testing.B) {
	for _, p := range []tuple.Proto{tuple.TCP, tuple.UDP} {
		for _, name := range []string{DialerPortspace, DialerBaseline} {
			b.Run(p.String()+"/"+name, func(b *testing.B) {
				benchChurn(b, Config{Proto: p, Concurrency: 1}, name, -1)
			})
		}
	}
}

// BenchmarkDialFill measures the portspace dialer's TCP dial and close with
// the port set (100 ports × 20 destinations) pre-filled to 0% and 95%: the
// "p50 at 95% fill over empty" figure.
func BenchmarkDialFill(b *testing.B) {
	for _, fill := range []float64{0, 95} {
		b.Run("fill="+strconv.FormatFloat(fill, 'f', -1, 64), func(b *testing.B) {
			benchChurn(b, Config{Proto: tuple.TCP, Ports: tuple.MustParsePortSet("40000-40099"), Concurrency: 1}, DialerPortspace, fill)
		})
	}
}

// benchChurn pre-fills the port set to fill percent (fill < 0: none), then
// dials b.N connections one at a time, closing each once open, and reports
// the p50 and p99 connect latency.
func benchChurn(b *testing.B, cfg Config, name string, fill float64) {
	cfg = cfg.withDefaults()
	cfg.Exhausted = dial.ErrExhausted
	l, err := Listen(cfg.Proto, cfg.Dests, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	d := NamedDialer{name, NewBaseline(cfg.Proto, cfg.Sources)}
	if name == DialerPortspace {
		d = portspaceDialer(cfg)
	}
	r := &runner{cfg: cfg, l: l, eps: l.Endpoints(), network: network(cfg.Proto, false)}
	pre := 0
	var held []net.Conn
	if fill > 0 {
		pre = prefillCount(fill, cfg.Capacity())
		pb := r.open(context.Background(), d.Dialer, 0, pre, false)
		if pb.opened != pre {
			b.Fatalf("pre-fill opened %d of %d: %v", pb.opened, pre, pb.samples)
		}
		held = appendConns(held, pb.conns)
	}
	defer func() {
		for _, c := range held {
			abort(c)
		}
	}()
	b.ResetTimer()
	bt := r.open(context.Background(), d.Dialer, pre, b.N, true)
	b.StopTimer()
	if bt.opened != b.N {
		b.Fatalf("opened %d of %d: %v %v", bt.opened, b.N, bt.failed, bt.samples)
	}
	lat := Summarize(bt.lats)
	b.ReportMetric(float64(lat.P50.Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat.P99.Nanoseconds()), "p99-ns")
}

// TestRunIPv6 runs both dialers over IPv6 inside a namespace whose loopback
// carries the NamespaceIPv6 addresses (root only), as "bench dial --ipv6".
func TestRunIPv6(t *testing.T) {
	src, dests, err := NamespaceIPv6(3)
	if err != nil {
		t.Fatal(err)
	}
	var setup [][]string
	for _, a := range append([]netip.Addr{src}, dests...) {
		setup = append(setup, netnstest.SetupCmd("ip", "addr", "add", a.String()+"/128", "dev", "lo", "nodad"))
	}
	if !netnstest.InNetNS(t, setup...) {
		return
	}
	cfg := Config{Sources: []netip.Addr{src}, Dests: dests, LocalPrefix: NamespacePrefix,
		Ports: tuple.MustParsePortSet("40000-40099"), Conns: 150, Exhausted: dial.ErrExhausted}
	for _, p := range []tuple.Proto{tuple.TCP, tuple.UDP} {
		cfg.Proto = p
		rep, err := Run(context.Background(), cfg, []NamedDialer{portspaceDialer(cfg), {DialerBaseline, NewBaseline(p, cfg.Sources)}})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rep.Results {
			checkHeld(t, r, 150)
		}
	}
}
