package nat_test

// NAT conformance suite, the RFC 7857 updates: N-TCP, N-RST, N-OVL, N-REF
// and N-misc.

import (
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/tuple"
)

// RFC 7857 §2.1: TCP tracked with the RFC 6146 state machine; separate
// transitory timers for opening and closing, which may be set below
// 4 minutes while the default stays 4 minutes; a half-closed connection
// keeps the established timer.
func TestConformance_NTCP_StateMachineAndTimers(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		cfg := newRig(t, nat.Config{}).e.Config()
		if cfg.TCPTransitory != 4*time.Minute || cfg.TCPClosing != 4*time.Minute {
			t.Fatalf("default transitory %v, closing %v; want 4m each", cfg.TCPTransitory, cfg.TCPClosing)
		}
	})
	cfg := nat.Config{TCPTransitory: 3 * time.Minute, TCPClosing: time.Minute, TCPEstablished: 2*time.Hour + 4*time.Minute}
	t.Run("opening timer", func(t *testing.T) {
		r := newRig(t, cfg)
		ext := r.out(tcpMk(tcpSYN, 1000, 0), hostX, web)
		ext2 := r.out(tcpMk(tcpSYN, 1000, 0), hostX2, web)
		r.at(3*time.Minute - time.Second)
		r.inTo(tcpMk(tcpSYN|tcpACK, 5000, 1001), web, ext, hostX)
		r.at(3*time.Minute + 2*time.Second)
		r.blocked(tcpMk(tcpSYN|tcpACK, 5000, 1001), web, ext2)
	})
	t.Run("closing timer", func(t *testing.T) {
		r := newRig(t, cfg)
		ext := r.tcpOpen(hostX, web)
		r.out(tcpMk(tcpFIN|tcpACK, 1001, 5001), hostX, web)
		r.inTo(tcpMk(tcpFIN|tcpACK, 5001, 1002), web, ext, hostX)
		r.at(time.Minute - time.Second)
		r.out(tcpMk(tcpACK, 1002, 5002), hostX, web)
		r.at(time.Minute + 2*time.Second) // the ACK at 0:59 did not refresh the closing timer
		r.blocked(tcpMk(tcpFIN|tcpACK, 5001, 1002), web, ext)
	})
	t.Run("half-closed keeps the established timer", func(t *testing.T) {
		r := newRig(t, cfg)
		ext := r.tcpOpen(hostX, web)
		r.out(tcpMk(tcpFIN|tcpACK, 1001, 5001), hostX, web) // client done sending
		r.at(time.Hour)
		r.inTo(tcpMk(tcpACK|tcpPSH, 5001, 1002), web, ext, hostX) // server still sending
		r.at(2 * time.Hour)
		r.inTo(tcpMk(tcpACK|tcpPSH, 5101, 1002), web, ext, hostX)
	})
	t.Run("established is not entered by one SYN", func(t *testing.T) {
		// An inbound ACK with no SYN-ACK seen does not make the connection
		// established: it still dies on the opening timer.
		r := newRig(t, cfg)
		ext := r.out(tcpMk(tcpSYN, 1000, 0), hostX, web)
		r.inTo(tcpMk(tcpACK, 5000, 1001), web, ext, hostX)
		r.out(tcpMk(tcpACK, 1001, 5000), hostX, web)
		r.at(3*time.Minute + 2*time.Second)
		r.blocked(tcpMk(tcpACK, 5000, 1001), web, ext)
	})
}

// RFC 7857 §2.2: a RST is translated, and the state is kept for 4 minutes
// after it (so a lost or spoofed RST does not cut a live connection), then
// removed.
func TestConformance_NRST_RSTKeepsState4Min(t *testing.T) {
	r := newRig(t, nat.Config{})
	extA := r.tcpOpen(hostX, web)
	extB := r.tcpOpen(hostX2, web)
	r.inTo(tcpMk(tcpRST, 5001, 0), web, extA, hostX)     // translated byte for byte
	r.out(tcpMk(tcpRST|tcpACK, 1001, 5001), hostX2, web) // outbound too
	r.at(4*time.Minute - time.Millisecond)
	r.inTo(tcpMk(tcpRST, 5001, 0), web, extB, hostX2) // state still there
	r.at(4*time.Minute + 2*time.Second)
	r.blocked(tcpMk(tcpACK, 5001, 1001), web, extA) // gone after 4 minutes
}

