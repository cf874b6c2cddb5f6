package nat_test

// NAT conformance suite, RFC 5382 (TCP) requirements T1..T10.

import (
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/tuple"
)

var (
	web  = netip.MustParseAddrPort("198.51.100.7:443")
	web2 = netip.MustParseAddrPort("198.51.100.8:443")
)

// RFC 5382 REQ-1: endpoint-independent mapping for TCP.
func TestConformance_T1_TCPEndpointIndependentMapping(t *testing.T) {
	r := newRig(t, nat.Config{})
	e1 := r.tcpOpen(hostX, web)
	e2 := r.out(tcpMk(tcpSYN, 7000, 0), hostX, netip.AddrPortFrom(web.Addr(), 8443))
	e3 := r.out(tcpMk(tcpSYN, 9000, 0), hostX, web2)
	if e1 != e2 || e1 != e3 {
		t.Fatalf("one internal endpoint got %v, %v, %v for three destinations", e1, e2, e3)
	}
	r.inTo(tcpMk(tcpSYN|tcpACK, 1, 9001), web2, e1, hostX)
}

// RFC 5382 REQ-2: every valid RFC 793 sequence works for connections
// opened from either side: handshake, data both ways, and each close order.
func TestConformance_T2_ValidTCPSequences(t *testing.T) {
	t.Run("client closes first", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		ext := r.tcpOpen(hostX, web)
		r.inTo(tcpMk(tcpACK|tcpPSH, 5001, 1001), web, ext, hostX)
		r.out(tcpMk(tcpACK|tcpPSH, 1001, 5101), hostX, web)
		r.out(tcpMk(tcpFIN|tcpACK, 1101, 5101), hostX, web)
		r.inTo(tcpMk(tcpACK, 5101, 1102), web, ext, hostX)
		r.inTo(tcpMk(tcpFIN|tcpACK, 5101, 1102), web, ext, hostX)
		r.out(tcpMk(tcpACK, 1102, 5102), hostX, web)
	})
	t.Run("server closes first", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		ext := r.tcpOpen(hostX, web)
		r.inTo(tcpMk(tcpFIN|tcpACK, 5001, 1001), web, ext, hostX)
		r.out(tcpMk(tcpACK, 1001, 5002), hostX, web)
		r.out(tcpMk(tcpFIN|tcpACK, 1001, 5002), hostX, web)
		r.inTo(tcpMk(tcpACK, 5002, 1002), web, ext, hostX)
	})
	t.Run("simultaneous close", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		ext := r.tcpOpen(hostX, web)
		r.out(tcpMk(tcpFIN|tcpACK, 1001, 5001), hostX, web)
		r.inTo(tcpMk(tcpFIN|tcpACK, 5001, 1001), web, ext, hostX)
		r.out(tcpMk(tcpACK, 1002, 5002), hostX, web)
		r.inTo(tcpMk(tcpACK, 5002, 1002), web, ext, hostX)
	})
	t.Run("opened from outside", func(t *testing.T) {
		// An EIF mapping admits an inbound connection (RFC 5382 §4 lets a
		// permitted connection be initiated externally).
		r := newRig(t, nat.Config{})
		ext := r.out(tcpMk(tcpSYN, 1, 0), hostX, web) // creates the mapping
		peer := netip.MustParseAddrPort("198.51.100.9:5555")
		r.inTo(tcpMk(tcpSYN, 100, 0), peer, ext, hostX)
		r.out(tcpMk(tcpSYN|tcpACK, 200, 101), hostX, peer)
		r.inTo(tcpMk(tcpACK, 101, 201), peer, ext, hostX)
		r.inTo(tcpMk(tcpACK|tcpPSH, 101, 201), peer, ext, hostX)
		r.out(tcpMk(tcpFIN|tcpACK, 201, 111), hostX, peer)
		r.inTo(tcpMk(tcpFIN|tcpACK, 111, 202), peer, ext, hostX)
		r.out(tcpMk(tcpACK, 202, 112), hostX, peer)
	})
	// A connection opened from outside through an address(-and-port)-
	// dependent mapping is answered from the endpoint it was opened to.
	for _, tc := range []struct {
		name string
		cfg  nat.Config
		peer netip.AddrPort
	}{
		{"opened from outside, ADM+ADF", nat.Config{Mapping: nat.MappingADM, Filtering: nat.FilterADF}, netip.AddrPortFrom(web.Addr(), 5555)},
		{"opened from outside, APDM+EIF", nat.Config{Mapping: nat.MappingAPDM, Filtering: nat.FilterEIF}, netip.MustParseAddrPort("198.51.100.9:5555")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, tc.cfg)
			ext := r.out(tcpMk(tcpSYN, 1, 0), hostX, web)
			r.inTo(tcpMk(tcpSYN, 100, 0), tc.peer, ext, hostX)
			if got := r.out(tcpMk(tcpSYN|tcpACK, 200, 101), hostX, tc.peer); got != ext {
				t.Fatalf("SYN-ACK to %v left from %v; the peer opened the connection to %v", tc.peer, got, ext)
			}
			r.inTo(tcpMk(tcpACK, 101, 201), tc.peer, ext, hostX)
			if got := r.out(tcpMk(tcpACK|tcpPSH, 201, 101), hostX, tc.peer); got != ext {
				t.Fatalf("data to %v left from %v, want %v", tc.peer, got, ext)
			}
		})
	}
}

