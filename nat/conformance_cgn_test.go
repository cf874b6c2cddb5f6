package nat_test

// NAT conformance suite, RFC 6888 (carrier-grade NAT) requirements C1..C15,
// mostly against the "cgn" preset.

import (
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/tuple"
)

// cgnPool is a non-contiguous external pool.
var cgnPool = []netip.Addr{
	netip.MustParseAddr("203.0.113.1"),
	netip.MustParseAddr("203.0.113.77"),
	netip.MustParseAddr("192.0.2.200"),
}

func subscriber(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, 1, byte(10 + i)}) }

// RFC 6888 REQ-1: a CGN meets the behavioural requirements of each
// protocol it forwards: the core UDP, TCP and ICMP checks, on the cgn
// preset.
func TestConformance_C1_CGNMeetsTransportRequirements(t *testing.T) {
	r := presetRig(t, "cgn", func(c *nat.Config) { c.External = cgnPool })
	cfg := r.e.Config()
	if cfg.UDPTimeout < 2*time.Minute || cfg.TCPEstablished < 2*time.Hour+4*time.Minute ||
		cfg.TCPTransitory < 4*time.Minute || cfg.ICMPTimeout < time.Minute || cfg.NoHairpinning ||
		cfg.Mapping != nat.MappingEIM || cfg.Overloading || cfg.SYNHold < 6*time.Second {
		t.Fatalf("cgn preset violates a transport MUST: %+v", cfg)
	}
	// U1/T1: EIM.
	e := r.out(ping, hostX, srvA)
	if e2 := r.out(ping, hostX, srvB); e2 != e {
		t.Fatalf("UDP mapping %v then %v", e, e2)
	}
	te := r.out(tcpMk(tcpSYN, 1, 0), hostX, web)
	if te2 := r.out(tcpMk(tcpSYN, 1, 0), hostX, web2); te2 != te {
		t.Fatalf("TCP mapping %v then %v", te, te2)
	}
	// T2a: a crossing SYN.
	r.inTo(tcpMk(tcpSYN, 9, 0), web, te, hostX)
	// U9: hairpinning.
	if res := r.send(true, ping, hostY, e); res.v.Action != nat.Hairpin || res.pv.To() != hostX {
		t.Fatalf("hairpin: %v to %v", res.v.Action, res.pv.To())
	}
	// I1: queries.
	ie := r.echoOut(hostX.Addr(), 3, srvA.Addr(), 1)
	if !r.echoReplyIn(srvA.Addr(), ie, hostX.Addr(), 3, 1) {
		t.Fatal("echo reply not delivered")
	}
	// U5: timer.
	r.at(2*time.Minute - time.Millisecond)
	r.inTo(pong, srvB, e, hostX)
}

// RFC 6888 REQ-2: paired pooling is the default, in the cgn preset and in
// the zero Config.
func TestConformance_C2_PairedPoolingDefault(t *testing.T) {
	if (nat.Config{}).Pooling != nat.PoolingPaired {
		t.Fatal("the zero Config's pooling is not paired")
	}
	r := presetRig(t, "cgn", func(c *nat.Config) { c.External = cgnPool })
	if r.e.Config().Pooling != nat.PoolingPaired {
		t.Fatalf("cgn pooling %v", r.e.Config().Pooling)
	}
	used := map[netip.Addr]bool{}
	for i := range 12 {
		var addr netip.Addr
		for p := range 20 {
			ext := r.out(ping, netip.AddrPortFrom(subscriber(i), 40000+uint16(p)), srvA)
			if addr.IsValid() && ext.Addr() != addr {
				t.Fatalf("subscriber %v on %v and %v", subscriber(i), addr, ext.Addr())
			}
			addr = ext.Addr()
		}
		used[addr] = true
	}
	if len(used) < 2 {
		t.Errorf("12 subscribers all on %v", used)
	}
}

