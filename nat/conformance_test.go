package nat_test

// NAT conformance suite, RFC 4787 (UDP) requirements U1..U14. Each test is
// named after the requirement ID of docs/nat-conformance.md (and the table
// in the project's NAT reference notes) and drives IPv4 packets through
// the engine with a fake clock. TCP (RFC 5382) is in
// conformance_tcp_test.go, ICMP (RFC 5508) in conformance_icmp_test.go,
// the RFC 7857 updates in conformance_update_test.go, CGN (RFC 6888) in
// conformance_cgn_test.go.

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/tuple"
)

var ping = udpMk("ping")
var pong = udpMk("pong")

// RFC 4787 REQ-1: one internal endpoint keeps one external endpoint
// whatever the destination (address or port).
func TestConformance_U1_EndpointIndependentMapping(t *testing.T) {
	for _, preset := range []string{"rfc-recommended", "full-cone", "cgn"} {
		t.Run(preset, func(t *testing.T) {
			r := presetRig(t, preset, nil)
			e1 := r.out(ping, hostX, srvA)
			e2 := r.out(ping, hostX, srvAb)
			e3 := r.out(ping, hostX, srvB)
			if e1 != e2 || e1 != e3 {
				t.Fatalf("one internal endpoint got %v, %v, %v for three destinations", e1, e2, e3)
			}
			// Replies from each destination reach the same internal endpoint.
			for _, s := range []netip.AddrPort{srvA, srvAb, srvB} {
				r.inTo(pong, s, e1, hostX)
			}
			// A second internal endpoint gets its own external endpoint.
			if e4 := r.out(ping, hostX2, srvA); e4 == e1 {
				t.Fatalf("two internal endpoints share %v", e1)
			}
		})
	}
	// Control: an address-and-port-dependent preset does not pass the same
	// check, so the check can tell the behaviours apart.
	r := presetRig(t, "symmetric", nil)
	if e1, e2 := r.out(ping, hostX, srvA), r.out(ping, hostX, srvAb); e1 == e2 {
		t.Fatalf("symmetric preset reused %v for a new destination port", e1)
	}
}

// RFC 4787 REQ-2: paired IP address pooling: every mapping of one internal
// host uses the same external address, with several in the pool.
func TestConformance_U2_PairedPooling(t *testing.T) {
	pool := []netip.Addr{extIP, extIP2, netip.MustParseAddr("203.0.113.3"), netip.MustParseAddr("203.0.113.4")}
	r := newRig(t, nat.Config{External: pool})
	used := map[netip.Addr]bool{}
	for h := 10; h < 30; h++ {
		host := netip.AddrFrom4([4]byte{192, 168, 1, byte(h)})
		var addr netip.Addr
		for p := uint16(40000); p < 40010; p++ {
			dst := srvA
			if p%2 == 1 {
				dst = srvB
			}
			ext := r.out(ping, netip.AddrPortFrom(host, p), dst)
			if addr.IsValid() && ext.Addr() != addr {
				t.Fatalf("host %v: mapping %d uses %v, earlier ones %v", host, p, ext.Addr(), addr)
			}
			addr = ext.Addr()
		}
		used[addr] = true
	}
	if len(used) < 2 {
		t.Errorf("20 hosts all on %v: the pool of %d addresses is not used", used, len(pool))
	}
	// When its address runs out of ports, a host is refused rather than
	// moved to another address of the pool.
	r = newRig(t, nat.Config{External: []netip.Addr{extIP, extIP2}, Ports: tuple.MustParsePortSet("50000-50001")})
	first := r.out(ping, hostX, srvA)
	r.out(ping, hostX2, srvA)
	if res := r.send(true, ping, netip.AddrPortFrom(hostX.Addr(), 40002), srvA); res.v.Action == nat.Forward {
		t.Fatalf("host with %v's ports all used was sent from %v", first.Addr(), res.pv.From())
	}
}

