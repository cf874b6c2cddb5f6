package natsim

import (
	"container/heap"
	"encoding/binary"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/natlog"
	"github.com/portspace/portspace/packet"
	"github.com/portspace/portspace/tuple"
)

// OverlapMode says how a simulation sets nat.Config.Overlapping.
type OverlapMode uint8

// The overlap modes. The zero value keeps the preset's setting.
const (
	OverlapPreset OverlapMode = iota // as the preset says
	OverlapOff                       // Overlapping false
	// OverlapOn sets Overlapping (RFC 7857 §3) and what it needs:
	// address-and-port-dependent filtering, no port blocks, no
	// deterministic mapping, no quarantine.
	OverlapOn
)

// SimConfig describes a synthetic workload for Simulate. Every zero value is
// the documented default.
type SimConfig struct {
	// Preset names the engine configuration (see nat.Preset); default
	// "rfc-recommended".
	Preset string
	// Overlap forces port overlapping on or off (default: as the preset).
	Overlap OverlapMode
	// External are the NAT's external addresses; default 192.0.2.1.
	External []netip.Addr
	// Ports, if valid, replaces the preset's external TCP/UDP ports (e.g.
	// a small range to reach exhaustion quickly).
	Ports tuple.PortSet
	// Subscribers is the number of inside hosts, numbered from the first
	// host address of 100.64.0.0 (RFC 6598 shared space); default 100.
	Subscribers int
	// Destinations is the number of distinct remote endpoints (addresses
	// from 198.18.0.0/15, RFC 2544, port 443); default 50.
	Destinations int
	// DestZipf, if above 1, picks destinations by a Zipf law with this
	// exponent (a few popular services); otherwise uniformly.
	DestZipf float64
	// FlowRate is the mean number of new flows per second over all
	// subscribers (Poisson arrivals); default 10.
	FlowRate float64
	// FlowLifetime is the mean flow lifetime (exponentially distributed);
	// default 30 s.
	FlowLifetime time.Duration
	// UDPShare is the fraction of flows that are UDP (the rest are TCP);
	// default 0 (all TCP). Use a negative value for none explicitly.
	UDPShare float64
	// ICMPShare is the fraction of flows that are ICMP echo (ping) flows,
	// identified by their echo identifier (RFC 5508 REQ-1); default 0.
	// UDPShare + ICMPShare must not exceed 1.
	ICMPShare float64
	// Keepalive is the interval of packets inside a flow (both directions);
	// default 20 s.
	Keepalive time.Duration
	// Duration is the simulated time; default 10 min.
	Duration time.Duration
	// Tick is how often nat.Engine.Expire runs and state is sampled; default 1 s.
	Tick time.Duration
	// Seed makes the run reproducible (traffic, engine secret and port
	// choices); default 1.
	Seed uint64
	// LogDestinations enables destination logging in the engine and the
	// log writer (RFC 6888 REQ-12 says not to; this measures its cost).
	LogDestinations bool
	// Start is the fake clock's start; default 2026-01-01T00:00:00Z.
	Start time.Time
	// Events, if set, also receives every engine event (e.g. a LogWriter
	// writing the simulated log to a file for `nat whois`).
	Events nat.EventSink
	// Progress, if set, is called at every Tick with the simulated time
	// done and the Duration (for a progress line); it must be quick.
	Progress func(done, total time.Duration)
}

// ConfigError is the error Simulate, CompareOverlapping and
// SimConfig.EngineConfig return for an invalid SimConfig: Field names the
// SimConfig field ("Duration"), so that a command line can name its own
// flag. Test for it with errors.As.
type ConfigError struct {
	Field string // the SimConfig field
	Err   error  // what is wrong with its value
}

// Error returns "natsim: SimConfig.<Field>: <what is wrong>".
func (e *ConfigError) Error() string { return "natsim: SimConfig." + e.Field + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *ConfigError) Unwrap() error { return e.Err }