// RFC 6888 REQ-3: non-contiguous external pools (addresses and ports).
func TestConformance_C3_NonContiguousPool(t *testing.T) {
	ports := tuple.MustParsePortSet("1024-1535,30000-30511")
	r := newRig(t, nat.Config{External: cgnPool, Ports: ports, MixClasses: true})
	used := map[netip.Addr]int{}
	for i := range 40 {
		for p := range 3 {
			ext := r.out(ping, netip.AddrPortFrom(subscriber(i), 40000+uint16(p)), srvA)
			if !ports.Contains(ext.Port()) {
				t.Fatalf("port %d is not in the pool %v", ext.Port(), ports)
			}
			used[ext.Addr()]++
		}
	}
	if len(used) != len(cgnPool) {
		t.Errorf("addresses used: %v; want all of %v", used, cgnPool)
	}
}

// RFC 6888 REQ-4: the external ports (and ICMP identifiers) of one
// subscriber can be limited; other subscribers are unaffected.
func TestConformance_C4_PerSubscriberPortLimit(t *testing.T) {
	r := newRig(t, nat.Config{MaxPortsPerSubscriber: 3})
	for p := range 3 {
		r.out(ping, netip.AddrPortFrom(hostX.Addr(), 40000+uint16(p)), srvA)
	}
	res := r.send(true, ping, netip.AddrPortFrom(hostX.Addr(), 40003), srvA)
	if res.v.Action == nat.Forward || res.v.Reason != nat.ReasonPortLimit {
		t.Fatalf("fourth port: %v (%s), want refused (%s)", res.v.Action, res.v.Reason, nat.ReasonPortLimit)
	}
	// New destinations through existing mappings are not new ports.
	r.out(ping, netip.AddrPortFrom(hostX.Addr(), 40000), srvB)
	r.out(ping, hostY, srvA)
	// With the cgn preset, blocks bound it: 8 blocks of 512 ports.
	c := presetRig(t, "cgn", nil)
	n := 0
	for p := range 4200 {
		res := c.send(true, ping, netip.AddrPortFrom(hostX.Addr(), 10000+uint16(p)), srvA)
		if res.v.Action != nat.Forward {
			break
		}
		n++
	}
	if n != 8*512 {
		t.Fatalf("cgn subscriber got %d ports, want 8 blocks of 512 = 4096", n)
	}
}

// RFC 6888 REQ-5: state memory per subscriber and in total can be limited.
func TestConformance_C5_StateLimits(t *testing.T) {
	r := newRig(t, nat.Config{MaxSessionsPerSubscriber: 2})
	r.out(ping, hostX, srvA)
	r.out(ping, hostX, srvB)
	if res := r.send(true, ping, hostX, srvAb); res.v.Action == nat.Forward || res.v.Reason != nat.ReasonSessionLimit {
		t.Fatalf("third session of one subscriber: %v (%s)", res.v.Action, res.v.Reason)
	}
	r.out(ping, hostY, srvA)

	r = newRig(t, nat.Config{MaxSessions: 3})
	r.out(ping, hostX, srvA)
	r.out(ping, hostY, srvA)
	r.out(ping, hostX2, srvA)
	if res := r.send(true, ping, netip.MustParseAddrPort("192.168.1.30:1234"), srvA); res.v.Action == nat.Forward || res.v.Reason != nat.ReasonSessionLimit {
		t.Fatalf("fourth session: %v (%s)", res.v.Action, res.v.Reason)
	}
	if s := r.e.Stats().Sessions; s != 3 {
		t.Fatalf("%d sessions, limit 3", s)
	}
}