// RFC 5382 REQ-2 (simultaneous open MUST): the SYNs of two hosts cross.
// X's outbound SYN opens the hole; the peer's SYN (no ACK) arriving at X's
// external endpoint is let through, even with APDF, as are the SYN-ACKs
// that follow. Run with the strictest filtering and with the symmetric
// preset.
func TestConformance_T2a_SimultaneousOpen(t *testing.T) {
	for _, preset := range []string{"port-restricted-cone", "symmetric", "rfc-recommended"} {
		t.Run(preset, func(t *testing.T) {
			r := presetRig(t, preset, nil)
			peer := netip.MustParseAddrPort("198.51.100.9:5555")
			ext := r.out(tcpMk(tcpSYN, 1000, 0), hostX, peer)
			r.at(20 * time.Millisecond)
			r.inTo(tcpMk(tcpSYN, 7000, 0), peer, ext, hostX)
			r.out(tcpMk(tcpSYN|tcpACK, 1000, 7001), hostX, peer)
			r.inTo(tcpMk(tcpSYN|tcpACK, 7000, 1001), peer, ext, hostX)
			r.out(tcpMk(tcpACK|tcpPSH, 1001, 7001), hostX, peer)
			r.inTo(tcpMk(tcpACK|tcpPSH, 7001, 1001), peer, ext, hostX)
		})
	}
}

// RFC 5382 REQ-3 (3a, 3b): TCP filtering is EIF or ADF (or APDF),
// configurable, and may differ from UDP's: here UDP is EIF and TCP APDF.
func TestConformance_T3_TCPFilteringConfigurable(t *testing.T) {
	r := newRig(t, nat.Config{Filtering: nat.FilterEIF, TCPFiltering: nat.FilterAPDF, SYNHold: -1})
	peer := netip.MustParseAddrPort("198.51.100.9:5555")
	extT := r.tcpOpen(hostX, web)
	extU := r.out(ping, hostX, web)
	r.inTo(pong, peer, extU, hostX) // UDP: EIF
	if v := r.blocked(tcpMk(tcpSYN, 1, 0), peer, extT); v.Reason != nat.ReasonSYNDropped {
		t.Errorf("TCP SYN from an unknown endpoint: %q, want %q", v.Reason, nat.ReasonSYNDropped)
	}
	r.blocked(tcpMk(tcpSYN, 1, 0), netip.AddrPortFrom(web.Addr(), 444), extT) // APDF: same address, other port

	// And the other way round: TCP EIF, UDP APDF.
	r = newRig(t, nat.Config{Filtering: nat.FilterAPDF, TCPFiltering: nat.FilterEIF})
	extT = r.tcpOpen(hostX, web)
	extU = r.out(ping, hostX, web)
	r.blocked(pong, peer, extU)
	r.inTo(tcpMk(tcpSYN, 1, 0), peer, extT, hostX)
}

