package nat

import (
	"net/netip"
	"testing"
	"time"
	"unsafe"
)

// TestZombieMappingExpiresWithItsSessions: a mapping whose first session
// (its owner) has ended lives on as long as another of its sessions does,
// and not longer: once every session's timer has run out, an inbound
// packet from a new remote is refused as having no mapping (RFC 4787
// §4.3: the mapping expires when no packet refreshed it within the timer;
// RFC 5382 REQ-5 and RFC 5508 REQ-2 for TCP and ICMP), even though no
// sweep (Expire) has run since. Before that the mapping still admits it
// (EIF). The owner becomes a zombie in a sweep while the second session
// lives; the second session then runs out without a sweep.
func TestZombieMappingExpiresWithItsSessions(t *testing.T) {
	srv3 := netip.MustParseAddrPort("198.51.100.3:5000")
	t.Run("udp", func(t *testing.T) {
		e := newEngine(t, testConfig(func(c *Config) { c.UDPTimeout = 2 * time.Minute }))
		x := mapUDP(t, e, hostA, srv1, t0)
		mapUDP(t, e, hostA, srv2, t0.Add(60*time.Second))
		e.Expire(t0.Add(150 * time.Second)) // the owner's flow ends: a zombie
		if v, _ := in(e, udpPkt(t, srv3, x), t0.Add(170*time.Second)); v.Action != Forward {
			t.Fatalf("while srv2's session lives: %v %s, want forward", v.Action, v.Reason)
		}
		// srv2's session expires at 60+120 s (+1 s rounding).
		if v, _ := in(e, udpPkt(t, srv3, x), t0.Add(190*time.Second)); v.Action != Drop || v.Reason != ReasonNoMapping {
			t.Fatalf("after every session expired: %v %s, want drop no-mapping", v.Action, v.Reason)
		}
		// An inbound refresh of the dead session does not bring it back.
		if v, _ := in(e, udpPkt(t, srv2, x), t0.Add(190*time.Second)); v.Action != Drop {
			t.Fatalf("reply on the expired session: %v %s", v.Action, v.Reason)
		}
		e.Expire(t0.Add(190 * time.Second))
		if st := e.Stats(); st.Mappings != 0 || st.Sessions != 0 || st.Records != 0 {
			t.Fatalf("after the sweep %+v", st)
		}
	})
	t.Run("udp-refreshed-member", func(t *testing.T) {
		// The second session's refreshes keep the mapping: its timer, not
		// the one it was created with, decides.
		e := newEngine(t, testConfig(func(c *Config) { c.UDPTimeout = 2 * time.Minute }))
		x := mapUDP(t, e, hostA, srv1, t0)
		mapUDP(t, e, hostA, srv2, t0.Add(10*time.Second))
		mapUDP(t, e, hostA, srv2, t0.Add(100*time.Second)) // refreshed: ends at 221 s
		e.Expire(t0.Add(150 * time.Second))
		mapUDP(t, e, hostA, srv2, t0.Add(200*time.Second)) // refreshed again, the owner a zombie: ends at 321 s
		if v, _ := in(e, udpPkt(t, srv3, x), t0.Add(300*time.Second)); v.Action != Forward {
			t.Fatalf("while srv2's session lives: %v %s, want forward", v.Action, v.Reason)
		}
		if v, _ := in(e, udpPkt(t, srv3, x), t0.Add(330*time.Second)); v.Action != Drop || v.Reason != ReasonNoMapping {
			t.Fatalf("after every session expired: %v %s, want drop no-mapping", v.Action, v.Reason)
		}
	})
	t.Run("udp-adf", func(t *testing.T) {
		e := newEngine(t, testConfig(func(c *Config) { c.Filtering = FilterADF; c.UDPTimeout = 2 * time.Minute }))
		x := mapUDP(t, e, hostA, srv1, t0)
		mapUDP(t, e, hostA, srv2, t0.Add(60*time.Second))
		e.Expire(t0.Add(150 * time.Second))
		other := netip.AddrPortFrom(srv2.Addr(), 9) // srv2's address, another port: ADF admits it
		if v, _ := in(e, udpPkt(t, other, x), t0.Add(170*time.Second)); v.Action != Forward {
			t.Fatalf("while srv2's session lives: %v %s, want forward", v.Action, v.Reason)
		}
		if v, _ := in(e, udpPkt(t, other, x), t0.Add(190*time.Second)); v.Action != Drop || v.Reason != ReasonNoMapping {
			t.Fatalf("after every session expired: %v %s, want drop no-mapping", v.Action, v.Reason)
		}
	})
	t.Run("tcp", func(t *testing.T) {
		// Opening connections: the transitory timer (4 min).
		e := newEngine(t, testConfig(nil))
		_, d := tcpOut(t, e, hostA, srv1, "S", t0)
		x := d.src
		tcpOut(t, e, hostA, srv2, "S", t0.Add(60*time.Second))
		e.Expire(t0.Add(250 * time.Second)) // srv1's connection ends, srv2's is open until 301 s
		if v := tcpIn(t, e, srv3, x, "S", t0.Add(320*time.Second)); v.Action == Forward || v.Reason != ReasonSYNHeld {
			t.Fatalf("SYN after every session expired: %v %s, want held (no mapping)", v.Action, v.Reason)
		}
		if st := e.Stats(); st.Sessions != 1 || st.HeldSYNs != 1 {
			t.Fatalf("stats %+v: a session was opened on the expired mapping", st)
		}
	})
	t.Run("tcp-alive", func(t *testing.T) {
		e := newEngine(t, testConfig(nil))
		_, d := tcpOut(t, e, hostA, srv1, "S", t0)
		x := d.src
		tcpOut(t, e, hostA, srv2, "S", t0.Add(60*time.Second))
		e.Expire(t0.Add(250 * time.Second))
		if v := tcpIn(t, e, srv3, x, "S", t0.Add(290*time.Second)); v.Action != Forward {
			t.Fatalf("SYN while srv2's connection is open: %v %s, want forward (EIF)", v.Action, v.Reason)
		}
	})
	t.Run("icmp", func(t *testing.T) {
		e := newEngine(t, testConfig(nil)) // ICMP timer 60 s
		const id = 77
		v, b := out(e, echoPkt(t, hostA.Addr(), srv1.Addr(), 8, id), t0)
		if v.Action != Forward {
			t.Fatalf("echo out: %v %s", v.Action, v.Reason)
		}
		xid := decode(t, b).src.Port()
		if v, _ := out(e, echoPkt(t, hostA.Addr(), srv2.Addr(), 8, id), t0.Add(30*time.Second)); v.Action != Forward {
			t.Fatalf("second echo out: %v %s", v.Action, v.Reason)
		}
		e.Expire(t0.Add(70 * time.Second)) // the first query ends, the second lives until 91 s
		if v, _ := in(e, echoPkt(t, srv3.Addr(), extA, 0, xid), t0.Add(80*time.Second)); v.Action != Forward {
			t.Fatalf("reply while the second query lives: %v %s, want forward", v.Action, v.Reason)
		}
		if v, _ := in(e, echoPkt(t, srv3.Addr(), extA, 0, xid), t0.Add(100*time.Second)); v.Action != Drop || v.Reason != ReasonNoMapping {
			t.Fatalf("reply after both queries expired: %v %s, want drop no-mapping", v.Action, v.Reason)
		}
	})
}

// TestRecordSize: a record stays 32 bytes (two to a cache line; the
// memory target and the slab's layout depend on it), with the mapping
// timer's mx in what was padding.
func TestRecordSize(t *testing.T) {
	if s := unsafe.Sizeof(rec{}); s != 32 {
		t.Fatalf("rec is %d bytes, want 32", s)
	}
}
