package packet

import (
	"bytes"
	"net/netip"
	"testing"
)

// FuzzParse checks that Parse never panics, that a rejected packet leaves an
// empty Packet and a known Reason, and that every rewrite of a packet that
// parsed keeps every checksum that was valid before valid afterwards, as
// judged both by VerifyChecksums and by gopacket (the independent decoder).
// It also builds an ICMP error about each packet that may trigger one and
// checks it with gopacket.
func FuzzParse(f *testing.F) {
	payload := []byte("fuzz payload!")
	udp := udpPacket(f, inside, outside, payload, false)
	tcp := tcpPacket(f, inside, outside, payload)
	seeds := [][]byte{
		// Valid IPv4+TCP SYN-ACK with a payload.
		tcp,
		// Valid IPv4+UDP, checksum present.
		udp,
		// IPv4+UDP with checksum 0 (none, RFC 768).
		udpPacket(f, inside, outside, payload, true),
		// ICMP echo request, id 0x4242.
		icmpQuery(f, inside.Addr(), outside.Addr(), ICMPEcho, 0x4242, payload),
		// ICMP timestamp reply.
		icmpQuery(f, outside.Addr(), inside.Addr(), ICMPTimestampReply, 1, payload),
		// Port unreachable embedding the whole UDP packet.
		icmpError(f, outside.Addr(), external.Addr(), ICMPDestUnreachable, CodePortUnreachable, udp, 0),
		// Time exceeded embedding IP header + 8 bytes of TCP (checksum absent).
		icmpError(f, outside.Addr(), external.Addr(), ICMPTimeExceeded, 0, tcp, 28),
		// Error embedding an echo request.
		icmpError(f, outside.Addr(), external.Addr(), ICMPDestUnreachable, CodeHostUnreachable,
			icmpQuery(f, external.Addr(), outside.Addr(), ICMPEcho, 7, nil), 0),
		// TCP with 4 bytes of IPv4 options.
		withIPOptions(tcp),
		// First fragment (MF set) of a UDP datagram.
		fixIP(func() []byte { b := append([]byte(nil), udp...); b[6] = 0x20; return b }()),
		// Non-first fragment (offset 8 bytes).
		fixIP(func() []byte { b := append([]byte(nil), udp...); b[7] = 1; return b }()),
		// Truncated: IP header only, total length claims more.
		tcp[:20],
		// IPv6 version nibble.
		{0x60, 0, 0, 0, 0, 8, 17, 64},
		// Empty input.
		{},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	newSrc := netip.MustParseAddrPort("203.0.113.9:1")
	newDst := netip.MustParseAddrPort("10.9.8.7:65535")
	f.Fuzz(func(t *testing.T, data []byte) {
		var p Packet
		err := p.Parse(data)
		if err != nil {
			r := ReasonOf(err)
			if r == ReasonNone || r >= NumReasons || r == ReasonChecksum || r == ReasonFragment {
				t.Fatalf("Parse returned %v (%d)", err, r)
			}
			if p.Len() != 0 || p.Proto() != 0 {
				t.Fatal("Packet not empty after error")
			}
			return
		}
		// Accessors must not panic.
		_ = p.Tuple()
		_ = p.TCPFlags() + p.ICMPType() + p.ICMPCode() + p.TTL()
		in := p.Inner()
		_, _, _ = in.SrcAddrPort(), in.DstAddrPort(), in.ICMPType()
		if p.IsICMPError() != (in.Proto() != 0) || (p.IsICMPError() && p.IsICMPQuery()) {
			t.Fatal("inconsistent ICMP classification")
		}

		if msg := compareFields(&p); msg != "" {
			t.Fatalf("fields differ from gopacket: %s\n% x", msg, p.Bytes())
		}

		b := append([]byte(nil), p.Bytes()...)
		validMine := p.VerifyChecksums() == nil
		validOracle := oracleCheck(b) == ""
		if validMine && !p.IsFragment() && !validOracle && !p.IsICMPError() {
			t.Fatalf("VerifyChecksums accepts what gopacket rejects (%s)\n% x", oracleCheck(b), b)
		}

		var q Packet
		if err := q.Parse(b); err != nil {
			t.Fatalf("reparse of a copy: %v", err)
		}
		if err := q.SetSrc(newSrc); err != nil {
			t.Fatal(err)
		}
		if err := q.SetDst(newDst); err != nil {
			t.Fatal(err)
		}
		q.SetSrcPort(newSrc.Port() + 1)
		q.SetICMPID(0x1234)
		q.DecTTL()
		if q.IsICMPError() {
			if err := q.SetInnerSrc(newDst); err != nil {
				t.Fatal(err)
			}
			if err := q.SetInnerDst(newSrc); err != nil {
				t.Fatal(err)
			}
		}
		var r Packet
		if err := r.Parse(b); err != nil {
			t.Fatalf("rewritten packet no longer parses: %v\nbefore % x\nafter  % x", err, p.Bytes(), b)
		}
		if r.Src() != newSrc.Addr() || r.Dst() != newDst.Addr() {
			t.Fatal("addresses not rewritten")
		}
		if validMine && r.VerifyChecksums() != nil {
			t.Fatalf("checksums broken by rewrite\nbefore % x\nafter  % x", p.Bytes(), b)
		}
		if validOracle {
			if msg := oracleCheck(b); msg != "" {
				t.Fatalf("gopacket after rewrite: %s\nbefore % x\nafter  % x", msg, p.Bytes(), b)
			}
		}

		if p.MayTriggerICMPError() {
			buf := make([]byte, 600)
			n, err := BuildICMPError(buf, &p, ICMPErrorOptions{Src: newSrc.Addr(), Type: ICMPDestUnreachable, Code: CodeAdminProhibited})
			if err != nil {
				t.Fatalf("BuildICMPError: %v", err)
			}
			var e Packet
			if err := e.Parse(buf[:n]); err != nil {
				t.Fatalf("built error does not parse: %v", err)
			}
			if e.VerifyChecksums() != nil || !bytes.Equal(e.Inner().Bytes(), p.Bytes()[:n-28]) {
				t.Fatal("built error: checksum or embedded bytes")
			}
			if msg := oracleCheck(buf[:n]); msg != "" && validOracle {
				t.Fatalf("gopacket on built error: %s", msg)
			}
		}
	})
}

// repair fixes the checksums of a fuzzed packet so that rewrites get
// exercised on many shapes rather than stopping at ReasonIPChecksum: the IPv4
// header checksum, then (for a parsed, unfragmented packet) the transport
// checksum, and inside an ICMP error the embedded IPv4 header checksum. It
// returns false when the packet still does not parse.
func repair(b []byte) bool {
	if len(b) < 20 {
		return false
	}
	hl := int(b[0]&0xf) * 4
	if hl < 20 || hl > len(b) {
		return false
	}
	fixIP(b)
	var p Packet
	if p.Parse(b) != nil {
		return false
	}
	if p.IsICMPError() {
		e := p.Inner().Bytes()
		fixIP(e)
	}
	if !p.HasTransport() || p.IsFragment() {
		return true
	}
	l4 := p.Transport()
	var acc uint32
	var ck []byte
	switch p.Proto() {
	case 6:
		ck = l4[16:18]
		acc = PseudoHeaderSum(p.Src(), p.Dst(), p.Proto(), len(l4))
	case 17:
		ck = l4[6:8]
		l4 = l4[:int(l4[4])<<8|int(l4[5])]
		acc = PseudoHeaderSum(p.Src(), p.Dst(), p.Proto(), len(l4))
	case 1:
		ck = l4[2:4]
	}
	ck[0], ck[1] = 0, 0
	c := Checksum(l4, acc)
	if c == 0 && p.Proto() == 17 {
		c = 0xffff
	}
	ck[0], ck[1] = byte(c>>8), byte(c)
	return true
}

// FuzzRewrite repairs the checksums of fuzzed packets, checks that gopacket
// agrees they verify, applies the rewrites with fuzzed addresses and ports,
// and checks with gopacket that every checksum still verifies and that the
// fields read back as written.
func FuzzRewrite(f *testing.F) {
	payload := []byte("0123456789")
	udp := udpPacket(f, inside, outside, payload, false)
	tcp := tcpPacket(f, inside, outside, payload)
	// Seeds: one packet of each shape; the addresses and ports are the
	// rewrite targets (uint32 addresses, ports).
	f.Add(tcp, uint32(0xc0000201), uint32(0x0a000001), uint16(1), uint16(65535))
	f.Add(udp, uint32(0), uint32(0xffffffff), uint16(0), uint16(53))
	f.Add(udpPacket(f, inside, outside, payload, true), uint32(7), uint32(8), uint16(9), uint16(10))
	f.Add(icmpQuery(f, inside.Addr(), outside.Addr(), ICMPEcho, 3, payload), uint32(1), uint32(2), uint16(3), uint16(4))
	f.Add(icmpError(f, outside.Addr(), external.Addr(), 3, 3, udp, 0), uint32(0x01020304), uint32(0x05060708), uint16(1000), uint16(2000))
	f.Add(icmpError(f, outside.Addr(), external.Addr(), 11, 0, tcp, 0), uint32(0x01020304), uint32(0x05060708), uint16(1000), uint16(2000))
	f.Add(icmpError(f, outside.Addr(), external.Addr(), 12, 0, tcp, 28), uint32(0x01020304), uint32(0x05060708), uint16(1000), uint16(2000))
	f.Add(withIPOptions(udp), uint32(0xdeadbeef), uint32(0xfeedface), uint16(0xffff), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, src, dst uint32, sport, dport uint16) {
		b := append([]byte(nil), data...)
		if !repair(b) {
			return
		}
		var p Packet
		if err := p.Parse(b); err != nil {
			t.Fatalf("repaired packet does not parse: %v", err)
		}
		if err := p.VerifyChecksums(); err != nil {
			t.Fatalf("repaired packet does not verify: %v", err)
		}
		if msg := compareFields(&p); msg != "" {
			t.Fatalf("fields differ from gopacket: %s\n% x", msg, p.Bytes())
		}
		b = p.Bytes()
		validOracle := oracleCheck(b) == ""
		sa := netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(src >> 24), byte(src >> 16), byte(src >> 8), byte(src)}), sport)
		da := netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(dst >> 24), byte(dst >> 16), byte(dst >> 8), byte(dst)}), dport)
		if err := p.SetSrc(sa); err != nil {
			t.Fatal(err)
		}
		if err := p.SetDst(da); err != nil {
			t.Fatal(err)
		}
		if p.IsICMPError() {
			if err := p.SetInnerSrc(da); err != nil {
				t.Fatal(err)
			}
			if err := p.SetInnerDst(sa); err != nil {
				t.Fatal(err)
			}
		}
		var r Packet
		if err := r.Parse(b); err != nil {
			t.Fatalf("rewritten packet does not parse: %v", err)
		}
		if err := r.VerifyChecksums(); err != nil {
			t.Fatalf("rewrite broke a checksum: %v\n% x", err, b)
		}
		if r.Src() != sa.Addr() || r.Dst() != da.Addr() {
			t.Fatal("addresses")
		}
		if msg := compareFields(&r); msg != "" {
			t.Fatalf("rewritten fields differ from gopacket: %s\n% x", msg, b)
		}
		if r.HasTransport() && !r.IsICMPError() {
			if r.IsICMPQuery() {
				if r.ICMPID() != da.Port() {
					t.Fatalf("ICMP id %d, want %d", r.ICMPID(), da.Port())
				}
			} else if r.SrcPort() != sport || r.DstPort() != dport {
				t.Fatal("ports")
			}
		}
		if r.IsICMPError() {
			in := r.Inner()
			if in.Src() != da.Addr() || in.Dst() != sa.Addr() {
				t.Fatal("inner addresses")
			}
			if in.Proto() != 1 && (in.SrcPort() != dport || in.DstPort() != sport) {
				t.Fatal("inner ports")
			}
		}
		if validOracle {
			if msg := oracleCheck(b); msg != "" {
				t.Fatalf("gopacket after rewrite: %s\n% x", msg, b)
			}
		}
	})
}