// RFC 4787 REQ-3: no port overloading: when the pool is exhausted a new
// internal endpoint is refused, never given a port already in use.
func TestConformance_U3_NoPortOverloading(t *testing.T) {
	r := newRig(t, nat.Config{Ports: tuple.MustParsePortSet("50000-50003")})
	seen := map[netip.AddrPort]netip.AddrPort{}
	for i := range 4 {
		in := netip.AddrPortFrom(hostX.Addr(), 40000+uint16(i))
		ext := r.out(ping, in, srvA)
		if prev, ok := seen[ext]; ok {
			t.Fatalf("%v and %v share %v", prev, in, ext)
		}
		seen[ext] = in
	}
	for _, in := range []netip.AddrPort{hostY, netip.AddrPortFrom(hostX.Addr(), 41000)} {
		res := r.send(true, ping, in, srvB) // srvB: a 5-tuple no mapping uses
		if res.v.Action == nat.Forward {
			t.Fatalf("pool of 4 exhausted, but %v was sent from %v (held by %v)", in, res.pv.From(), seen[res.pv.From()])
		}
		if res.v.Reason != nat.ReasonPortsExhausted {
			t.Errorf("refusal reason %q, want %q", res.v.Reason, nat.ReasonPortsExhausted)
		}
	}
	// The existing mappings are untouched.
	for ext, in := range seen {
		r.inTo(pong, srvA, ext, in)
	}
	// At scale (the table grows several times): 3000 endpoints on a
	// 3000-port pool all get distinct ports and all receive their replies;
	// one more is refused; after the timer all ports are free again.
	const n = 3000
	r = newRig(t, nat.Config{Ports: tuple.PortSetOf(tuple.PortRangeFrom(20000, 20000+n-1)), UDPTimeout: 2 * time.Minute})
	byExt := map[netip.AddrPort]netip.AddrPort{}
	for i := range n {
		in := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, 1, byte(i % 200)}), 30000+uint16(i))
		ext := r.out(ping, in, srvA)
		if prev, ok := byExt[ext]; ok {
			t.Fatalf("%v and %v share %v", prev, in, ext)
		}
		byExt[ext] = in
	}
	if res := r.send(true, ping, hostX2, srvA); res.v.Action == nat.Forward {
		t.Fatalf("pool of %d exhausted, but another endpoint got %v", n, res.pv.From())
	}
	for ext, in := range byExt {
		r.inTo(pong, srvA, ext, in)
	}
	r.at(2*time.Minute + 2*time.Second)
	if s := r.e.Stats(); s.Mappings != 0 || s.Sessions != 0 {
		t.Fatalf("after the timer: %d mappings, %d sessions", s.Mappings, s.Sessions)
	}
	r.out(ping, hostX2, srvA)

	// Port preservation does not overload either: two hosts with the same
	// source port get different external endpoints.
	r = presetRig(t, "full-cone", nil)
	same := netip.AddrPortFrom(hostY.Addr(), hostX.Port())
	eX, eY := r.out(ping, hostX, srvA), r.out(ping, same, srvA)
	if eX == eY {
		t.Fatalf("%v and %v share %v", hostX, same, eX)
	}
	r.inTo(pong, srvA, eX, hostX)
	r.inTo(pong, srvA, eY, same)
}

// RFC 4787 REQ-3a: the port class (0-1023 or 1024-65535) is kept.
func TestConformance_U3a_PortClassKept(t *testing.T) {
	r := newRig(t, nat.Config{Algorithm: 0}) // default: keyed hash, no preservation
	for _, p := range []uint16{1, 53, 123, 500, 1023, 1024, 4500, 40000, 65535} {
		ext := r.out(ping, netip.AddrPortFrom(hostX.Addr(), p), srvA)
		if (p < 1024) != (ext.Port() < 1024) {
			t.Errorf("internal port %d mapped to %d: class changed", p, ext.Port())
		}
	}
}

// RFC 4787 REQ-4: port parity preservation (RECOMMENDED), in the
// rfc-recommended preset and with Config.Parity.
func TestConformance_U4_PortParity(t *testing.T) {
	r := presetRig(t, "rfc-recommended", nil)
	for p := uint16(40000); p < 40040; p++ {
		h := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, 1, byte(10 + p%7)}), p)
		ext := r.out(ping, h, srvA)
		if ext.Port()%2 != p%2 {
			t.Errorf("internal port %d mapped to %d: parity changed", p, ext.Port())
		}
	}
}

// RFC 4787 REQ-5: the UDP mapping timer is at least 2 minutes: a mapping
// idle for just under 2 minutes still works (with the timer set to its
// minimum, 2 min, so the test pins the bound rather than the default).
func TestConformance_U5_UDPTimerAtLeast2Min(t *testing.T) {
	r := newRig(t, nat.Config{UDPTimeout: 2 * time.Minute})
	r.at(500 * time.Millisecond) // a sub-second start must not shorten the timer
	ext := r.out(ping, hostX, srvA)
	r.at(500*time.Millisecond + 2*time.Minute - time.Millisecond)
	r.inTo(pong, srvA, ext, hostX)
}

