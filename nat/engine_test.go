package nat

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/packet"
	"github.com/portspace/portspace/tuple"
)

// TestMappingMatrix: one internal endpoint talks to srv1, srv1b (same
// address, other port) and srv2 (other address); the external endpoints
// must be equal or different as each mapping behaviour says (RFC 4787 §4.1).
func TestMappingMatrix(t *testing.T) {
	for _, tc := range []struct {
		m                Mapping
		samePort, sameIP bool // srv1b and srv2 reuse srv1's external endpoint
	}{
		{MappingEIM, true, true},
		{MappingADM, true, false},
		{MappingAPDM, false, false},
	} {
		t.Run(tc.m.String(), func(t *testing.T) {
			e := newEngine(t, testConfig(func(c *Config) { c.Mapping = tc.m }))
			x1 := mapUDP(t, e, hostA, srv1, t0)
			x1b := mapUDP(t, e, hostA, srv1b, t0)
			x2 := mapUDP(t, e, hostA, srv2, t0)
			if (x1 == x1b) != tc.samePort || (x1 == x2) != tc.sameIP {
				t.Fatalf("external endpoints %v %v %v", x1, x1b, x2)
			}
			if again := mapUDP(t, e, hostA, srv1, t0); again != x1 {
				t.Fatalf("second packet of a flow mapped to %v, first %v", again, x1)
			}
			if x1.Addr() != extA {
				t.Fatalf("external address %v", x1.Addr())
			}
		})
	}
}

// TestFilteringMatrix: after hostA sent to srv1, inbound packets from srv1,
// srv1b and srv2 pass or not as each filtering behaviour says (RFC 4787 §5).
func TestFilteringMatrix(t *testing.T) {
	for _, tc := range []struct {
		f             Filtering
		fromB, from2  bool
		reasonBlocked Reason
	}{
		{FilterEIF, true, true, ReasonNone},
		{FilterADF, true, false, ReasonFiltered},
		{FilterAPDF, false, false, ReasonFiltered},
	} {
		t.Run(tc.f.String(), func(t *testing.T) {
			e := newEngine(t, testConfig(func(c *Config) { c.Filtering = tc.f }))
			x := mapUDP(t, e, hostA, srv1, t0)
			for _, c := range []struct {
				from netip.AddrPort
				want bool
			}{{srv1, true}, {srv1b, tc.fromB}, {srv2, tc.from2}} {
				v, b := in(e, udpPkt(t, c.from, x), t0)
				if (v.Action == Forward) != c.want {
					t.Fatalf("inbound from %v: %v %s, want forward=%v", c.from, v.Action, v.Reason, c.want)
				}
				if c.want {
					if d := decode(t, b); d.dst != hostA || d.src != c.from {
						t.Fatalf("inbound translated to %v->%v", d.src, d.dst)
					}
				} else if v.Reason != tc.reasonBlocked {
					t.Fatalf("reason %q, want %q", v.Reason, tc.reasonBlocked)
				}
			}
			if v, _ := in(e, udpPkt(t, srv1, netip.AddrPortFrom(extA, x.Port()+1)), t0); v.Action != Drop || v.Reason != ReasonNoMapping {
				t.Fatalf("unmapped port: %v %s", v.Action, v.Reason)
			}
		})
	}
}

// TestTCPFilteringOverride: Config.TCPFiltering applies to TCP only
// (RFC 5382 REQ-3).
func TestTCPFilteringOverride(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.Filtering = FilterEIF; c.TCPFiltering = FilterAPDF; c.SYNHold = -1 }))
	if e.Config().TCPFiltering != FilterAPDF || e.filt[1] != FilterEIF {
		t.Fatal("TCP filtering not separate")
	}
	v, b := out(e, tcpPkt(t, hostA, srv1, "S"), t0)
	x := decode(t, b).src
	if v.Action != Forward {
		t.Fatal(v.Reason)
	}
	if v, _ := in(e, tcpPkt(t, srv2, x, "S"), t0); v.Action != Drop {
		t.Fatalf("APDF TCP let a SYN from another host in: %v", v.Action)
	}
}

// TestHairpin: hostA reaches hostB through hostB's external endpoint and
// hostB sees hostA's external endpoint as the source (RFC 4787 REQ-9/9a,
// RFC 5382 REQ-8).
func TestHairpin(t *testing.T) {
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			e := newEngine(t, testConfig(nil))
			var xB, xA netip.AddrPort
			if proto == "udp" {
				xB = mapUDP(t, e, hostB, srv1, t0)
				xA = mapUDP(t, e, hostA, srv1, t0)
			} else {
				_, b := out(e, tcpPkt(t, hostB, srv1, "S"), t0)
				xB = decode(t, b).src
				_, b = out(e, tcpPkt(t, hostA, srv1, "S"), t0)
				xA = decode(t, b).src
			}
			var pkt []byte
			if proto == "udp" {
				pkt = udpPkt(t, hostA, xB)
			} else {
				pkt = tcpPkt(t, hostA, xB, "S")
			}
			v, b := out(e, pkt, t0)
			if v.Action != Hairpin {
				t.Fatalf("hairpin: %v %s", v.Action, v.Reason)
			}
			d := decode(t, b)
			if d.src != xA || d.dst != hostB {
				t.Fatalf("hairpinned packet %v->%v, want %v->%v", d.src, d.dst, xA, hostB)
			}
			// The answer goes back the same way.
			if proto == "udp" {
				pkt = udpPkt(t, hostB, xA)
			} else {
				pkt = tcpPkt(t, hostB, xA, "SA")
			}
			v, b = out(e, pkt, t0)
			if d := decode(t, b); v.Action != Hairpin || d.src != xB || d.dst != hostA {
				t.Fatalf("hairpin answer: %v %s %v->%v", v.Action, v.Reason, d.src, d.dst)
			}
			if n := e.Stats().Hairpinned; n != 2 {
				t.Errorf("Stats().Hairpinned = %d after two hairpinned packets", n)
			}
		})
	}
	e := newEngine(t, testConfig(func(c *Config) { c.NoHairpinning = true }))
	xB := mapUDP(t, e, hostB, srv1, t0)
	if v, _ := out(e, udpPkt(t, hostA, xB), t0); v.Action != Drop || v.Reason != ReasonNoHairpin {
		t.Fatalf("hairpinning disabled: %v %s", v.Action, v.Reason)
	}
}

