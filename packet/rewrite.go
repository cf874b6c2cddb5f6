package packet

import (
	"encoding/binary"
	"net/netip"

	"github.com/portspace/portspace/tuple"
)

// as4 returns a as 4 bytes, or false when it is not IPv4 (or IPv4-mapped).
func as4(a netip.Addr) ([4]byte, bool) {
	if !a.Is4() && !a.Is4In6() {
		return [4]byte{}, false
	}
	return a.As4(), true
}

// SetSrc rewrites the source address and port in place: the TCP/UDP source
// port or, for an ICMP query, the identifier (RFC 5508 §3). The IPv4 header
// checksum and the transport checksum (TCP/UDP pseudo-header and port, ICMP
// identifier) are updated incrementally (RFC 1624 eqn. 3, RFC 3022 §4); a
// zero UDP checksum stays zero. The port is ignored when the packet has no
// transport header (non-first fragment; a first fragment's checksum is still
// updated for the address) and for ICMP errors, whose embedded packet is
// rewritten with [Packet.SetInnerDst]. It returns [ErrNotIPv4] for a
// non-IPv4 address and does not allocate.
func (p *Packet) SetSrc(ap netip.AddrPort) error {
	return p.setEndpoint(12, 0, ap)
}

// SetDst rewrites the destination address and port in place (for an ICMP
// query, the identifier), like [Packet.SetSrc].
func (p *Packet) SetDst(ap netip.AddrPort) error {
	return p.setEndpoint(16, 2, ap)
}

func (p *Packet) setEndpoint(aoff, poff int, ap netip.AddrPort) error {
	a, ok := as4(ap.Addr())
	if !ok {
		return ErrNotIPv4
	}
	b := p.b
	if len(b) < 20 {
		return nil
	}
	d := setAddr(b[aoff:aoff+4], a)
	applyAt(b[10:12], d)
	if p.flags&flagTransport == 0 {
		return nil // non-first fragment: the transport checksum is in the first
	}
	l4 := b[p.l4:]
	switch p.proto {
	case tuple.TCP:
		d += set16(l4[poff:], ap.Port())
		applyAt(l4[16:18], d)
	case tuple.UDP:
		d += set16(l4[poff:], ap.Port())
		applyAtUDP(l4[6:8], d)
	case tuple.ICMP:
		if p.flags&flagICMPQuery != 0 {
			applyAt(l4[2:4], set16(l4[4:], ap.Port()))
		}
	}
	return nil
}

// SetSrcAddr rewrites only the source address, updating the IPv4 header
// checksum and the TCP/UDP checksum (pseudo-header) incrementally.
func (p *Packet) SetSrcAddr(a netip.Addr) error { return p.setAddr(12, a) }

// SetDstAddr rewrites only the destination address, like [Packet.SetSrcAddr].
func (p *Packet) SetDstAddr(a netip.Addr) error { return p.setAddr(16, a) }

func (p *Packet) setAddr(aoff int, addr netip.Addr) error {
	a, ok := as4(addr)
	if !ok {
		return ErrNotIPv4
	}
	b := p.b
	if len(b) < 20 {
		return nil
	}
	d := setAddr(b[aoff:aoff+4], a)
	applyAt(b[10:12], d)
	if p.flags&flagTransport == 0 {
		return nil
	}
	l4 := b[p.l4:]
	switch p.proto {
	case tuple.TCP:
		applyAt(l4[16:18], d)
	case tuple.UDP:
		applyAtUDP(l4[6:8], d)
	}
	return nil
}

// SetSrcPort rewrites the TCP/UDP source port (the identifier of an ICMP
// query), updating the transport checksum. It does nothing when the packet
// has no transport header or is an ICMP error.
func (p *Packet) SetSrcPort(port uint16) { p.setPort(0, port) }

// SetDstPort rewrites the TCP/UDP destination port (the identifier of an ICMP
// query), updating the transport checksum, like [Packet.SetSrcPort].
func (p *Packet) SetDstPort(port uint16) { p.setPort(2, port) }

// SetICMPID rewrites the identifier of an ICMP query and updates the ICMP
// checksum (RFC 5508 §3). It does nothing for other packets.
func (p *Packet) SetICMPID(id uint16) {
	if p.flags&flagICMPQuery != 0 {
		l4 := p.b[p.l4:]
		applyAt(l4[2:4], set16(l4[4:], id))
	}
}

func (p *Packet) setPort(poff int, port uint16) {
	if p.flags&flagTransport == 0 {
		return
	}
	l4 := p.b[p.l4:]
	switch p.proto {
	case tuple.TCP:
		applyAt(l4[16:18], set16(l4[poff:], port))
	case tuple.UDP:
		applyAtUDP(l4[6:8], set16(l4[poff:], port))
	case tuple.ICMP:
		p.SetICMPID(port)
	}
}