// RFC 4787 REQ-5a: shorter timers for well-known destination ports (MAY).
// The engine has one UDP timer for every port; this pins that a mapping
// to port 53 gets the same timer as any other.
func TestConformance_U5a_NoShorterTimerForWellKnownPorts(t *testing.T) {
	r := newRig(t, nat.Config{})
	dns := netip.MustParseAddrPort("198.51.100.53:53")
	ext := r.out(ping, hostX, dns)
	r.at(nat.DefaultUDPTimeout - time.Second)
	r.inTo(pong, dns, ext, hostX)
}

// RFC 4787 REQ-5b: the UDP timer is configurable: a 3-minute timer keeps
// the mapping to 3 minutes and drops it after.
func TestConformance_U5b_UDPTimerConfigurable(t *testing.T) {
	r := newRig(t, nat.Config{UDPTimeout: 3 * time.Minute})
	ext := r.out(ping, hostX, srvA)
	r.at(3*time.Minute - time.Second)
	r.inTo(pong, srvA, ext, hostX)
	r.out(ping, hostX, srvA) // refresh at 2:59
	r.at(2*(3*time.Minute-time.Second) + 2*time.Second)
	v := r.blocked(pong, srvA, ext)
	if v.Reason != nat.ReasonNoMapping {
		t.Errorf("after the timer: reason %q, want %q", v.Reason, nat.ReasonNoMapping)
	}
}

// RFC 4787 REQ-5c: the default UDP timer is at least 5 minutes
// (RECOMMENDED).
func TestConformance_U5c_DefaultUDPTimer5Min(t *testing.T) {
	r := newRig(t, nat.Config{})
	if got := r.e.Config().UDPTimeout; got < 5*time.Minute {
		t.Errorf("default UDPTimeout %v, want >= 5m", got)
	}
	ext := r.out(ping, hostX, srvA)
	r.at(5*time.Minute - time.Millisecond)
	r.inTo(pong, srvA, ext, hostX)
}

// RFC 4787 REQ-6: outbound refresh is true: each outbound packet restarts
// the timer.
func TestConformance_U6_OutboundRefresh(t *testing.T) {
	r := newRig(t, nat.Config{UDPTimeout: 2 * time.Minute})
	ext := r.out(ping, hostX, srvA)
	for i := 1; i <= 5; i++ {
		r.at(time.Duration(i) * 100 * time.Second)
		if got := r.out(ping, hostX, srvA); got != ext {
			t.Fatalf("refreshed mapping moved from %v to %v", ext, got)
		}
	}
	r.at(500*time.Second + 119*time.Second)
	r.inTo(pong, srvA, ext, hostX)
}

// RFC 4787 REQ-6a: inbound refresh MAY be true. It is off by default (an
// inbound packet alone does not extend the mapping) and on with
// Config.InboundRefresh.
func TestConformance_U6a_InboundRefresh(t *testing.T) {
	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprint("InboundRefresh=", on), func(t *testing.T) {
			r := newRig(t, nat.Config{UDPTimeout: 2 * time.Minute, InboundRefresh: on})
			ext := r.out(ping, hostX, srvA)
			r.at(100 * time.Second)
			r.inTo(pong, srvA, ext, hostX)
			r.at(100*time.Second + 119*time.Second) // 3:39 after the only outbound packet
			res := r.send(false, pong, srvA, ext)
			if got := res.v.Action == nat.Forward; got != on {
				t.Fatalf("2:19 after an inbound packet and 3:39 after the outbound one: forwarded=%v, want %v (%s)", got, on, res.v.Reason)
			}
		})
	}
}

