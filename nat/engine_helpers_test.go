package nat

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Test packets are built and decoded with gopacket, an implementation
// independent of package packet, so the engine is checked against an
// oracle.

var (
	t0    = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	extA  = netip.MustParseAddr("192.0.2.1")
	extB  = netip.MustParseAddr("192.0.2.2")
	hostA = netip.MustParseAddrPort("10.0.0.1:40000")
	hostB = netip.MustParseAddrPort("10.0.0.2:40001")
	srv1  = netip.MustParseAddrPort("198.51.100.1:3478")
	srv1b = netip.MustParseAddrPort("198.51.100.1:3479") // same address, other port
	srv2  = netip.MustParseAddrPort("198.51.100.2:3478") // other address
)

func testConfig(mut func(*Config)) Config {
	cfg := Config{
		External: []netip.Addr{extA},
		Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		Seed:     1,
	}
	if mut != nil {
		mut(&cfg)
	}
	return cfg
}

func newEngine(tb testing.TB, cfg Config) *Engine {
	tb.Helper()
	e, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

func ipv4(src, dst netip.Addr, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: 7, Protocol: proto,
		SrcIP: net.IP(src.AsSlice()), DstIP: net.IP(dst.AsSlice())}
}

func ser(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		tb.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func udpPkt(tb testing.TB, src, dst netip.AddrPort) []byte {
	ip := ipv4(src.Addr(), dst.Addr(), layers.IPProtocolUDP)
	u := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	u.SetNetworkLayerForChecksum(ip)
	return ser(tb, ip, u, gopacket.Payload("hello"))
}

// tcpPkt builds a TCP segment; flags is a string of S, A, F, R, P.
func tcpPkt(tb testing.TB, src, dst netip.AddrPort, flags string) []byte {
	ip := ipv4(src.Addr(), dst.Addr(), layers.IPProtocolTCP)
	t := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: 1000, Window: 1000,
		SYN: strings.Contains(flags, "S"), ACK: strings.Contains(flags, "A"), FIN: strings.Contains(flags, "F"),
		RST: strings.Contains(flags, "R"), PSH: strings.Contains(flags, "P")}
	if t.ACK {
		t.Ack = 2000
	}
	t.SetNetworkLayerForChecksum(ip)
	return ser(tb, ip, t)
}

func echoPkt(tb testing.TB, src, dst netip.Addr, typ uint8, id uint16) []byte {
	return ser(tb, ipv4(src, dst, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: id, Seq: 1}, gopacket.Payload("ping"))
}

func icmpErrPkt(tb testing.TB, src, dst netip.Addr, typ, code uint8, orig []byte) []byte {
	return ser(tb, ipv4(src, dst, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code)}, gopacket.Payload(orig))
}

// decoded is what the oracle read from a packet.
type decoded struct {
	src, dst       netip.AddrPort // ports are ICMP ids for queries
	proto          layers.IPProtocol
	syn, ack, rst  bool
	icmpType, code uint8
	inner          *decoded // embedded packet of an ICMP error
}

func addrOf(ip net.IP) netip.Addr { a, _ := netip.AddrFromSlice(ip.To4()); return a }

// decode parses b with gopacket and fails unless every checksum is valid.
func decode(tb testing.TB, b []byte) decoded {
	tb.Helper()
	d, msg := decodeCheck(b, false)
	if msg != "" {
		tb.Fatalf("oracle: %s\n% x", msg, b)
	}
	return d
}