// RFC 7857 §3 (port overlapping, MAY): one external port serves several
// internal endpoints whose remote endpoints differ; replies are told apart
// by the 5-tuple; the same remote endpoint cannot be shared.
func TestConformance_NOVL_PortOverlapping(t *testing.T) {
	r := presetRig(t, "linux-masquerade", func(c *nat.Config) { c.Ports = tuple.MustParsePortSet("50000") })
	eX := r.out(ping, hostX, srvA)
	eY := r.out(ping, hostY, srvB)
	if eX != eY {
		t.Fatalf("one port in the pool, but X got %v and Y %v", eX, eY)
	}
	r.inTo(pong, srvA, eX, hostX)
	r.inTo(pong, srvB, eY, hostY)
	r.blocked(pong, srvAb, eX) // APDF: the 5-tuple decides, no guessing
	// Y -> srvA would need the 5-tuple X already uses.
	if res := r.send(true, ping, hostY, srvA); res.v.Action == nat.Forward {
		t.Fatalf("Y -> %v shares X's 5-tuple from %v", srvA, res.pv.From())
	}
	// TCP overlaps the same way.
	tX := r.tcpOpen(hostX, web)
	tY := r.tcpOpen(hostY, web2)
	if tX != tY {
		t.Fatalf("TCP: X %v, Y %v", tX, tY)
	}
	r.inTo(tcpMk(tcpACK|tcpPSH, 5001, 1001), web2, tY, hostY)
}

// RFC 7857 (N-REF): an outbound ICMP error or RST sent in answer to an
// inbound packet does not refresh the mapping or session.
func TestConformance_NREF_ErrorsAndRSTsDoNotRefresh(t *testing.T) {
	t.Run("ICMP error", func(t *testing.T) {
		r := newRig(t, nat.Config{UDPTimeout: 2 * time.Minute})
		ext := r.out(ping, hostX, srvA)
		r.at(90 * time.Second)
		r.inTo(pong, srvA, ext, hostX) // inbound (no inbound refresh)
		res := r.run(true, icmpErrPkt(hostX.Addr(), srvA.Addr(), icmpUnreachable, codePortUnreach, udpPkt(srvA, hostX, "pong"), 32, 0))
		if res.v.Action != nat.Forward {
			t.Fatalf("X's port unreachable: %v (%s)", res.v.Action, res.v.Reason)
		}
		r.at(2*time.Minute + 2*time.Second)
		r.blocked(pong, srvA, ext)
	})
	t.Run("RST", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		ext := r.tcpOpen(hostX, web)
		r.at(time.Hour)
		r.inTo(tcpMk(tcpACK|tcpPSH, 5001, 1001), web, ext, hostX)
		r.out(tcpMk(tcpRST, 1001, 0), hostX, web) // X no longer knows the connection
		r.at(time.Hour + 4*time.Minute + 2*time.Second)
		r.blocked(tcpMk(tcpACK|tcpPSH, 5001, 1001), web, ext)
	})
}