// RFC 4787 REQ-8: filtering. EIF lets any remote endpoint in, ADF only the
// addresses the internal endpoint sent to, APDF only the endpoints; all
// three are configurable.
func TestConformance_U8_FilteringBehaviour(t *testing.T) {
	for _, tc := range []struct {
		f                 nat.Filtering
		sameAddr, otherIP bool // srvAb and srvB admitted after sending to srvA
	}{
		{nat.FilterEIF, true, true},
		{nat.FilterADF, true, false},
		{nat.FilterAPDF, false, false},
	} {
		t.Run(tc.f.String(), func(t *testing.T) {
			r := newRig(t, nat.Config{Filtering: tc.f})
			ext := r.out(ping, hostX, srvA)
			r.inTo(pong, srvA, ext, hostX)
			for _, c := range []struct {
				from netip.AddrPort
				want bool
			}{{srvAb, tc.sameAddr}, {srvB, tc.otherIP}} {
				res := r.send(false, pong, c.from, ext)
				if got := res.v.Action == nat.Forward; got != c.want {
					t.Errorf("%v -> %v: forwarded=%v, want %v (%s)", c.from, ext, got, c.want, res.v.Reason)
				}
				if res.v.Action == nat.Forward && res.pv.To() != hostX {
					t.Errorf("%v -> %v delivered to %v", c.from, ext, res.pv.To())
				}
			}
			// No packet reaches an external port without a mapping.
			if v := r.blocked(pong, srvA, netip.AddrPortFrom(ext.Addr(), ext.Port()^1)); v.Reason != nat.ReasonNoMapping {
				t.Errorf("packet to an unmapped port: %q, want %q", v.Reason, nat.ReasonNoMapping)
			}
		})
	}
}

// RFC 4787 REQ-9 and REQ-9a: hairpinning, with the hairpinned packet's
// source being the sender's external endpoint.
func TestConformance_U9_Hairpinning(t *testing.T) {
	r := newRig(t, nat.Config{})
	extX := r.out(ping, hostX, srvA)
	res := r.send(true, ping, hostY, extX)
	if res.v.Action != nat.Hairpin {
		t.Fatalf("Y -> X's external endpoint %v: %v (%s), want hairpin", extX, res.v.Action, res.v.Reason)
	}
	if res.pv.To() != hostX {
		t.Fatalf("hairpinned to %v, want %v", res.pv.To(), hostX)
	}
	extY := res.pv.From()
	if !r.isExternal(extY.Addr()) || extY == extX {
		t.Fatalf("hairpinned packet has source %v; REQ-9a wants Y's external endpoint", extY)
	}
	// Y's mapping is a real one: X answers to it and the answer hairpins to Y
	// from X's external endpoint; and it is the endpoint Y uses outside.
	res = r.send(true, pong, hostX, extY)
	if res.v.Action != nat.Hairpin || res.pv.To() != hostY || res.pv.From() != extX {
		t.Fatalf("X -> %v: %v to %v from %v, want hairpin to %v from %v", extY, res.v.Action, res.pv.To(), res.pv.From(), hostY, extX)
	}
	if got := r.out(ping, hostY, srvB); got != extY {
		t.Fatalf("Y's mapping outside is %v, hairpin source was %v", got, extY)
	}

	// Under APDF, hairpinned packets are filtered like any other, and two
	// hosts behind the NAT can still punch to each other's external
	// endpoints: X's first packet opens X's side and is filtered at Y's;
	// Y's packet then reaches X, and X's next one reaches Y.
	r = newRig(t, nat.Config{Filtering: nat.FilterAPDF})
	extX = r.out(ping, hostX, srvA)
	extY = r.out(ping, hostY, srvB)
	if res := r.send(true, ping, hostX, extY); res.v.Action == nat.Hairpin {
		t.Fatalf("APDF: X's first packet to %v hairpinned to %v though Y never sent to %v", extY, res.pv.To(), extX)
	}
	for _, step := range []struct{ from, to, wantTo, wantFrom netip.AddrPort }{
		{hostY, extX, hostX, extY},
		{hostX, extY, hostY, extX},
	} {
		res := r.send(true, pong, step.from, step.to)
		if res.v.Action != nat.Hairpin || res.pv.To() != step.wantTo || res.pv.From() != step.wantFrom {
			t.Fatalf("APDF punch %v -> %v: %v %v -> %v (%s), want hairpin %v -> %v", step.from, step.to, res.v.Action, res.pv.From(), res.pv.To(), res.v.Reason, step.wantFrom, step.wantTo)
		}
	}
}