func decodeCheck(b []byte, embedded bool) (decoded, string) {
	var d decoded
	pk := gopacket.NewPacket(b, layers.LayerTypeIPv4, gopacket.Default)
	ip, _ := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ip == nil {
		if embedded && len(b) >= 20 {
			return d, "" // truncated embedded packet: checked by the caller
		}
		return d, "no IPv4 layer"
	}
	if _, r := ip.VerifyChecksum(); !r.Valid {
		return d, "bad IPv4 checksum"
	}
	d.proto = ip.Protocol
	src, dst := addrOf(ip.SrcIP), addrOf(ip.DstIP)
	if ip.Flags&layers.IPv4MoreFragments != 0 || ip.FragOffset != 0 {
		d.src, d.dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		return d, "" // a fragment: only the IPv4 header can be checked alone
	}
	switch ip.Protocol {
	case layers.IPProtocolUDP:
		u, _ := pk.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if u == nil {
			return d, "no UDP"
		}
		d.src, d.dst = netip.AddrPortFrom(src, uint16(u.SrcPort)), netip.AddrPortFrom(dst, uint16(u.DstPort))
		u.SetNetworkLayerForChecksum(ip)
		if _, r := u.VerifyChecksum(); !r.Valid && !embedded {
			return d, "bad UDP checksum"
		}
	case layers.IPProtocolTCP:
		t, _ := pk.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if t == nil {
			if embedded && len(b) >= 28 { // 8 bytes of TCP: ports only
				d.src = netip.AddrPortFrom(src, uint16(b[20])<<8|uint16(b[21]))
				d.dst = netip.AddrPortFrom(dst, uint16(b[22])<<8|uint16(b[23]))
				return d, ""
			}
			return d, "no TCP"
		}
		d.src, d.dst = netip.AddrPortFrom(src, uint16(t.SrcPort)), netip.AddrPortFrom(dst, uint16(t.DstPort))
		d.syn, d.ack, d.rst = t.SYN, t.ACK, t.RST
		t.SetNetworkLayerForChecksum(ip)
		if _, r := t.VerifyChecksum(); !r.Valid && !embedded {
			return d, "bad TCP checksum"
		}
	case layers.IPProtocolICMPv4:
		ic, _ := pk.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if ic == nil {
			return d, "no ICMP"
		}
		if _, r := ic.VerifyChecksum(); !r.Valid && !embedded {
			return d, "bad ICMP checksum"
		}
		d.icmpType, d.code = ic.TypeCode.Type(), ic.TypeCode.Code()
		d.src, d.dst = netip.AddrPortFrom(src, ic.Id), netip.AddrPortFrom(dst, ic.Id)
		switch d.icmpType {
		case 3, 4, 5, 11, 12:
			d.src, d.dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
			inner, msg := decodeCheck(ic.Payload, true)
			if msg != "" {
				return d, "embedded: " + msg
			}
			if len(ic.Payload) >= 20 {
				var h layers.IPv4
				h.Contents = ic.Payload[:int(ic.Payload[0]&0xf)*4]
				h.Checksum = uint16(ic.Payload[10])<<8 | uint16(ic.Payload[11])
				if _, r := h.VerifyChecksum(); !r.Valid {
					return d, "bad embedded IPv4 checksum"
				}
				if !inner.src.IsValid() {
					inner.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ic.Payload[12:16])), 0)
					inner.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ic.Payload[16:20])), 0)
				}
			}
			d.inner = &inner
		}
	}
	return d, ""
}

// out sends a copy of pkt outbound and returns the verdict and the packet.
func out(e *Engine, pkt []byte, now time.Time) (Verdict, []byte) {
	b := append([]byte(nil), pkt...)
	return e.Outbound(b, now), b
}

func in(e *Engine, pkt []byte, now time.Time) (Verdict, []byte) {
	b := append([]byte(nil), pkt...)
	return e.Inbound(b, now), b
}

// mapUDP sends a UDP packet from src to dst and returns its external source.
func mapUDP(tb testing.TB, e *Engine, src, dst netip.AddrPort, now time.Time) netip.AddrPort {
	tb.Helper()
	v, b := out(e, udpPkt(tb, src, dst), now)
	if v.Action != Forward {
		tb.Fatalf("outbound %v->%v: %v %s", src, dst, v.Action, v.Reason)
	}
	d := decode(tb, b)
	if d.dst != dst {
		tb.Fatalf("destination changed to %v", d.dst)
	}
	return d.src
}
