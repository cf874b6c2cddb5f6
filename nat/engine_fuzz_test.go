package nat

import (
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/tuple"
)

// checkOut fails when the engine forwarded or built a packet with a bad
// checksum although the input's checksums were valid.
func checkOut(t *testing.T, inputValid bool, v Verdict, b []byte) {
	t.Helper()
	if v.Action == Reply {
		if _, msg := decodeCheck(v.Reply, false); msg != "" {
			t.Fatalf("reply: %s\n% x", msg, v.Reply)
		}
	}
	if inputValid && (v.Action == Forward || v.Action == Hairpin) {
		if _, msg := decodeCheck(b, false); msg != "" {
			t.Fatalf("forwarded: %s\n% x", msg, b)
		}
	}
	if v.Action == Drop && v.Reason == ReasonNone {
		t.Fatal("drop without a reason")
	}
}

// FuzzEngine feeds arbitrary bytes to Outbound and Inbound of an engine
// with some state: they must never panic, and a packet with valid
// checksums must come out with valid checksums (gopacket decides).
func FuzzEngine(f *testing.F) {
	f.Add(udpPkt(f, hostA, srv1), true)                                                                    // new UDP flow
	f.Add(udpPkt(f, srv1, netip.AddrPortFrom(extA, 40000)), false)                                         // UDP reply to a preserved port
	f.Add(tcpPkt(f, hostA, srv1, "S"), true)                                                               // SYN out
	f.Add(tcpPkt(f, srv2, netip.AddrPortFrom(extA, 40001), "S"), false)                                    // unsolicited SYN
	f.Add(echoPkt(f, hostA.Addr(), srv1.Addr(), 8, 9), true)                                               // ping
	f.Add(icmpErrPkt(f, srv1.Addr(), extA, 3, 3, udpPkt(f, netip.AddrPortFrom(extA, 40000), srv1)), false) // error about the flow
	f.Add(icmpErrPkt(f, hostA.Addr(), srv1.Addr(), 3, 3, udpPkt(f, srv1, hostA)), true)                    // error from inside
	f.Add(udpPkt(f, hostA, netip.AddrPortFrom(extA, 40000)), true)                                         // hairpin
	f.Add([]byte{0x45, 0, 0, 20}, true)                                                                    // truncated header
	f.Fuzz(func(t *testing.T, b []byte, outbound bool) {
		e := newEngine(t, testConfig(func(c *Config) { c.PreservePort = true; c.External = []netip.Addr{extA, extB} }))
		mapUDP(t, e, hostA, srv1, t0)
		_, valid := decodeCheck(b, false)
		buf := append([]byte(nil), b...)
		var v Verdict
		if outbound {
			v = e.Outbound(buf, t0)
		} else {
			v = e.Inbound(buf, t0)
		}
		checkOut(t, valid == "", v, buf)
		e.Expire(t0.Add(10 * time.Second))
		for _, r := range e.Replies() {
			if _, msg := decodeCheck(r, false); msg != "" {
				t.Fatalf("held-SYN reply: %s", msg)
			}
		}
	})
}

// FuzzEngineOps drives an engine with a random sequence of well-formed
// packets between a few endpoints, in both directions, with time moving
// on, over a random configuration. Every forwarded packet must be valid,
// the counters consistent, and after a long enough Expire no state may be
// left (no leaks in the table, the subscriber counts or the allocator).
func FuzzEngineOps(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20})
	f.Add([]byte{3, 0, 0, 0, 16, 1, 2, 33, 50, 7, 7, 7, 200, 100, 3, 4})
	f.Add([]byte{5, 2, 130, 2, 1, 129, 3, 5, 9, 200, 2, 40, 41, 42, 43})
	f.Add([]byte("7000000000000002*0000c0002Zcx")) // APDM+EIF: an inbound SYN must not open a second session
	f.Fuzz(runOps)
}

