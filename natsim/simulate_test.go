package natsim

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/natlog"
	"github.com/portspace/portspace/tuple"
)

func TestSimulateSmall(t *testing.T) {
	c := SimConfig{Subscribers: 20, Destinations: 5, FlowRate: 5, FlowLifetime: 20 * time.Second,
		UDPShare: 0.4, ICMPShare: 0.2, Duration: 3 * time.Minute, Seed: 7}
	r, err := Simulate(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", r)
	if r.Flows == 0 || r.Established != r.Flows || r.Refused != 0 || r.Broken != 0 {
		t.Fatalf("flows %d established %d refused %d broken %d", r.Flows, r.Established, r.Refused, r.Broken)
	}
	// Poisson arrivals at 5/s for 180 s: about 900 flows.
	if r.Flows < 700 || r.Flows > 1100 {
		t.Fatalf("flows %d, want about 900", r.Flows)
	}
	// Little's law: about 5/s x 20 s = 100 concurrent flows.
	if r.PeakConcurrent < 60 || r.PeakConcurrent > 200 {
		t.Fatalf("peak concurrent %d", r.PeakConcurrent)
	}
	// Steady state by Little's law: 5/s x 20 s = 100 open flows; mappings
	// stay after the flows (TCP closing 4 min, UDP 5 min), so the engine
	// holds more.
	if r.SteadyConcurrent < 70 || r.SteadyConcurrent > 130 || r.SteadyMappings <= r.SteadyConcurrent {
		t.Fatalf("steady flows %.1f mappings %.1f", r.SteadyConcurrent, r.SteadyMappings)
	}
	if r.MaxFlowsPerPort != 1 || r.Overlapping {
		t.Fatalf("rfc-recommended does not overlap: max flows per port %d", r.MaxFlowsPerPort)
	}
	// Every flow creates one mapping (EIM, fresh source ports): at least one
	// event per flow, and the log holds what LogWriter counted.
	if r.LogEvents < int64(r.Flows) || r.LogBytes < r.LogEvents*100 {
		t.Fatalf("log %d events %d bytes for %d flows", r.LogEvents, r.LogBytes, r.Flows)
	}
	// The per-day volumes scale the simulated time (180 s) to 86,400 s.
	days := 180.0 / 86400
	if d := r.LogBytesPerDay*days - float64(r.LogBytes); d > 1 || d < -1 {
		t.Errorf("log bytes per day %.0f for %d bytes in 180 s", r.LogBytesPerDay, r.LogBytes)
	}
	if d := r.CompactLogBytesPerDay*days - float64(r.CompactLogBytes); d > 1 || d < -1 {
		t.Errorf("compact log bytes per day %.0f for %d bytes in 180 s", r.CompactLogBytesPerDay, r.CompactLogBytes)
	}
	if r.PeakMappings < r.PeakConcurrent {
		t.Fatalf("engine mappings %d below concurrent flows %d", r.PeakMappings, r.PeakConcurrent)
	}
	// Same seed, same result.
	r2, err := Simulate(c)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Flows != r.Flows || r2.PortsUsed != r.PortsUsed || r2.LogBytes != r.LogBytes || r2.PeakMappings != r.PeakMappings {
		t.Fatal("not reproducible")
	}
	c.Seed = 8
	if r3, _ := Simulate(c); r3.Flows == r.Flows && r3.LogBytes == r.LogBytes {
		t.Fatal("seed has no effect")
	}
}

// TestSimulateOverlapping is the seeds' question in small: one external
// address with only 200 ports (a small preset range) carries at most 200
// concurrent flows without overlapping, and many more with it when the
// flows go to several destinations.
func TestSimulateOverlapping(t *testing.T) {
	c := SimConfig{Subscribers: 50, Destinations: 10, FlowRate: 40, FlowLifetime: 30 * time.Second,
		Duration: 2 * time.Minute, Seed: 3, Ports: tuple.PortSetOf(tuple.PortRangeFrom(1024, 1223))}
	without, with, err := CompareOverlapping(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("without: %+v", without)
	t.Logf("with:    %+v", with)
	if without.Overlapping || !with.Overlapping {
		t.Fatal("overlap modes not applied")
	}
	if without.PeakPortsInUse > 200 || without.PeakConcurrent > 200 || without.MaxFlowsPerPort != 1 {
		t.Fatalf("without overlapping: %d ports, %d flows, %d per port", without.PeakPortsInUse, without.PeakConcurrent, without.MaxFlowsPerPort)
	}
	if without.Refused == 0 || without.Drops[nat.ReasonPortsExhausted.String()] == 0 {
		t.Fatalf("demand (~1200 concurrent) must exhaust 200 ports: refused %d drops %v", without.Refused, without.Drops)
	}
	if with.PeakConcurrent <= 2*without.PeakConcurrent || with.MaxFlowsPerPort < 2 || with.PeakPortsInUse > 200 {
		t.Fatalf("with overlapping: %d concurrent (without %d), %d per port, %d ports", with.PeakConcurrent, without.PeakConcurrent, with.MaxFlowsPerPort, with.PeakPortsInUse)
	}
	if with.MaxFlowsPerPort > c.Destinations {
		t.Fatalf("a port carries at most one flow per destination: %d > %d", with.MaxFlowsPerPort, c.Destinations)
	}
}

func TestSimulateLogReplaysIntoWhois(t *testing.T) {
	// The log a simulation writes answers whois for every mapping.
	c := SimConfig{Subscribers: 10, Destinations: 3, FlowRate: 2, Duration: time.Minute, Seed: 5}
	var buf bytes.Buffer
	lw := natlog.NewLogWriter(&buf, natlog.LogOptions{})
	cfg, err := c.EngineConfig(lw)
	if err != nil {
		t.Fatal(err)
	}
	e, err := nat.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &simState{eng: e, buf: make([]byte, 64), res: &SimResult{}}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var exts []netip.AddrPort
	for i := range 10 {
		f := &simFlow{proto: tuple.UDP, internal: netip.AddrPortFrom(simSubscriber(i), 40000), remote: simDest(i % 3)}
		if !s.open(f, start.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("flow %d refused", i)
		}
		exts = append(exts, f.external)
	}
	e.Expire(start.Add(time.Hour))
	lw.Flush()
	ix, err := natlog.ReadIndex(natlog.NewLogReader(&buf, "sim"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, ext := range exts {
		hs, err := ix.Whois(ext, start.Add(time.Duration(i)*time.Second+time.Millisecond))
		if err != nil || len(hs) != 1 || hs[0].Subscriber != simSubscriber(i) {
			t.Fatalf("flow %d via %v: %v %v", i, ext, hs, err)
		}
		if _, err := ix.Whois(ext, start.Add(time.Hour)); err == nil {
			t.Fatalf("flow %d: mapping still held after expiry", i)
		}
	}
}

func TestSimConfigErrors(t *testing.T) {
	for _, c := range []struct {
		cfg   SimConfig
		field string
	}{
		{SimConfig{Subscribers: -1}, "Subscribers"},
		{SimConfig{Destinations: 1 << 20}, "Destinations"},
		{SimConfig{FlowRate: -1}, "FlowRate"},
		{SimConfig{DestZipf: 0.5}, "DestZipf"},
		{SimConfig{Keepalive: time.Millisecond}, "Keepalive"},
		{SimConfig{Tick: time.Millisecond}, "Tick"},
		{SimConfig{Duration: -time.Second}, "Duration"},
		{SimConfig{UDPShare: 2}, "UDPShare"},
		{SimConfig{UDPShare: 0.6, ICMPShare: 0.6}, "ICMPShare"},
		{SimConfig{Preset: "nope"}, "Preset"},
		{SimConfig{FlowRate: 1e6, Duration: time.Hour}, "FlowRate"},
	} {
		_, err := Simulate(c.cfg)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != c.field || !strings.HasPrefix(err.Error(), "natsim: SimConfig."+c.field+": ") {
			t.Errorf("%+v: %v, want a ConfigError for %s", c.cfg, err, c.field)
		}
	}
}

// TestSimulateProgress: Progress is called with the simulated time, which
// grows to Duration.
func TestSimulateProgress(t *testing.T) {
	var calls int
	var last, total time.Duration
	_, err := Simulate(SimConfig{Subscribers: 5, Duration: time.Minute, Tick: 10 * time.Second,
		Progress: func(done, all time.Duration) {
			if done < last {
				t.Errorf("progress went back from %v to %v", last, done)
			}
			calls, last, total = calls+1, done, all
		}})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 6 || last != time.Minute || total != time.Minute {
		t.Fatalf("%d calls, last %v of %v; want 6 calls up to 1m0s", calls, last, total)
	}
}

// BenchmarkSimulate measures simulation speed (engine calls per second
// dominate): 1,000 flows/s for 10 simulated seconds.
func BenchmarkSimulate(b *testing.B) {
	for b.Loop() {
		r, err := Simulate(SimConfig{Subscribers: 500, Destinations: 100, FlowRate: 1000, Duration: 10 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(r.Packets), "packets/op")
	}
}

// TestSimulateCompactLog checks the log-volume effect of port blocks and
// deterministic mapping: the compact log keeps only block events (CGN) or
// nothing (deterministic), while per-mapping presets log every mapping.
func TestSimulateCompactLog(t *testing.T) {
	base := SimConfig{Subscribers: 50, Destinations: 20, FlowRate: 20, Duration: 3 * time.Minute,
		External: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}}
	res := map[string]SimResult{}
	for _, p := range []string{"rfc-recommended", "cgn", "deterministic"} {
		c := base
		c.Preset = p
		r, err := Simulate(c)
		if err != nil {
			t.Fatal(err)
		}
		if r.Refused != 0 || r.Established == 0 {
			t.Fatalf("%s: refused %d established %d drops %v", p, r.Refused, r.Established, r.Drops)
		}
		res[p] = r
	}
	for p, r := range res {
		// Paired pooling spreads subscribers over both addresses.
		if len(r.PerAddress) != 2 || r.PerAddress[0].PeakFlows == 0 || r.PerAddress[1].PeakFlows == 0 ||
			r.PerAddress[0].PortsUsed+r.PerAddress[1].PortsUsed != r.PortsUsed {
			t.Fatalf("%s: per address %+v (ports used %d)", p, r.PerAddress, r.PortsUsed)
		}
	}
	if r := res["rfc-recommended"]; r.CompactLogBytes != r.LogBytes || r.LogEvents < int64(r.Established) {
		t.Fatalf("per-mapping preset: compact %d full %d events %d", r.CompactLogBytes, r.LogBytes, r.LogEvents)
	}
	if r := res["cgn"]; r.CompactLogEvents == 0 || r.CompactLogEvents > int64(base.Subscribers)*2*2 || r.CompactLogBytes*10 > r.LogBytes {
		t.Fatalf("cgn: compact %d events %d bytes, full %d bytes", r.CompactLogEvents, r.CompactLogBytes, r.LogBytes)
	}
	if r := res["deterministic"]; r.CompactLogEvents != 0 || r.LogEvents == 0 {
		t.Fatalf("deterministic: compact %d events, full %d", r.CompactLogEvents, r.LogEvents)
	}
}

// TestSimulateEveryPreset runs mixed TCP/UDP/ICMP traffic through every
// preset: with ample ports every flow must be established, and every packet
// of an established flow must reach the right endpoint.
func TestSimulateEveryPreset(t *testing.T) {
	for _, p := range nat.Presets() {
		r, err := Simulate(SimConfig{Preset: p.Name, Subscribers: 20, Destinations: 5, FlowRate: 5,
			UDPShare: 0.3, ICMPShare: 0.1, Duration: 2 * time.Minute, Seed: 11})
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		if r.Flows == 0 || r.Established != r.Flows || r.Broken != 0 {
			t.Errorf("%s: flows %d established %d broken %d drops %v", p.Name, r.Flows, r.Established, r.Broken, r.Drops)
		}
	}
}
