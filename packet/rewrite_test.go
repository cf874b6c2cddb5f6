package packet

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

// TestRewriteMatchesOracle rewrites packets in place and compares the result
// byte for byte with the packet gopacket builds from scratch with the new
// addresses and ports (so every checksum is recomputed independently).
func TestRewriteMatchesOracle(t *testing.T) {
	payload := []byte("GET / HTTP/1.1\r\n\r\n!") // odd length
	cases := []struct {
		name    string
		in      []byte
		rewrite func(p *Packet) error
		want    []byte
	}{
		{"tcp SetSrc", tcpPacket(t, inside, outside, payload),
			func(p *Packet) error { return p.SetSrc(external) },
			tcpPacket(t, external, outside, payload)},
		{"tcp SetDst", tcpPacket(t, outside, external, payload),
			func(p *Packet) error { return p.SetDst(inside) },
			tcpPacket(t, outside, inside, payload)},
		{"tcp SetSrcAddr+SetSrcPort", tcpPacket(t, inside, outside, payload),
			func(p *Packet) error { p.SetSrcPort(external.Port()); return p.SetSrcAddr(external.Addr()) },
			tcpPacket(t, external, outside, payload)},
		{"tcp SetDstAddr+SetDstPort", tcpPacket(t, outside, external, payload),
			func(p *Packet) error { p.SetDstPort(inside.Port()); return p.SetDstAddr(inside.Addr()) },
			tcpPacket(t, outside, inside, payload)},
		{"udp SetSrc", udpPacket(t, inside, outside, payload, false),
			func(p *Packet) error { return p.SetSrc(external) },
			udpPacket(t, external, outside, payload, false)},
		{"udp SetDst", udpPacket(t, outside, external, payload, false),
			func(p *Packet) error { return p.SetDst(inside) },
			udpPacket(t, outside, inside, payload, false)},
		{"udp zero checksum stays zero", udpPacket(t, inside, outside, payload, true),
			func(p *Packet) error { return p.SetSrc(external) },
			udpPacket(t, external, outside, payload, true)},
		{"udp SetSrcPort zero checksum", udpPacket(t, inside, outside, payload, true),
			func(p *Packet) error { p.SetSrcPort(external.Port()); return nil },
			udpPacket(t, netip.AddrPortFrom(inside.Addr(), external.Port()), outside, payload, true)},
		{"echo SetSrc", icmpQuery(t, inside.Addr(), outside.Addr(), ICMPEcho, 77, payload),
			func(p *Packet) error { return p.SetSrc(netip.AddrPortFrom(external.Addr(), 5000)) },
			icmpQuery(t, external.Addr(), outside.Addr(), ICMPEcho, 5000, payload)},
		{"echo reply SetDst", icmpQuery(t, outside.Addr(), external.Addr(), ICMPEchoReply, 5000, payload),
			func(p *Packet) error { return p.SetDst(netip.AddrPortFrom(inside.Addr(), 77)) },
			icmpQuery(t, outside.Addr(), inside.Addr(), ICMPEchoReply, 77, payload)},
		{"timestamp SetICMPID", icmpQuery(t, inside.Addr(), outside.Addr(), ICMPTimestamp, 1, payload),
			func(p *Packet) error { p.SetICMPID(0xffff); return nil },
			icmpQuery(t, inside.Addr(), outside.Addr(), ICMPTimestamp, 0xffff, payload)},
		{"echo SetDstPort is the id", icmpQuery(t, inside.Addr(), outside.Addr(), ICMPEcho, 1, payload),
			func(p *Packet) error { p.SetDstPort(2); return nil },
			icmpQuery(t, inside.Addr(), outside.Addr(), ICMPEcho, 2, payload)},
		{"tcp with IP options", withIPOptions(tcpPacket(t, inside, outside, payload)),
			func(p *Packet) error { return p.SetSrc(external) },
			withIPOptions(tcpPacket(t, external, outside, payload))},
	}
	// ICMP errors: inbound error about an outbound packet (inner src is the
	// external endpoint) and outbound error about an inbound packet.
	for _, n := range []int{28, 40, 0} { // 8 transport bytes, full TCP header, everything
		for _, kind := range []string{"tcp", "udp", "udp0", "echo"} {
			mk := func(src, dst netip.AddrPort) []byte {
				switch kind {
				case "tcp":
					return tcpPacket(t, src, dst, payload)
				case "udp":
					return udpPacket(t, src, dst, payload, false)
				case "udp0":
					return udpPacket(t, src, dst, payload, true)
				}
				return icmpQuery(t, src.Addr(), dst.Addr(), ICMPEcho, src.Port(), payload)
			}
			// Inbound: from a router on the path to external; NAT rewrites
			// outer dst and inner src to the inside endpoint.
			in := icmpError(t, outside.Addr(), external.Addr(), ICMPDestUnreachable, CodePortUnreachable, mk(external, outside), n)
			want := icmpError(t, outside.Addr(), inside.Addr(), ICMPDestUnreachable, CodePortUnreachable, mk(inside, outside), n)
			cases = append(cases, struct {
				name    string
				in      []byte
				rewrite func(p *Packet) error
				want    []byte
			}{"inbound error " + kind + " inner " + itoa(n), in, func(p *Packet) error {
				if err := p.SetDstAddr(inside.Addr()); err != nil {
					return err
				}
				return p.SetInnerSrc(inside)
			}, want})
			if kind == "echo" {
				continue // an echo's "destination port" is its own id
			}
			// Outbound: inside host answers an inbound packet (outside ->
			// external, already translated to outside -> inside) with an error.
			in = icmpError(t, inside.Addr(), outside.Addr(), ICMPTimeExceeded, 0, mk(outside, inside), n)
			want = icmpError(t, external.Addr(), outside.Addr(), ICMPTimeExceeded, 0, mk(outside, external), n)
			cases = append(cases, struct {
				name    string
				in      []byte
				rewrite func(p *Packet) error
				want    []byte
			}{"outbound error " + kind + " inner " + itoa(n), in, func(p *Packet) error {
				if err := p.SetSrcAddr(external.Addr()); err != nil {
					return err
				}
				return p.SetInnerDst(external)
			}, want})
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := append([]byte(nil), c.in...)
			p := mustParse(t, b)
			if err := c.rewrite(p); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, c.want) {
				t.Fatalf("rewritten\n% x\nwant\n% x", b, c.want)
			}
			oracle(t, b)
			if err := mustParse(t, b).VerifyChecksums(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func itoa(n int) string {
	if n == 0 {
		return "all"
	}
	return string(rune('0'+n/10)) + string(rune('0'+n%10))
}

func TestRewriteErrors(t *testing.T) {
	b := tcpPacket(t, inside, outside, nil)
	p := mustParse(t, b)
	v6 := netip.MustParseAddrPort("[2001:db8::1]:80")
	for name, err := range map[string]error{
		"SetSrc":     p.SetSrc(v6),
		"SetDst":     p.SetDst(v6),
		"SetSrcAddr": p.SetSrcAddr(v6.Addr()),
		"SetDstAddr": p.SetDstAddr(v6.Addr()),
	} {
		if !errors.Is(err, ErrNotIPv4) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if !bytes.Equal(b, tcpPacket(t, inside, outside, nil)) {
		t.Fatal("failed rewrite changed the packet")
	}
	if err := p.SetInnerSrc(external); !errors.Is(err, ErrNoEmbedded) {
		t.Fatalf("SetInnerSrc on TCP: %v", err)
	}
	// IPv4-mapped IPv6 is accepted as IPv4.
	if err := p.SetSrc(netip.AddrPortFrom(netip.AddrFrom16(external.Addr().As16()), external.Port())); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, tcpPacket(t, external, outside, nil)) {
		t.Fatal("4in6 rewrite")
	}
}

func TestDecTTL(t *testing.T) {
	b := udpPacket(t, inside, outside, []byte("abc"), false)
	p := mustParse(t, b)
	for ttl := 64; ttl > 1; ttl-- {
		if !p.DecTTL() {
			t.Fatalf("DecTTL at %d", ttl)
		}
		oracle(t, b)
	}
	if p.TTL() != 1 || p.DecTTL() || p.TTL() != 1 {
		t.Fatal("DecTTL at 1 must refuse")
	}
}

// TestIncrementalEqualsFull checks Update16/Update32 against a full checksum
// over random words, including the 0x0000/0xffff edge.
func TestIncrementalEqualsFull(t *testing.T) {
	buf := make([]byte, 64)
	seed := uint32(1)
	next := func() uint32 { seed = seed*1664525 + 1013904223; return seed }
	for i := 0; i < 20000; i++ {
		for j := range buf {
			buf[j] = byte(next() >> 24)
		}
		if i%7 == 0 {
			clear(buf[:60]) // sums near zero
		}
		buf[0], buf[1] = 0, 0
		c := Checksum(buf, 0)
		buf[0], buf[1] = byte(c>>8), byte(c)
		k := 2 + 2*int(next()%29)
		old := uint16(buf[k])<<8 | uint16(buf[k+1])
		nw := uint16(next())
		buf[k], buf[k+1] = byte(nw>>8), byte(nw)
		c = Update16(c, old, nw)
		buf[0], buf[1] = byte(c>>8), byte(c)
		if Fold(Sum(buf, 0)) != 0xffff && !allZero(buf) {
			t.Fatalf("Update16 wrong: % x", buf)
		}
		k = 2 + 4*int(next()%15)
		old32 := uint32(buf[k])<<24 | uint32(buf[k+1])<<16 | uint32(buf[k+2])<<8 | uint32(buf[k+3])
		nw32 := next()
		buf[k], buf[k+1], buf[k+2], buf[k+3] = byte(nw32>>24), byte(nw32>>16), byte(nw32>>8), byte(nw32)
		c = Update32(c, old32, nw32)
		buf[0], buf[1] = byte(c>>8), byte(c)
		if Fold(Sum(buf, 0)) != 0xffff && !allZero(buf) {
			t.Fatalf("Update32 wrong: % x", buf)
		}
	}
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func TestSumOddLengthsAndOffsets(t *testing.T) {
	// Compare the word-at-a-time Sum with a byte-pair reference for every
	// length 0..100 and every start offset 0..7.
	data := make([]byte, 108)
	for i := range data {
		data[i] = byte(i*37 + 11)
	}
	for off := 0; off < 8; off++ {
		for n := 0; n <= 100; n++ {
			b := data[off : off+n]
			var ref uint32
			for i := 0; i+1 < len(b); i += 2 {
				ref += uint32(b[i])<<8 | uint32(b[i+1])
			}
			if len(b)%2 == 1 {
				ref += uint32(b[len(b)-1]) << 8
			}
			if Fold(Sum(b, 0)) != Fold(ref) {
				t.Fatalf("off %d len %d: %#x want %#x", off, n, Fold(Sum(b, 0)), Fold(ref))
			}
		}
	}
}
