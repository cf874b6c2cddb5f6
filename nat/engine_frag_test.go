package nat

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// bigUDP builds a UDP datagram with n bytes of payload.
func bigUDP(tb testing.TB, src, dst netip.AddrPort, n int, id uint16) []byte {
	ip := ipv4(src.Addr(), dst.Addr(), layers.IPProtocolUDP)
	ip.Id = id
	u := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	u.SetNetworkLayerForChecksum(ip)
	pl := make([]byte, n)
	for i := range pl {
		pl[i] = byte(i*7 + 3)
	}
	return ser(tb, ip, u, gopacket.Payload(pl))
}

// fragmentN splits an IPv4 packet (20-byte header) into fragments whose
// data parts have the given sizes (multiples of 8); the last fragment
// takes the rest.
func fragmentN(pkt []byte, sizes ...int) [][]byte {
	var out [][]byte
	data := pkt[20:]
	off := 0
	for i := 0; i <= len(sizes); i++ {
		end := len(data)
		if i < len(sizes) {
			end = off + sizes[i]
		}
		f := append(append([]byte(nil), pkt[:20]...), data[off:end]...)
		binary.BigEndian.PutUint16(f[2:4], uint16(len(f)))
		fo := uint16(off / 8)
		if i < len(sizes) {
			fo |= 0x2000 // MF
		}
		binary.BigEndian.PutUint16(f[6:8], fo)
		ipSum(f)
		out = append(out, f)
		off = end
	}
	return out
}

// reassembleN joins fragments in any order (by offset) after checking
// that they share the IPv4 identity.
func reassembleN(tb testing.TB, frags [][]byte) []byte {
	tb.Helper()
	fs := slices.Clone(frags)
	slices.SortFunc(fs, func(a, b []byte) int { return int(fragOffset(a)) - int(fragOffset(b)) })
	b := append([]byte(nil), fs[0][:20]...)
	for _, f := range fs {
		if string(f[4:6]) != string(b[4:6]) || string(f[9:10]) != string(b[9:10]) || string(f[12:20]) != string(b[12:20]) {
			tb.Fatalf("fragments of different datagrams:\n% x\n% x", f[:20], b[:20])
		}
		if int(fragOffset(f))*8 != len(b)-20 {
			tb.Fatalf("fragment offset %d, have %d bytes", fragOffset(f)*8, len(b)-20)
		}
		b = append(b, f[20:]...)
	}
	binary.BigEndian.PutUint16(b[2:4], uint16(len(b)))
	b[6], b[7] = 0, 0
	ipSum(b)
	return b
}

// TestHeldFragments: an inbound UDP datagram in three fragments whose
// first fragment comes last is held and released translated when it
// comes (RFC 4787 REQ-14); the reassembled datagram has a valid UDP
// checksum and the internal destination.
func TestHeldFragments(t *testing.T) {
	for _, order := range [][]int{{2, 1, 0}, {1, 2, 0}, {1, 0, 2}, {0, 1, 2}} {
		e := newEngine(t, testConfig(nil))
		x := mapUDP(t, e, hostA, srv1, t0)
		frags := fragmentN(bigUDP(t, srv1, x, 60, 99), 24, 24)
		var got [][]byte
		seenFirst := false
		for _, i := range order {
			v, b := in(e, frags[i], t0)
			switch {
			case i != 0 && !seenFirst:
				if v.Action != Drop || v.Reason != ReasonFragmentHeld {
					t.Fatalf("order %v: fragment %d before the first: %v %q", order, i, v.Action, v.Reason)
				}
			case i == 0:
				seenFirst = true
				if v.Action != Forward {
					t.Fatalf("order %v: first fragment %v %q", order, v.Action, v.Reason)
				}
				got = append(got, b)
				rel := e.Released()
				if v.Released != (len(rel) > 0) || len(rel) != countBefore(order) {
					t.Fatalf("order %v: Released=%v with %d fragments", order, v.Released, len(rel))
				}
				for _, r := range rel {
					got = append(got, append([]byte(nil), r...))
				}
			default:
				if v.Action != Forward || v.Released {
					t.Fatalf("order %v: fragment %d after the first: %v %q", order, i, v.Action, v.Reason)
				}
				got = append(got, b)
			}
		}
		if len(got) != 3 {
			t.Fatalf("order %v: %d fragments out", order, len(got))
		}
		for _, g := range got {
			if d := decode(t, g); d.dst.Addr() != hostA.Addr() || d.src.Addr() != srv1.Addr() {
				t.Fatalf("order %v: fragment %v->%v", order, d.src, d.dst)
			}
		}
		d := decode(t, reassembleN(t, got))
		if d.dst != hostA || d.src != srv1 {
			t.Fatalf("order %v: reassembled %v->%v", order, d.src, d.dst)
		}
		st := e.Stats()
		if st.HeldFragments != 0 || st.HeldFragmentBytes != 0 || st.ReleasedFragments != uint64(countBefore(order)) ||
			st.Drops[ReasonFragmentHeld] != uint64(countBefore(order)) {
			t.Fatalf("order %v: stats %+v", order, st)
		}
		// The next call invalidates Released.
		in(e, udpPkt(t, srv1, x), t0)
		if len(e.Released()) != 0 {
			t.Fatalf("order %v: Released kept after the next call", order)
		}
	}
}

