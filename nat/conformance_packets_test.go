package nat_test

// Packet construction and inspection for the conformance suite. The suite
// builds and parses IPv4 packets itself (RFC 791, RFC 768, RFC 9293,
// RFC 792) rather than with package packet, so that a bug in the shared
// header code cannot hide in both the engine and its test; gopacket
// decodes every packet once more as an independent oracle (checkOracle).

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// IP protocol numbers.
const (
	protoICMP = 1
	protoTCP  = 6
	protoUDP  = 17
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

// ICMP types and codes (RFC 792).
const (
	icmpEchoReply   = 0
	icmpUnreachable = 3
	icmpEcho        = 8
	icmpTimeExc     = 11

	codePortUnreach  = 3
	codeFragNeeded   = 4
	codeAdminProhib  = 13
	codeHostUnreach  = 1
	codeTTLExceeded  = 0
	defaultTTL       = 64
	ipv4HeaderLength = 20
)

// csum is the RFC 1071 one's-complement sum of b folded into 16 bits,
// starting from initial.
func csum(initial uint32, b []byte) uint16 {
	s := initial
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// pseudo returns the sum of the IPv4 pseudo-header (RFC 9293 §3.1).
func pseudo(src, dst netip.Addr, proto uint8, length int) uint32 {
	s4, d4 := src.As4(), dst.As4()
	var s uint32
	s += uint32(s4[0])<<8 | uint32(s4[1])
	s += uint32(s4[2])<<8 | uint32(s4[3])
	s += uint32(d4[0])<<8 | uint32(d4[1])
	s += uint32(d4[2])<<8 | uint32(d4[3])
	s += uint32(proto)
	s += uint32(length)
	return s
}

// ipv4 wraps payload in a 20-byte IPv4 header with correct checksum.
func ipv4(src, dst netip.Addr, proto uint8, id uint16, df bool, payload []byte) []byte {
	b := make([]byte, ipv4HeaderLength+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], id)
	if df {
		b[6] = 0x40
	}
	b[8] = defaultTTL
	b[9] = proto
	s4, d4 := src.As4(), dst.As4()
	copy(b[12:16], s4[:])
	copy(b[16:20], d4[:])
	binary.BigEndian.PutUint16(b[10:], ^csum(0, b[:ipv4HeaderLength]))
	copy(b[ipv4HeaderLength:], payload)
	return b
}

// udpPkt builds an IPv4/UDP packet from src to dst.
func udpPkt(src, dst netip.AddrPort, payload string) []byte {
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	c := ^csum(pseudo(src.Addr(), dst.Addr(), protoUDP, len(u)), u)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return ipv4(src.Addr(), dst.Addr(), protoUDP, 1, true, u)
}

// tcpPkt builds an IPv4/TCP segment with the given flags, sequence and
// acknowledgment numbers, and no options or payload.
func tcpPkt(src, dst netip.AddrPort, flags uint8, seq, ack uint32) []byte {
	t := make([]byte, 20)
	binary.BigEndian.PutUint16(t[0:], src.Port())
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	binary.BigEndian.PutUint32(t[4:], seq)
	binary.BigEndian.PutUint32(t[8:], ack)
	t[12] = 5 << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:], 65535)
	binary.BigEndian.PutUint16(t[16:], ^csum(pseudo(src.Addr(), dst.Addr(), protoTCP, len(t)), t))
	return ipv4(src.Addr(), dst.Addr(), protoTCP, 1, true, t)
}

// icmpEchoPkt builds an ICMP echo request (typ icmpEcho) or reply.
func icmpEchoPkt(src, dst netip.Addr, typ uint8, id, seq uint16) []byte {
	return icmpQueryPkt(src, dst, typ, id, seq, []byte("ping"))
}

// icmpQueryPkt builds an ICMP query message (echo, timestamp, information,
// address mask; RFC 792, RFC 950) of type typ with identifier id, sequence
// number seq and the given body.
func icmpQueryPkt(src, dst netip.Addr, typ uint8, id, seq uint16, body []byte) []byte {
	m := make([]byte, 8+len(body))
	m[0] = typ
	binary.BigEndian.PutUint16(m[4:], id)
	binary.BigEndian.PutUint16(m[6:], seq)
	copy(m[8:], body)
	binary.BigEndian.PutUint16(m[2:], ^csum(0, m))
	return ipv4(src, dst, protoICMP, 1, false, m)
}