// RFC 7857 miscellany: address pooling paired across protocols, EIF
// protocol-dependent, port parity may be disabled, port selection per
// RFC 6056, IPv4 identification kept, ICMP mapping removed with its last
// session.
func TestConformance_Nmisc(t *testing.T) {
	t.Run("paired pooling across protocols", func(t *testing.T) {
		pool := []netip.Addr{extIP, extIP2, netip.MustParseAddr("203.0.113.3"), netip.MustParseAddr("203.0.113.4")}
		for h := 10; h < 26; h++ {
			r := newRig(t, nat.Config{External: pool})
			host := netip.AddrFrom4([4]byte{192, 168, 1, byte(h)})
			u := r.out(ping, netip.AddrPortFrom(host, 40000), srvA)
			tc := r.out(tcpMk(tcpSYN, 1, 0), netip.AddrPortFrom(host, 40001), web)
			ic := r.echoOut(host, 77, srvB.Addr(), 1)
			if u.Addr() != tc.Addr() || u.Addr() != ic.Addr() {
				t.Fatalf("host %v: UDP on %v, TCP on %v, ICMP on %v", host, u.Addr(), tc.Addr(), ic.Addr())
			}
		}
	})
	t.Run("EIF is protocol-dependent", func(t *testing.T) {
		r := newRig(t, nat.Config{Filtering: nat.FilterEIF, SYNHold: -1})
		ext := r.out(ping, hostX, srvA)
		r.blocked(tcpMk(tcpSYN, 1, 0), srvA, ext)
	})
	t.Run("parity may be disabled", func(t *testing.T) {
		r := newRig(t, nat.Config{Parity: false, Ports: tuple.MustParsePortSet("50001")})
		if ext := r.out(ping, hostX, srvA); ext.Port() != 50001 {
			t.Fatalf("even port mapped to %v", ext)
		}
	})
	t.Run("ports per RFC 6056", func(t *testing.T) {
		// The default is RFC 6056 §3.3.3 Algorithm 3, F(addresses, secret) +
		// a counter: two NATs with different secrets pick different ports
		// for the same flows, and flows between different address pairs do
		// not follow one another. (Flows between one address pair do get
		// consecutive ports: Algorithm 3 by design.)
		a, b := newRig(t, nat.Config{}), newRig(t, nat.Config{})
		var pa, pb []uint16
		for i := range 16 {
			h := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, 1, byte(10 + i)}), 40000)
			dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i)}), 3478)
			pa = append(pa, a.out(ping, h, dst).Port())
			pb = append(pb, b.out(ping, h, dst).Port())
		}
		same, steps := 0, 0
		for i := range pa {
			if pa[i] == pb[i] {
				same++
			}
			if i > 0 && pa[i] >= pa[i-1] && pa[i]-pa[i-1] <= 16 {
				steps++
			}
		}
		if same > 2 || steps > 4 {
			t.Fatalf("ports %v and %v: %d equal across secrets, %d near-sequential steps", pa, pb, same, steps)
		}
	})
	t.Run("IPv4 identification", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		b := udpPkt(hostX, srvA, "ping")
		b[4], b[5] = 0xbe, 0xef
		b[10], b[11] = 0, 0
		c := ^csum(0, b[:20])
		b[10], b[11] = byte(c>>8), byte(c)
		res := r.run(true, b)
		if res.v.Action != nat.Forward || res.out[4] != 0xbe || res.out[5] != 0xef {
			t.Fatalf("identification became %#02x%02x", res.out[4], res.out[5])
		}
		// Two hosts fragmenting to one destination with the same ID must
		// not leave with the same fragment identity (RFC 6864, RFC 7857):
		// each datagram gets one ID for all its fragments, and the two differ.
		fx := fragment(udpPkt(hostX, srvA, "0123456789abcdef0123"), 0, 16)
		fy := fragment(udpPkt(hostY, srvA, "ABCDEFGHIJKLMNOPQRST"), 0, 16)
		ids := map[string]uint16{}
		for _, f := range []struct {
			who string
			b   []byte
		}{{"X", fx[0]}, {"Y", fy[0]}, {"X", fx[1]}, {"Y", fy[1]}} {
			res := r.run(true, append([]byte(nil), f.b...))
			if res.v.Action != nat.Forward {
				t.Fatalf("fragment of %s: %v (%s)", f.who, res.v.Action, res.v.Reason)
			}
			id := uint16(res.out[4])<<8 | uint16(res.out[5])
			if prev, ok := ids[f.who]; ok && prev != id {
				t.Fatalf("fragments of %s's datagram left with IDs %d and %d", f.who, prev, id)
			}
			ids[f.who] = id
		}
		if ids["X"] == ids["Y"] {
			t.Fatalf("X's and Y's datagrams both left with ID %d from one external address", ids["X"])
		}
	})
	t.Run("ICMP mapping dropped with its last session", func(t *testing.T) {
		r := newRig(t, nat.Config{})
		r.echoOut(hostX.Addr(), 5, srvA.Addr(), 1)
		r.echoOut(hostX.Addr(), 5, srvB.Addr(), 1)
		if m := r.e.Stats().Mappings; m != 1 {
			t.Fatalf("%d mappings for one identifier", m)
		}
		r.at(61 * time.Second)
		if s := r.e.Stats(); s.Mappings != 0 || s.Sessions != 0 {
			t.Fatalf("after the query timer: %d mappings, %d sessions", s.Mappings, s.Sessions)
		}
	})
}