// RFC 4787 REQ-10: ALGs off (the engine has none): a payload that an FTP or
// SIP ALG would rewrite passes byte for byte, with only the header fields
// translated (send checks the exact bytes).
func TestConformance_U10_NoALG(t *testing.T) {
	r := newRig(t, nat.Config{})
	for _, p := range []string{
		"PORT 192,168,1,10,156,64\r\n",
		"INVITE sip:bob@198.51.100.7 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.10:5060\r\n",
	} {
		r.out(udpMk(p), hostX, netip.AddrPortFrom(srvA.Addr(), 5060))
	}
}

// RFC 4787 REQ-11: deterministic behaviour: under port pressure an EIM NAT
// keeps EIM (the same external endpoint for a new destination) and its
// filtering, and refuses new endpoints instead of changing behaviour.
func TestConformance_U11_DeterministicUnderPressure(t *testing.T) {
	r := newRig(t, nat.Config{Filtering: nat.FilterADF, Ports: tuple.MustParsePortSet("50000-50007")})
	first := r.out(ping, hostX, srvA)
	for i := 1; i < 8; i++ {
		r.out(ping, netip.AddrPortFrom(hostY.Addr(), 41000+uint16(i)), srvA)
	}
	// The pool is full: a new destination still reuses the mapping...
	if got := r.out(ping, hostX, srvB); got != first {
		t.Fatalf("under port pressure the mapping for a new destination is %v, was %v", got, first)
	}
	// ...a new endpoint is refused rather than overloaded...
	if res := r.send(true, ping, hostX2, srvB); res.v.Action == nat.Forward {
		t.Fatalf("new endpoint sent from %v with the pool full", res.pv.From())
	}
	// ...and ADF still filters as before.
	r.inTo(pong, srvAb, first, hostX)
	r.blocked(pong, netip.MustParseAddrPort("198.51.100.9:3478"), first)
}

// RFC 4787 REQ-12: receipt of ICMP never terminates a mapping.
func TestConformance_U12_ICMPDoesNotKillMapping(t *testing.T) {
	r := newRig(t, nat.Config{})
	ext := r.out(ping, hostX, srvA)
	sent := udpPkt(ext, srvA, "ping")
	for _, tc := range []struct{ typ, code uint8 }{
		{icmpUnreachable, codePortUnreach}, {icmpUnreachable, codeHostUnreach},
		{icmpUnreachable, codeAdminProhib}, {icmpTimeExc, codeTTLExceeded},
	} {
		res := r.run(false, icmpErrPkt(srvA.Addr(), ext.Addr(), tc.typ, tc.code, sent, len(sent), 0))
		if res.v.Action != nat.Forward {
			t.Fatalf("ICMP %d/%d about %v -> %v: %v (%s), want forward", tc.typ, tc.code, ext, srvA, res.v.Action, res.v.Reason)
		}
	}
	r.at(time.Second)
	r.inTo(pong, srvA, ext, hostX)
	if got := r.out(ping, hostX, srvA); got != ext {
		t.Fatalf("after ICMP errors the mapping moved from %v to %v", ext, got)
	}
}

// RFC 4787 REQ-12a: ICMP errors are not filtered by source: an error from
// a router the host never sent to reaches the host, even with APDF.
func TestConformance_U12a_ICMPNotFilteredBySource(t *testing.T) {
	r := newRig(t, nat.Config{Filtering: nat.FilterAPDF})
	ext := r.out(ping, hostX, srvA)
	sent := udpPkt(ext, srvA, "ping")
	res := r.run(false, icmpErrPkt(routerR, ext.Addr(), icmpTimeExc, codeTTLExceeded, sent, 28, 0))
	if res.v.Action != nat.Forward {
		t.Fatalf("time exceeded from %v: %v (%s), want forward", routerR, res.v.Action, res.v.Reason)
	}
	want := icmpErrPkt(routerR, hostX.Addr(), icmpTimeExc, codeTTLExceeded, udpPkt(hostX, srvA, "ping"), 28, 0)
	if string(res.out) != string(want) {
		t.Fatalf("translated error\n got  % x\n want % x", res.out, want)
	}
}