// icmpErrPkt builds an ICMP error of type typ and code from src to dst that
// quotes the first quote bytes of orig (RFC 792: the IP header plus at
// least 8 bytes; RFC 1812 §4.3.2.3 allows more). mtu is written for
// "fragmentation needed" (RFC 1191).
func icmpErrPkt(src, dst netip.Addr, typ, code uint8, orig []byte, quote int, mtu uint16) []byte {
	if quote > len(orig) {
		quote = len(orig)
	}
	m := make([]byte, 8+quote)
	m[0], m[1] = typ, code
	if typ == icmpUnreachable && code == codeFragNeeded {
		binary.BigEndian.PutUint16(m[6:], mtu)
	}
	copy(m[8:], orig[:quote])
	binary.BigEndian.PutUint16(m[2:], ^csum(0, m))
	return ipv4(src, dst, protoICMP, 2, false, m)
}

// fragment splits the IPv4 packet b (20-byte header) into fragments whose
// payloads start at the given byte offsets (multiples of 8, ascending, the
// first 0), with RFC 791 §3.2 flags and offsets and fresh header
// checksums. The identification is kept.
func fragment(b []byte, offsets ...int) [][]byte {
	payload := b[ipv4HeaderLength:]
	var out [][]byte
	for i, off := range offsets {
		end := len(payload)
		if i+1 < len(offsets) {
			end = offsets[i+1]
		}
		f := make([]byte, ipv4HeaderLength+end-off)
		copy(f, b[:ipv4HeaderLength])
		copy(f[ipv4HeaderLength:], payload[off:end])
		binary.BigEndian.PutUint16(f[2:], uint16(len(f)))
		fo := uint16(off / 8)
		if i+1 < len(offsets) {
			fo |= 0x2000 // MF
		}
		binary.BigEndian.PutUint16(f[6:], fo) // DF clear: it was fragmented
		f[10], f[11] = 0, 0
		binary.BigEndian.PutUint16(f[10:], ^csum(0, f[:ipv4HeaderLength]))
		out = append(out, f)
	}
	return out
}

// withIPID returns a copy of the IPv4 packet b with identification id and
// its header checksum recomputed.
func withIPID(b []byte, id uint16) []byte {
	c := append([]byte(nil), b...)
	binary.BigEndian.PutUint16(c[4:], id)
	c[10], c[11] = 0, 0
	binary.BigEndian.PutUint16(c[10:], ^csum(0, c[:ipv4HeaderLength]))
	return c
}

// view is a parsed IPv4 packet: the fields the assertions look at.
type view struct {
	Src, Dst   netip.Addr
	Proto      uint8
	SrcPort    uint16 // TCP/UDP source port, or ICMP query identifier
	DstPort    uint16 // TCP/UDP destination port, or ICMP identifier
	TCPFlags   uint8
	ICMPType   uint8
	ICMPCode   uint8
	Inner      *view // the quoted packet of an ICMP error
	innerBytes []byte
	Frag       bool // a fragment (MF set or offset > 0)
	FragOffset int  // its offset in bytes
}

// From returns the source endpoint.
func (v view) From() netip.AddrPort { return netip.AddrPortFrom(v.Src, v.SrcPort) }

// To returns the destination endpoint.
func (v view) To() netip.AddrPort { return netip.AddrPortFrom(v.Dst, v.DstPort) }

