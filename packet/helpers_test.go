package packet

import (
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// The builders below use gopacket, an independent implementation, so that
// the packets under test and the expected results do not come from the code
// under test.

var (
	inside   = netip.MustParseAddrPort("10.0.0.7:40000")
	outside  = netip.MustParseAddrPort("198.51.100.20:443")
	external = netip.MustParseAddrPort("192.0.2.1:61001")
)

func ip4(src, dst netip.Addr, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{
		Version: 4, IHL: 5, TTL: 64, Id: 0x1234, Protocol: proto,
		SrcIP: net.IP(src.AsSlice()), DstIP: net.IP(dst.AsSlice()),
	}
}

func serialize(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		tb.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// tcpPacket builds IPv4+TCP from src to dst with a payload.
func tcpPacket(tb testing.TB, src, dst netip.AddrPort, payload []byte) []byte {
	ip := ip4(src.Addr(), dst.Addr(), layers.IPProtocolTCP)
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
		Seq: 0x01020304, Ack: 0x0a0b0c0d, SYN: true, ACK: true, Window: 65535}
	tcp.SetNetworkLayerForChecksum(ip)
	return serialize(tb, ip, tcp, gopacket.Payload(payload))
}

// udpPacket builds IPv4+UDP; zeroSum leaves the UDP checksum 0 (none).
func udpPacket(tb testing.TB, src, dst netip.AddrPort, payload []byte, zeroSum bool) []byte {
	ip := ip4(src.Addr(), dst.Addr(), layers.IPProtocolUDP)
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	udp.SetNetworkLayerForChecksum(ip)
	b := serialize(tb, ip, udp, gopacket.Payload(payload))
	if zeroSum {
		b[20+6], b[20+7] = 0, 0
	}
	return b
}

// icmpQuery builds an ICMP query (echo, timestamp...) with identifier id.
func icmpQuery(tb testing.TB, src, dst netip.Addr, typ uint8, id uint16, payload []byte) []byte {
	ip := ip4(src, dst, layers.IPProtocolICMPv4)
	ic := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: id, Seq: 7}
	return serialize(tb, ip, ic, gopacket.Payload(payload))
}

// icmpError builds an ICMP error from src to dst embedding orig[:n] (n <= 0:
// all of orig).
func icmpError(tb testing.TB, src, dst netip.Addr, typ, code uint8, orig []byte, n int) []byte {
	if n <= 0 || n > len(orig) {
		n = len(orig)
	}
	ip := ip4(src, dst, layers.IPProtocolICMPv4)
	ic := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code)}
	return serialize(tb, ip, ic, gopacket.Payload(orig[:n]))
}

// oracle decodes b with gopacket and fails the test unless every checksum
// gopacket can check is valid: the IPv4 header, and for an unfragmented packet
// the TCP/UDP/ICMP checksum; for an ICMP error also the embedded IPv4 header
// and, when the embedded packet is complete, its transport checksum.
func oracle(tb testing.TB, b []byte) {
	tb.Helper()
	if msg := oracleCheck(b); msg != "" {
		tb.Fatalf("gopacket: %s\n% x", msg, b)
	}
}

// oracleCheck is oracle returning a message instead of failing ("" = valid).
func oracleCheck(b []byte) string {
	pk := gopacket.NewPacket(b, layers.LayerTypeIPv4, gopacket.DecodeOptions{NoCopy: true})
	ipl, _ := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ipl == nil {
		return "no IPv4 layer"
	}
	if _, r := ipl.VerifyChecksum(); !r.Valid {
		return "bad IPv4 checksum"
	}
	if ipl.Flags&layers.IPv4MoreFragments != 0 || ipl.FragOffset != 0 {
		return ""
	}
	switch ipl.Protocol {
	case layers.IPProtocolTCP:
		l, _ := pk.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if l == nil {
			return "no TCP layer"
		}
		l.SetNetworkLayerForChecksum(ipl)
		if err, r := l.VerifyChecksum(); err != nil || !r.Valid {
			return "bad TCP checksum"
		}
	case layers.IPProtocolUDP:
		l, _ := pk.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if l == nil {
			return "no UDP layer"
		}
		l.SetNetworkLayerForChecksum(ipl)
		if err, r := l.VerifyChecksum(); err != nil || !r.Valid {
			return "bad UDP checksum"
		}
	case layers.IPProtocolICMPv4:
		l, _ := pk.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if l == nil {
			return "no ICMP layer"
		}
		if _, r := l.VerifyChecksum(); !r.Valid {
			return "bad ICMP checksum"
		}
		switch l.TypeCode.Type() {
		case 3, 4, 5, 11, 12:
			return oracleEmbedded(l.Payload)
		}
	}
	return ""
}