// RFC 6888 REQ-6: translation can be turned off for specific destination
// addresses and ports (Config.NoTranslate, NoTranslatePorts): packets to
// them leave unchanged and their replies come in unchanged, while other
// destinations are translated as usual.
func TestConformance_C6_NoTranslationPerDestination(t *testing.T) {
	r := presetRig(t, "cgn", func(c *nat.Config) { c.NoTranslate = []netip.Prefix{netip.PrefixFrom(srvA.Addr(), 32)} })
	for _, tc := range []struct {
		outbound bool
		b        []byte
	}{
		{true, udpPkt(hostX, srvA, "ping")},
		{true, tcpPkt(hostX, netip.AddrPortFrom(srvA.Addr(), 443), tcpSYN, 1, 0)},
		{true, icmpEchoPkt(hostX.Addr(), srvA.Addr(), icmpEcho, 9, 1)},
		{false, udpPkt(srvA, hostX, "pong")},
		{false, tcpPkt(netip.AddrPortFrom(srvA.Addr(), 443), hostX, tcpSYN|tcpACK, 7, 2)},
	} {
		orig := append([]byte(nil), tc.b...)
		res := r.run(tc.outbound, tc.b)
		if res.v.Action != nat.Forward || string(res.out) != string(orig) {
			t.Fatalf("outbound=%v %v -> %v: %v (%s), changed=%v; want forwarded unchanged", tc.outbound, res.pv.From(), res.pv.To(), res.v.Action, res.v.Reason, string(res.out) != string(orig))
		}
	}
	if s := r.e.Stats(); s.Untranslated != 5 || s.Mappings != 0 {
		t.Fatalf("stats: %d untranslated, %d mappings", s.Untranslated, s.Mappings)
	}
	// Other destinations are translated, and nobody else reaches inside
	// addresses directly.
	r.out(ping, hostX, srvB)
	if res := r.run(false, udpPkt(srvB, hostX, "pong")); res.v.Action == nat.Forward {
		t.Fatalf("%v reached the internal address %v untranslated", srvB, hostX)
	}
	// Limited to ports: only port 53 of the prefix is exempt.
	r = newRig(t, nat.Config{NoTranslate: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}, NoTranslatePorts: tuple.MustParsePortSet("53")})
	dns := netip.AddrPortFrom(srvA.Addr(), 53)
	b := udpPkt(hostX, dns, "q")
	if res := r.run(true, b); res.v.Action != nat.Forward || res.pv.From() != hostX {
		t.Fatalf("to %v: %v from %v, want untranslated", dns, res.v.Action, res.pv.From())
	}
	r.out(ping, hostX, srvA) // port 3478 of the same address is translated

	// Fragments of exempt traffic stay untranslated in both directions
	// (also with NoTranslatePorts, where later fragments carry no port).
	for _, ports := range []string{"", "3478"} {
		cfg := nat.Config{NoTranslate: []netip.Prefix{netip.PrefixFrom(srvA.Addr(), 32)}}
		if ports != "" {
			cfg.NoTranslatePorts = tuple.MustParsePortSet(ports)
		}
		r := newRig(t, cfg)
		for _, dir := range []bool{true, false} {
			b := udpPkt(hostX, srvA, "0123456789abcdef0123")
			if !dir {
				b = udpPkt(srvA, hostX, "0123456789abcdef0123")
			}
			for i, f := range fragment(b, 0, 16) {
				orig := append([]byte(nil), f...)
				res := r.run(dir, f)
				if res.v.Action != nat.Forward || string(res.out) != string(orig) {
					t.Fatalf("NoTranslatePorts=%q outbound=%v fragment %d: %v (%s), changed=%v; want forwarded unchanged", ports, dir, i, res.v.Action, res.v.Reason, string(res.out) != string(orig))
				}
			}
		}
	}
}

// RFC 6888 REQ-7: EIF is recommended; the cgn preset has it.
func TestConformance_C7_CGNEndpointIndependentFiltering(t *testing.T) {
	r := presetRig(t, "cgn", nil)
	if r.e.Config().Filtering != nat.FilterEIF {
		t.Fatalf("cgn filtering %v", r.e.Config().Filtering)
	}
	ext := r.out(ping, hostX, srvA)
	r.inTo(pong, netip.MustParseAddrPort("198.51.100.99:9"), ext, hostX)
}