// DecTTL decrements the IPv4 TTL and updates the header checksum (RFC 1812
// §5.3.1, RFC 1624 §4). It returns false, changing nothing, when the TTL is
// already 0 or 1: a router must then drop the packet and should send ICMP
// time exceeded instead of forwarding it.
func (p *Packet) DecTTL() bool {
	b := p.b
	if len(b) < 20 || b[8] <= 1 {
		return false
	}
	old := binary.BigEndian.Uint16(b[8:])
	b[8]--
	applyAt(b[10:12], uint32(^old)+uint32(old-0x100))
	return true
}

// SetInnerSrc rewrites the source endpoint of the packet embedded in an ICMP
// error (RFC 5508 §4, RFC 3022 §4): address, TCP/UDP source port or ICMP
// query identifier; the embedded IPv4 checksum; the embedded transport
// checksum when its bytes are present (UDP and ICMP always, TCP when 18 or
// more bytes of its header were included; a zero UDP checksum stays zero);
// and the outer ICMP checksum, which covers all of these. An inbound error
// about an outbound packet needs SetInnerSrc(internal endpoint) and
// SetDstAddr(internal address). It returns [ErrNoEmbedded] for a packet that
// is not an ICMP error and [ErrNotIPv4] for a non-IPv4 address.
func (p *Packet) SetInnerSrc(ap netip.AddrPort) error { return p.setInner(12, 0, ap) }

// SetInnerDst rewrites the destination endpoint of the packet embedded in an
// ICMP error, like [Packet.SetInnerSrc]. An outbound error about an inbound
// packet needs SetInnerDst(external endpoint) and SetSrcAddr(external address).
func (p *Packet) SetInnerDst(ap netip.AddrPort) error { return p.setInner(16, 2, ap) }

func (p *Packet) setInner(aoff, poff int, ap netip.AddrPort) error {
	if p.flags&flagICMPError == 0 {
		return ErrNoEmbedded
	}
	a, ok := as4(ap.Addr())
	if !ok {
		return ErrNotIPv4
	}
	b := p.b
	ip := b[p.inner:p.innerL4]
	l4 := b[p.innerL4:]
	dAddr := setAddr(ip[aoff:aoff+4], a)
	outer := dAddr + setChecksum(ip[10:12], dAddr)
	switch p.innerProto {
	case tuple.TCP:
		dPort := set16(l4[poff:], ap.Port())
		d := dAddr + dPort
		outer += dPort
		if len(l4) >= 18 {
			outer += setChecksum(l4[16:18], d)
		}
	case tuple.UDP:
		dPort := set16(l4[poff:], ap.Port())
		d := dAddr + dPort
		outer += dPort
		if binary.BigEndian.Uint16(l4[6:]) != 0 {
			old := binary.BigEndian.Uint16(l4[6:])
			applyAtUDP(l4[6:8], d)
			outer += uint32(^old) + uint32(binary.BigEndian.Uint16(l4[6:]))
		}
	case tuple.ICMP:
		d := set16(l4[4:], ap.Port())
		outer += d + setChecksum(l4[2:4], d)
	}
	applyAt(b[p.l4+2:p.l4+4], outer)
	return nil
}

// setChecksum updates the checksum at b[0:2] by d and returns the checksum
// difference of that change itself (for an enclosing checksum).
func setChecksum(b []byte, d uint32) uint32 {
	old := binary.BigEndian.Uint16(b)
	n := apply(old, d)
	binary.BigEndian.PutUint16(b, n)
	return uint32(^old) + uint32(n)
}

// VerifyChecksums checks the IPv4 header checksum and, for an unfragmented
// packet, the transport checksum over the whole segment: TCP and UDP with the
// pseudo-header (a zero UDP checksum means none and passes, RFC 768), ICMP
// over the whole message (RFC 792; RFC 5508 §4 asks a NAT to validate ICMP
// error checksums). For fragments only the IPv4 header is checked. It
// returns [ReasonIPChecksum] or [ReasonChecksum].
func (p *Packet) VerifyChecksums() error {
	b := p.b
	if len(b) < 20 {
		return ReasonTruncated
	}
	if ipHeaderSum(b[:p.l4]) != 0xffff {
		return ReasonIPChecksum
	}
	if p.flags&(flagTransport|flagFragment) != flagTransport {
		return nil
	}
	l4 := b[p.l4:]
	var acc uint32
	switch p.proto {
	case tuple.TCP:
		acc = PseudoHeaderSum(p.Src(), p.Dst(), p.proto, len(l4))
	case tuple.UDP:
		if binary.BigEndian.Uint16(l4[6:]) == 0 {
			return nil
		}
		ul := int(binary.BigEndian.Uint16(l4[4:]))
		l4 = l4[:ul]
		acc = PseudoHeaderSum(p.Src(), p.Dst(), p.proto, ul)
	}
	if Fold(Sum(l4, acc)) != 0xffff {
		return ReasonChecksum
	}
	return nil
}