// RFC 4787 REQ-12b: destination unreachable is translated: outer
// destination and embedded source go back to the internal endpoint, the
// type, code and the rest stay (checked byte for byte).
func TestConformance_U12b_DestinationUnreachableTranslated(t *testing.T) {
	r := newRig(t, nat.Config{})
	ext := r.out(ping, hostX, srvA)
	for _, quote := range []int{28, 33} { // the RFC 792 minimum, and the whole packet
		sent := udpPkt(ext, srvA, "ping")
		res := r.run(false, icmpErrPkt(srvA.Addr(), ext.Addr(), icmpUnreachable, codePortUnreach, sent, quote, 0))
		if res.v.Action != nat.Forward {
			t.Fatalf("port unreachable: %v (%s)", res.v.Action, res.v.Reason)
		}
		want := icmpErrPkt(srvA.Addr(), hostX.Addr(), icmpUnreachable, codePortUnreach, udpPkt(hostX, srvA, "ping"), quote, 0)
		if string(res.out) != string(want) {
			t.Fatalf("quote %d: translated error\n got  % x\n want % x", quote, res.out, want)
		}
	}
}

// RFC 4787 REQ-13: a packet with DF=1 that would need fragmenting gets
// "fragmentation needed". Not applicable: the engine translates headers in
// place, never changes a packet's length and has no MTU; the link that
// forwards the packet owns fragmentation. This pins that a full-size DF=1
// packet keeps its length and DF bit, and that "fragmentation needed" from
// the path comes back to the host with its MTU intact (path MTU discovery).
func TestConformance_U13_DFPacketsAndPMTUD(t *testing.T) {
	r := newRig(t, nat.Config{})
	big := make([]byte, 1472)
	for i := range big {
		big[i] = byte(i)
	}
	m := udpMk(string(big))
	ext := r.out(m, hostX, srvA) // exact bytes: length 1500 and DF kept
	sent := m(ext, srvA)
	res := r.run(false, icmpErrPkt(routerR, ext.Addr(), icmpUnreachable, codeFragNeeded, sent, 28, 1400))
	if res.v.Action != nat.Forward {
		t.Fatalf("fragmentation needed: %v (%s)", res.v.Action, res.v.Reason)
	}
	want := icmpErrPkt(routerR, hostX.Addr(), icmpUnreachable, codeFragNeeded, m(hostX, srvA), 28, 1400)
	if string(res.out) != string(want) {
		t.Fatalf("translated frag-needed\n got  % x\n want % x", res.out, want)
	}
}

