package packet

import (
	"encoding/binary"
	"net/netip"

	"github.com/portspace/portspace/tuple"
)

// ICMP message types (RFC 792, RFC 950) that Parse accepts.
const (
	ICMPEchoReply          uint8 = 0  // query reply (RFC 792)
	ICMPDestUnreachable    uint8 = 3  // error (RFC 792)
	ICMPSourceQuench       uint8 = 4  // error, deprecated by RFC 6633 but still parsed
	ICMPRedirect           uint8 = 5  // error (RFC 792)
	ICMPEcho               uint8 = 8  // query request (RFC 792)
	ICMPTimeExceeded       uint8 = 11 // error (RFC 792)
	ICMPParameterProblem   uint8 = 12 // error (RFC 792)
	ICMPTimestamp          uint8 = 13 // query request (RFC 792)
	ICMPTimestampReply     uint8 = 14 // query reply (RFC 792)
	ICMPInfoRequest        uint8 = 15 // query request (RFC 792)
	ICMPInfoReply          uint8 = 16 // query reply (RFC 792)
	ICMPAddressMaskRequest uint8 = 17 // query request (RFC 950)
	ICMPAddressMaskReply   uint8 = 18 // query reply (RFC 950)
)

// Destination-unreachable codes (RFC 792, RFC 1122 §3.2.2.1, RFC 1812 §5.2.7.1).
const (
	CodeNetUnreachable   uint8 = 0
	CodeHostUnreachable  uint8 = 1
	CodeProtoUnreachable uint8 = 2
	CodePortUnreachable  uint8 = 3
	CodeFragNeeded       uint8 = 4 // carries the next-hop MTU (RFC 1191 §4)
	CodeAdminProhibited  uint8 = 13
)

// TCP header flags (RFC 9293 §3.1), as returned by [Packet.TCPFlags].
const (
	TCPFin uint8 = 1 << 0
	TCPSyn uint8 = 1 << 1
	TCPRst uint8 = 1 << 2
	TCPPsh uint8 = 1 << 3
	TCPAck uint8 = 1 << 4
	TCPUrg uint8 = 1 << 5
	TCPEce uint8 = 1 << 6
	TCPCwr uint8 = 1 << 7
)

const (
	flagFragment  uint8 = 1 << iota // MF set or offset != 0
	flagTransport                   // transport header present (unfragmented or first fragment)
	flagICMPQuery                   // ICMP query message with identifier
	flagICMPError                   // ICMP error message with a usable embedded packet
)

// Packet is a parsed IPv4 packet: a view over the caller's buffer holding
// header offsets. Fill it with [Packet.Parse]; the zero Packet is empty and
// its accessors return zero values. A Packet is 40 bytes and never copies or
// retains anything but the buffer slice.
type Packet struct {
	b          []byte // the packet, cut to the IPv4 total length
	l4         uint16 // offset of the transport header (= IHL*4)
	inner      uint16 // offset of the embedded IPv4 header of an ICMP error
	innerL4    uint16 // offset of the embedded transport header
	proto      tuple.Proto
	innerProto tuple.Proto
	flags      uint8
}

// Parse returns the Packet parsed from b (see [Packet.Parse]).
func Parse(b []byte) (Packet, error) {
	var p Packet
	err := p.Parse(b)
	return p, err
}