// TestUDPTimerAndRefresh: the UDP mapping lives UDPTimeout after the last
// outbound packet (RFC 4787 REQ-5, REQ-6); inbound packets do not refresh
// by default and do with InboundRefresh.
func TestUDPTimerAndRefresh(t *testing.T) {
	for _, inRefresh := range []bool{false, true} {
		e := newEngine(t, testConfig(func(c *Config) { c.InboundRefresh = inRefresh; c.UDPTimeout = 2 * time.Minute }))
		x := mapUDP(t, e, hostA, srv1, t0)
		if v, _ := in(e, udpPkt(t, srv1, x), t0.Add(100*time.Second)); v.Action != Forward {
			t.Fatal("inbound at 100 s dropped")
		}
		e.Expire(t0.Add(119 * time.Second))
		if v, _ := in(e, udpPkt(t, srv1, x), t0.Add(119*time.Second)); v.Action != Forward {
			t.Fatal("mapping dead at 119 s of a 120 s timer")
		}
		e.Expire(t0.Add(121 * time.Second))
		v, _ := in(e, udpPkt(t, srv1, x), t0.Add(121*time.Second))
		if (v.Action == Forward) != inRefresh {
			t.Fatalf("inbound refresh %v: at 121 s %v %s", inRefresh, v.Action, v.Reason)
		}
		if !inRefresh && e.Stats().Mappings != 0 {
			t.Fatalf("%d mappings left", e.Stats().Mappings)
		}
	}
	// Outbound refresh keeps the same external endpoint alive.
	e := newEngine(t, testConfig(nil))
	x := mapUDP(t, e, hostA, srv1, t0)
	for s := 60; s <= 900; s += 60 {
		now := t0.Add(time.Duration(s) * time.Second)
		e.Expire(now)
		if got := mapUDP(t, e, hostA, srv1, now); got != x {
			t.Fatalf("at %d s mapped to %v, was %v", s, got, x)
		}
	}
}

// TestEIMMappingOutlivesSessions: with EIM, a mapping with several
// sessions survives its first session (RFC 4787 REQ-1: same external
// endpoint for a new destination while the mapping lives).
func TestEIMMappingOutlivesSessions(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.UDPTimeout = 2 * time.Minute }))
	x := mapUDP(t, e, hostA, srv1, t0)
	mapUDP(t, e, hostA, srv2, t0.Add(60*time.Second))
	e.Expire(t0.Add(150 * time.Second)) // srv1's session is gone, srv2's lives
	if st := e.Stats(); st.Mappings != 1 || st.Sessions != 1 {
		t.Fatalf("stats %+v", st)
	}
	if got := mapUDP(t, e, hostA, srv1, t0.Add(150*time.Second)); got != x {
		t.Fatalf("mapping changed to %v, was %v", got, x)
	}
	e.Expire(t0.Add(400 * time.Second))
	if st := e.Stats(); st.Mappings != 0 || st.Sessions != 0 || st.Records != 0 {
		t.Fatalf("after expiry %+v", st)
	}
}

func tcpOut(t *testing.T, e *Engine, src, dst netip.AddrPort, flags string, now time.Time) (Verdict, decoded) {
	t.Helper()
	v, b := out(e, tcpPkt(t, src, dst, flags), now)
	if v.Action != Forward && v.Action != Hairpin {
		return v, decoded{}
	}
	return v, decode(t, b)
}

func tcpIn(t *testing.T, e *Engine, src, dst netip.AddrPort, flags string, now time.Time) Verdict {
	t.Helper()
	v, b := in(e, tcpPkt(t, src, dst, flags), now)
	if v.Action == Forward {
		decode(t, b)
	}
	return v
}

// TestTCPStates walks the RFC 7857/6146 state machine with its timers:
// transitory 4 min while opening, established 2 h 4 min, closing 4 min
// after both FINs, 4 min after a RST (RFC 5382 REQ-5, RFC 7857 §2).
func TestTCPStates(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.Filtering = FilterAPDF }))
	_, d := tcpOut(t, e, hostA, srv1, "S", t0)
	x := d.src
	st := func() uint8 {
		s, _ := e.lookupOut(6, u4(hostA.Addr()), hostA.Port(), u4(srv1.Addr()), srv1.Port(), t0, 0)
		return e.t.at(s - 1).state
	}
	if st() != tcpOutSYN {
		t.Fatalf("state %s", tcpStateNames[st()])
	}
	// A data segment from outside without a session is refused.
	if v := tcpIn(t, e, srv2, x, "A", t0); v.Action != Drop {
		t.Fatal("stray ACK passed")
	}
	if v := tcpIn(t, e, srv1, x, "SA", t0.Add(time.Second)); v.Action != Forward {
		t.Fatalf("SYN-ACK: %s", v.Reason)
	}
	if st() != tcpEstablished {
		t.Fatalf("state %s", tcpStateNames[st()])
	}
	tcpOut(t, e, hostA, srv1, "A", t0.Add(time.Second))
	// Established: alive after 2 h, dead after 2 h 4 min + a second.
	e.Expire(t0.Add(2 * time.Hour))
	if v := tcpIn(t, e, srv1, x, "A", t0.Add(2*time.Hour)); v.Action != Forward {
		t.Fatalf("established connection dropped at 2 h: %s", v.Reason)
	}
	tcpOut(t, e, hostA, srv1, "FA", t0.Add(2*time.Hour))
	if st() != tcpFinOut {
		t.Fatalf("state %s", tcpStateNames[st()])
	}
	tcpIn(t, e, srv1, x, "FA", t0.Add(2*time.Hour))
	if st() != tcpFinBoth {
		t.Fatalf("state %s", tcpStateNames[st()])
	}
	e.Expire(t0.Add(2*time.Hour + 3*time.Minute))
	if e.Stats().Sessions != 1 {
		t.Fatal("closing connection gone before 4 min")
	}
	e.Expire(t0.Add(2*time.Hour + 4*time.Minute + 2*time.Second))
	if e.Stats().Sessions != 0 {
		t.Fatal("closed connection alive after 4 min")
	}

	// RST: translated, then the state lives 4 more minutes (RFC 7857 §2.2),
	// and further RSTs do not refresh it.
	e = newEngine(t, testConfig(nil))
	_, d = tcpOut(t, e, hostA, srv1, "S", t0)
	tcpIn(t, e, srv1, d.src, "SA", t0)
	if v := tcpIn(t, e, srv1, d.src, "R", t0.Add(time.Minute)); v.Action != Forward {
		t.Fatalf("RST not translated: %s", v.Reason)
	}
	tcpOut(t, e, hostA, srv1, "R", t0.Add(3*time.Minute))
	e.Expire(t0.Add(4*time.Minute + 30*time.Second))
	if e.Stats().Sessions != 1 {
		t.Fatal("state gone less than 4 min after the RST")
	}
	e.Expire(t0.Add(5*time.Minute + 2*time.Second))
	if e.Stats().Sessions != 0 {
		t.Fatal("state alive 4 min after the RST (refreshed by a later RST?)")
	}

	// Transitory: an unanswered SYN lives 4 min.
	e = newEngine(t, testConfig(nil))
	tcpOut(t, e, hostA, srv1, "S", t0)
	e.Expire(t0.Add(239 * time.Second))
	if e.Stats().Sessions != 1 {
		t.Fatal("half-open connection gone before 4 min")
	}
	e.Expire(t0.Add(242 * time.Second))
	if e.Stats().Sessions != 0 {
		t.Fatal("half-open connection alive after 4 min")
	}
	// A non-SYN without a session does not create one.
	if v, _ := tcpOut(t, e, hostA, srv1, "A", t0); v.Action != Drop || v.Reason != ReasonTCPNoSession {
		t.Fatalf("outbound ACK without session: %v %s", v.Action, v.Reason)
	}
}