// parse decodes b and checks every checksum it can: the IPv4 header, and
// the TCP/UDP/ICMP checksum when the packet is complete. quoted is true
// for the packet inside an ICMP error, which may be truncated so that only
// its IP header checksum can be checked.
func parse(b []byte, quoted bool) (view, error) {
	var v view
	if len(b) < ipv4HeaderLength || b[0]>>4 != 4 {
		return v, fmt.Errorf("not an IPv4 packet (%d bytes)", len(b))
	}
	hl := int(b[0]&0xf) * 4
	if hl < ipv4HeaderLength || len(b) < hl {
		return v, fmt.Errorf("bad IPv4 header length %d", hl)
	}
	if csum(0, b[:hl]) != 0xffff {
		return v, fmt.Errorf("bad IPv4 header checksum %#04x", binary.BigEndian.Uint16(b[10:]))
	}
	total := int(binary.BigEndian.Uint16(b[2:]))
	complete := total == len(b)
	if !quoted && !complete {
		return v, fmt.Errorf("IPv4 total length %d, packet has %d bytes", total, len(b))
	}
	v.Src = netip.AddrFrom4([4]byte(b[12:16]))
	v.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	v.Proto = b[9]
	p := b[hl:]
	if b[6]&0x3f != 0 || b[7] != 0 { // MF or a fragment offset: a fragment
		v.Frag = true
		v.FragOffset = (int(b[6]&0x1f)<<8 | int(b[7])) * 8
		complete = false // the transport checksum covers the whole datagram
		if v.FragOffset != 0 {
			return v, nil // no transport header here
		}
	}
	switch v.Proto {
	case protoUDP, protoTCP:
		if len(p) < 8 {
			return v, fmt.Errorf("transport header truncated to %d bytes", len(p))
		}
		v.SrcPort = binary.BigEndian.Uint16(p[0:])
		v.DstPort = binary.BigEndian.Uint16(p[2:])
		if v.Proto == protoTCP && len(p) >= 14 {
			v.TCPFlags = p[13]
		}
		if complete {
			if v.Proto == protoUDP && binary.BigEndian.Uint16(p[6:]) == 0 {
				break // no checksum (RFC 768)
			}
			if csum(pseudo(v.Src, v.Dst, v.Proto, len(p)), p) != 0xffff {
				return v, fmt.Errorf("bad %s checksum", protoName(v.Proto))
			}
		}
	case protoICMP:
		if len(p) < 8 {
			return v, fmt.Errorf("ICMP header truncated to %d bytes", len(p))
		}
		v.ICMPType, v.ICMPCode = p[0], p[1]
		if complete && csum(0, p) != 0xffff {
			return v, fmt.Errorf("bad ICMP checksum")
		}
		switch v.ICMPType {
		case icmpEcho, icmpEchoReply, 13, 14, 15, 16, 17, 18:
			v.SrcPort = binary.BigEndian.Uint16(p[4:])
			v.DstPort = v.SrcPort
		case icmpUnreachable, icmpTimeExc, 4, 5, 12:
			if quoted {
				return v, fmt.Errorf("ICMP error inside an ICMP error")
			}
			in, err := parse(p[8:], true)
			if err != nil {
				return v, fmt.Errorf("quoted packet: %w", err)
			}
			v.Inner, v.innerBytes = &in, p[8:]
		}
	}
	return v, nil
}

func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "TCP"
	case protoUDP:
		return "UDP"
	case protoICMP:
		return "ICMP"
	}
	return fmt.Sprint(p)
}

// mustParse parses a packet the engine emitted and fails t if it is
// malformed, then cross-checks it with gopacket.
func mustParse(t testing.TB, b []byte) view {
	t.Helper()
	v, err := parse(b, false)
	if err != nil {
		t.Fatalf("engine emitted a malformed packet: %v\n% x", err, b)
	}
	checkOracle(t, b, v)
	return v
}