// RFC 6888 REQ-8: a freed external port is not given to a new mapping for
// 120 s.
func TestConformance_C8_PortQuarantine120s(t *testing.T) {
	r := newRig(t, nat.Config{Ports: tuple.MustParsePortSet("50000-50001"), UDPTimeout: 2 * time.Minute, Quarantine: 120 * time.Second})
	eX := r.out(ping, hostX, srvA)
	eY := r.out(ping, hostY, srvA)
	z := netip.MustParseAddrPort("192.168.1.30:1234")
	refused := func(at time.Duration) {
		t.Helper()
		r.at(at)
		if res := r.send(true, ping, z, srvA); res.v.Action == nat.Forward {
			t.Fatalf("at %v %v got %v; %v was freed at 2m2s", at, z, res.pv.From(), eX)
		}
	}
	r.at(60 * time.Second)
	r.out(ping, hostY, srvA) // Y stays; X's mapping expires at 2:01
	refused(2*time.Minute + 2*time.Second)
	r.at(170 * time.Second)
	r.out(ping, hostY, srvA)
	refused(2*time.Minute + 2*time.Second + 118*time.Second)
	r.at(2*time.Minute + 2*time.Second + 121*time.Second)
	if got := r.out(ping, z, srvA); got != eX {
		t.Fatalf("after the quarantine %v got %v, want the freed %v", z, got, eX)
	}
	if got := r.out(ping, hostY, srvA); got != eY {
		t.Fatalf("Y moved from %v to %v", eY, got)
	}
	// The cgn preset has the 120 s quarantine.
	if q := presetRig(t, "cgn", nil).e.Config().Quarantine; q < 120*time.Second {
		t.Fatalf("cgn quarantine %v", q)
	}
}

// RFC 6888 REQ-10: manageability: counters by verdict and reason, and
// mapping events.
func TestConformance_C10_Manageability(t *testing.T) {
	var evs []nat.Event
	r := newRig(t, nat.Config{UDPTimeout: 2 * time.Minute, Events: nat.EventFunc(func(e nat.Event) { evs = append(evs, e) })})
	ext := r.out(ping, hostX, srvA)
	r.blocked(pong, srvA, netip.AddrPortFrom(ext.Addr(), ext.Port()+1))
	r.at(2*time.Minute + 2*time.Second)
	s := r.e.Stats()
	if s.Outbound != 1 || s.Inbound != 1 || s.Forwarded != 1 || s.Dropped != 1 || s.Drops[nat.ReasonNoMapping] != 1 || s.Expired != 1 {
		t.Fatalf("stats %+v", s)
	}
	if len(evs) != 2 || evs[0].Kind != nat.MappingCreated || evs[1].Kind != nat.MappingDeleted ||
		evs[0].Internal != hostX || evs[0].External != ext || evs[1].Reason != nat.ReasonIdle {
		t.Fatalf("events %+v", evs)
	}
}

// RFC 6888 REQ-11: when no mapping can be created the packet is dropped
// (with ICMP 3/13 to the sender, see I8) and no existing mapping is
// deleted to make room.
func TestConformance_C11_QuotaHitKeepsMappings(t *testing.T) {
	r := newRig(t, nat.Config{MaxPortsPerSubscriber: 2, Ports: tuple.MustParsePortSet("50000-50002")})
	e1 := r.out(ping, hostX, srvA)
	e2 := r.out(ping, hostX2, srvA)
	eY := r.out(ping, hostY, srvA)
	for i := range 5 {
		in := netip.AddrPortFrom(hostX.Addr(), 41000+uint16(i))
		if res := r.send(true, ping, in, srvB); res.v.Action == nat.Forward {
			t.Fatalf("over quota: %v sent from %v", in, res.pv.From())
		} else if res.v.Action == nat.Reply && (res.pv.ICMPType != icmpUnreachable || res.pv.Dst != hostX.Addr()) {
			t.Fatalf("reply %d/%d to %v", res.pv.ICMPType, res.pv.ICMPCode, res.pv.Dst)
		}
		z := netip.AddrPortFrom(netip.MustParseAddr("192.168.1.40"), 1000+uint16(i))
		if res := r.send(true, ping, z, srvB); res.v.Action == nat.Forward {
			t.Fatalf("pool exhausted: %v sent from %v", z, res.pv.From())
		}
	}
	r.inTo(pong, srvA, e1, hostX)
	r.inTo(pong, srvA, e2, hostX2)
	r.inTo(pong, srvA, eY, hostY)
}