// RFC 5382 REQ-4: an unsolicited inbound SYN gets no response for at least
// 6 s; then ICMP port unreachable (SHOULD) unless an outbound SYN of the
// same connection came meanwhile, in which case the held SYN is dropped
// silently.
func TestConformance_T4_UnsolicitedSYN(t *testing.T) {
	peer := netip.MustParseAddrPort("198.51.100.9:5555")
	t.Run("answered after 6 s", func(t *testing.T) {
		r := newRig(t, nat.Config{Filtering: nat.FilterAPDF})
		ext := r.tcpOpen(hostX, web)
		r.at(300 * time.Millisecond)
		syn := tcpPkt(peer, ext, tcpSYN, 4242, 0)
		res := r.run(false, append([]byte(nil), syn...))
		if res.v.Action != nat.Drop || res.v.Reason != nat.ReasonSYNHeld {
			t.Fatalf("unsolicited SYN: %v (%s), want drop (%s)", res.v.Action, res.v.Reason, nat.ReasonSYNHeld)
		}
		var answered time.Duration
		for ms := 400; ms <= 10300; ms += 100 {
			r.at(time.Duration(ms) * time.Millisecond)
			reps := r.e.Replies()
			if len(reps) == 0 {
				continue
			}
			answered = time.Duration(ms)*time.Millisecond - 300*time.Millisecond
			if len(reps) != 1 {
				t.Fatalf("%d replies for one SYN", len(reps))
			}
			v := mustParse(t, reps[0])
			if v.ICMPType != icmpUnreachable || v.ICMPCode != codePortUnreach || v.Src != ext.Addr() || v.Dst != peer.Addr() {
				t.Fatalf("reply is ICMP %d/%d %v -> %v, want port unreachable %v -> %v", v.ICMPType, v.ICMPCode, v.Src, v.Dst, ext.Addr(), peer.Addr())
			}
			if string(v.innerBytes) != string(syn[:len(v.innerBytes)]) || len(v.innerBytes) < 28 {
				t.Fatalf("reply quotes % x, want the SYN % x", v.innerBytes, syn)
			}
			break
		}
		if answered < 6*time.Second || answered > 8*time.Second {
			t.Fatalf("port unreachable sent %v after the SYN, want after at least 6 s (and not much later)", answered)
		}
	})
	t.Run("outbound SYN drops the held one", func(t *testing.T) {
		r := newRig(t, nat.Config{Filtering: nat.FilterAPDF})
		ext := r.tcpOpen(hostX, web)
		r.blocked(tcpMk(tcpSYN, 4242, 0), peer, ext)
		r.at(2 * time.Second)
		if got := r.out(tcpMk(tcpSYN, 1000, 0), hostX, peer); got != ext {
			t.Fatalf("outbound SYN left from %v, want %v", got, ext)
		}
		for s := 3; s <= 12; s++ {
			r.at(time.Duration(s) * time.Second)
			if n := len(r.e.Replies()); n != 0 {
				t.Fatalf("%d replies at %ds for a SYN whose connection was opened outbound", n, s)
			}
		}
		// The connection works: the peer's retransmitted SYN now crosses.
		r.inTo(tcpMk(tcpSYN, 4242, 0), peer, ext, hostX)
	})
	t.Run("to a port without mapping", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		unused := netip.AddrPortFrom(extIP, 55555)
		res := r.run(false, tcpPkt(peer, unused, tcpSYN, 1, 0))
		if res.v.Action != nat.Drop || res.v.Reason != nat.ReasonSYNHeld {
			t.Fatalf("SYN to an unmapped port: %v (%s), want held", res.v.Action, res.v.Reason)
		}
		for s := 1; s <= 5; s++ {
			r.at(time.Duration(s) * time.Second)
			if n := len(r.e.Replies()); n != 0 {
				t.Fatalf("answered after %ds", s)
			}
		}
		got := 0
		for s := 6; s <= 9; s++ {
			r.at(time.Duration(s) * time.Second)
			got += len(r.e.Replies())
		}
		if got != 1 {
			t.Fatalf("%d answers between 6 and 9 s, want one port unreachable", got)
		}
	})
	t.Run("silent drop by policy (4a)", func(t *testing.T) {
		r := newRig(t, nat.Config{Filtering: nat.FilterAPDF, SilentSYNDrop: true})
		ext := r.tcpOpen(hostX, web)
		r.blocked(tcpMk(tcpSYN, 4242, 0), peer, ext)
		for s := 1; s <= 12; s++ {
			r.at(time.Duration(s) * time.Second)
			if n := len(r.e.Replies()); n != 0 {
				t.Fatalf("%d replies at %ds with SilentSYNDrop", n, s)
			}
		}
	})
}