// checkOracle decodes b with gopacket and fails t when gopacket disagrees
// with parse about addresses, ports or checksums.
func checkOracle(t testing.TB, b []byte, v view) {
	t.Helper()
	pk := gopacket.NewPacket(b, layers.LayerTypeIPv4, gopacket.DecodeOptions{NoCopy: false})
	ip, _ := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ip == nil {
		t.Fatalf("gopacket: no IPv4 layer: %v", pk.ErrorLayer())
	}
	if a, _ := netip.AddrFromSlice(ip.SrcIP); a.Unmap() != v.Src {
		t.Fatalf("gopacket source %v, parse %v", ip.SrcIP, v.Src)
	}
	if a, _ := netip.AddrFromSlice(ip.DstIP); a.Unmap() != v.Dst {
		t.Fatalf("gopacket destination %v, parse %v", ip.DstIP, v.Dst)
	}
	// Re-serialise the decoded layers with fresh checksums: for a packet
	// whose checksums are right this reproduces it byte for byte. For a
	// fragment only the IPv4 header can be checked.
	var ls []gopacket.SerializableLayer
	proto := v.Proto
	if v.Frag {
		proto = 0
		ls = []gopacket.SerializableLayer{ip, gopacket.Payload(ip.Payload)}
	}
	switch proto {
	case protoUDP:
		u, _ := pk.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if u == nil {
			t.Fatalf("gopacket: no UDP layer")
		}
		if uint16(u.SrcPort) != v.SrcPort || uint16(u.DstPort) != v.DstPort {
			t.Fatalf("gopacket UDP ports %d>%d, parse %d>%d", u.SrcPort, u.DstPort, v.SrcPort, v.DstPort)
		}
		if u.Checksum == 0 {
			return
		}
		u.SetNetworkLayerForChecksum(ip)
		ls = []gopacket.SerializableLayer{ip, u, gopacket.Payload(u.Payload)}
	case protoTCP:
		tc, _ := pk.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if tc == nil {
			t.Fatalf("gopacket: no TCP layer")
		}
		if uint16(tc.SrcPort) != v.SrcPort || uint16(tc.DstPort) != v.DstPort {
			t.Fatalf("gopacket TCP ports %d>%d, parse %d>%d", tc.SrcPort, tc.DstPort, v.SrcPort, v.DstPort)
		}
		tc.SetNetworkLayerForChecksum(ip)
		ls = []gopacket.SerializableLayer{ip, tc, gopacket.Payload(tc.Payload)}
	case protoICMP:
		ic, _ := pk.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if ic == nil {
			t.Fatalf("gopacket: no ICMPv4 layer")
		}
		if ic.TypeCode.Type() != v.ICMPType || ic.TypeCode.Code() != v.ICMPCode {
			t.Fatalf("gopacket ICMP %v, parse %d/%d", ic.TypeCode, v.ICMPType, v.ICMPCode)
		}
		ls = []gopacket.SerializableLayer{ip, ic, gopacket.Payload(ic.Payload)}
	default:
		if !v.Frag {
			return
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("gopacket serialise: %v", err)
	}
	if got := buf.Bytes(); string(got) != string(b) {
		t.Fatalf("gopacket recomputes different bytes (a checksum or length is wrong):\nengine  % x\ngopacket % x", b, got)
	}
}

// TestConformanceHarness checks the suite's own builders and parser
// against gopacket before any engine test relies on them.
func TestConformanceHarness(t *testing.T) {
	a := netip.MustParseAddrPort("192.168.1.10:40000")
	r := netip.MustParseAddrPort("198.51.100.7:3478")
	for _, b := range [][]byte{
		udpPkt(a, r, "hello"),
		udpPkt(a, r, "odd"),
		tcpPkt(a, r, tcpSYN, 1000, 0),
		tcpPkt(r, a, tcpSYN|tcpACK, 5000, 1001),
		icmpEchoPkt(a.Addr(), r.Addr(), icmpEcho, 0x1234, 1),
		icmpErrPkt(r.Addr(), a.Addr(), icmpUnreachable, codePortUnreach, udpPkt(a, r, "x"), 28, 0),
		icmpErrPkt(r.Addr(), a.Addr(), icmpUnreachable, codeFragNeeded, tcpPkt(a, r, tcpACK, 1, 1), 40, 1400),
	} {
		v := mustParse(t, b)
		if v.Proto != protoICMP || v.Inner != nil || v.ICMPType == icmpEcho {
			continue
		}
	}
	// A corrupted checksum must be caught by both parse and the oracle.
	b := udpPkt(a, r, "hello")
	b[len(b)-1] ^= 0xff
	if _, err := parse(b, false); err == nil {
		t.Error("parse accepted a bad UDP checksum")
	}
	e := icmpErrPkt(r.Addr(), a.Addr(), icmpUnreachable, codePortUnreach, udpPkt(a, r, "x"), 28, 0)
	v := mustParse(t, e)
	if v.Inner == nil || v.Inner.From() != a || v.Inner.To() != r {
		t.Errorf("quoted packet parsed as %+v", v.Inner)
	}
}