// TestSimultaneousOpen: two hosts behind two port-restricted NATs open a
// connection with crossing SYNs (RFC 5382 REQ-2, T2a), the way TCP hole
// punching does; the first SYN to arrive is held, then dropped silently
// when the local SYN goes out (RFC 5382 REQ-4).
func TestSimultaneousOpen(t *testing.T) {
	mk := func(ext string) *Engine {
		return newEngine(t, testConfig(func(c *Config) {
			c.External = []netip.Addr{netip.MustParseAddr(ext)}
			c.Filtering = FilterAPDF
			c.PreservePort = true
		}))
	}
	natA, natB := mk("192.0.2.1"), mk("203.0.113.1")
	a := netip.MustParseAddrPort("10.0.0.1:5000")
	b := netip.MustParseAddrPort("10.1.0.1:6000")
	pubA := netip.MustParseAddrPort("192.0.2.1:5000") // port preservation makes these predictable
	pubB := netip.MustParseAddrPort("203.0.113.1:6000")

	// A's SYN leaves first and reaches B's NAT before B's SYN left: held.
	_, sa := tcpOut(t, natA, a, pubB, "S", t0)
	if sa.src != pubA {
		t.Fatalf("A mapped to %v", sa.src)
	}
	if v := tcpIn(t, natB, pubA, pubB, "S", t0); v.Action != Drop || v.Reason != ReasonSYNHeld {
		t.Fatalf("early SYN: %v %s", v.Action, v.Reason)
	}
	// B's SYN goes out: the held SYN is dropped silently.
	if _, sb := tcpOut(t, natB, b, pubA, "S", t0.Add(10*time.Millisecond)); sb.src != pubB {
		t.Fatalf("B mapped to %v", sb.src)
	}
	if natB.Stats().HeldSYNs != 0 {
		t.Fatal("held SYN not released by the outbound SYN")
	}
	natB.Expire(t0.Add(10 * time.Second))
	if len(natB.Replies()) != 0 {
		t.Fatal("port unreachable sent for a SYN whose connection opened")
	}
	// B's SYN reaches A's NAT: crossing SYN, established.
	if v := tcpIn(t, natA, pubB, pubA, "S", t0.Add(20*time.Millisecond)); v.Action != Forward {
		t.Fatalf("crossing SYN at A: %v %s", v.Action, v.Reason)
	}
	// A answers SYN-ACK, B's NAT passes it (B's session is in syn-out).
	_, d := tcpOut(t, natA, a, pubB, "SA", t0.Add(30*time.Millisecond))
	if v := tcpIn(t, natB, d.src, pubB, "SA", t0.Add(40*time.Millisecond)); v.Action != Forward {
		t.Fatalf("SYN-ACK at B: %v %s", v.Action, v.Reason)
	}
	for _, e := range []*Engine{natA, natB} {
		var s uint32
		if e == natA {
			s, _ = e.lookupOut(6, u4(a.Addr()), a.Port(), u4(pubB.Addr()), pubB.Port(), t0, 1)
		} else {
			s, _ = e.lookupOut(6, u4(b.Addr()), b.Port(), u4(pubA.Addr()), pubA.Port(), t0, 1)
		}
		if s == 0 || e.t.at(s-1).state != tcpEstablished {
			t.Fatal("connection not established")
		}
	}
}

// TestUnsolicitedSYN: a SYN nobody asked for gets no answer for 6 s, then
// ICMP port unreachable (RFC 5382 REQ-4), or nothing with SilentSYNDrop.
func TestUnsolicitedSYN(t *testing.T) {
	for _, silent := range []bool{false, true} {
		e := newEngine(t, testConfig(func(c *Config) { c.SilentSYNDrop = silent }))
		dst := netip.AddrPortFrom(extA, 4000)
		syn := tcpPkt(t, srv1, dst, "S")
		if v := tcpIn(t, e, srv1, dst, "S", t0); v.Action != Drop || v.Reason != ReasonSYNHeld {
			t.Fatalf("%v %s", v.Action, v.Reason)
		}
		e.Expire(t0.Add(5 * time.Second))
		if len(e.Replies()) != 0 {
			t.Fatal("answered before 6 s")
		}
		e.Expire(t0.Add(7 * time.Second))
		if silent {
			if len(e.Replies()) != 0 {
				t.Fatal("silent drop answered")
			}
			continue
		}
		if len(e.Replies()) != 1 {
			t.Fatalf("%d replies", len(e.Replies()))
		}
		d := decode(t, e.Replies()[0])
		if d.icmpType != 3 || d.code != 3 || d.src.Addr() != extA || d.dst.Addr() != srv1.Addr() {
			t.Fatalf("reply %+v", d)
		}
		if d.inner == nil || d.inner.src != srv1 || d.inner.dst != dst {
			t.Fatalf("reply embeds %+v, want the SYN %x", d.inner, syn[:20])
		}
	}
}

// TestICMPQuery: echo requests get an identifier mapping that is
// independent of the destination (RFC 5508 REQ-1a), replies come back,
// the mapping lives 60 s (REQ-2) and unsolicited requests are dropped.
func TestICMPQuery(t *testing.T) {
	e := newEngine(t, testConfig(nil))
	v, b := out(e, echoPkt(t, hostA.Addr(), srv1.Addr(), 8, 77), t0)
	if v.Action != Forward {
		t.Fatal(v.Reason)
	}
	d := decode(t, b)
	if d.src.Addr() != extA {
		t.Fatalf("echo source %v", d.src)
	}
	_, b = out(e, echoPkt(t, hostA.Addr(), srv2.Addr(), 8, 77), t0)
	if d2 := decode(t, b); d2.src != d.src {
		t.Fatalf("ICMP id mapping depends on the destination: %v vs %v", d2.src, d.src)
	}
	v, b = in(e, echoPkt(t, srv1.Addr(), extA, 0, d.src.Port()), t0.Add(59*time.Second))
	if r := decode(t, b); v.Action != Forward || r.dst != netip.AddrPortFrom(hostA.Addr(), 77) {
		t.Fatalf("echo reply: %v %s %v", v.Action, v.Reason, r.dst)
	}
	if v, _ := in(e, echoPkt(t, srv1.Addr(), extA, 8, d.src.Port()), t0); v.Action != Drop {
		t.Fatal("inbound echo request passed")
	}
	e.Expire(t0.Add(62 * time.Second))
	if v, _ := in(e, echoPkt(t, srv1.Addr(), extA, 0, d.src.Port()), t0.Add(62*time.Second)); v.Action != Drop {
		t.Fatal("echo reply passed after 60 s")
	}
}

