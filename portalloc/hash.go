package portalloc

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/bits"
	"net/netip"
)

// Secret is the 128-bit key of the keyed hash functions of RFC 6056 §3.3.3
// and §3.3.4 ("secret_key"). Keep it secret: whoever knows it can predict
// the ports chosen (RFC 6056 §3.3.3, RFC 6888 REQ-13/15).
type Secret [16]byte

// NewSecret returns a Secret read from crypto/rand.
func NewSecret() Secret {
	var s Secret
	_, _ = rand.Read(s[:]) // crypto/rand.Read never fails (Go 1.24+)
	return s
}

// MarshalText implements encoding.TextMarshaler: 32 lower-case hex digits.
// The RFC 6056 §3.3.3 secret_key must stay secret: marshal it only into
// files that are as protected as the key itself.
func (s Secret) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(s[:])), nil }

// UnmarshalText implements encoding.TextUnmarshaler: exactly 32 hex digits
// (the 128-bit RFC 6056 §3.3.3 secret_key).
func (s *Secret) UnmarshalText(b []byte) error {
	var v Secret
	if len(b) != 2*len(v) {
		return fmt.Errorf("portalloc: secret: %d characters, want %d hex digits", len(b), 2*len(v))
	}
	if _, err := hex.Decode(v[:], b); err != nil {
		return fmt.Errorf("portalloc: secret: %w", err)
	}
	*s = v
	return nil
}

// IsZero reports whether s is all zeros (an unset Secret).
func (s Secret) IsZero() bool { return s == Secret{} }

// Sum64 returns SipHash-2-4 of b under the key s. It does not allocate.
func (s Secret) Sum64(b []byte) uint64 {
	k0 := binary.LittleEndian.Uint64(s[0:8])
	k1 := binary.LittleEndian.Uint64(s[8:16])
	v0 := k0 ^ 0x736f6d6570736575
	v1 := k1 ^ 0x646f72616e646f6d
	v2 := k0 ^ 0x6c7967656e657261
	v3 := k1 ^ 0x7465646279746573
	n := len(b)
	round := func() {
		v0 += v1
		v1 = bits.RotateLeft64(v1, 13)
		v1 ^= v0
		v0 = bits.RotateLeft64(v0, 32)
		v2 += v3
		v3 = bits.RotateLeft64(v3, 16)
		v3 ^= v2
		v0 += v3
		v3 = bits.RotateLeft64(v3, 21)
		v3 ^= v0
		v2 += v1
		v1 = bits.RotateLeft64(v1, 17)
		v1 ^= v2
		v2 = bits.RotateLeft64(v2, 32)
	}
	for len(b) >= 8 {
		m := binary.LittleEndian.Uint64(b)
		v3 ^= m
		round()
		round()
		v0 ^= m
		b = b[8:]
	}
	var last [8]byte
	copy(last[:], b)
	last[7] = byte(n)
	m := binary.LittleEndian.Uint64(last[:])
	v3 ^= m
	round()
	round()
	v0 ^= m
	v2 ^= 0xff
	round()
	round()
	round()
	round()
	return v0 ^ v1 ^ v2 ^ v3
}

// Offset is the function F(local_IP, remote_IP, remote_port, secret_key) of
// RFC 6056 §3.3.3 (Algorithm 3): a keyed hash that gives each
// (local address, remote endpoint) pair its own, unpredictable starting
// point in the port range, so that ports look random to an outsider while
// successive connections to one destination use successive ports.
//
// A NAT passes the subscriber (internal) address as local; a dialer passes
// its source address. local and remote may be IPv4 or IPv6. It does not
// allocate.
func Offset(s Secret, local netip.Addr, remote netip.AddrPort) uint32 {
	return pairHash(s, local, remote, 3)
}

// tableIndex is G(local_IP, remote_IP, remote_port, secret_key2) of RFC 6056
// §3.3.4 (Algorithm 4), derived from the same secret with another domain
// byte.
func tableIndex(s Secret, local netip.Addr, remote netip.AddrPort) uint32 {
	return pairHash(s, local, remote, 4)
}

// pairHash is the keyed hash of (local, remote address, remote port) under
// s, folded to 32 bits; domain separates the uses of one secret (3 for
// Offset, 4 for tableIndex).
func pairHash(s Secret, local netip.Addr, remote netip.AddrPort, domain byte) uint32 {
	var b [16 + 16 + 2 + 1]byte
	l := local.As16()
	r := remote.Addr().As16()
	copy(b[0:16], l[:])
	copy(b[16:32], r[:])
	binary.BigEndian.PutUint16(b[32:34], remote.Port())
	b[34] = domain
	h := s.Sum64(b[:])
	return uint32(h ^ h>>32)
}

// addrHash picks the paired external address of a subscriber (the first of
// the two hashes of Jool's RFC 6056 variant).
func addrHash(s Secret, sub netip.Addr) uint32 {
	var b [17]byte
	a := sub.As16()
	copy(b[:16], a[:])
	b[16] = 1
	h := s.Sum64(b[:])
	return uint32(h ^ h>>32)
}