// oracleEmbedded checks the packet inside an ICMP error: its IPv4 header
// checksum always, its transport checksum when the packet is complete.
func oracleEmbedded(b []byte) string {
	if len(b) < 20 {
		return ""
	}
	hl := int(b[0]&0xf) * 4
	if len(b) < hl {
		return ""
	}
	var h layers.IPv4
	if err := h.DecodeFromBytes(b, gopacket.NilDecodeFeedback); err != nil {
		// Truncated embedded packets fail length checks: check the header only.
		h.Contents = b[:hl]
		h.Checksum = uint16(b[10])<<8 | uint16(b[11])
	}
	if _, r := h.VerifyChecksum(); !r.Valid {
		return "bad embedded IPv4 checksum"
	}
	if int(h.Length) != len(b) {
		return "" // truncated: transport checksum not checkable
	}
	if msg := oracleCheck(b); msg != "" {
		return "embedded: " + msg
	}
	return ""
}

// compareFields decodes p's bytes with gopacket and returns a description
// of the first header field that differs from p's accessors ("" if none, or
// if gopacket cannot decode the packet).
func compareFields(p *Packet) string {
	pk := gopacket.NewPacket(p.Bytes(), layers.LayerTypeIPv4, gopacket.DecodeOptions{NoCopy: true})
	ipl, _ := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ipl == nil || pk.ErrorLayer() != nil {
		return "" // gopacket could not decode all of it (e.g. malformed IP options)
	}
	src, _ := netip.AddrFromSlice(ipl.SrcIP.To4())
	dst, _ := netip.AddrFromSlice(ipl.DstIP.To4())
	switch {
	case src != p.Src() || dst != p.Dst():
		return "addresses"
	case uint8(ipl.Protocol) != uint8(p.Proto()):
		return "protocol"
	case ipl.TTL != p.TTL() || ipl.Id != p.IPID():
		return "ttl/id"
	case int(ipl.FragOffset)*8 != p.FragmentOffset() || (ipl.Flags&layers.IPv4MoreFragments != 0) != p.MoreFragments():
		return "fragment fields"
	}
	if !p.HasTransport() {
		return ""
	}
	switch l := pk.TransportLayer().(type) {
	case *layers.TCP:
		if uint16(l.SrcPort) != p.SrcPort() || uint16(l.DstPort) != p.DstPort() {
			return "tcp ports"
		}
		var f uint8
		for i, b := range []bool{l.FIN, l.SYN, l.RST, l.PSH, l.ACK, l.URG, l.ECE, l.CWR} {
			if b {
				f |= 1 << i
			}
		}
		if f != p.TCPFlags() {
			return "tcp flags"
		}
	case *layers.UDP:
		if uint16(l.SrcPort) != p.SrcPort() || uint16(l.DstPort) != p.DstPort() {
			return "udp ports"
		}
	}
	if ic, ok := pk.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
		if ic.TypeCode.Type() != p.ICMPType() || ic.TypeCode.Code() != p.ICMPCode() {
			return "icmp type/code"
		}
		if p.IsICMPQuery() && ic.Id != p.ICMPID() {
			return "icmp id"
		}
	}
	return ""
}