// countBefore returns how many non-first fragments precede fragment 0.
func countBefore(order []int) int { return slices.Index(order, 0) }

// TestHeldFragmentTimeout: a held fragment whose first fragment does not
// come within FragmentHold is dropped by Expire, or when the first
// fragment comes too late, with ReasonFragmentTimeout.
func TestHeldFragmentTimeout(t *testing.T) {
	e := newEngine(t, testConfig(nil)) // FragmentHold 2 s
	x := mapUDP(t, e, hostA, srv1, t0)
	frags := fragmentN(bigUDP(t, srv1, x, 60, 5), 24, 24)
	if v, _ := in(e, frags[2], t0); v.Reason != ReasonFragmentHeld {
		t.Fatalf("held: %v %q", v.Action, v.Reason)
	}
	e.Expire(t0.Add(2 * time.Second))
	if st := e.Stats(); st.HeldFragments != 1 {
		t.Fatalf("dropped before FragmentHold: %+v", st)
	}
	e.Expire(t0.Add(3 * time.Second))
	if st := e.Stats(); st.HeldFragments != 0 || st.Drops[ReasonFragmentTimeout] != 1 {
		t.Fatalf("after FragmentHold: %+v", st)
	}
	if v, _ := in(e, frags[0], t0.Add(3*time.Second)); v.Action != Forward || v.Released || len(e.Released()) != 0 {
		t.Fatalf("first fragment after the timeout: %v %v", v.Action, v.Released)
	}
	// Without Expire: the late first fragment finds the held one stale.
	frags = fragmentN(bigUDP(t, srv1, x, 60, 6), 24, 24)
	in(e, frags[1], t0.Add(10*time.Second))
	if v, _ := in(e, frags[0], t0.Add(13*time.Second)); v.Action != Forward || v.Released {
		t.Fatalf("stale held fragment released: %v %v", v.Action, v.Released)
	}
	if st := e.Stats(); st.HeldFragments != 0 || st.Drops[ReasonFragmentTimeout] != 2 || st.ReleasedFragments != 0 {
		t.Fatalf("stale: %+v", st)
	}
}

// TestHeldFragmentCaps: fragments over a cap are dropped with
// ReasonFragmentFull, and the store never grows past its byte cap.
func TestHeldFragmentCaps(t *testing.T) {
	rem := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 53)
	}
	t.Run("per datagram and duplicates", func(t *testing.T) {
		e := newEngine(t, testConfig(func(c *Config) { c.MaxFragmentsPerDatagram = 2 }))
		x := mapUDP(t, e, hostA, srv1, t0)
		frags := fragmentN(bigUDP(t, srv1, x, 60, 5), 16, 16, 16)
		want := []Reason{ReasonFragmentHeld, ReasonFragmentFull, ReasonFragmentHeld, ReasonFragmentFull}
		for k, i := range []int{1, 1, 2, 3} {
			if v, _ := in(e, frags[i], t0); v.Reason != want[k] {
				t.Fatalf("fragment %d: %q, want %q", i, v.Reason, want[k])
			}
		}
		if v, _ := in(e, frags[0], t0); !v.Released || len(e.Released()) != 2 {
			t.Fatalf("released %v %d", v.Released, len(e.Released()))
		}
	})
	t.Run("per source", func(t *testing.T) {
		e := newEngine(t, testConfig(func(c *Config) { c.MaxHeldFragmentsPerSource = 3 }))
		x := mapUDP(t, e, hostA, srv1, t0)
		for id := range uint16(5) {
			f := fragmentN(bigUDP(t, srv1, x, 60, id), 24)
			want := ReasonFragmentHeld
			if id >= 3 {
				want = ReasonFragmentFull
			}
			if v, _ := in(e, f[1], t0); v.Reason != want {
				t.Fatalf("datagram %d: %q, want %q", id, v.Reason, want)
			}
		}
		f := fragmentN(bigUDP(t, srv2, x, 60, 1), 24) // another source still gets its share
		if v, _ := in(e, f[1], t0); v.Reason != ReasonFragmentHeld {
			t.Fatalf("other source: %q", v.Reason)
		}
	})
	t.Run("bytes and count", func(t *testing.T) {
		e := newEngine(t, testConfig(func(c *Config) { c.MaxHeldFragmentBytes = 200; c.MaxHeldFragments = 8 }))
		x := mapUDP(t, e, hostA, srv1, t0)
		held := 0
		for i := 1; i < 40; i++ {
			f := fragmentN(bigUDP(t, rem(i), x, 80, uint16(i)), 24) // 20+64 bytes held
			v, _ := in(e, f[1], t0)
			if v.Reason == ReasonFragmentHeld {
				held++
			} else if v.Reason != ReasonFragmentFull {
				t.Fatalf("%q", v.Reason)
			}
			st := e.Stats()
			if st.HeldFragmentBytes > 200 || cap(e.fragBuf) != 200 || st.HeldFragments > 8 {
				t.Fatalf("store over its caps: %+v cap %d", st, cap(e.fragBuf))
			}
		}
		if held != 2 {
			t.Fatalf("held %d fragments of 84 bytes under a 200-byte cap", held)
		}
		e.Expire(t0.Add(time.Minute))
		e2 := newEngine(t, testConfig(func(c *Config) { c.MaxHeldFragments = 3 }))
		x = mapUDP(t, e2, hostA, srv1, t0)
		for i := 1; i < 10; i++ {
			f := fragmentN(bigUDP(t, rem(i), x, 80, uint16(i)), 24)
			in(e2, f[1], t0)
		}
		if st := e2.Stats(); st.HeldFragments != 3 || st.Drops[ReasonFragmentFull] != 6 {
			t.Fatalf("count cap: %+v", st)
		}
	})
	t.Run("off", func(t *testing.T) {
		e := newEngine(t, testConfig(func(c *Config) { c.FragmentHold = -1 }))
		x := mapUDP(t, e, hostA, srv1, t0)
		f := fragmentN(bigUDP(t, srv1, x, 60, 5), 24)
		if v, _ := in(e, f[1], t0); v.Reason != ReasonFragment {
			t.Fatalf("FragmentHold -1: %q", v.Reason)
		}
	})
}