// TestICMPErrors: inbound errors about outbound flows are translated
// (outer destination and embedded source, every checksum valid; RFC 5508
// REQ-5), errors without a session or with a bad checksum are dropped
// (REQ-3, REQ-4), errors never refresh (REQ-6, RFC 4787 REQ-12), outbound
// errors are translated, and hairpinned errors are hairpinned (REQ-7).
func TestICMPErrors(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.UDPTimeout = 2 * time.Minute }))
	x := mapUDP(t, e, hostA, srv1, t0)
	sent := udpPkt(t, x, srv1) // the packet as it left the NAT
	router := netip.MustParseAddr("203.0.113.9")
	for _, n := range []int{28, len(sent)} {
		errPkt := icmpErrPkt(t, router, extA, 11, 0, sent[:n])
		v, b := in(e, errPkt, t0.Add(100*time.Second))
		if v.Action != Forward {
			t.Fatalf("time exceeded (%d bytes embedded): %v %s", n, v.Action, v.Reason)
		}
		d := decode(t, b)
		if d.dst.Addr() != hostA.Addr() || d.inner.src != hostA || d.inner.dst != srv1 || d.icmpType != 11 {
			t.Fatalf("translated error %+v inner %+v", d, d.inner)
		}
	}
	// Errors did not refresh: the mapping still dies at 120 s.
	e.Expire(t0.Add(122 * time.Second))
	if e.Stats().Mappings != 0 {
		t.Fatal("an ICMP error refreshed the mapping")
	}
	if v, _ := in(e, icmpErrPkt(t, router, extA, 3, 1, sent), t0.Add(122*time.Second)); v.Reason != ReasonICMPNoSession {
		t.Fatalf("error without session: %v %s", v.Action, v.Reason)
	}
	x = mapUDP(t, e, hostA, srv1, t0.Add(130*time.Second))
	bad := icmpErrPkt(t, router, extA, 3, 3, udpPkt(t, x, srv1))
	bad[len(bad)-1] ^= 0xff
	if v, _ := in(e, bad, t0.Add(130*time.Second)); v.Reason != ReasonICMPChecksum {
		t.Fatalf("bad checksum: %v %s", v.Action, v.Reason)
	}
	// Outbound: hostA says srv1's packet is unreachable.
	got := udpPkt(t, srv1, hostA) // what hostA received
	v, b := out(e, icmpErrPkt(t, hostA.Addr(), srv1.Addr(), 3, 3, got), t0.Add(130*time.Second))
	d := decode(t, b)
	if v.Action != Forward || d.src.Addr() != extA || d.inner.dst != x || d.inner.src != srv1 {
		t.Fatalf("outbound error: %v %s %+v %+v", v.Action, v.Reason, d, d.inner)
	}
	// Hairpin: hostB sends to hostA's external endpoint; hostA's error
	// about it goes back to hostB (RFC 5508 REQ-7).
	xB := mapUDP(t, e, hostB, srv2, t0.Add(130*time.Second))
	v, b = out(e, udpPkt(t, hostB, x), t0.Add(130*time.Second))
	if v.Action != Hairpin {
		t.Fatal(v.Reason)
	}
	v, b = out(e, icmpErrPkt(t, hostA.Addr(), xB.Addr(), 3, 3, b), t0.Add(130*time.Second))
	d = decode(t, b)
	if v.Action != Hairpin || d.dst.Addr() != hostB.Addr() || d.inner.src != hostB || d.inner.dst != x {
		t.Fatalf("hairpinned error: %v %s %+v %+v", v.Action, v.Reason, d, d.inner)
	}
}

// TestSessionRefused: when no port is left the engine answers with ICMP
// type 3 code 13 (RFC 5508 REQ-8) and never overloads (RFC 4787 REQ-3).
func TestSessionRefused(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.MaxPortsPerSubscriber = 2 }))
	mapUDP(t, e, hostA, srv1, t0)
	mapUDP(t, e, netip.AddrPortFrom(hostA.Addr(), 2), srv1, t0)
	v, _ := out(e, udpPkt(t, netip.AddrPortFrom(hostA.Addr(), 3), srv1), t0)
	if v.Action != Reply || v.Reason != ReasonPortLimit {
		t.Fatalf("%v %s", v.Action, v.Reason)
	}
	d := decode(t, v.Reply)
	if d.icmpType != 3 || d.code != 13 || d.dst.Addr() != hostA.Addr() || d.inner.src.Port() != 3 {
		t.Fatalf("reply %+v", d)
	}
	mapUDP(t, e, hostB, srv1, t0) // other subscribers are not affected

	e = newEngine(t, testConfig(func(c *Config) {
		c.Ports = tuple.PortSetOf(tuple.PortRangeFrom(5000, 5001))
		c.MixClasses = true
		c.NoICMPReplies = true
	}))
	mapUDP(t, e, hostA, srv1, t0)
	mapUDP(t, e, hostB, srv1, t0)
	if v, _ := out(e, udpPkt(t, netip.AddrPortFrom(hostA.Addr(), 9), srv2), t0); v.Action != Drop || v.Reason != ReasonPortsExhausted {
		t.Fatalf("exhausted: %v %s", v.Action, v.Reason)
	}
	e = newEngine(t, testConfig(func(c *Config) { c.MaxSessionsPerSubscriber = 1 }))
	mapUDP(t, e, hostA, srv1, t0)
	if v, _ := out(e, udpPkt(t, hostA, srv2), t0); v.Reason != ReasonSessionLimit {
		t.Fatalf("session limit: %v %s", v.Action, v.Reason)
	}
}

// TestOverlapping: with port overlapping two internal endpoints share one
// external port towards different destinations (RFC 7857 §3), never
// towards the same one.
func TestOverlapping(t *testing.T) {
	cfg, err := Preset("linux-masquerade")
	if err != nil {
		t.Fatal(err)
	}
	cfg.External, cfg.Internal = []netip.Addr{extA}, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	e := newEngine(t, cfg)
	a := netip.MustParseAddrPort("10.0.0.1:5555")
	b := netip.MustParseAddrPort("10.0.0.2:5555")
	xa := mapUDP(t, e, a, srv1, t0)
	xb := mapUDP(t, e, b, srv2, t0)
	if xa != xb || xa.Port() != 5555 {
		t.Fatalf("no overlap/preservation: %v %v", xa, xb)
	}
	xb1 := mapUDP(t, e, b, srv1, t0)
	if xb1 == xa {
		t.Fatal("same 5-tuple given to two internal endpoints")
	}
	for from, want := range map[netip.AddrPort]netip.AddrPort{srv1: a, srv2: b} {
		v, pk := in(e, udpPkt(t, from, xa), t0)
		if d := decode(t, pk); v.Action != Forward || d.dst != want {
			t.Fatalf("from %v: %v to %v, want %v", from, v.Action, d.dst, want)
		}
	}
}

// TestDeterministic: ports stay inside the subscriber's RFC 7422 block and
// Reverse finds the subscriber.
func TestDeterministic(t *testing.T) {
	cfg, _ := Preset("deterministic")
	cfg.External = []netip.Addr{extA, extB}
	cfg.Internal = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}
	e := newEngine(t, cfg)
	det := e.Deterministic()
	if det == nil || det.BlockSize() != (65535-1024+1)/128 {
		t.Fatalf("deterministic %+v", det)
	}
	for _, h := range []netip.AddrPort{hostA, hostB, netip.MustParseAddrPort("10.0.0.200:1")} {
		wantAddr, blk, _ := det.Forward(h.Addr())
		for i := 0; i < 5; i++ {
			x := mapUDP(t, e, netip.AddrPortFrom(h.Addr(), h.Port()+uint16(i)), srv1, t0)
			if x.Addr() != wantAddr || !blk.Contains(x.Port()) {
				t.Fatalf("%v mapped to %v outside %v %v", h, x, wantAddr, blk)
			}
			if back, ok := det.Reverse(x); !ok || back != h.Addr() {
				t.Fatalf("Reverse(%v) = %v", x, back)
			}
		}
	}
}

type eventLog []Event

func (l *eventLog) Record(ev Event) { *l = append(*l, ev) }