// Parse makes p a view of the IPv4 packet in b. It checks the IPv4 header
// (RFC 791 §3.1: version, IHL, total length, header checksum), cuts b to the
// total length, and for unfragmented packets and first fragments checks the
// transport header: TCP data offset, UDP length, ICMP type, and for ICMP
// errors the embedded IPv4 header plus 8 transport bytes (RFC 792). A
// non-first fragment parses without a transport header ([Packet.HasTransport]
// is false). On error p is left empty and the error is a [Reason].
// Parse does not verify transport checksums; see [Packet.VerifyChecksums].
func (p *Packet) Parse(b []byte) error {
	*p = Packet{}
	if len(b) < 20 {
		return ReasonTruncated
	}
	if b[0]>>4 != 4 {
		return ReasonVersion
	}
	hl := int(b[0]&0x0f) * 4
	if hl < 20 {
		return ReasonHeaderLength
	}
	tl := int(binary.BigEndian.Uint16(b[2:]))
	if tl < hl {
		return ReasonTotalLength
	}
	if tl > len(b) {
		return ReasonTruncated
	}
	b = b[:tl]
	if ipHeaderSum(b[:hl]) != 0xffff {
		return ReasonIPChecksum
	}
	proto := tuple.Proto(b[9])
	if !proto.IsValid() {
		return ReasonProtocol
	}
	frag := binary.BigEndian.Uint16(b[6:])
	off := frag & 0x1fff
	var flags uint8
	if frag&0x3fff != 0 {
		flags = flagFragment
	}
	if off != 0 {
		if off == 1 && proto == tuple.TCP {
			return ReasonTinyFragment // RFC 1858 (and RFC 3128): an offset-1 TCP fragment can rewrite the TCP flags
		}
		p.b, p.l4, p.proto, p.flags = b, uint16(hl), proto, flags
		return nil
	}
	l4 := b[hl:]
	short := ReasonTruncated
	if flags != 0 {
		short = ReasonTinyFragment
	}
	switch proto {
	case tuple.TCP:
		if len(l4) < 20 {
			return short
		}
		doff := int(l4[12]>>4) * 4
		if doff < 20 || (flags == 0 && doff > len(l4)) {
			return ReasonTCPHeader
		}
	case tuple.UDP:
		if len(l4) < 8 {
			return short
		}
		if flags == 0 {
			if ul := int(binary.BigEndian.Uint16(l4[4:])); ul < 8 || ul > len(l4) {
				return ReasonUDPLength
			}
		}
	case tuple.ICMP:
		if len(l4) < 8 {
			return short
		}
		switch l4[0] {
		case ICMPEchoReply, ICMPEcho, ICMPTimestamp, ICMPTimestampReply,
			ICMPInfoRequest, ICMPInfoReply, ICMPAddressMaskRequest, ICMPAddressMaskReply:
			flags |= flagICMPQuery
		case ICMPDestUnreachable, ICMPSourceQuench, ICMPRedirect, ICMPTimeExceeded, ICMPParameterProblem:
			if err := p.parseEmbedded(b, hl+8); err != nil {
				*p = Packet{}
				return err
			}
			flags |= flagICMPError
		default:
			return ReasonICMPType
		}
	}
	p.b, p.l4, p.proto, p.flags = b, uint16(hl), proto, flags|flagTransport
	return nil
}

// parseEmbedded checks the packet embedded in an ICMP error at b[at:]: an
// IPv4 header (its checksum is not checked: RFC 5508 §4 only asks that it be
// updated) and at least 8 bytes of a TCP, UDP or ICMP-query header of a
// first fragment.
func (p *Packet) parseEmbedded(b []byte, at int) error {
	e := b[at:]
	if len(e) < 20 {
		return ReasonEmbeddedTruncated
	}
	if e[0]>>4 != 4 || e[0]&0x0f < 5 {
		return ReasonEmbeddedInvalid
	}
	hl := int(e[0]&0x0f) * 4
	if len(e) < hl+8 {
		return ReasonEmbeddedTruncated
	}
	proto := tuple.Proto(e[9])
	if !proto.IsValid() || binary.BigEndian.Uint16(e[6:])&0x1fff != 0 {
		return ReasonEmbeddedInvalid
	}
	if proto == tuple.ICMP && !isQuery(e[hl]) {
		return ReasonEmbeddedInvalid // no ICMP error about an ICMP error (RFC 1122 §3.2.2)
	}
	p.inner, p.innerL4, p.innerProto = uint16(at), uint16(at+hl), proto
	return nil
}

func isQuery(t uint8) bool {
	switch t {
	case ICMPEchoReply, ICMPEcho, ICMPTimestamp, ICMPTimestampReply,
		ICMPInfoRequest, ICMPInfoReply, ICMPAddressMaskRequest, ICMPAddressMaskReply:
		return true
	}
	return false
}

// ipHeaderSum returns the folded ones-complement sum of an IPv4 header
// (0xffff when its checksum is right).
func ipHeaderSum(h []byte) uint16 {
	if len(h) == 20 {
		s := uint64(binary.BigEndian.Uint32(h)) + uint64(binary.BigEndian.Uint32(h[4:])) +
			uint64(binary.BigEndian.Uint32(h[8:])) + uint64(binary.BigEndian.Uint32(h[12:])) +
			uint64(binary.BigEndian.Uint32(h[16:]))
		s = (s >> 32) + (s & 0xffffffff)
		s = (s >> 16) + (s & 0xffff)
		s = (s >> 16) + (s & 0xffff)
		s = (s >> 16) + (s & 0xffff)
		return uint16(s)
	}
	return Fold(Sum(h, 0))
}

// Bytes returns the packet (the buffer given to Parse, cut to the IPv4 total
// length). Set methods modify it in place.
func (p *Packet) Bytes() []byte { return p.b }

// Len returns the IPv4 total length.
func (p *Packet) Len() int { return len(p.b) }