// TestHeldFragmentsOutboundUnaffected: outbound fragments are never held:
// under arbitrary pooling a non-first fragment before its first is still
// dropped (the external address is not known yet).
func TestHeldFragmentsOutboundUnaffected(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) { c.Pooling = PoolingArbitrary }))
	frags := fragmentN(bigUDP(t, hostA, srv1, 60, 5), 24, 24)
	if v, _ := out(e, frags[2], t0); v.Reason != ReasonFragment {
		t.Fatalf("outbound before first: %v %q", v.Action, v.Reason)
	}
	var got [][]byte
	for _, i := range []int{0, 1} {
		v, b := out(e, frags[i], t0)
		if v.Action != Forward || v.Released {
			t.Fatalf("outbound %d: %v %q %v", i, v.Action, v.Reason, v.Released)
		}
		got = append(got, b)
	}
	if st := e.Stats(); st.HeldFragments != 0 || st.ReleasedFragments != 0 {
		t.Fatalf("%+v", st)
	}
	if d := decode(t, got[0]); d.src.Addr() != extA {
		t.Fatalf("source %v", d.src)
	}
}

// TestHairpinnedFragments: a datagram from one inside host to another's
// external endpoint, fragmented, is hairpinned in any order (RFC 4787
// REQ-9 with REQ-14): source the sender's external address, destination
// the internal host, one IPv4 ID for all fragments.
func TestHairpinnedFragments(t *testing.T) {
	for _, order := range [][]int{{0, 1, 2}, {2, 1, 0}, {1, 0, 2}} {
		e := newEngine(t, testConfig(nil))
		x := mapUDP(t, e, hostA, srv1, t0)
		xb := mapUDP(t, e, hostB, srv1, t0)
		frags := fragmentN(bigUDP(t, hostB, x, 60, 42), 24, 24)
		var got [][]byte
		for _, i := range order {
			v, b := out(e, frags[i], t0)
			switch {
			case v.Action == Hairpin:
				got = append(got, b)
				if v.Released {
					for _, r := range e.Released() {
						got = append(got, append([]byte(nil), r...))
					}
				}
			case v.Reason != ReasonFragmentHeld:
				t.Fatalf("order %v: fragment %d: %v %q", order, i, v.Action, v.Reason)
			}
		}
		if len(got) != 3 {
			t.Fatalf("order %v: %d fragments hairpinned", order, len(got))
		}
		d := decode(t, reassembleN(t, got))
		if d.src != xb || d.dst != hostA {
			t.Fatalf("order %v: hairpinned %v->%v, want %v->%v", order, d.src, d.dst, xb, hostA)
		}
	}
	e := newEngine(t, testConfig(func(c *Config) { c.NoHairpinning = true }))
	x := mapUDP(t, e, hostA, srv1, t0)
	frags := fragmentN(bigUDP(t, hostB, x, 60, 42), 24)
	if v, _ := out(e, frags[1], t0); v.Reason != ReasonNoHairpin {
		t.Fatalf("NoHairpinning: %q", v.Reason)
	}
}

// TestHeldFragmentsFlush: Flush forgets held fragments.
func TestHeldFragmentsFlush(t *testing.T) {
	e := newEngine(t, testConfig(nil))
	x := mapUDP(t, e, hostA, srv1, t0)
	in(e, fragmentN(bigUDP(t, srv1, x, 60, 5), 24)[1], t0)
	e.Flush(t0)
	if st := e.Stats(); st.HeldFragments != 0 || st.HeldFragmentBytes != 0 {
		t.Fatalf("%+v", st)
	}
}