// TestEvents: mapping and block events, with remote endpoints only when
// destination logging is on (RFC 6888 REQ-12).
func TestEvents(t *testing.T) {
	for _, logDst := range []bool{false, true} {
		var log eventLog
		e := newEngine(t, testConfig(func(c *Config) {
			c.Events, c.LogDestinations = &log, logDst
			c.BlockSize, c.MixClasses = 64, true
		}))
		x := mapUDP(t, e, hostA, srv1, t0)
		e.Expire(t0.Add(time.Hour))
		var kinds []string
		for _, ev := range log {
			kinds = append(kinds, ev.Kind.String())
			if ev.Remote.IsValid() != (logDst && ev.Kind != BlockAllocated && ev.Kind != BlockFreed) {
				t.Fatalf("logDst=%v: event %v has remote %v", logDst, ev.Kind, ev.Remote)
			}
			if ev.Subscriber != hostA.Addr() || ev.Proto != tuple.UDP {
				t.Fatalf("event %+v", ev)
			}
			if (ev.Kind == MappingCreated || ev.Kind == MappingDeleted) && (ev.External != x || ev.Internal != hostA || !ev.Block.Contains(x.Port())) {
				t.Fatalf("mapping event %+v", ev)
			}
		}
		want := "block-allocated mapping-created mapping-deleted block-freed"
		if logDst {
			want = "block-allocated mapping-created session-created session-deleted mapping-deleted block-freed"
		}
		if got := strings.Join(kinds, " "); got != want {
			t.Fatalf("events %q, want %q", got, want)
		}
	}
}

// TestQuarantineInEngine: a freed port is not reused for 120 s (RFC 6888
// REQ-8).
func TestQuarantineInEngine(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) {
		c.Quarantine = 120 * time.Second
		c.UDPTimeout = 2 * time.Minute
		c.Ports, c.MixClasses = tuple.PortSetOf(tuple.PortRangeFrom(7000, 7000)), true
	}))
	mapUDP(t, e, hostA, srv1, t0)
	e.Expire(t0.Add(125 * time.Second))
	if v, _ := out(e, udpPkt(t, hostB, srv1), t0.Add(200*time.Second)); v.Action == Forward {
		t.Fatal("port reused inside the quarantine")
	}
	mapUDP(t, e, hostB, srv1, t0.Add(246*time.Second))
}

func TestMalformed(t *testing.T) {
	e := newEngine(t, testConfig(nil))
	good := udpPkt(t, hostA, srv1)
	for name, b := range map[string][]byte{
		"empty": nil, "short": good[:10], "truncated": good[:len(good)-3],
		"ipv6": append([]byte{0x60}, good[1:]...),
	} {
		if v, _ := out(e, b, t0); v.Action != Drop || v.Reason == ReasonNone {
			t.Errorf("%s: %v %q", name, v.Action, v.Reason)
		}
		if v, _ := in(e, b, t0); v.Action != Drop || v.Reason == ReasonNone {
			t.Errorf("%s inbound: %v %q", name, v.Action, v.Reason)
		}
	}
	_, second := fragments(udpPkt(t, srv1, netip.AddrPortFrom(extA, 40000)), 8)
	if v, _ := in(e, second, t0); v.Reason != ReasonFragmentHeld {
		t.Errorf("unmatched fragment: %v %q", v.Action, v.Reason)
	}
	if v, _ := out(e, udpPkt(t, netip.MustParseAddrPort("172.16.0.1:1"), srv1), t0); v.Reason != ReasonNotInternal {
		t.Errorf("foreign source: %q", v.Reason)
	}
	if v, _ := in(e, udpPkt(t, srv1, netip.MustParseAddrPort("192.0.2.99:1")), t0); v.Reason != ReasonNotExternal {
		t.Errorf("foreign destination: %q", v.Reason)
	}
	if st := e.Stats(); st.Drops[FromPacket(packet.ReasonTruncated)] == 0 || st.Drops[ReasonFragmentHeld] != 1 {
		t.Errorf("drop counters %v", st.Drops)
	}
}

func TestConfigErrors(t *testing.T) {
	for field, mut := range map[string]func(*Config){
		"External":     func(c *Config) { c.External = nil },
		"Internal":     func(c *Config) { c.Internal = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} },
		"Mapping":      func(c *Config) { c.Mapping = 9 },
		"Filtering":    func(c *Config) { c.Filtering = 9 },
		"Overlapping":  func(c *Config) { c.Overlapping = true },
		"UDPTimeout":   func(c *Config) { c.UDPTimeout = -time.Second },
		"TCPClosing":   func(c *Config) { c.TCPClosing = time.Millisecond },
		"MaxSessions":  func(c *Config) { c.MaxSessions = -1 },
		"ReplySource":  func(c *Config) { c.ReplySource = netip.MustParseAddr("::1") },
		"Pooling":      func(c *Config) { c.Pooling = 7 },
		"TCPFiltering": func(c *Config) { c.TCPFiltering = 8 },
	} {
		_, err := New(testConfig(mut))
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != field || ce.YAML != YAMLName(field) || ce.YAML == "" ||
			!strings.HasPrefix(err.Error(), "nat: Config."+field+":") {
			t.Errorf("%s: error %v", field, err)
		}
	}
	if _, err := Preset("nope"); err == nil {
		t.Error("unknown preset accepted")
	}
	if errors.Is(nil, errors.New("x")) {
		t.Fatal()
	}
}