// SimResult is what Simulate measured. Counts are over the simulated
// Duration; "peak" values are maxima seen at any event.
type SimResult struct {
	Preset      string        `json:"preset"`
	Mapping     string        `json:"mapping"`
	Filtering   string        `json:"filtering"`
	Overlapping bool          `json:"overlapping"`
	External    int           `json:"external_addresses"`
	Subscribers int           `json:"subscribers"`
	Dests       int           `json:"destinations"`
	Duration    time.Duration `json:"duration_ns"`

	// Flows started, established (the reply came through) and refused
	// (first packet dropped or answered with ICMP by the engine).
	Flows       int `json:"flows"`
	Established int `json:"established"`
	Refused     int `json:"refused"`
	// Broken counts packets of established flows the engine dropped or
	// delivered to the wrong inside endpoint (0 for a correct engine
	// without limits that bite mid-flow).
	Broken int `json:"broken"`
	// Packets is the number of packets handed to the engine.
	Packets int64 `json:"packets"`

	// PeakConcurrent is the largest number of established flows open at
	// once; PeakPerAddress the largest number through one external address.
	PeakConcurrent int `json:"peak_concurrent_flows"`
	PeakPerAddress int `json:"peak_flows_per_external_address"`
	// SteadyConcurrent and SteadyMappings are the mean number of open
	// established flows and of engine mappings over the ticks of the second
	// half of the run: the steady state, once closed connections occupy
	// their ports for the transitory timer (the peak is often reached
	// earlier, before any port is waiting out a timer).
	SteadyConcurrent float64 `json:"steady_concurrent_flows"`
	SteadyMappings   float64 `json:"steady_engine_mappings"`
	// PerAddress has, for each external address, the peak number of
	// established flows through it and the external ports it used.
	PerAddress []SimAddress `json:"per_external_address"`
	// PeakPortsInUse is the largest number of distinct external endpoints
	// (per protocol) carrying open flows at once; PortsUsed the distinct
	// external endpoints used over the whole run.
	PeakPortsInUse int `json:"peak_external_ports_in_use"`
	PortsUsed      int `json:"external_ports_used"`
	// MaxFlowsPerPort is the largest number of open flows that shared one
	// external endpoint (1 without overlapping).
	MaxFlowsPerPort int `json:"max_flows_per_external_port"`
	// PeakMappings and PeakSessions are the engine's own counts (they
	// include state kept after flows end, until the timers run out).
	PeakMappings int `json:"peak_engine_mappings"`
	PeakSessions int `json:"peak_engine_sessions"`
	// TableBytes is the engine's table memory at the end.
	TableBytes int `json:"table_bytes"`
	// Drops are the engine's drop counts by reason.
	Drops map[string]uint64 `json:"drops"`

	// LogEvents and LogBytes are the volume of the JSON-lines event log
	// (LogWriter); per established flow, and per day extrapolated from the
	// simulated Duration (run longer than the timers, so that deletions
	// are in the log, for steady-state figures).
	LogEvents       int64   `json:"log_events"`
	LogBytes        int64   `json:"log_bytes"`
	LogBytesPerFlow float64 `json:"log_bytes_per_flow"`
	LogBytesPerDay  float64 `json:"log_bytes_per_day"`
	// CompactLogEvents and CompactLogBytes are the volume of the same log
	// written with LogOptions.Compact (mappings inside port blocks left
	// out); they differ from the full log only for block and
	// deterministic presets.
	CompactLogEvents      int64   `json:"compact_log_events"`
	CompactLogBytes       int64   `json:"compact_log_bytes"`
	CompactLogBytesPerDay float64 `json:"compact_log_bytes_per_day"`
}

// teeSink records every event into several sinks.
type teeSink []nat.EventSink

func (t teeSink) Record(ev nat.Event) {
	for _, s := range t {
		s.Record(ev)
	}
}

// SimAddress is the load of one external address in a simulation.
type SimAddress struct {
	Addr      netip.Addr `json:"addr"`
	PeakFlows int        `json:"peak_flows"`
	PortsUsed int        `json:"ports_used"`
}