// RFC 5382 REQ-5: established idle timeout at least 2 h 4 min, transitory
// at least 4 min (the defaults); 5a: both configurable.
func TestConformance_T5_TCPTimers(t *testing.T) {
	t.Run("established", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		ext := r.tcpOpen(hostX, web)
		r.at(2*time.Hour + 4*time.Minute - time.Millisecond)
		r.inTo(tcpMk(tcpACK|tcpPSH, 5001, 1001), web, ext, hostX)
	})
	t.Run("transitory (SYN sent)", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		ext := r.out(tcpMk(tcpSYN, 1000, 0), hostX, web)
		r.at(4*time.Minute - time.Millisecond)
		r.inTo(tcpMk(tcpSYN|tcpACK, 5000, 1001), web, ext, hostX)
	})
	t.Run("transitory (closing)", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		ext := r.tcpOpen(hostX, web)
		r.out(tcpMk(tcpFIN|tcpACK, 1001, 5001), hostX, web)
		r.inTo(tcpMk(tcpFIN|tcpACK, 5001, 1002), web, ext, hostX)
		r.at(4*time.Minute - time.Millisecond)
		r.out(tcpMk(tcpACK, 1002, 5002), hostX, web) // last ACK retransmitted
	})
	t.Run("configurable (5a)", func(t *testing.T) {
		r := newRig(t, nat.Config{TCPEstablished: 3 * time.Hour, TCPTransitory: 5 * time.Minute})
		ext := r.tcpOpen(hostX, web)
		// The configured 3 h, not the default and not a longer timer: alive
		// just before 3 h after the last outbound packet, gone just after.
		r.at(3*time.Hour - time.Second)
		r.inTo(tcpMk(tcpACK, 5001, 1001), web, ext, hostX)
		r.at(3*time.Hour + time.Second)
		r.blocked(tcpMk(tcpACK, 5001, 1001), web, ext)
		ext2 := r.out(tcpMk(tcpSYN, 1, 0), hostX2, web)
		r.at(3*time.Hour + 5*time.Minute)
		r.inTo(tcpMk(tcpSYN|tcpACK, 9, 2), web, ext2, hostX2)
	})
}

// RFC 5382 REQ-6 (and RFC 4787 REQ-10): ALGs off by default, except FTP.
// The engine has no ALG at all: an FTP PORT command passes unchanged (the
// payload is compared byte for byte by send), so active FTP through the
// engine needs the client to use passive mode.
func TestConformance_T6_NoTCPALG(t *testing.T) {
	r := newRig(t, nat.Config{})
	ftp := netip.MustParseAddrPort("198.51.100.7:21")
	ext := r.tcpOpen(hostX, ftp)
	payload := "PORT 192,168,1,10,156,65\r\n"
	m := func(s, d netip.AddrPort) []byte {
		b := tcpPkt(s, d, tcpACK|tcpPSH, 1001, 5001)
		return withTCPPayload(b, payload)
	}
	if got := r.out(m, hostX, ftp); got != ext {
		t.Fatalf("data left from %v, connection from %v", got, ext)
	}
}

// withTCPPayload returns the TCP segment b with payload appended and its
// lengths and checksums recomputed.
func withTCPPayload(b []byte, payload string) []byte {
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), uint16(b[20])<<8|uint16(b[21]))
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), uint16(b[22])<<8|uint16(b[23]))
	seg := append(append([]byte(nil), b[20:40]...), payload...)
	seg[16], seg[17] = 0, 0
	c := ^csum(pseudo(src.Addr(), dst.Addr(), protoTCP, len(seg)), seg)
	seg[16], seg[17] = byte(c>>8), byte(c)
	return ipv4(src.Addr(), dst.Addr(), protoTCP, 1, true, seg)
}

// RFC 5382 REQ-7: no port overloading for TCP.
func TestConformance_T7_NoTCPPortOverloading(t *testing.T) {
	r := newRig(t, nat.Config{Ports: tuple.MustParsePortSet("50000-50001")})
	e1 := r.out(tcpMk(tcpSYN, 1, 0), hostX, web)
	e2 := r.out(tcpMk(tcpSYN, 1, 0), hostY, web)
	if e1 == e2 {
		t.Fatalf("two internal endpoints share %v", e1)
	}
	res := r.send(true, tcpMk(tcpSYN, 1, 0), hostX2, web2)
	if res.v.Action == nat.Forward {
		t.Fatalf("third endpoint sent from %v with two ports", res.pv.From())
	}
	if res.v.Reason != nat.ReasonPortsExhausted {
		t.Errorf("reason %q, want %q", res.v.Reason, nat.ReasonPortsExhausted)
	}
}