// TestEstablishedNoAlloc pins the per-packet path of existing flows at zero
// allocations, both directions, TCP, UDP and ICMP.
func TestEstablishedNoAlloc(t *testing.T) {
	e := newEngine(t, testConfig(nil))
	x := mapUDP(t, e, hostA, srv1, t0)
	_, d := tcpOut(t, e, hostB, srv1, "S", t0)
	tcpIn(t, e, srv1, d.src, "SA", t0)
	_, eb := out(e, echoPkt(t, hostA.Addr(), srv1.Addr(), 8, 5), t0)
	ex := decode(t, eb).src
	pkts := [][]byte{udpPkt(t, hostA, srv1), tcpPkt(t, hostB, srv1, "A"), echoPkt(t, hostA.Addr(), srv1.Addr(), 8, 5)}
	inPkts := [][]byte{udpPkt(t, srv1, x), tcpPkt(t, srv1, d.src, "A"), echoPkt(t, srv1.Addr(), extA, 0, ex.Port())}
	bufs := make([][]byte, 6)
	n := testing.AllocsPerRun(200, func() {
		for i, p := range pkts {
			bufs[i] = append(bufs[i][:0], p...)
			if v := e.Outbound(bufs[i], t0); v.Action != Forward {
				t.Fatal(v.Reason)
			}
		}
		for i, p := range inPkts {
			bufs[3+i] = append(bufs[3+i][:0], p...)
			if v := e.Inbound(bufs[3+i], t0); v.Action != Forward {
				t.Fatal(v.Reason)
			}
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations per 6 packets", n)
	}
}

// TestNoTranslate: traffic to exempt destinations passes untouched in both
// directions (RFC 6888 REQ-6); other destinations are still translated.
func TestNoTranslate(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.NoTranslate = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/31")} }))
	pkt := udpPkt(t, hostA, srv1)
	v, b := out(e, pkt, t0)
	if v.Action != Forward || string(b) != string(pkt) {
		t.Fatalf("exempt destination: %v, changed=%v", v.Action, string(b) != string(pkt))
	}
	reply := udpPkt(t, srv1, hostA)
	if v, b := in(e, reply, t0); v.Action != Forward || string(b) != string(reply) {
		t.Fatalf("exempt reply: %v %s", v.Action, v.Reason)
	}
	if x := mapUDP(t, e, hostA, srv2, t0); x.Addr() != extA {
		t.Fatalf("other destination not translated: %v", x)
	}
	if st := e.Stats(); st.Untranslated != 2 {
		t.Fatalf("Untranslated = %d", st.Untranslated)
	}
}

// ipSum sets the IPv4 header checksum of b.
func ipSum(b []byte) {
	b[10], b[11] = 0, 0
	var s uint32
	hl := int(b[0]&15) * 4
	for i := 0; i < hl; i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	b[10], b[11] = byte(^s>>8), byte(^s)
}

// fragments splits an IPv4 packet into two fragments, the first carrying
// split bytes (a multiple of 8) of the transport header and payload.
func fragments(pkt []byte, split int) (first, second []byte) {
	first = append([]byte(nil), pkt[:20+split]...)
	first[2], first[3] = byte((20+split)>>8), byte(20+split)
	first[6] |= 0x20 // MF
	ipSum(first)
	second = append(append([]byte(nil), pkt[:20]...), pkt[20+split:]...)
	n := len(second)
	second[2], second[3] = byte(n>>8), byte(n)
	off := split / 8
	second[6], second[7] = byte(off>>8)&0x1f, byte(off)
	ipSum(second)
	return first, second
}

// reassemble joins two fragments made by fragments.
func reassemble(first, second []byte) []byte {
	b := append(append([]byte(nil), first...), second[20:]...)
	b[2], b[3] = byte(len(b)>>8), byte(len(b))
	b[6], b[7] = 0, 0
	ipSum(b)
	return b
}

// TestFragments: the fragments of a datagram are translated in both
// directions, outbound in any order (RFC 4787 REQ-14), and the reassembled
// datagram has valid checksums.
func TestFragments(t *testing.T) {
	e := newEngine(t, testConfig(nil))
	f1, f2 := fragments(udpPkt(t, hostA, srv1), 8)
	// Out of order: the second fragment first.
	v2, o2 := out(e, f2, t0)
	v1, o1 := out(e, f1, t0)
	if v1.Action != Forward || v2.Action != Forward {
		t.Fatalf("outbound fragments: %v %s / %v %s", v1.Action, v1.Reason, v2.Action, v2.Reason)
	}
	d := decode(t, reassemble(o1, o2))
	if d.src.Addr() != extA || d.dst != srv1 {
		t.Fatalf("reassembled outbound %v->%v", d.src, d.dst)
	}
	x := d.src
	g1, g2 := fragments(udpPkt(t, srv1, x), 8)
	w1, i1 := in(e, g1, t0)
	w2, i2 := in(e, g2, t0)
	if w1.Action != Forward || w2.Action != Forward {
		t.Fatalf("inbound fragments: %v %s / %v %s", w1.Action, w1.Reason, w2.Action, w2.Reason)
	}
	if d := decode(t, reassemble(i1, i2)); d.dst != hostA || d.src != srv1 {
		t.Fatalf("reassembled inbound %v->%v", d.src, d.dst)
	}
}

// TestLogger: a debug-level Logger sees mappings come and go.
func TestLogger(t *testing.T) {
	var sb strings.Builder
	e := newEngine(t, testConfig(func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&sb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}))
	mapUDP(t, e, hostA, srv1, t0)
	e.Expire(t0.Add(time.Hour))
	if !strings.Contains(sb.String(), "mapping created") || !strings.Contains(sb.String(), "mapping deleted") {
		t.Fatalf("log: %s", sb.String())
	}
}

func TestSessionsAndSizeHint(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.ExpectedSessions = 5000 }))
	slots := len(e.t.slots)
	x := mapUDP(t, e, hostA, srv1, t0)
	tcpOut(t, e, hostB, srv2, "S", t0)
	for i := 0; i < 4000; i++ {
		mapUDP(t, e, netip.AddrPortFrom(netip.MustParseAddr("10.1.0.1"), uint16(1024+i)), srv1, t0)
	}
	if len(e.t.slots) != slots {
		t.Fatalf("index grew from %d to %d slots below ExpectedSessions", slots, len(e.t.slots))
	}
	found := 0
	for s := range e.Sessions() {
		switch {
		case s.Internal == hostA:
			found++
			if s.External != x || s.Remote != srv1 || s.Proto != tuple.UDP || !s.Mapping || s.State != "" {
				t.Fatalf("UDP session %+v", s)
			}
			if d := s.Expires.Sub(t0); d < 5*time.Minute || d > 5*time.Minute+time.Second {
				t.Fatalf("expires in %v", d)
			}
		case s.Internal == hostB:
			found++
			if s.State != "syn-out" || s.Remote != srv2 {
				t.Fatalf("TCP session %+v", s)
			}
		}
	}
	if found != 2 {
		t.Fatalf("found %d of 2 sessions", found)
	}
}

// TestOverloading: with Overloading, a pool of one port serves two internal
// endpoints towards different remotes (RFC 4787 §4.2.2, for experiments),
// and each gets only its own remote's packets.
func TestOverloading(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) {
		c.Ports, c.MixClasses, c.Overloading = tuple.PortSetOf(tuple.PortRangeFrom(6000, 6000)), true, true
		c.Filtering = FilterAPDF
	}))
	xa := mapUDP(t, e, hostA, srv1, t0)
	xb := mapUDP(t, e, hostB, srv2, t0)
	if xa != xb {
		t.Fatalf("not overloaded: %v %v", xa, xb)
	}
	if v, _ := out(e, udpPkt(t, netip.AddrPortFrom(hostB.Addr(), 9), srv1), t0); v.Action == Forward {
		t.Fatal("same 5-tuple handed out twice")
	}
	for from, want := range map[netip.AddrPort]netip.AddrPort{srv1: hostA, srv2: hostB} {
		v, b := in(e, udpPkt(t, from, xa), t0)
		if d := decode(t, b); v.Action != Forward || d.dst != want {
			t.Fatalf("from %v: %v %s to %v", from, v.Action, v.Reason, d.dst)
		}
	}
	e.Expire(t0.Add(time.Hour))
	if st := e.Stats(); st.Records != 0 || st.Sessions != 0 {
		t.Fatalf("left %+v", st)
	}
}

// TestADFAfterOwnerExpiry: address-dependent filtering follows the
// sessions of the mapping, also when the first one has ended.
func TestADFAfterOwnerExpiry(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.Filtering = FilterADF; c.UDPTimeout = 2 * time.Minute }))
	x := mapUDP(t, e, hostA, srv1, t0)
	mapUDP(t, e, hostA, srv2, t0.Add(100*time.Second))
	e.Expire(t0.Add(150 * time.Second)) // srv1's session ends, srv2's lives
	if v, _ := in(e, udpPkt(t, srv1b, x), t0.Add(150*time.Second)); v.Action != Drop {
		t.Fatal("srv1's address still admitted after its session ended")
	}
	if v, _ := in(e, udpPkt(t, netip.AddrPortFrom(srv2.Addr(), 9), x), t0.Add(150*time.Second)); v.Action != Forward {
		t.Fatalf("srv2's address refused: %s", v.Reason)
	}
}