// RFC 6888 REQ-12: destinations are not logged by default; only with
// Config.LogDestinations.
func TestConformance_C12_NoDestinationLogging(t *testing.T) {
	for _, logDst := range []bool{false, true} {
		var evs []nat.Event
		r := presetRig(t, "cgn", func(c *nat.Config) {
			c.LogDestinations = logDst
			c.Events = nat.EventFunc(func(e nat.Event) { evs = append(evs, e) })
		})
		r.out(ping, hostX, srvA)
		r.out(tcpMk(tcpSYN, 1, 0), hostX, web)
		r.out(ping, hostX, srvB)
		r.at(10 * time.Minute)
		sawRemote := false
		for _, e := range evs {
			if e.Remote.IsValid() {
				sawRemote = true
				if !logDst {
					t.Errorf("LogDestinations off, but event %v carries destination %v", e.Kind, e.Remote)
				}
			}
			if !logDst && (e.Kind == nat.SessionCreated || e.Kind == nat.SessionDeleted) {
				t.Errorf("LogDestinations off, but a %v event was emitted", e.Kind)
			}
		}
		if logDst && !sawRemote {
			t.Errorf("LogDestinations on, but no event carries a destination: %+v", evs)
		}
	}
}

// RFC 6888 REQ-13: port utilisation: without port blocks every port of the
// pool can be used.
func TestConformance_C13_PortUtilisation(t *testing.T) {
	ports := tuple.MustParsePortSet("50000-50063")
	r := newRig(t, nat.Config{Ports: ports})
	seen := map[uint16]bool{}
	for i := range 64 {
		ext := r.out(ping, netip.AddrPortFrom(subscriber(i%8), 40000+uint16(i)), srvA)
		seen[ext.Port()] = true
	}
	if len(seen) != ports.Len() {
		t.Fatalf("%d distinct ports used of %d", len(seen), ports.Len())
	}
}

// RFC 6888 REQ-14: log volume: with port blocks one block event covers
// many mappings; deterministic mapping (RFC 7422) needs no per-subscriber
// log at all.
func TestConformance_C14_LogVolume(t *testing.T) {
	count := func(preset string) (blocks, mappings int) {
		r := presetRig(t, preset, func(c *nat.Config) {
			c.Events = nat.EventFunc(func(e nat.Event) {
				switch e.Kind {
				case nat.BlockAllocated:
					blocks++
				case nat.MappingCreated:
					mappings++
				}
			})
		})
		for p := range 100 {
			r.out(ping, netip.AddrPortFrom(hostX.Addr(), 40000+uint16(p)), srvA)
		}
		return
	}
	if b, m := count("cgn"); b != 1 || m != 100 {
		t.Fatalf("cgn: %d block events, %d mapping events for 100 mappings; want 1 block", b, m)
	}
	if b, _ := count("deterministic"); b != 0 {
		t.Fatalf("deterministic: %d block events, want 0 (the block is computed)", b)
	}
	// Deterministic mapping needs no log: every external endpoint a
	// subscriber gets lies in the block computed for it, and maps back.
	r := presetRig(t, "deterministic", nil)
	det := r.e.Deterministic()
	for i := range 6 {
		sub := subscriber(i * 37)
		addr, block, ok := det.Forward(sub)
		if !ok {
			t.Fatalf("no deterministic block for %v", sub)
		}
		for p := range 5 {
			ext := r.out(ping, netip.AddrPortFrom(sub, 40000+uint16(p)), srvA)
			if ext.Addr() != addr || !block.Contains(ext.Port()) {
				t.Fatalf("%v got %v, outside its block %v %v", sub, ext, addr, block)
			}
			if back, ok := det.Reverse(ext); !ok || back != sub {
				t.Fatalf("Reverse(%v) = %v, %v; want %v", ext, back, ok, sub)
			}
		}
	}
}