// HeaderLen returns the IPv4 header length in bytes (IHL*4, RFC 791 §3.1).
func (p *Packet) HeaderLen() int { return int(p.l4) }

// Proto returns the transport protocol (TCP, UDP or ICMP).
func (p *Packet) Proto() tuple.Proto { return p.proto }

// Src returns the IPv4 source address.
func (p *Packet) Src() netip.Addr {
	if len(p.b) < 20 {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte(p.b[12:16]))
}

// Dst returns the IPv4 destination address.
func (p *Packet) Dst() netip.Addr {
	if len(p.b) < 20 {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte(p.b[16:20]))
}

// HasTransport reports whether the transport header is present: the packet is
// not a fragment, or is the first fragment (RFC 791 §3.2).
func (p *Packet) HasTransport() bool { return p.flags&flagTransport != 0 }

// IsFragment reports whether the packet is a fragment: MF set or a non-zero
// fragment offset (RFC 791 §3.2).
func (p *Packet) IsFragment() bool { return p.flags&flagFragment != 0 }

// IsFirstFragment reports whether the packet is a fragment with offset 0 (it
// carries the transport header).
func (p *Packet) IsFirstFragment() bool {
	return p.flags&(flagFragment|flagTransport) == flagFragment|flagTransport
}

// FragmentOffset returns the fragment offset in bytes (RFC 791 §3.1).
func (p *Packet) FragmentOffset() int {
	if len(p.b) < 20 {
		return 0
	}
	return int(binary.BigEndian.Uint16(p.b[6:])&0x1fff) * 8
}

// MoreFragments reports whether the MF flag is set.
func (p *Packet) MoreFragments() bool { return len(p.b) >= 20 && p.b[6]&0x20 != 0 }

// DontFragment reports whether the DF flag is set.
func (p *Packet) DontFragment() bool { return len(p.b) >= 20 && p.b[6]&0x40 != 0 }

// IPID returns the IPv4 identification field, which with source, destination
// and protocol identifies the fragments of one datagram (RFC 791 §3.2).
func (p *Packet) IPID() uint16 {
	if len(p.b) < 20 {
		return 0
	}
	return binary.BigEndian.Uint16(p.b[4:])
}

// TTL returns the IPv4 time to live.
func (p *Packet) TTL() uint8 {
	if len(p.b) < 20 {
		return 0
	}
	return p.b[8]
}

// SrcPort returns the TCP or UDP source port, or the identifier of an ICMP
// query (RFC 5508 §3 treats it as the port). It returns 0 when there is no
// transport header and for ICMP errors.
func (p *Packet) SrcPort() uint16 {
	switch {
	case p.flags&flagICMPQuery != 0:
		return binary.BigEndian.Uint16(p.b[p.l4+4:])
	case p.flags&flagTransport != 0 && p.proto != tuple.ICMP:
		return binary.BigEndian.Uint16(p.b[p.l4:])
	}
	return 0
}

// DstPort returns the TCP or UDP destination port, or the identifier of an
// ICMP query (the same value as SrcPort: the identifier is both ends' "port"
// for NAT purposes, RFC 5508 §3). It returns 0 when there is no transport
// header and for ICMP errors.
func (p *Packet) DstPort() uint16 {
	switch {
	case p.flags&flagICMPQuery != 0:
		return binary.BigEndian.Uint16(p.b[p.l4+4:])
	case p.flags&flagTransport != 0 && p.proto != tuple.ICMP:
		return binary.BigEndian.Uint16(p.b[p.l4+2:])
	}
	return 0
}

// SrcAddrPort returns Src and SrcPort as one endpoint.
func (p *Packet) SrcAddrPort() netip.AddrPort { return netip.AddrPortFrom(p.Src(), p.SrcPort()) }

// DstAddrPort returns Dst and DstPort as one endpoint.
func (p *Packet) DstAddrPort() netip.AddrPort { return netip.AddrPortFrom(p.Dst(), p.DstPort()) }

// Tuple returns the packet's 5-tuple seen from its sender: Local is the
// source endpoint, Remote the destination (ports as SrcPort/DstPort).
func (p *Packet) Tuple() tuple.Tuple {
	return tuple.Tuple{Proto: p.proto, Local: p.SrcAddrPort(), Remote: p.DstAddrPort()}
}

// TCPFlags returns the TCP flags byte (FIN..CWR, RFC 9293 §3.1), 0 for other
// packets and when there is no transport header.
func (p *Packet) TCPFlags() uint8 {
	if p.proto != tuple.TCP || p.flags&flagTransport == 0 {
		return 0
	}
	return p.b[p.l4+13]
}