// withDefaults returns c with defaults filled in, or an error naming the
// first invalid field.
func (c SimConfig) withDefaults() (SimConfig, error) {
	fail := func(field, format string, args ...any) (SimConfig, error) {
		return SimConfig{}, &ConfigError{Field: field, Err: fmt.Errorf(format, args...)}
	}
	if c.Preset == "" {
		c.Preset = "rfc-recommended"
	}
	if len(c.External) == 0 {
		c.External = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	}
	if c.Subscribers == 0 {
		c.Subscribers = 100
	}
	if c.Subscribers < 0 || c.Subscribers > 1<<22-2 {
		return fail("Subscribers", "%d is outside 1..%d", c.Subscribers, 1<<22-2)
	}
	if c.Destinations == 0 {
		c.Destinations = 50
	}
	if c.Destinations < 0 || c.Destinations > 1<<17 {
		return fail("Destinations", "%d is outside 1..%d", c.Destinations, 1<<17)
	}
	if c.DestZipf != 0 && c.DestZipf <= 1 {
		return fail("DestZipf", "%v must be above 1 (or 0 for uniform)", c.DestZipf)
	}
	if c.FlowRate == 0 {
		c.FlowRate = 10
	}
	if !(c.FlowRate > 0) || c.FlowRate > 1e6 {
		return fail("FlowRate", "%v is outside (0, 1e6] flows/s", c.FlowRate)
	}
	if c.FlowLifetime == 0 {
		c.FlowLifetime = 30 * time.Second
	}
	if c.FlowLifetime < 0 {
		return fail("FlowLifetime", "negative")
	}
	if c.UDPShare < 0 {
		c.UDPShare = 0
	}
	if c.UDPShare > 1 {
		return fail("UDPShare", "%v is above 1", c.UDPShare)
	}
	if c.ICMPShare < 0 {
		c.ICMPShare = 0
	}
	if c.UDPShare+c.ICMPShare > 1 {
		return fail("ICMPShare", "%v plus the UDP share %v is above 1", c.ICMPShare, c.UDPShare)
	}
	if c.Keepalive == 0 {
		c.Keepalive = 20 * time.Second
	}
	if c.Keepalive < time.Second {
		return fail("Keepalive", "%v is below 1 s", c.Keepalive)
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Minute
	}
	if c.Duration < 0 || c.Duration > 30*24*time.Hour {
		return fail("Duration", "%v is outside (0, 30 days]", c.Duration)
	}
	if c.Tick == 0 {
		c.Tick = time.Second
	}
	if c.Tick < time.Second {
		return fail("Tick", "%v is below the engine's 1 s resolution", c.Tick)
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.Start.IsZero() {
		c.Start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if c.FlowRate*c.Duration.Seconds() > 50e6 {
		return fail("FlowRate", "%v flows/s over %v is more than 50 million flows", c.FlowRate, c.Duration)
	}
	return c, nil
}

// EngineConfig returns the engine Config a simulation with c uses: the
// preset with c's external addresses, an internal prefix just large enough
// for the subscribers, the overlap mode applied, a secret and seed derived
// from c.Seed, and sink as the event sink.
func (c SimConfig) EngineConfig(sink nat.EventSink) (nat.Config, error) {
	c, err := c.withDefaults()
	if err != nil {
		return nat.Config{}, err
	}
	cfg, err := nat.Preset(c.Preset)
	if err != nil {
		return nat.Config{}, &ConfigError{Field: "Preset", Err: err}
	}
	cfg.External = c.External
	cfg.Internal = []netip.Prefix{simInternal(c.Subscribers)}
	if c.Ports.IsValid() {
		cfg.Ports = c.Ports
	}
	switch c.Overlap {
	case OverlapOff:
		cfg.Overlapping = false
	case OverlapOn:
		cfg.Overlapping = true
		cfg.Filtering, cfg.TCPFiltering = nat.FilterAPDF, nat.FilterAPDF
		cfg.BlockSize, cfg.MaxBlocksPerSubscriber, cfg.Deterministic, cfg.Quarantine = 0, 0, false, 0
	}
	r := rand.New(rand.NewPCG(c.Seed, 0x5eed))
	for i := range cfg.Secret {
		cfg.Secret[i] = byte(r.Uint32())
	}
	cfg.Seed = c.Seed
	cfg.Events = sink
	cfg.LogDestinations = c.LogDestinations
	return cfg, nil
}

// simInternal returns the smallest prefix of 100.64.0.0 holding n hosts
// plus the network address.
func simInternal(n int) netip.Prefix {
	b := bits.Len(uint(n)) // 2^b > n
	return netip.PrefixFrom(netip.MustParseAddr("100.64.0.0"), 32-b)
}

func simSubscriber(i int) netip.Addr {
	v := uint32(100)<<24 | uint32(64)<<16 + uint32(i+1)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func simDest(i int) netip.AddrPort {
	v := uint32(198)<<24 | uint32(18)<<16 + uint32(i)
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 443)
}

// Simulation event kinds.
const (
	evArrival uint8 = iota
	evTick
	evKeepalive
	evEnd
)

type simEvent struct {
	at   int64 // ns since start
	seq  uint64
	flow int32
	kind uint8
}

type simQueue []simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q simQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)   { *q = append(*q, x.(simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}

// simPort is an external endpoint of one protocol (TCP and UDP ports are
// separate spaces).
type simPort struct {
	proto tuple.Proto
	ext   netip.AddrPort
}

type simFlow struct {
	proto    tuple.Proto
	internal netip.AddrPort
	remote   netip.AddrPort
	external netip.AddrPort
	end      int64
	seq      uint32
	live     bool
}

// countingWriter counts bytes and discards them.
type countingWriter struct{ n int64 }

func (w *countingWriter) Write(b []byte) (int, error) { w.n += int64(len(b)); return len(b), nil }

// Simulate replays synthetic traffic through a NAT Engine configured by
// c.Preset, with a fake clock (no sleeping: simulated time only advances
// from one event to the next), and measures external port use, flows per
// external address and port, drops by reason and the volume of the
// JSON-lines event log. The same SimConfig always gives the same result.
//
// Each flow sends its first packet (TCP SYN, a UDP datagram or an ICMP
// echo request), gets a reply from its remote endpoint (SYN-ACK + ACK for
// TCP), exchanges one packet each way every Keepalive, and at the end of
// its lifetime closes (FIN both ways for TCP; UDP and ICMP just stop). A
// flow counts as established when its reply reaches the inside endpoint it
// came from. (A flow's keepalives all fall before its end event, so a flow
// slot is only reused after every event of its previous flow has run.)
func Simulate(c SimConfig) (SimResult, error) {
	c, err := c.withDefaults()
	if err != nil {
		return SimResult{}, err
	}
	cw, ccw := &countingWriter{}, &countingWriter{}
	lw := natlog.NewLogWriter(cw, natlog.LogOptions{Destinations: c.LogDestinations})
	clw := natlog.NewLogWriter(ccw, natlog.LogOptions{Destinations: c.LogDestinations, Compact: true})
	sinks := teeSink{lw, clw}
	if c.Events != nil {
		sinks = append(sinks, c.Events)
	}
	cfg, err := c.EngineConfig(sinks)
	if err != nil {
		return SimResult{}, err
	}
	eng, err := nat.New(cfg)
	if err != nil {
		return SimResult{}, err
	}
	ecfg := eng.Config()
	s := &simState{
		c: c, eng: eng,
		rng:      rand.New(rand.NewPCG(c.Seed, 0x7a11f1c)),
		perAddr:  map[netip.Addr]int{},
		peakAddr: map[netip.Addr]int{},
		perPort:  map[simPort]int{},
		used:     map[simPort]struct{}{},
		srcPorts: make([]map[uint16]struct{}, c.Subscribers),
		nextPort: make([]uint16, c.Subscribers),
		buf:      make([]byte, 64),
	}
	if c.DestZipf > 1 && c.Destinations > 1 {
		s.zipf = rand.NewZipf(s.rng, c.DestZipf, 1, uint64(c.Destinations-1))
	}
	res := SimResult{
		Preset: c.Preset, Mapping: ecfg.Mapping.String(), Filtering: ecfg.Filtering.String(),
		Overlapping: ecfg.Overlapping, External: len(c.External), Subscribers: c.Subscribers,
		Dests: c.Destinations, Duration: c.Duration,
	}
	s.res = &res
	end := int64(c.Duration)
	var steadyN int
	var steadyFlows, steadyMaps float64
	s.push(s.expo(1/c.FlowRate), -1, evArrival)
	s.push(int64(c.Tick), -1, evTick)
	for len(s.q) > 0 {
		ev := heap.Pop(&s.q).(simEvent)
		if ev.at > end {
			break
		}
		now := c.Start.Add(time.Duration(ev.at))
		switch ev.kind {
		case evArrival:
			s.arrive(ev.at, now)
			s.push(ev.at+s.expo(1/c.FlowRate), -1, evArrival)
		case evTick:
			eng.Expire(now)
			st := eng.Stats()
			res.PeakMappings = max(res.PeakMappings, st.Mappings)
			res.PeakSessions = max(res.PeakSessions, st.Sessions)
			if 2*ev.at > end {
				steadyN++
				steadyFlows += float64(s.concurrent)
				steadyMaps += float64(st.Mappings)
			}
			s.push(ev.at+int64(c.Tick), -1, evTick)
			if c.Progress != nil {
				c.Progress(time.Duration(ev.at), c.Duration)
			}
		case evKeepalive:
			f := &s.flows[ev.flow]
			if !f.live {
				continue
			}
			s.exchange(f, now, packet.TCPAck|packet.TCPPsh, packet.TCPAck)
			if next := ev.at + int64(c.Keepalive); next < f.end {
				s.push(next, ev.flow, evKeepalive)
			}
		case evEnd:
			s.finish(ev.flow, now)
		}
	}
	if err := lw.Flush(); err != nil {
		return SimResult{}, err
	}
	if err := clw.Flush(); err != nil {
		return SimResult{}, err
	}
	res.CompactLogEvents, res.CompactLogBytes = clw.Events(), ccw.n
	res.CompactLogBytesPerDay = float64(res.CompactLogBytes) / c.Duration.Seconds() * 86400
	st := eng.Stats()
	res.TableBytes = st.TableBytes
	res.Drops = map[string]uint64{}
	for r, n := range st.Drops {
		if n > 0 {
			res.Drops[nat.Reason(r).String()] = n
		}
	}
	res.PortsUsed = len(s.used)
	if steadyN > 0 {
		res.SteadyConcurrent = steadyFlows / float64(steadyN)
		res.SteadyMappings = steadyMaps / float64(steadyN)
	}
	portsBy := map[netip.Addr]int{}
	for k := range s.used {
		portsBy[k.ext.Addr()]++
	}
	for _, a := range c.External {
		res.PerAddress = append(res.PerAddress, SimAddress{Addr: a, PeakFlows: s.peakAddr[a], PortsUsed: portsBy[a]})
	}
	res.LogEvents, res.LogBytes = lw.Events(), cw.n
	if res.Established > 0 {
		res.LogBytesPerFlow = float64(res.LogBytes) / float64(res.Established)
	}
	res.LogBytesPerDay = float64(res.LogBytes) / c.Duration.Seconds() * 86400
	return res, nil
}

type simState struct {
	c     SimConfig
	eng   *nat.Engine
	rng   *rand.Rand
	zipf  *rand.Zipf
	q     simQueue
	seq   uint64
	flows []simFlow
	free  []int32
	res   *SimResult

	concurrent int
	perAddr    map[netip.Addr]int
	peakAddr   map[netip.Addr]int
	perPort    map[simPort]int
	used       map[simPort]struct{}
	srcPorts   []map[uint16]struct{}
	nextPort   []uint16
	buf        []byte
	pkt        packet.Packet
}

func (s *simState) push(at int64, flow int32, kind uint8) {
	s.seq++
	heap.Push(&s.q, simEvent{at: at, seq: s.seq, flow: flow, kind: kind})
}

// expo returns an exponentially distributed duration with the given mean
// in seconds, at least 1 ns.
func (s *simState) expo(meanSec float64) int64 {
	return max(1, int64(s.rng.ExpFloat64()*meanSec*1e9))
}

// srcPort picks the subscriber's next free ephemeral port (Linux default
// range 32768-60999), sequentially like a host stack.
func (s *simState) srcPort(sub int) (uint16, bool) {
	m := s.srcPorts[sub]
	if m == nil {
		m = map[uint16]struct{}{}
		s.srcPorts[sub] = m
		s.nextPort[sub] = 32768 + uint16(s.rng.IntN(28232))
	}
	for range 28232 {
		p := s.nextPort[sub]
		s.nextPort[sub]++
		if s.nextPort[sub] > 60999 {
			s.nextPort[sub] = 32768
		}
		if _, busy := m[p]; !busy {
			m[p] = struct{}{}
			return p, true
		}
	}
	return 0, false
}

func (s *simState) arrive(at int64, now time.Time) {
	c := s.c
	sub := s.rng.IntN(c.Subscribers)
	port, ok := s.srcPort(sub)
	if !ok {
		return // the host itself has no free port: not the NAT's doing
	}
	d := 0
	if s.zipf != nil {
		d = int(s.zipf.Uint64())
	} else {
		d = s.rng.IntN(c.Destinations)
	}
	proto := tuple.TCP
	remote := simDest(d)
	switch x := s.rng.Float64(); {
	case x < c.UDPShare:
		proto = tuple.UDP
	case x < c.UDPShare+c.ICMPShare:
		proto = tuple.ICMP
		remote = netip.AddrPortFrom(remote.Addr(), 0) // echo: the identifier is the only "port"
	}
	var idx int32
	if n := len(s.free); n > 0 {
		idx = s.free[n-1]
		s.free = s.free[:n-1]
	} else {
		s.flows = append(s.flows, simFlow{})
		idx = int32(len(s.flows) - 1)
	}
	f := &s.flows[idx]
	*f = simFlow{proto: proto, internal: netip.AddrPortFrom(simSubscriber(sub), port), remote: remote,
		end: at + s.expo(c.FlowLifetime.Seconds()), seq: s.rng.Uint32()}
	s.res.Flows++
	if !s.open(f, now) {
		s.res.Refused++
		s.release(idx)
		return
	}
	f.live = true
	s.res.Established++
	s.concurrent++
	s.res.PeakConcurrent = max(s.res.PeakConcurrent, s.concurrent)
	a := f.external.Addr()
	s.perAddr[a]++
	s.res.PeakPerAddress = max(s.res.PeakPerAddress, s.perAddr[a])
	s.peakAddr[a] = max(s.peakAddr[a], s.perAddr[a])
	k := simPort{f.proto, f.external}
	s.perPort[k]++
	s.res.MaxFlowsPerPort = max(s.res.MaxFlowsPerPort, s.perPort[k])
	s.res.PeakPortsInUse = max(s.res.PeakPortsInUse, len(s.perPort))
	s.used[k] = struct{}{}
	if next := at + int64(c.Keepalive); next < f.end {
		s.push(next, idx, evKeepalive)
	}
	s.push(f.end, idx, evEnd)
}

// release frees a flow slot and its source port.
func (s *simState) release(idx int32) {
	f := &s.flows[idx]
	a := f.internal.Addr().As4()
	sub := int(binary.BigEndian.Uint32(a[:]) - (uint32(100)<<24 | uint32(64)<<16) - 1)
	delete(s.srcPorts[sub], f.internal.Port())
	f.live = false
	s.free = append(s.free, idx)
}

// open sends the first packet and the reply; it reports whether the flow
// got through both ways.
func (s *simState) open(f *simFlow, now time.Time) bool {
	var out []byte
	switch f.proto {
	case tuple.TCP:
		out = s.tcp(f.internal, f.remote, f.seq, 0, packet.TCPSyn)
	case tuple.UDP:
		out = s.udp(f.internal, f.remote)
	default:
		out = s.echo(f.internal.Addr(), f.remote.Addr(), packet.ICMPEcho, f.internal.Port())
	}
	s.res.Packets++
	if v := s.eng.Outbound(out, now); v.Action != nat.Forward {
		return false
	}
	if s.pkt.Parse(out) != nil {
		return false
	}
	f.external = s.pkt.SrcAddrPort()
	if f.proto == tuple.TCP {
		if !s.in(f, now, packet.TCPSyn|packet.TCPAck) {
			return false
		}
		return s.out(f, now, packet.TCPAck)
	}
	return s.in(f, now, 0)
}

// out sends one packet of f from inside; false if the engine did not
// forward it from f's external endpoint.
func (s *simState) out(f *simFlow, now time.Time, flags uint8) bool {
	var b []byte
	switch f.proto {
	case tuple.TCP:
		f.seq++
		b = s.tcp(f.internal, f.remote, f.seq, 1, flags)
	case tuple.UDP:
		b = s.udp(f.internal, f.remote)
	default:
		b = s.echo(f.internal.Addr(), f.remote.Addr(), packet.ICMPEcho, f.internal.Port())
	}
	s.res.Packets++
	if v := s.eng.Outbound(b, now); v.Action != nat.Forward {
		return false
	}
	return s.pkt.Parse(b) == nil && s.pkt.SrcAddrPort() == f.external
}

// in sends one packet from f's remote to its external endpoint; false if
// the engine did not deliver it to f's internal endpoint.
func (s *simState) in(f *simFlow, now time.Time, flags uint8) bool {
	var b []byte
	switch f.proto {
	case tuple.TCP:
		b = s.tcp(f.remote, f.external, 7, f.seq+1, flags)
	case tuple.UDP:
		b = s.udp(f.remote, f.external)
	default:
		b = s.echo(f.remote.Addr(), f.external.Addr(), packet.ICMPEchoReply, f.external.Port())
	}
	s.res.Packets++
	if v := s.eng.Inbound(b, now); v.Action != nat.Forward {
		return false
	}
	return s.pkt.Parse(b) == nil && s.pkt.DstAddrPort() == f.internal
}

func (s *simState) exchange(f *simFlow, now time.Time, outFlags, inFlags uint8) {
	if !s.out(f, now, outFlags) {
		s.res.Broken++
	}
	if !s.in(f, now, inFlags) {
		s.res.Broken++
	}
}

func (s *simState) finish(idx int32, now time.Time) {
	f := &s.flows[idx]
	if !f.live {
		return
	}
	if f.proto == tuple.TCP {
		s.exchange(f, now, packet.TCPFin|packet.TCPAck, packet.TCPFin|packet.TCPAck)
		if !s.out(f, now, packet.TCPAck) {
			s.res.Broken++
		}
	}
	s.concurrent--
	s.perAddr[f.external.Addr()]--
	k := simPort{f.proto, f.external}
	if s.perPort[k]--; s.perPort[k] == 0 {
		delete(s.perPort, k)
	}
	s.release(idx)
}

// tcp builds a 40-byte IPv4+TCP segment in s.buf with valid checksums.
func (s *simState) tcp(src, dst netip.AddrPort, seq, ack uint32, flags uint8) []byte {
	b := s.buf[:40]
	ipHeader(b, src.Addr(), dst.Addr(), tuple.TCP, 40)
	t := b[20:]
	binary.BigEndian.PutUint16(t[0:], src.Port())
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	binary.BigEndian.PutUint32(t[4:], seq)
	binary.BigEndian.PutUint32(t[8:], ack)
	t[12], t[13] = 5<<4, flags
	binary.BigEndian.PutUint16(t[14:], 65535)
	t[16], t[17], t[18], t[19] = 0, 0, 0, 0
	binary.BigEndian.PutUint16(t[16:], packet.Checksum(t, packet.PseudoHeaderSum(src.Addr(), dst.Addr(), tuple.TCP, 20)))
	return b
}

// udp builds a 48-byte IPv4+UDP datagram (20 payload bytes) in s.buf.
func (s *simState) udp(src, dst netip.AddrPort) []byte {
	b := s.buf[:48]
	ipHeader(b, src.Addr(), dst.Addr(), tuple.UDP, 48)
	u := b[20:]
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], 28)
	u[6], u[7] = 0, 0
	clear(u[8:])
	c := packet.Checksum(u, packet.PseudoHeaderSum(src.Addr(), dst.Addr(), tuple.UDP, 28))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return b
}

// echo builds a 36-byte IPv4 ICMP echo request or reply (8 payload bytes)
// with identifier id in s.buf.
func (s *simState) echo(src, dst netip.Addr, typ uint8, id uint16) []byte {
	b := s.buf[:36]
	ipHeader(b, src, dst, tuple.ICMP, 36)
	m := b[20:]
	m[0], m[1], m[2], m[3] = typ, 0, 0, 0
	binary.BigEndian.PutUint16(m[4:], id)
	binary.BigEndian.PutUint16(m[6:], 1) // sequence
	clear(m[8:])
	binary.BigEndian.PutUint16(m[2:], packet.Checksum(m, 0))
	return b
}

func ipHeader(b []byte, src, dst netip.Addr, proto tuple.Proto, total int) {
	b[0], b[1] = 0x45, 0
	binary.BigEndian.PutUint16(b[2:], uint16(total))
	b[4], b[5], b[6], b[7] = 0, 0, 0x40, 0 // DF
	b[8], b[9], b[10], b[11] = 64, byte(proto), 0, 0
	s4, d4 := src.As4(), dst.As4()
	copy(b[12:16], s4[:])
	copy(b[16:20], d4[:])
	binary.BigEndian.PutUint16(b[10:], packet.Checksum(b[:20], 0))
}

// CompareOverlapping runs Simulate twice on the same traffic (same seed):
// once with port overlapping off and once on (OverlapOn), to show how many
// concurrent flows one external address carries with and without it.
func CompareOverlapping(c SimConfig) (without, with SimResult, err error) {
	c.Overlap = OverlapOff
	if without, err = Simulate(c); err != nil {
		return
	}
	c.Overlap = OverlapOn
	with, err = Simulate(c)
	return
}

// SortedDrops returns the drop reasons of r sorted by count, largest first.
func (r SimResult) SortedDrops() []string {
	keys := make([]string, 0, len(r.Drops))
	for k := range r.Drops {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if r.Drops[a] != r.Drops[b] {
			if r.Drops[a] > r.Drops[b] {
				return -1
			}
			return 1
		}
		if a < b {
			return -1
		}
		return 1
	})
	return keys
}