// RFC 4787 REQ-14: fragments in order and out of order (MUST). The engine
// translates the first fragment like a packet and remembers it; later
// fragments get the same address rewrite. Each fragment out must equal the
// same fragment of the expected translated datagram, byte for byte (so the
// transport checksum in the first fragment is right for the reassembled
// datagram). Outbound fragments may come in any order (paired pooling
// fixes the external address); an inbound fragment that arrives before its
// first fragment is dropped: inbound out-of-order is not supported.
func TestConformance_U14_Fragments(t *testing.T) {
	payload := "0123456789abcdef0123456789abcdefXYZ" // 8+35 bytes of UDP
	udp := udpMk(payload)
	split := func(b []byte) [][]byte { return fragment(b, 0, 16, 32) }
	// sendFrags sends the fragments in the given order and returns what
	// came out, by fragment index.
	sendFrags := func(r *rig, outbound bool, frags [][]byte, order ...int) [][]byte {
		t.Helper()
		out := make([][]byte, len(frags))
		for _, i := range order {
			b := append([]byte(nil), frags[i]...)
			res := r.run(outbound, b)
			if res.v.Action != nat.Forward {
				t.Fatalf("fragment %d (outbound=%v): %v (%s)", i, outbound, res.v.Action, res.v.Reason)
			}
			out[i] = res.out
		}
		return out
	}
	// same compares each fragment out with the expected one, byte for byte
	// except the IPv4 ID: the engine may give a fragmented datagram a new
	// ID (RFC 6864), which must then be the same in all its fragments.
	same := func(got, want [][]byte) {
		t.Helper()
		for i := range want {
			w := withIPID(want[i], uint16(got[0][4])<<8|uint16(got[0][5]))
			if string(got[i]) != string(w) {
				t.Fatalf("fragment %d\n got  % x\n want % x", i, got[i], w)
			}
		}
	}
	t.Run("outbound in order", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		out := sendFrags(r, true, split(udp(hostX, srvA)), 0, 1, 2)
		ext := mustParse(t, out[0]).From()
		same(out, split(udp(ext, srvA)))
		r.inTo(pong, srvA, ext, hostX) // and it is a working mapping
	})
	t.Run("outbound out of order", func(t *testing.T) {
		r := newRig(t, nat.Config{External: []netip.Addr{extIP, extIP2}})
		out := sendFrags(r, true, split(udp(hostX, srvA)), 2, 1, 0)
		ext := mustParse(t, out[0]).From()
		same(out, split(udp(ext, srvA)))
	})
	t.Run("outbound out of order, presets, 3 addresses", func(t *testing.T) {
		pool := []netip.Addr{extIP, extIP2, netip.MustParseAddr("203.0.113.3")}
		for _, preset := range []string{"rfc-recommended", "cgn", "deterministic", "linux-masquerade"} {
			for i := range 12 {
				r := presetRig(t, preset, func(c *nat.Config) { c.External = pool })
				h := netip.AddrPortFrom(subscriber(i*17), 40000)
				out := sendFrags(r, true, split(udp(h, srvA)), 1, 2, 0)
				ext := mustParse(t, out[0]).From()
				same(out, split(udp(ext, srvA)))
			}
		}
	})
	t.Run("inbound in order", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		ext := r.out(ping, hostX, srvA)
		out := sendFrags(r, false, split(udp(srvA, ext)), 0, 1, 2)
		same(out, split(udp(srvA, hostX)))
	})
	t.Run("TCP inbound in order", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		ext := r.tcpOpen(hostX, web)
		m := func(s, d netip.AddrPort) []byte {
			return withTCPPayload(tcpPkt(s, d, tcpACK|tcpPSH, 5001, 1001), payload)
		}
		out := sendFrags(r, false, fragment(m(web, ext), 0, 24, 48), 0, 1, 2)
		same(out, fragment(m(web, hostX), 0, 24, 48))
	})
	// released sends the held fragments' first fragment and returns the
	// fragments out by index: the first from the verdict, the held ones
	// from Engine.Released, placed by their offset.
	released := func(r *rig, outbound bool, frags [][]byte, first int, want nat.Action, into [][]byte) {
		t.Helper()
		res := r.run(outbound, append([]byte(nil), frags[first]...))
		if res.v.Action != want || !res.v.Released {
			t.Fatalf("first fragment after held ones: %v (%s), released=%v; want %v, released", res.v.Action, res.v.Reason, res.v.Released, want)
		}
		into[first] = res.out
		for _, b := range r.e.Released() {
			v := mustParse(t, b)
			for i, f := range frags {
				if fv, _ := parse(f, false); fv.FragOffset == v.FragOffset {
					into[i] = append([]byte(nil), b...)
				}
			}
		}
	}
	t.Run("inbound out of order", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		ext := r.out(ping, hostX, srvA)
		frags := split(udp(srvA, ext))
		for _, i := range []int{2, 1} {
			res := r.run(false, append([]byte(nil), frags[i]...))
			if res.v.Action != nat.Drop || res.v.Reason != nat.ReasonFragmentHeld {
				t.Fatalf("fragment %d before the first: %v (%s), want held (%s)", i, res.v.Action, res.v.Reason, nat.ReasonFragmentHeld)
			}
		}
		out := make([][]byte, len(frags))
		released(r, false, frags, 0, nat.Forward, out)
		same(out, split(udp(srvA, hostX)))
	})
	t.Run("hairpinned, in order and out of order", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		extY := r.out(ping, hostY, srvA)
		extX := r.out(ping, hostX, srvB)
		frags := split(udp(hostX, extY))
		out := make([][]byte, len(frags))
		for _, i := range []int{0, 1, 2} {
			res := r.run(true, append([]byte(nil), frags[i]...))
			if res.v.Action != nat.Hairpin {
				t.Fatalf("hairpinned fragment %d: %v (%s)", i, res.v.Action, res.v.Reason)
			}
			out[i] = res.out
		}
		same(out, split(udp(extX, hostY)))
		frags = split(withIPID(udp(hostX, extY), 2))
		for _, i := range []int{1, 2} {
			if res := r.run(true, append([]byte(nil), frags[i]...)); res.v.Action != nat.Drop || res.v.Reason != nat.ReasonFragmentHeld {
				t.Fatalf("hairpinned fragment %d before the first: %v (%s)", i, res.v.Action, res.v.Reason)
			}
		}
		out = make([][]byte, len(frags))
		released(r, true, frags, 0, nat.Hairpin, out)
		same(out, split(withIPID(udp(extX, hostY), 2)))
	})
}
