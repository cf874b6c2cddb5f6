package packet

import (
	"encoding/binary"
	"net/netip"

	"github.com/portspace/portspace/tuple"
)

// ICMPErrorOptions describes an ICMP error message for [BuildICMPError].
// Zero values of the optional fields are the documented defaults.
type ICMPErrorOptions struct {
	// Src is the source address of the error: the NAT's own address on the
	// side the error goes to. Required, IPv4.
	Src netip.Addr
	// Type is the ICMP error type: 3 (destination unreachable), 4 (source
	// quench), 5 (redirect), 11 (time exceeded) or 12 (parameter problem).
	Type uint8
	// Code is the ICMP code, e.g. CodeHostUnreachable, CodePortUnreachable,
	// CodeAdminProhibited (RFC 5508 REQ-8 for a session that cannot
	// be created), CodeFragNeeded.
	Code uint8
	// MTU is the next-hop MTU written for type 3 code 4 (RFC 1191 §4).
	MTU uint16
	// Pointer is the octet pointer of a parameter problem (type 12, RFC 792).
	Pointer uint8
	// Gateway is the gateway address of a redirect (type 5, RFC 792).
	Gateway netip.Addr
	// ID is the IPv4 identification of the error packet (default 0; the
	// packet is sent with DF clear and is never fragmented, RFC 6864).
	ID uint16
	// TTL of the error packet; 0 means 64.
	TTL uint8
	// MaxLen caps the length of the error packet; 0 means 576, so that as
	// much of the original as fits is included (RFC 1812 §4.3.2.3). The
	// original's IPv4 header and first 8 transport bytes are always needed
	// (RFC 792).
	MaxLen int
}

// MayTriggerICMPError reports whether an ICMP error may be sent about p
// (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7): not about an ICMP error, a non-first
// fragment, a packet to a broadcast or multicast address, or a packet whose
// source is not a single unicast host (zero, loopback, broadcast, multicast,
// reserved class E).
func (p *Packet) MayTriggerICMPError() bool {
	if len(p.b) < 20 || p.flags&flagTransport == 0 || p.flags&flagICMPError != 0 {
		return false
	}
	if p.proto == tuple.ICMP && p.flags&flagICMPQuery == 0 {
		return false
	}
	s, d := p.b[12], p.b[16]
	switch {
	case s == 0, s == 127, s >= 224: // this network, loopback, multicast, class E, broadcast
		return false
	case d >= 224: // multicast, class E, limited broadcast
		return false
	}
	return true
}

// BuildICMPError writes into buf an IPv4 ICMP error about orig, addressed to
// orig's source, and returns its length. The error carries the original IPv4
// header and as much of its payload as fits in MaxLen (RFC 792, RFC 1812
// §4.3.2.3); IPv4 and ICMP checksums are computed. A NAT uses it for
// RFC 5508 REQ-8 (type 3 code 13 when a session cannot be created) and
// RFC 5382 REQ-4 (port unreachable for an unsolicited SYN). It returns
// [ErrNoICMPError] when orig must not trigger an error (see
// [Packet.MayTriggerICMPError]) or o.Type is not an error type, [ErrNotIPv4]
// for a non-IPv4 o.Src, and [ErrShortBuffer] when buf or MaxLen cannot hold
// 28 bytes plus the original header and 8 bytes. It does not allocate.
func BuildICMPError(buf []byte, orig *Packet, o ICMPErrorOptions) (int, error) {
	switch o.Type {
	case ICMPDestUnreachable, ICMPSourceQuench, ICMPRedirect, ICMPTimeExceeded, ICMPParameterProblem:
	default:
		return 0, ErrNoICMPError
	}
	if !orig.MayTriggerICMPError() {
		return 0, ErrNoICMPError
	}
	src, ok := as4(o.Src)
	if !ok {
		return 0, ErrNotIPv4
	}
	max := o.MaxLen
	if max <= 0 {
		max = 576
	}
	if max > len(buf) {
		max = len(buf)
	}
	if max > 0xffff {
		max = 0xffff
	}
	n := orig.Len()
	if n > max-28 {
		n = max - 28
	}
	if n < orig.HeaderLen()+8 {
		return 0, ErrShortBuffer
	}
	total := 28 + n
	b := buf[:total]
	ttl := o.TTL
	if ttl == 0 {
		ttl = 64
	}
	// IPv4 header (RFC 791 §3.1); precedence 6, internetwork control
	// (RFC 1812 §4.3.2.5).
	b[0], b[1] = 0x45, 0xc0
	binary.BigEndian.PutUint16(b[2:], uint16(total))
	binary.BigEndian.PutUint16(b[4:], o.ID)
	b[6], b[7], b[8], b[9] = 0, 0, ttl, byte(tuple.ICMP)
	b[10], b[11] = 0, 0
	copy(b[12:16], src[:])
	copy(b[16:20], orig.b[12:16])
	binary.BigEndian.PutUint16(b[10:], Checksum(b[:20], 0))
	// ICMP header (RFC 792).
	b[20], b[21], b[22], b[23] = o.Type, o.Code, 0, 0
	clear(b[24:28])
	switch {
	case o.Type == ICMPDestUnreachable && o.Code == CodeFragNeeded:
		binary.BigEndian.PutUint16(b[26:], o.MTU)
	case o.Type == ICMPParameterProblem:
		b[24] = o.Pointer
	case o.Type == ICMPRedirect:
		if g, ok := as4(o.Gateway); ok {
			copy(b[24:28], g[:])
		}
	}
	copy(b[28:], orig.b[:n])
	binary.BigEndian.PutUint16(b[22:], Checksum(b[20:], 0))
	return total, nil
}