// RFC 5382 REQ-8: TCP hairpinning, with the external source endpoint.
func TestConformance_T8_TCPHairpinning(t *testing.T) {
	r := newRig(t, nat.Config{})
	extX := r.out(tcpMk(tcpSYN, 1, 0), hostX, web) // X's mapping; X listens on it
	res := r.send(true, tcpMk(tcpSYN, 100, 0), hostY, extX)
	if res.v.Action != nat.Hairpin || res.pv.To() != hostX {
		t.Fatalf("Y's SYN to %v: %v to %v (%s), want hairpin to %v", extX, res.v.Action, res.pv.To(), res.v.Reason, hostX)
	}
	extY := res.pv.From()
	if !r.isExternal(extY.Addr()) {
		t.Fatalf("hairpinned SYN from %v, want Y's external endpoint", extY)
	}
	for _, step := range []struct {
		from, to, wantTo netip.AddrPort
		fromExt          netip.AddrPort
		m                mk
	}{
		{hostX, extY, hostY, extX, tcpMk(tcpSYN|tcpACK, 200, 101)},
		{hostY, extX, hostX, extY, tcpMk(tcpACK, 101, 201)},
		{hostY, extX, hostX, extY, tcpMk(tcpACK|tcpPSH, 101, 201)},
		{hostX, extY, hostY, extX, tcpMk(tcpFIN|tcpACK, 201, 111)},
	} {
		res := r.send(true, step.m, step.from, step.to)
		if res.v.Action != nat.Hairpin || res.pv.To() != step.wantTo || res.pv.From() != step.fromExt {
			t.Fatalf("%v -> %v: %v %v -> %v (%s), want hairpin %v -> %v", step.from, step.to, res.v.Action, res.pv.From(), res.pv.To(), res.v.Reason, step.fromExt, step.wantTo)
		}
	}
}

// RFC 5382 REQ-2a and REQ-8 together: two hosts behind one APDF NAT open
// a TCP connection to each other's external endpoints by crossing SYNs
// through the hairpin.
func TestConformance_T8_HairpinnedSimultaneousOpen(t *testing.T) {
	r := presetRig(t, "port-restricted-cone", nil)
	extX := r.out(tcpMk(tcpSYN, 1, 0), hostX, web)
	extY := r.out(tcpMk(tcpSYN, 1, 0), hostY, web2)
	if res := r.send(true, tcpMk(tcpSYN, 1000, 0), hostX, extY); res.v.Action == nat.Hairpin {
		t.Fatalf("X's SYN reached Y through APDF before Y sent to %v", extX)
	}
	for _, step := range []struct {
		m                          mk
		from, to, wantTo, wantFrom netip.AddrPort
	}{
		{tcpMk(tcpSYN, 7000, 0), hostY, extX, hostX, extY},
		{tcpMk(tcpSYN|tcpACK, 1000, 7001), hostX, extY, hostY, extX},
		{tcpMk(tcpACK, 7001, 1001), hostY, extX, hostX, extY},
		{tcpMk(tcpACK|tcpPSH, 1001, 7001), hostX, extY, hostY, extX},
	} {
		res := r.send(true, step.m, step.from, step.to)
		if res.v.Action != nat.Hairpin || res.pv.To() != step.wantTo || res.pv.From() != step.wantFrom {
			t.Fatalf("%v -> %v: %v %v -> %v (%s), want hairpin %v -> %v", step.from, step.to, res.v.Action, res.pv.From(), res.pv.To(), res.v.Reason, step.wantFrom, step.wantTo)
		}
	}
}

// RFC 5382 REQ-9: ICMP destination unreachable about a TCP connection is
// translated (byte for byte; the quote covers the TCP checksum here).
func TestConformance_T9_TCPICMPUnreachableTranslated(t *testing.T) {
	r := newRig(t, nat.Config{})
	ext := r.tcpOpen(hostX, web)
	for _, quote := range []int{28, 40} {
		sent := tcpPkt(ext, web, tcpACK|tcpPSH, 1001, 5001)
		res := r.run(false, icmpErrPkt(routerR, ext.Addr(), icmpUnreachable, codeHostUnreach, sent, quote, 0))
		if res.v.Action != nat.Forward {
			t.Fatalf("host unreachable: %v (%s)", res.v.Action, res.v.Reason)
		}
		want := icmpErrPkt(routerR, hostX.Addr(), icmpUnreachable, codeHostUnreach, tcpPkt(hostX, web, tcpACK|tcpPSH, 1001, 5001), quote, 0)
		if string(res.out) != string(want) {
			t.Fatalf("quote %d:\n got  % x\n want % x", quote, res.out, want)
		}
	}
}