// RFC 6888 REQ-15: ports hard to guess: with the default algorithm the
// first port of a subscriber depends on a secret the attacker lacks.
func TestConformance_C15_PortsHardToGuess(t *testing.T) {
	firsts := map[uint16]bool{}
	for range 8 {
		r := presetRig(t, "cgn", nil)
		firsts[r.out(ping, hostX, srvA).Port()] = true
	}
	if len(firsts) < 6 {
		t.Fatalf("8 CGNs gave the same subscriber only %d distinct first ports: %v", len(firsts), firsts)
	}
}

// RFC 6888 REQ-4 with port overlapping (RFC 7857 §3): a subscriber must not
// exceed its port limit by way of overlapping. With MaxPortsPerSubscriber 3
// it gets three distinct external ports; a fourth flow to the same remote
// endpoint (which would need a fourth port) is refused with the port limit,
// flows to other remotes overlap onto its own three ports, another
// subscriber is unaffected, and a port comes back when its mappings expire.
func TestConformance_C4_OverlappingKeepsThePortLimit(t *testing.T) {
	r := newRig(t, nat.Config{Overlapping: true, Filtering: nat.FilterAPDF, MaxPortsPerSubscriber: 3,
		UDPTimeout: 2 * time.Minute})
	ports := map[netip.AddrPort]bool{}
	for p := range 3 {
		ports[r.out(ping, netip.AddrPortFrom(hostX.Addr(), 40000+uint16(p)), srvA)] = true
	}
	if len(ports) != 3 {
		t.Fatalf("three flows to one remote use %d external ports", len(ports))
	}
	res := r.send(true, ping, netip.AddrPortFrom(hostX.Addr(), 40003), srvA)
	if res.v.Action == nat.Forward || res.v.Reason != nat.ReasonPortLimit {
		t.Fatalf("fourth port by way of overlapping: %v (%s), want refused (%s)", res.v.Action, res.v.Reason, nat.ReasonPortLimit)
	}
	for p := range 20 {
		dst := netip.AddrPortFrom(srvB.Addr(), 1000+uint16(p))
		if ext := r.out(ping, netip.AddrPortFrom(hostX.Addr(), 41000+uint16(p)), dst); !ports[ext] {
			t.Fatalf("flow %d to %v got %v, not one of the subscriber's ports %v", p, dst, ext, ports)
		}
	}
	r.out(ping, hostY, srvA) // another subscriber
	r.at(3 * time.Minute)    // every mapping expired
	for p := range 3 {
		r.out(ping, netip.AddrPortFrom(hostX.Addr(), 42000+uint16(p)), srvA)
	}
	if res := r.send(true, ping, netip.AddrPortFrom(hostX.Addr(), 42003), srvA); res.v.Reason != nat.ReasonPortLimit {
		t.Fatalf("after expiry, fourth port: %v (%s)", res.v.Action, res.v.Reason)
	}
}

// RFC 6888 REQ-5 with port overlapping: overlapping shares ports, not the
// session limit; a subscriber's third session is refused at
// MaxSessionsPerSubscriber 2 as without overlapping.
func TestConformance_C5_OverlappingKeepsTheSessionLimit(t *testing.T) {
	r := newRig(t, nat.Config{Overlapping: true, Filtering: nat.FilterAPDF, MaxSessionsPerSubscriber: 2})
	r.out(ping, hostX, srvA)
	r.out(ping, hostX2, srvB)
	if res := r.send(true, ping, netip.AddrPortFrom(hostX.Addr(), 40005), srvAb); res.v.Action == nat.Forward || res.v.Reason != nat.ReasonSessionLimit {
		t.Fatalf("third session by way of overlapping: %v (%s)", res.v.Action, res.v.Reason)
	}
	r.out(ping, hostY, srvA)
}
