package packet

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/portspace/portspace/tuple"
)

func mustParse(tb testing.TB, b []byte) *Packet {
	tb.Helper()
	p := new(Packet)
	if err := p.Parse(b); err != nil {
		tb.Fatalf("Parse: %v\n% x", err, b)
	}
	return p
}

func TestParseFields(t *testing.T) {
	payload := []byte("hello, world")
	t.Run("tcp", func(t *testing.T) {
		p := mustParse(t, tcpPacket(t, inside, outside, payload))
		if p.Proto() != tuple.TCP || p.SrcAddrPort() != inside || p.DstAddrPort() != outside {
			t.Fatalf("got %v", p.Tuple())
		}
		if p.TCPFlags() != TCPSyn|TCPAck || !p.HasTransport() || p.IsFragment() || p.TTL() != 64 || p.IPID() != 0x1234 {
			t.Fatalf("flags %#x transport %v frag %v ttl %d id %#x", p.TCPFlags(), p.HasTransport(), p.IsFragment(), p.TTL(), p.IPID())
		}
		if got := len(p.Transport()); got != 20+len(payload) {
			t.Fatalf("transport length %d", got)
		}
		if err := p.VerifyChecksums(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("udp", func(t *testing.T) {
		p := mustParse(t, udpPacket(t, inside, outside, payload, false))
		if p.Proto() != tuple.UDP || p.SrcAddrPort() != inside || p.DstAddrPort() != outside || p.TCPFlags() != 0 {
			t.Fatalf("got %v", p.Tuple())
		}
		if err := p.VerifyChecksums(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("icmp-echo", func(t *testing.T) {
		p := mustParse(t, icmpQuery(t, inside.Addr(), outside.Addr(), ICMPEcho, 0xbeef, payload))
		if p.Proto() != tuple.ICMP || !p.IsICMPQuery() || !p.IsICMPQueryRequest() || p.IsICMPError() {
			t.Fatal("not an ICMP query request")
		}
		if p.ICMPID() != 0xbeef || p.SrcPort() != 0xbeef || p.DstPort() != 0xbeef || p.ICMPType() != ICMPEcho {
			t.Fatalf("id %#x ports %d %d", p.ICMPID(), p.SrcPort(), p.DstPort())
		}
		if err := p.VerifyChecksums(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("icmp-replies", func(t *testing.T) {
		for _, typ := range []uint8{ICMPEchoReply, ICMPTimestampReply, ICMPInfoReply, ICMPAddressMaskReply} {
			p := mustParse(t, icmpQuery(t, outside.Addr(), inside.Addr(), typ, 9, nil))
			if !p.IsICMPQuery() || p.IsICMPQueryRequest() || p.ICMPID() != 9 {
				t.Fatalf("type %d: query %v request %v", typ, p.IsICMPQuery(), p.IsICMPQueryRequest())
			}
		}
		for _, typ := range []uint8{ICMPTimestamp, ICMPInfoRequest, ICMPAddressMaskRequest} {
			if p := mustParse(t, icmpQuery(t, inside.Addr(), outside.Addr(), typ, 9, nil)); !p.IsICMPQueryRequest() {
				t.Fatalf("type %d is a request", typ)
			}
		}
	})
	t.Run("icmp-error", func(t *testing.T) {
		orig := udpPacket(t, external, outside, payload, false)
		for _, typ := range []uint8{ICMPDestUnreachable, ICMPSourceQuench, ICMPRedirect, ICMPTimeExceeded, ICMPParameterProblem} {
			p := mustParse(t, icmpError(t, outside.Addr(), external.Addr(), typ, 3, orig, 28))
			if !p.IsICMPError() || p.IsICMPQuery() || p.ICMPType() != typ || p.ICMPCode() != 3 {
				t.Fatalf("type %d: error %v", typ, p.IsICMPError())
			}
			if p.SrcPort() != 0 || p.DstPort() != 0 {
				t.Fatal("ICMP error has no ports")
			}
			in := p.Inner()
			if in.Proto() != tuple.UDP || in.SrcAddrPort() != external || in.DstAddrPort() != outside {
				t.Fatalf("inner %v %v %v", in.Proto(), in.SrcAddrPort(), in.DstAddrPort())
			}
			if !bytes.Equal(in.Bytes(), orig[:28]) {
				t.Fatal("inner bytes")
			}
		}
	})
	t.Run("padding-cut", func(t *testing.T) {
		b := append(udpPacket(t, inside, outside, payload, false), 0, 0, 0, 0) // Ethernet padding
		p := mustParse(t, b)
		if p.Len() != len(b)-4 {
			t.Fatalf("len %d", p.Len())
		}
	})
	t.Run("options", func(t *testing.T) {
		b := tcpPacket(t, inside, outside, payload)
		b = withIPOptions(b)
		p := mustParse(t, b)
		if p.HeaderLen() != 24 || p.SrcAddrPort() != inside || p.DstPort() != outside.Port() {
			t.Fatalf("hl %d %v", p.HeaderLen(), p.Tuple())
		}
		if err := p.VerifyChecksums(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("zero", func(t *testing.T) {
		var p Packet
		if p.Src().IsValid() || p.SrcPort() != 0 || p.Inner().Proto() != 0 || p.DecTTL() || p.Len() != 0 {
			t.Fatal("zero Packet not empty")
		}
	})
}

// withIPOptions inserts 4 bytes of IPv4 options (NOP NOP NOP EOL) into a
// 20-byte-header packet and fixes IHL, total length and header checksum.
func withIPOptions(b []byte) []byte {
	out := append(append(append([]byte(nil), b[:20]...), 1, 1, 1, 0), b[20:]...)
	out[0] = 0x46
	l := len(out)
	out[2], out[3] = byte(l>>8), byte(l)
	out[10], out[11] = 0, 0
	c := Checksum(out[:24], 0)
	out[10], out[11] = byte(c>>8), byte(c)
	return out
}

// fixIP recomputes the IPv4 header checksum after a test edits the header.
func fixIP(b []byte) []byte {
	hl := int(b[0]&0xf) * 4
	b[10], b[11] = 0, 0
	c := Checksum(b[:hl], 0)
	b[10], b[11] = byte(c>>8), byte(c)
	return b
}

func TestParseRejects(t *testing.T) {
	good := tcpPacket(t, inside, outside, []byte("x"))
	udp := udpPacket(t, inside, outside, []byte("x"), false)
	edit := func(b []byte, f func(b []byte)) []byte {
		c := append([]byte(nil), b...)
		f(c)
		return c
	}
	echo := icmpQuery(t, inside.Addr(), outside.Addr(), ICMPEcho, 1, nil)
	origICMPErr := icmpError(t, inside.Addr(), outside.Addr(), 3, 3, udp, 0)
	cases := []struct {
		name string
		b    []byte
		want Reason
	}{
		{"empty", nil, ReasonTruncated},
		{"19 bytes", good[:19], ReasonTruncated},
		{"ipv6", edit(good, func(b []byte) { b[0] = 0x65 }), ReasonVersion},
		{"ihl 4", edit(good, func(b []byte) { b[0] = 0x44 }), ReasonHeaderLength},
		{"total < ihl", edit(good, func(b []byte) { b[2], b[3] = 0, 19; fixIP(b) }), ReasonTotalLength},
		{"total > buffer", good[:len(good)-1], ReasonTruncated},
		{"ip checksum", edit(good, func(b []byte) { b[10] ^= 1 }), ReasonIPChecksum},
		{"gre", edit(good, func(b []byte) { b[9] = 47; fixIP(b) }), ReasonProtocol},
		{"tcp doff 4", edit(good, func(b []byte) { b[32] = 0x40 }), ReasonTCPHeader},
		{"tcp doff > len", edit(good, func(b []byte) { b[32] = 0x60 }), ReasonTCPHeader},
		{"tcp short", fixIP(edit(good[:39], func(b []byte) { b[2], b[3] = 0, 39 })), ReasonTruncated},
		{"udp len 7", edit(udp, func(b []byte) { b[24], b[25] = 0, 7 }), ReasonUDPLength},
		{"udp len > ip", edit(udp, func(b []byte) { b[24], b[25] = 0, 10 }), ReasonUDPLength},
		{"udp short", fixIP(edit(udp[:27], func(b []byte) { b[2], b[3] = 0, 27 })), ReasonTruncated},
		{"icmp short", fixIP(edit(echo[:27], func(b []byte) { b[2], b[3] = 0, 27 })), ReasonTruncated},
		{"icmp router adv", edit(echo, func(b []byte) { b[20] = 9 }), ReasonICMPType},
		{"tcp offset 1 fragment", fixIP(edit(good, func(b []byte) { b[6], b[7] = 0, 1 })), ReasonTinyFragment},
		{"tiny first fragment", fixIP(edit(good[:30], func(b []byte) { b[2], b[3] = 0, 30; b[6] = 0x20 })), ReasonTinyFragment},
		{"error: no inner", icmpError(t, outside.Addr(), inside.Addr(), 3, 3, udp, 19), ReasonEmbeddedTruncated},
		{"error: inner 27 bytes", icmpError(t, outside.Addr(), inside.Addr(), 3, 3, udp, 27), ReasonEmbeddedTruncated},
		{"error: inner v6", icmpError(t, outside.Addr(), inside.Addr(), 3, 3, edit(udp, func(b []byte) { b[0] = 0x65 }), 28), ReasonEmbeddedInvalid},
		{"error: inner gre", icmpError(t, outside.Addr(), inside.Addr(), 3, 3, edit(udp, func(b []byte) { b[9] = 47 }), 28), ReasonEmbeddedInvalid},
		{"error: inner fragment", icmpError(t, outside.Addr(), inside.Addr(), 11, 1, edit(udp, func(b []byte) { b[7] = 8 }), 28), ReasonEmbeddedInvalid},
		{"error: about error", icmpError(t, outside.Addr(), inside.Addr(), 3, 1, origICMPErr, 28), ReasonEmbeddedInvalid},
	}
	for _, c := range cases {
		var p Packet
		err := p.Parse(c.b)
		if !errors.Is(err, c.want) || ReasonOf(err) != c.want {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
		if p.Len() != 0 {
			t.Errorf("%s: packet not emptied on error", c.name)
		}
	}
}

func TestFragments(t *testing.T) {
	b := tcpPacket(t, inside, outside, bytes.Repeat([]byte("a"), 64))
	first := append([]byte(nil), b...)
	first[6] = 0x20 // MF
	fixIP(first)
	p := mustParse(t, first)
	if !p.IsFragment() || !p.IsFirstFragment() || !p.HasTransport() || !p.MoreFragments() || p.SrcPort() != inside.Port() {
		t.Fatalf("first fragment: frag %v first %v transport %v", p.IsFragment(), p.IsFirstFragment(), p.HasTransport())
	}
	later := append([]byte(nil), b...)
	later[6], later[7] = 0, 3 // offset 24 bytes, last fragment
	fixIP(later)
	p = mustParse(t, later)
	if !p.IsFragment() || p.IsFirstFragment() || p.HasTransport() || p.FragmentOffset() != 24 || p.SrcPort() != 0 || p.Transport() != nil {
		t.Fatalf("later fragment: frag %v first %v transport %v off %d", p.IsFragment(), p.IsFirstFragment(), p.HasTransport(), p.FragmentOffset())
	}
	// Rewriting a non-first fragment touches the address and IP checksum only.
	before := append([]byte(nil), later...)
	if err := p.SetSrc(external); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before[20:], later[20:]) || p.Src() != external.Addr() {
		t.Fatal("non-first fragment payload changed or address not set")
	}
	oracle(t, later)
	// A first fragment's transport checksum follows the address change: after
	// rewriting and clearing MF the whole datagram must verify.
	p = mustParse(t, first)
	if err := p.SetSrc(external); err != nil {
		t.Fatal(err)
	}
	first[6] = 0
	fixIP(first)
	oracle(t, first)
}

func TestReasonStrings(t *testing.T) {
	seen := map[string]bool{}
	for r := ReasonNone; r < NumReasons; r++ {
		if r.String() == "" || seen[r.String()] || reasonText[r] == "" {
			t.Fatalf("reason %d: name %q text %q", r, r.String(), reasonText[r])
		}
		seen[r.String()] = true
		if r.Error()[:8] != "packet: " {
			t.Fatalf("reason %d error %q", r, r.Error())
		}
	}
	if NumReasons.String() != "unknown" || ReasonOf(nil) != ReasonNone || ReasonOf(ErrNotIPv4) != ReasonNone {
		t.Fatal("out-of-range reason")
	}
}

func TestReasonOfWrapped(t *testing.T) {
	err := fmt.Errorf("nat: inbound: %w", ReasonUDPLength)
	if ReasonOf(err) != ReasonUDPLength || !errors.Is(err, ReasonUDPLength) || errors.Is(err, ReasonTruncated) {
		t.Fatalf("ReasonOf(%v) = %v", err, ReasonOf(err))
	}
}