// TestMaxSessionsAndArbitraryPooling: the global session limit refuses new
// flows (RFC 6888 REQ-5), and arbitrary pooling spreads mappings of one
// host over the addresses.
func TestMaxSessionsAndArbitraryPooling(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.MaxSessions = 3 }))
	for i := 0; i < 3; i++ {
		mapUDP(t, e, netip.AddrPortFrom(hostA.Addr(), uint16(100+i)), srv1, t0)
	}
	if v, _ := out(e, udpPkt(t, hostB, srv1), t0); v.Action != Reply || v.Reason != ReasonSessionLimit {
		t.Fatalf("4th session: %v %s", v.Action, v.Reason)
	}
	e = newEngine(t, testConfig(func(c *Config) { c.External = []netip.Addr{extA, extB}; c.Pooling = PoolingArbitrary }))
	addrs := map[netip.Addr]bool{}
	for i := 0; i < 40; i++ {
		addrs[mapUDP(t, e, netip.AddrPortFrom(hostA.Addr(), uint16(2000+i)), netip.AddrPortFrom(srv1.Addr(), uint16(i+1)), t0).Addr()] = true
	}
	if len(addrs) != 2 {
		t.Fatalf("arbitrary pooling used %d addresses", len(addrs))
	}
}

// TestExpireSome: the sweep can be spread over short calls and retires the
// same state as a full Expire.
func TestExpireSome(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.UDPTimeout = 2 * time.Minute }))
	for i := 0; i < 100; i++ {
		mapUDP(t, e, netip.AddrPortFrom(hostA.Addr(), uint16(2000+i)), srv1, t0)
	}
	later := t0.Add(3 * time.Minute)
	calls := 0
	for !e.ExpireSome(later, 7) {
		calls++
		if calls > 100 {
			t.Fatal("sweep never wrapped")
		}
	}
	if calls < 13 {
		t.Fatalf("wrapped after %d calls of 7 records over 100 records", calls)
	}
	if st := e.Stats(); st.Sessions != 0 || st.Records != 0 {
		t.Fatalf("left %+v", st)
	}
}

func ipID(b []byte) uint16 { return uint16(b[4])<<8 | uint16(b[5]) }

// TestFragmentIDs: two hosts fragmenting to one destination with the same
// IPv4 ID leave with different IDs, each datagram's fragments with one ID
// (RFC 6864 §4.1), in any order.
func TestFragmentIDs(t *testing.T) {
	e := newEngine(t, testConfig(nil))
	a1, a2 := fragments(udpPkt(t, hostA, srv1), 8)
	b1, b2 := fragments(udpPkt(t, hostB, srv1), 8)
	_, oa1 := out(e, a1, t0)
	_, ob2 := out(e, b2, t0) // B out of order
	_, ob1 := out(e, b1, t0)
	_, oa2 := out(e, a2, t0)
	if ipID(oa1) != ipID(oa2) || ipID(ob1) != ipID(ob2) || ipID(oa1) == ipID(ob1) {
		t.Fatalf("IDs A %d/%d B %d/%d", ipID(oa1), ipID(oa2), ipID(ob1), ipID(ob2))
	}
	for _, pair := range [][2][]byte{{oa1, oa2}, {ob1, ob2}} {
		if d := decode(t, reassemble(pair[0], pair[1])); d.src.Addr() != extA || d.dst != srv1 {
			t.Fatalf("reassembled %v->%v", d.src, d.dst)
		}
	}
}

// TestNoTranslateFragments: fragments of exempt traffic pass unchanged in
// both directions, also when the exemption depends on the port.
func TestNoTranslateFragments(t *testing.T) {
	for _, ports := range []bool{false, true} {
		e := newEngine(t, testConfig(func(c *Config) {
			c.NoTranslate = []netip.Prefix{netip.PrefixFrom(srv1.Addr(), 32)}
			if ports {
				c.NoTranslatePorts = tuple.PortSetOf(tuple.SinglePort(srv1.Port()))
			}
		}))
		f1, f2 := fragments(udpPkt(t, hostA, srv1), 8)
		for _, f := range [][]byte{f1, f2} {
			if v, b := out(e, f, t0); v.Action != Forward || string(b) != string(f) {
				t.Fatalf("ports=%v: outbound fragment %v %s changed=%v", ports, v.Action, v.Reason, string(b) != string(f))
			}
		}
		g1, g2 := fragments(udpPkt(t, srv1, hostA), 8)
		for _, f := range [][]byte{g1, g2} {
			if v, b := in(e, f, t0); v.Action != Forward || string(b) != string(f) {
				t.Fatalf("ports=%v: inbound fragment %v %s", ports, v.Action, v.Reason)
			}
		}
	}
}

// TestOverlapSetupNoAlloc: setting up a flow with port overlapping does not
// allocate once the table has room.
func TestOverlapSetupNoAlloc(t *testing.T) {
	cfg, _ := Preset("linux-masquerade")
	cfg.External, cfg.Internal = []netip.Addr{extA}, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	cfg.ExpectedSessions = 1000
	e := newEngine(t, cfg)
	pkts := make([][]byte, 200)
	for i := range pkts {
		pkts[i] = udpPkt(t, netip.AddrPortFrom(hostA.Addr(), uint16(20000+i)), srv1)
	}
	mapUDP(t, e, hostB, srv1, t0)
	i := 0
	n := testing.AllocsPerRun(100, func() {
		if v := e.Outbound(pkts[i], t0); v.Action != Forward {
			t.Fatal(v.Reason)
		}
		i++
	})
	if n != 0 {
		t.Fatalf("%v allocations per new overlapping flow", n)
	}
}

// TestSetupNoAlloc: a new mapping of a known subscriber does not allocate
// once the table has room (ExpectedSessions).
func TestSetupNoAlloc(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.ExpectedSessions = 1000 }))
	pkts := make([][]byte, 200)
	for i := range pkts {
		pkts[i] = udpPkt(t, netip.AddrPortFrom(hostA.Addr(), uint16(20000+i)), srv1)
	}
	mapUDP(t, e, hostA, srv1, t0)
	i := 0
	n := testing.AllocsPerRun(100, func() {
		if v := e.Outbound(pkts[i], t0); v.Action != Forward {
			t.Fatal(v.Reason)
		}
		i++
	})
	if n != 0 {
		t.Fatalf("%v allocations per new mapping", n)
	}
}

// TestTCPRSTBeforeEstablishedKeepsOpeningState: a RST before establishment leaves the connection in its opening state (RFC 6146 §3.5.2.2), so it expires with the transitory timer, never becoming "established".
func TestTCPRSTBeforeEstablishedKeepsOpeningState(t *testing.T) {
	e := newEngine(t, testConfig(nil))
	tcpOut(t, e, hostA, srv1, "S", t0)
	tcpOut(t, e, hostA, srv1, "R", t0.Add(time.Second))
	tcpOut(t, e, hostA, srv1, "A", t0.Add(2*time.Second))
	s, _ := e.lookupOut(6, u4(hostA.Addr()), hostA.Port(), u4(srv1.Addr()), srv1.Port(), t0, 3)
	if st := e.t.at(s - 1).state; st != tcpOutSYN {
		t.Fatalf("state %s", tcpStateNames[st])
	}
	e.Expire(t0.Add(10 * time.Minute))
	if e.Stats().Sessions != 0 {
		t.Fatal("half-open connection alive after a RST and 10 min")
	}
}