// RFC 5382 REQ-10: no ICMP message terminates the mapping or the TCP
// connection it is about.
func TestConformance_T10_ICMPDoesNotKillTCP(t *testing.T) {
	r := newRig(t, nat.Config{})
	ext := r.tcpOpen(hostX, web)
	before := r.e.Stats().Sessions
	sent := tcpPkt(ext, web, tcpACK, 1001, 5001)
	for _, tc := range []struct{ typ, code uint8 }{
		{icmpUnreachable, codePortUnreach}, {icmpUnreachable, codeHostUnreach},
		{icmpUnreachable, codeAdminProhib}, {icmpUnreachable, codeFragNeeded}, {icmpTimeExc, 0},
	} {
		if res := r.run(false, icmpErrPkt(web.Addr(), ext.Addr(), tc.typ, tc.code, sent, 40, 1200)); res.v.Action != nat.Forward {
			t.Fatalf("ICMP %d/%d: %v (%s)", tc.typ, tc.code, res.v.Action, res.v.Reason)
		}
	}
	r.at(time.Second)
	if after := r.e.Stats().Sessions; after != before {
		t.Fatalf("sessions %d -> %d after ICMP errors", before, after)
	}
	r.inTo(tcpMk(tcpACK|tcpPSH, 5001, 1001), web, ext, hostX)
	if got := r.out(tcpMk(tcpACK, 1001, 5002), hostX, web); got != ext {
		t.Fatalf("connection moved from %v to %v", ext, got)
	}
}

// A segment with both SYN and FIN set opens a connection as a SYN would
// (RFC 5382 REQ-2 asks for every sequence a TCP may send to work; RFC 9293
// §3.10.7.2 processes the SYN of such a segment first): outbound it creates
// the session in the opening state with the transitory timer, the SYN-ACK
// comes back and the connection becomes established; inbound and
// unsolicited it is held like a SYN (RFC 5382 REQ-4); after both FINs it
// reopens the connection as a SYN does.
func TestConformance_T2_SYNFINOpensLikeSYN(t *testing.T) {
	peer := netip.MustParseAddrPort("198.51.100.9:5555")
	for _, syn := range []uint8{tcpSYN, tcpSYN | tcpFIN} {
		r := newRig(t, nat.Config{Filtering: nat.FilterAPDF})
		ext := r.out(tcpMk(syn, 1000, 0), hostX, web)
		r.inTo(tcpMk(tcpSYN|tcpACK, 5000, 1001), web, ext, hostX)
		r.out(tcpMk(tcpACK, 1001, 5001), hostX, web)
		r.at(10 * time.Minute) // past the transitory timer: established
		r.inTo(tcpMk(tcpACK|tcpPSH, 5001, 1001), web, ext, hostX)

		// Opening state: without an answer the session lives for the
		// transitory timer (4 min), not the established one.
		r = newRig(t, nat.Config{Filtering: nat.FilterAPDF})
		r.out(tcpMk(syn, 1000, 0), hostX, web)
		r.at(4*time.Minute + 2*time.Second)
		if st := r.e.Stats(); st.Sessions != 0 {
			t.Fatalf("flags %#x: %d sessions 4 min after an unanswered opening segment", syn, st.Sessions)
		}

		// Unsolicited from outside: held like a SYN.
		r = newRig(t, nat.Config{Filtering: nat.FilterAPDF})
		ext = r.tcpOpen(hostX, web)
		if res := r.run(false, tcpPkt(peer, ext, syn, 4242, 0)); res.v.Action != nat.Drop || res.v.Reason != nat.ReasonSYNHeld {
			t.Fatalf("flags %#x unsolicited inbound: %v (%s), want held", syn, res.v.Action, res.v.Reason.String())
		}

		// After both FINs: reopens the connection.
		r.out(tcpMk(tcpFIN|tcpACK, 1001, 5001), hostX, web)
		r.inTo(tcpMk(tcpFIN|tcpACK, 5001, 1002), web, ext, hostX)
		r.out(tcpMk(tcpACK, 1002, 5002), hostX, web)
		r.at(time.Minute)
		if got := r.out(tcpMk(syn, 90000, 0), hostX, web); got != ext {
			t.Fatalf("flags %#x reopening left from %v, want %v", syn, got, ext)
		}
		r.inTo(tcpMk(tcpSYN|tcpACK, 7000, 90001), web, ext, hostX)
		r.out(tcpMk(tcpACK, 90001, 7001), hostX, web)
		r.at(time.Minute + 10*time.Minute) // established again, not closing
		r.inTo(tcpMk(tcpACK|tcpPSH, 7001, 90001), web, ext, hostX)
	}
}