func runOps(t *testing.T, ops []byte) {
	{
		if len(ops) < 1 {
			return
		}
		// A tiny index grows (incrementally) several times in one run.
		indexMinBits = 3
		defer func() { indexMinBits = 10 }()
		c0 := ops[0]
		ops = ops[1:]
		cfg := testConfig(func(c *Config) {
			c.External = []netip.Addr{extA, extB}
			c.Mapping = Mapping(c0%3 + 1)
			c.Filtering = Filtering(c0/3%3 + 1)
			c.PreservePort = c0&16 != 0
			c.UDPTimeout = 2 * time.Minute
			c.ICMPTimeout = time.Minute
			c.TCPEstablished = 10 * time.Minute
			switch c0 >> 5 {
			case 1:
				c.BlockSize, c.MaxBlocksPerSubscriber, c.MixClasses = 16, 2, true
			case 2:
				c.Filtering, c.Overlapping = FilterAPDF, true
			case 3:
				c.Quarantine = 2 * time.Minute
			case 4:
				c.Ports, c.MixClasses, c.Overloading = tuple.PortSetOf(tuple.PortRangeFrom(5000, 5003)), true, true
			case 5:
				c.Deterministic = true
				c.Internal = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}
			case 6:
				c.MaxSessionsPerSubscriber, c.MaxPortsPerSubscriber = 3, 2
			}
			c.TCPFiltering = c.Filtering
		})
		e := newEngine(t, cfg)
		hosts := []netip.AddrPort{hostA, hostB, netip.MustParseAddrPort("10.0.0.1:40001")}
		remotes := []netip.AddrPort{srv1, srv1b, srv2}
		var exts []netip.AddrPort
		exts = append(exts, netip.AddrPortFrom(extA, 40000), netip.AddrPortFrom(extB, 5000))
		now := t0
		flags := []string{"S", "SA", "A", "FA", "R", "PA"}
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i], ops[i+1]
			h := hosts[int(arg)%len(hosts)]
			r := remotes[int(arg/3)%len(remotes)]
			x := exts[int(arg/9)%len(exts)]
			var pkt []byte
			outbound := true
			if op%12 >= 10 {
				var f1, f2 []byte
				if op%12 == 10 {
					dst := r
					if arg&2 != 0 {
						dst = x // hairpinned
					}
					f1, f2 = fragments(udpPkt(t, h, dst), 8)
				} else {
					f1, f2 = fragments(udpPkt(t, r, x), 8)
					outbound = false
				}
				if arg&1 != 0 {
					f1, f2 = f2, f1
				}
				b1, b2 := append([]byte(nil), f1...), append([]byte(nil), f2...)
				var v1, v2 Verdict
				if outbound {
					v1, v2 = e.Outbound(b1, now), e.Outbound(b2, now)
				} else {
					v1, v2 = e.Inbound(b1, now), e.Inbound(b2, now)
				}
				checkOut(t, true, v1, b1)
				checkOut(t, true, v2, b2)
				if v2.Released {
					// Held fragments released with the first fragment: the
					// one held just before, or one of an earlier datagram
					// with the same identity (all test packets have ID 7).
					rel := e.Released()
					for _, rp := range rel {
						checkOut(t, true, Verdict{Action: v2.Action}, append([]byte(nil), rp...))
					}
					if v1.Reason == ReasonFragmentHeld && len(rel) == 1 && string(rel[0][20:]) == string(f1[20:]) {
						b1 = append([]byte(nil), rel[0]...)
						v1 = Verdict{Action: v2.Action}
					}
				}
				if st := e.Stats(); st.HeldFragmentBytes > cfg.MaxHeldFragmentBytes+DefaultMaxHeldFragmentBytes {
					t.Fatalf("held fragments over the cap: %+v", st)
				}
				if v1.Action == v2.Action && (v1.Action == Forward || v1.Action == Hairpin) {
					if arg&1 != 0 {
						b1, b2 = b2, b1
					}
					if _, msg := decodeCheck(reassemble(b1, b2), false); msg != "" {
						t.Fatalf("reassembled: %s", msg)
					}
				}
				continue
			}
			switch op % 12 {
			case 0:
				pkt = udpPkt(t, h, r)
			case 1:
				pkt, outbound = udpPkt(t, r, x), false
			case 2:
				pkt = tcpPkt(t, h, r, flags[int(arg)%len(flags)])
			case 3:
				pkt, outbound = tcpPkt(t, r, x, flags[int(arg/2)%len(flags)]), false
			case 4:
				pkt = echoPkt(t, h.Addr(), r.Addr(), 8, h.Port())
			case 5:
				pkt, outbound = echoPkt(t, r.Addr(), x.Addr(), 0, x.Port()), false
			case 6:
				pkt, outbound = icmpErrPkt(t, r.Addr(), x.Addr(), 3, 1, udpPkt(t, x, r)), false
			case 7:
				pkt = icmpErrPkt(t, h.Addr(), r.Addr(), 11, 0, tcpPkt(t, r, h, "A"))
			case 8:
				pkt = udpPkt(t, h, x) // hairpin
			case 9:
				now = now.Add(time.Duration(arg) * time.Second)
				e.Expire(now)
				for _, rp := range e.Replies() {
					if _, msg := decodeCheck(rp, false); msg != "" {
						t.Fatalf("reply: %s", msg)
					}
				}
				continue
			}
			buf := append([]byte(nil), pkt...)
			var v Verdict
			if outbound {
				v = e.Outbound(buf, now)
			} else {
				v = e.Inbound(buf, now)
			}
			checkOut(t, true, v, buf)
			if outbound && v.Action == Forward {
				if d, _ := decodeCheck(buf, false); d.src.IsValid() && (d.src.Addr() == extA || d.src.Addr() == extB) {
					exts = append(exts, d.src)
				}
			}
			if err := e.t.check(); err != nil {
				t.Fatalf("op %d: %v", i/2, err)
			}
			st := e.Stats()
			if st.Sessions < 0 || st.Mappings < 0 || st.Mappings > st.Records || st.Sessions > st.Records {
				t.Fatalf("inconsistent stats %+v", st)
			}
			now = now.Add(time.Duration(op/10) * 100 * time.Millisecond)
		}
		e.Expire(now.Add(24 * time.Hour))
		e.Expire(now.Add(48 * time.Hour)) // past any quarantine
		st := e.Stats()
		if st.Sessions != 0 || st.Mappings != 0 || st.Records != 0 || st.HeldSYNs != 0 || st.HeldFragments != 0 || len(e.subs) != 0 {
			t.Fatalf("state left after expiry: %+v subs %d", st, len(e.subs))
		}
		for _, a := range e.alloc {
			for _, x := range cfg.External {
				if n := a.Used(x); n != 0 {
					t.Fatalf("%d ports of %v still allocated", n, x)
				}
			}
		}
	}
}