// TestAPDMEIFInboundSYNOpensNoSecondSession: under APDM with EIF an inbound SYN does not open a second session of one internal endpoint with one remote endpoint.
func TestAPDMEIFInboundSYNOpensNoSecondSession(t *testing.T) {
	for _, m := range []Mapping{MappingADM, MappingAPDM} {
		e := newEngine(t, testConfig(func(c *Config) { c.Mapping = m; c.Filtering = FilterEIF }))
		_, d1 := tcpOut(t, e, hostA, srv1, "S", t0)
		if v := tcpIn(t, e, srv1b, d1.src, "S", t0); v.Action != Forward {
			t.Fatalf("%v: inbound SYN on E1: %s", m, v.Reason)
		}
		_, d2 := tcpOut(t, e, hostA, srv2, "S", t0)
		v := tcpIn(t, e, srv1b, d2.src, "S", t0)
		if err := e.t.check(); err != nil {
			t.Fatalf("%v: %v", m, err)
		}
		if d1.src != d2.src && v.Action == Forward {
			t.Fatalf("%v: second session of hostA with srv1b opened on %v", m, d2.src)
		}
	}
}

// TestOverloadedFiveTupleNotReusedWhenPortFreed: an overloaded 5-tuple (Config.Overloading) is not handed out again when its port is freed while the overloaded session lives.
func TestOverloadedFiveTupleNotReusedWhenPortFreed(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) {
		c.Ports, c.MixClasses, c.Overloading = tuple.PortSetOf(tuple.PortRangeFrom(50000, 50000)), true, true
		c.UDPTimeout = 10 * time.Second
		c.Filtering = FilterAPDF
	}))
	hostC := netip.MustParseAddrPort("10.0.0.3:40002")
	mapUDP(t, e, hostA, srv1, t0)
	xb := mapUDP(t, e, hostB, srv2, t0)
	mapUDP(t, e, hostB, srv2, t0.Add(8*time.Second))
	e.Expire(t0.Add(12 * time.Second))
	if v, _ := out(e, udpPkt(t, hostC, srv2), t0.Add(13*time.Second)); v.Action == Forward {
		if err := e.t.check(); err != nil {
			t.Fatal(err)
		}
	}
	v, b := in(e, udpPkt(t, srv2, xb), t0.Add(13*time.Second))
	if d := decode(t, b); v.Action != Forward || d.dst != hostB {
		t.Fatalf("srv2's reply went to %v (%v %s), want %v", d.dst, v.Action, v.Reason, hostB)
	}
}

// TestTCPReopenAfterBothFINs: a SYN after both FINs reopens the connection on the same external endpoint, which then lives with the established timer.
func TestTCPReopenAfterBothFINs(t *testing.T) {
	e := newEngine(t, testConfig(nil))
	_, d := tcpOut(t, e, hostA, srv1, "S", t0)
	tcpIn(t, e, srv1, d.src, "SA", t0)
	tcpOut(t, e, hostA, srv1, "FA", t0)
	tcpIn(t, e, srv1, d.src, "FA", t0)
	tcpOut(t, e, hostA, srv1, "A", t0)
	later := t0.Add(time.Minute)
	if v, d2 := tcpOut(t, e, hostA, srv1, "S", later); v.Action != Forward || d2.src != d.src {
		t.Fatalf("reopening SYN: %v %s", v.Action, v.Reason)
	}
	tcpIn(t, e, srv1, d.src, "SA", later)
	for m := 2; m <= 6; m++ {
		now := t0.Add(time.Duration(m) * time.Minute)
		e.Expire(now)
		if v, _ := tcpOut(t, e, hostA, srv1, "PA", now); v.Action != Forward {
			t.Fatalf("reopened connection cut at +%d min: %s", m, v.Reason)
		}
	}
}

// TestPingToOwnExternalAddressRefused: an echo request from inside to the NAT's own external address is not hairpinned (ReasonICMPUnsolicited).
func TestPingToOwnExternalAddressRefused(t *testing.T) {
	e := newEngine(t, testConfig(nil))
	if v, _ := out(e, echoPkt(t, hostA.Addr(), extA, 8, 3), t0); v.Action != Drop || v.Reason != ReasonICMPUnsolicited {
		t.Fatalf("ping to the external address: %v %s", v.Action, v.Reason)
	}
}

// TestDebugLogOmitsDestinations: the debug log of a refused session names no destination unless LogDestinations is set (RFC 6888 REQ-12).
func TestDebugLogOmitsDestinations(t *testing.T) {
	var sb strings.Builder
	e := newEngine(t, testConfig(func(c *Config) {
		c.MaxPortsPerSubscriber = 1
		c.Logger = slog.New(slog.NewTextHandler(&sb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}))
	mapUDP(t, e, hostA, srv1, t0)
	out(e, udpPkt(t, netip.AddrPortFrom(hostA.Addr(), 9), srv2), t0)
	if !strings.Contains(sb.String(), "session refused") || strings.Contains(sb.String(), srv2.Addr().String()) {
		t.Fatalf("log: %s", sb.String())
	}
}

// TestInboundSYNOverSessionLimitAnsweredProhibited: an inbound SYN over the session limit is answered with ICMP "administratively prohibited" from the external address (RFC 5508 REQ-8).
func TestInboundSYNOverSessionLimitAnsweredProhibited(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.MaxSessions = 1 }))
	_, d := tcpOut(t, e, hostA, srv1, "S", t0)
	v, _ := in(e, tcpPkt(t, srv2, d.src, "S"), t0)
	if v.Action != Reply {
		t.Fatalf("inbound SYN over the session limit: %v %s", v.Action, v.Reason)
	}
	if r := decode(t, v.Reply); r.icmpType != 3 || r.code != 13 || r.src.Addr() != extA || r.dst.Addr() != srv2.Addr() {
		t.Fatalf("reply %+v", r)
	}
}

// TestConfigErrorsNameFieldOfCombinations: New names the field of invalid combinations (port 0, overloading with overlapping, blocks without a size, blocks and deterministic ports that do not fit) with a *ConfigError.
func TestConfigErrorsNameFieldOfCombinations(t *testing.T) {
	for field, mut := range map[string]func(*Config){
		"Ports":                  func(c *Config) { c.Ports = tuple.PortSetOf(tuple.PortRangeFrom(0, 10)) },
		"Overloading":            func(c *Config) { c.Overlapping, c.Overloading, c.Filtering = true, true, FilterAPDF },
		"MaxBlocksPerSubscriber": func(c *Config) { c.MaxBlocksPerSubscriber = 2 },
		"BlockSize":              func(c *Config) { c.BlockSize = 70000 },
		"Deterministic": func(c *Config) {
			c.Deterministic, c.Ports = true, tuple.PortSetOf(tuple.PortRangeFrom(1024, 1025))
		},
	} {
		_, err := New(testConfig(mut))
		if ce := (*ConfigError)(nil); !errors.As(err, &ce) || ce.Field != field {
			t.Errorf("%s: %v", field, err)
		}
	}
}