// Transport returns the transport header and payload (nil when there is no
// transport header).
func (p *Packet) Transport() []byte {
	if p.flags&flagTransport == 0 {
		return nil
	}
	return p.b[p.l4:]
}

// IsICMPQuery reports whether the packet is an ICMP query message (echo,
// timestamp, information, address mask, request or reply) with an identifier.
func (p *Packet) IsICMPQuery() bool { return p.flags&flagICMPQuery != 0 }

// IsICMPQueryRequest reports whether the packet is an ICMP query request
// (echo, timestamp, information or address mask request), the kind of
// message that may create a NAT session (RFC 5508 §3).
func (p *Packet) IsICMPQueryRequest() bool {
	if p.flags&flagICMPQuery == 0 {
		return false
	}
	switch p.b[p.l4] {
	case ICMPEcho, ICMPTimestamp, ICMPInfoRequest, ICMPAddressMaskRequest:
		return true
	}
	return false
}

// IsICMPError reports whether the packet is an ICMP error message (types 3,
// 4, 5, 11, 12) with a usable embedded packet (see [Packet.Inner]).
func (p *Packet) IsICMPError() bool { return p.flags&flagICMPError != 0 }

// ICMPType returns the ICMP type (0 when not ICMP or no transport header).
func (p *Packet) ICMPType() uint8 {
	if p.proto != tuple.ICMP || p.flags&flagTransport == 0 {
		return 0
	}
	return p.b[p.l4]
}

// ICMPCode returns the ICMP code (0 when not ICMP or no transport header).
func (p *Packet) ICMPCode() uint8 {
	if p.proto != tuple.ICMP || p.flags&flagTransport == 0 {
		return 0
	}
	return p.b[p.l4+1]
}

// ICMPID returns the identifier of an ICMP query (0 for other packets).
func (p *Packet) ICMPID() uint16 {
	if p.flags&flagICMPQuery == 0 {
		return 0
	}
	return binary.BigEndian.Uint16(p.b[p.l4+4:])
}

// Inner returns the packet embedded in an ICMP error (RFC 792: the original
// IPv4 header and at least 8 bytes of its transport header). For other
// packets the result is empty (its Proto is 0).
func (p *Packet) Inner() Embedded {
	if p.flags&flagICMPError == 0 {
		return Embedded{}
	}
	return Embedded{b: p.b[p.inner:], l4: p.innerL4 - p.inner, proto: p.innerProto}
}

// Embedded is a read-only view of the packet inside an ICMP error. It is the
// packet the error is about, as its sender sent it: for an error arriving
// from outside, its Src is the NAT's external endpoint.
type Embedded struct {
	b     []byte
	l4    uint16
	proto tuple.Proto
}

// Proto returns the embedded packet's transport protocol (0 if empty).
func (e Embedded) Proto() tuple.Proto { return e.proto }

// Src returns the embedded packet's source address.
func (e Embedded) Src() netip.Addr {
	if e.proto == 0 {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte(e.b[12:16]))
}

// Dst returns the embedded packet's destination address.
func (e Embedded) Dst() netip.Addr {
	if e.proto == 0 {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte(e.b[16:20]))
}

// SrcPort returns the embedded TCP/UDP source port or ICMP query identifier.
func (e Embedded) SrcPort() uint16 {
	switch e.proto {
	case 0:
		return 0
	case tuple.ICMP:
		return binary.BigEndian.Uint16(e.b[e.l4+4:])
	}
	return binary.BigEndian.Uint16(e.b[e.l4:])
}

// DstPort returns the embedded TCP/UDP destination port or ICMP query
// identifier.
func (e Embedded) DstPort() uint16 {
	switch e.proto {
	case 0:
		return 0
	case tuple.ICMP:
		return binary.BigEndian.Uint16(e.b[e.l4+4:])
	}
	return binary.BigEndian.Uint16(e.b[e.l4+2:])
}

// SrcAddrPort returns Src and SrcPort as one endpoint.
func (e Embedded) SrcAddrPort() netip.AddrPort { return netip.AddrPortFrom(e.Src(), e.SrcPort()) }

// DstAddrPort returns Dst and DstPort as one endpoint.
func (e Embedded) DstAddrPort() netip.AddrPort { return netip.AddrPortFrom(e.Dst(), e.DstPort()) }

// ICMPType returns the type of an embedded ICMP query (0 otherwise).
func (e Embedded) ICMPType() uint8 {
	if e.proto != tuple.ICMP {
		return 0
	}
	return e.b[e.l4]
}

// Bytes returns the embedded packet's bytes as present in the error.
func (e Embedded) Bytes() []byte { return e.b }
