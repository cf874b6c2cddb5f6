package packet

import (
	"encoding/binary"
	"math/bits"
	"net/netip"

	"github.com/portspace/portspace/tuple"
)

// Sum adds the bytes of b, as big-endian 16-bit words (an odd last byte is
// padded with zero), to the ones-complement accumulator acc and returns the
// new accumulator (RFC 1071 §4). Feed the result to [Fold] or [Checksum].
func Sum(b []byte, acc uint32) uint32 {
	s := uint64(acc)
	var c uint64
	for len(b) >= 32 {
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b), 0)
		s += c
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b[8:]), 0)
		s += c
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b[16:]), 0)
		s += c
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b[24:]), 0)
		s += c
		b = b[32:]
	}
	for len(b) >= 8 {
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b), 0)
		s += c
		b = b[8:]
	}
	if len(b) >= 4 {
		s, c = bits.Add64(s, uint64(binary.BigEndian.Uint32(b)), 0)
		s += c
		b = b[4:]
	}
	var tail uint64
	if len(b) >= 2 {
		tail = uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		tail += uint64(b[0]) << 8
	}
	s, c = bits.Add64(s, tail, 0)
	s += c
	// Fold 64 -> 32 bits (end-around carry); congruent modulo 0xffff.
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 32) + (s & 0xffffffff)
	return uint32(s)
}

// Fold folds a ones-complement accumulator to 16 bits (end-around carry).
func Fold(acc uint32) uint16 {
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	return uint16(acc)
}

// Checksum returns the Internet checksum (RFC 1071) of b with acc added,
// e.g. acc = [PseudoHeaderSum] for TCP and UDP. A buffer that already holds a
// correct checksum field yields 0.
func Checksum(b []byte, acc uint32) uint16 { return ^Fold(Sum(b, acc)) }

// PseudoHeaderSum returns the ones-complement sum of the IPv4 pseudo-header
// of TCP (RFC 9293 §3.1) and UDP (RFC 768): source, destination, protocol and
// transport length. Addresses that are not IPv4 count as zero.
func PseudoHeaderSum(src, dst netip.Addr, proto tuple.Proto, length int) uint32 {
	var s uint32
	if src.Is4() || src.Is4In6() {
		a := src.As4()
		s += uint32(a[0])<<8 | uint32(a[1])
		s += uint32(a[2])<<8 | uint32(a[3])
	}
	if dst.Is4() || dst.Is4In6() {
		a := dst.As4()
		s += uint32(a[0])<<8 | uint32(a[1])
		s += uint32(a[2])<<8 | uint32(a[3])
	}
	return s + uint32(proto) + uint32(length&0xffff) + uint32(length>>16)
}

// Update16 returns checksum hc updated for one 16-bit word of the covered
// data changing from old to new (RFC 1624 §3, eqn. 3).
func Update16(hc, old, new uint16) uint16 {
	return apply(hc, uint32(^old)+uint32(new))
}

// Update32 returns checksum hc updated for a 32-bit field (two 16-bit words,
// e.g. an IPv4 address) changing from old to new (RFC 1624 §3, eqn. 3).
func Update32(hc uint16, old, new uint32) uint16 {
	d := uint32(^uint16(old>>16)) + uint32(^uint16(old)) + (new >> 16) + (new & 0xffff)
	return apply(hc, d)
}

// apply adds the accumulated difference d (a sum of ~m + m' terms) to the
// checksum hc: HC' = ~(~HC + d) in ones-complement arithmetic (RFC 1624 eqn 3).
func apply(hc uint16, d uint32) uint16 {
	s := uint32(^hc) + d
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	return ^uint16(s)
}

// applyAt updates the checksum stored at b[0:2] by d.
func applyAt(b []byte, d uint32) {
	binary.BigEndian.PutUint16(b, apply(binary.BigEndian.Uint16(b), d))
}

// applyAtUDP updates a UDP checksum at b[0:2] by d: a zero checksum (none
// sent, RFC 768) stays zero, and a computed zero is sent as 0xffff.
func applyAtUDP(b []byte, d uint32) {
	old := binary.BigEndian.Uint16(b)
	if old == 0 {
		return
	}
	n := apply(old, d)
	if n == 0 {
		n = 0xffff
	}
	binary.BigEndian.PutUint16(b, n)
}

// set16 writes v at b[0:2] and returns the checksum difference ~old + new.
func set16(b []byte, v uint16) uint32 {
	o := binary.BigEndian.Uint16(b)
	binary.BigEndian.PutUint16(b, v)
	return uint32(^o) + uint32(v)
}

// setAddr writes the IPv4 address a at b[0:4] and returns the checksum
// difference of its two 16-bit words.
func setAddr(b []byte, a [4]byte) uint32 {
	o := binary.BigEndian.Uint32(b)
	n := binary.BigEndian.Uint32(a[:])
	binary.BigEndian.PutUint32(b, n)
	return uint32(^uint16(o>>16)) + uint32(^uint16(o)) + n>>16 + n&0xffff
}
