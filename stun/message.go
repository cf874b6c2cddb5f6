package stun

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net/netip"
)

// MagicCookie is the fixed value in bytes 4 to 7 of every RFC 8489 message
// (RFC 8489 section 5). RFC 3489 messages have random bytes there instead:
// their transaction ID is all 16 bytes.
const MagicCookie uint32 = 0x2112A442

// HeaderSize is the size of the STUN message header (RFC 8489 section 5).
const HeaderSize = 20

// MaxAttributes is the most attributes Parse accepts in one message; a
// message with more is rejected (ErrTooManyAttributes) rather than partly
// read.
const MaxAttributes = 32

// fingerprintXOR is XORed into the CRC-32 of FINGERPRINT (RFC 8489 section
// 14.7).
const fingerprintXOR uint32 = 0x5354554e

// Sentinel errors of the codec; every error Parse and the accessors return
// wraps one of them (test with errors.Is).
var (
	// ErrNotSTUN: the bytes are not a STUN message (short header, the
	// two top bits set, or a length that is not a multiple of 4).
	ErrNotSTUN = errors.New("stun: not a STUN message")
	// ErrTruncated: the header's length disagrees with the bytes given,
	// or an attribute runs past the end.
	ErrTruncated = errors.New("stun: truncated message")
	// ErrTooManyAttributes: more than MaxAttributes attributes.
	ErrTooManyAttributes = errors.New("stun: too many attributes")
	// ErrBadFingerprint: FINGERPRINT is not last or does not match.
	ErrBadFingerprint = errors.New("stun: bad FINGERPRINT")
	// ErrNoAttribute: the message lacks the attribute asked for.
	ErrNoAttribute = errors.New("stun: attribute not present")
	// ErrBadAttribute: an attribute's value has the wrong size or an
	// unknown address family.
	ErrBadAttribute = errors.New("stun: malformed attribute")
)

// TransactionID is the 16 bytes after the type and length: for RFC 8489
// messages the magic cookie and the 96-bit transaction ID, for RFC 3489
// messages the whole 128-bit transaction ID (RFC 8489 section 5, RFC 3489
// section 11.1). Keeping all 16 bytes lets one type serve both.
type TransactionID [16]byte

// Legacy reports whether id belongs to an RFC 3489 message: its first four
// bytes are not the magic cookie (RFC 8489 section 5).
func (id TransactionID) Legacy() bool {
	return binary.BigEndian.Uint32(id[:4]) != MagicCookie
}

// Attribute is one attribute of a parsed message; Value is a view into the
// parsed bytes without the padding (RFC 8489 section 14).
type Attribute struct {
	Type  AttrType
	Value []byte
}

// Message is a parsed STUN message (RFC 8489 section 5). Its attributes are
// views into the bytes given to Parse; a Message may be reused for the next
// Parse, which allocates nothing.
type Message struct {
	Type  Type
	ID    TransactionID
	Raw   []byte
	attrs [MaxAttributes]Attribute
	n     int
}

// Legacy reports whether the message is an RFC 3489 message (no magic
// cookie).
func (m *Message) Legacy() bool { return m.ID.Legacy() }

// Attributes returns the message's attributes in order.
func (m *Message) Attributes() []Attribute { return m.attrs[:m.n] }

// Get returns the value of the first attribute of type t (RFC 8489 section
// 14: only the first of repeated attributes counts).
func (m *Message) Get(t AttrType) ([]byte, bool) {
	for i := 0; i < m.n; i++ {
		if m.attrs[i].Type == t {
			return m.attrs[i].Value, true
		}
	}
	return nil, false
}

// Has reports whether the message has an attribute of type t.
func (m *Message) Has(t AttrType) bool {
	_, ok := m.Get(t)
	return ok
}

// MessageLength returns the total length (header plus body) of the STUN
// message that starts b, for framing over a stream (RFC 8489 section 6.2.2),
// or ErrNotSTUN when the header is not a STUN header. b must hold at least
// HeaderSize bytes.
func MessageLength(b []byte) (int, error) {
	if len(b) < HeaderSize || b[0]&0xc0 != 0 {
		return 0, ErrNotSTUN
	}
	l := int(binary.BigEndian.Uint16(b[2:4]))
	if l%4 != 0 {
		return 0, ErrNotSTUN
	}
	return HeaderSize + l, nil
}

// Parse parses the STUN message in b into m (RFC 8489 sections 5 and 14).
// b must hold exactly one message. When FINGERPRINT is present it must be
// the last attribute and match (RFC 8489 section 14.7). Parse does not
// allocate; m's attributes point into b.
func Parse(b []byte, m *Message) error {
	m.n = 0
	m.Raw = nil
	l, err := MessageLength(b)
	if err != nil {
		return err
	}
	if l != len(b) {
		return ErrTruncated
	}
	m.Type = Type(binary.BigEndian.Uint16(b[0:2]))
	copy(m.ID[:], b[4:20])
	for off := HeaderSize; off < len(b); {
		if len(b)-off < 4 {
			return ErrTruncated
		}
		t := AttrType(binary.BigEndian.Uint16(b[off:]))
		vl := int(binary.BigEndian.Uint16(b[off+2:]))
		start := off + 4
		if vl > len(b)-start {
			return ErrTruncated
		}
		if m.n == MaxAttributes {
			return ErrTooManyAttributes
		}
		m.attrs[m.n] = Attribute{Type: t, Value: b[start : start+vl : start+vl]}
		m.n++
		padded := (vl + 3) &^ 3
		if padded > len(b)-start {
			return ErrTruncated
		}
		if t == AttrFingerprint {
			if vl != 4 || start+padded != len(b) {
				return ErrBadFingerprint
			}
			want := crc32.ChecksumIEEE(b[:off]) ^ fingerprintXOR
			if binary.BigEndian.Uint32(b[start:]) != want {
				return ErrBadFingerprint
			}
		}
		off = start + padded
	}
	m.Raw = b
	return nil
}

// Addr decodes the address attribute of type t (RFC 8489 sections 14.1 and
// 14.2). XOR-MAPPED-ADDRESS (and its pre-standard twin 0x8020) are XORed
// with the magic cookie and transaction ID; MAPPED-ADDRESS, RESPONSE-ORIGIN,
// OTHER-ADDRESS and the RFC 3489 address attributes are plain.
func (m *Message) Addr(t AttrType) (netip.AddrPort, error) {
	v, ok := m.Get(t)
	if !ok {
		return netip.AddrPort{}, ErrNoAttribute
	}
	xor := t == AttrXORMappedAddress || t == AttrXORMappedAddrOld
	return decodeAddr(v, xor, &m.ID)
}

func decodeAddr(v []byte, xor bool, id *TransactionID) (netip.AddrPort, error) {
	if len(v) < 4 {
		return netip.AddrPort{}, ErrBadAttribute
	}
	port := binary.BigEndian.Uint16(v[2:4])
	if xor {
		port ^= uint16(MagicCookie >> 16)
	}
	switch v[1] {
	case 0x01:
		if len(v) != 8 {
			return netip.AddrPort{}, ErrBadAttribute
		}
		var a [4]byte
		copy(a[:], v[4:8])
		if xor {
			for i := range a {
				a[i] ^= id[i]
			}
		}
		return netip.AddrPortFrom(netip.AddrFrom4(a), port), nil
	case 0x02:
		if len(v) != 20 {
			return netip.AddrPort{}, ErrBadAttribute
		}
		var a [16]byte
		copy(a[:], v[4:20])
		if xor {
			for i := range a {
				a[i] ^= id[i]
			}
		}
		return netip.AddrPortFrom(netip.AddrFrom16(a), port), nil
	}
	return netip.AddrPort{}, ErrBadAttribute
}

// ChangeRequest returns the flags of CHANGE-REQUEST (RFC 5780 section 7.2):
// ChangeIP and ChangePort bits; other bits are ignored.
func (m *Message) ChangeRequest() (flags uint32, err error) {
	v, ok := m.Get(AttrChangeRequest)
	if !ok {
		return 0, ErrNoAttribute
	}
	if len(v) != 4 {
		return 0, ErrBadAttribute
	}
	return binary.BigEndian.Uint32(v) & (ChangeIP | ChangePort), nil
}

// ResponsePort returns the port of RESPONSE-PORT (RFC 5780 section 7.5).
func (m *Message) ResponsePort() (uint16, error) {
	v, ok := m.Get(AttrResponsePort)
	if !ok {
		return 0, ErrNoAttribute
	}
	if len(v) != 4 {
		return 0, ErrBadAttribute
	}
	return binary.BigEndian.Uint16(v), nil
}

// ErrorCode returns the code (class*100+number) and reason phrase of
// ERROR-CODE (RFC 8489 section 14.8).
func (m *Message) ErrorCode() (code int, reason []byte, err error) {
	v, ok := m.Get(AttrErrorCode)
	if !ok {
		return 0, nil, ErrNoAttribute
	}
	if len(v) < 4 {
		return 0, nil, ErrBadAttribute
	}
	class, num := int(v[2]&0x7), int(v[3])
	if class < 3 || class > 6 || num > 99 {
		return 0, nil, ErrBadAttribute
	}
	return class*100 + num, v[4:], nil
}

// UnknownAttributes returns the types listed in UNKNOWN-ATTRIBUTES (RFC 8489
// section 14.9), appended to dst.
func (m *Message) UnknownAttributes(dst []AttrType) ([]AttrType, error) {
	v, ok := m.Get(AttrUnknownAttributes)
	if !ok {
		return dst, ErrNoAttribute
	}
	if len(v)%2 != 0 {
		return dst, ErrBadAttribute
	}
	for i := 0; i+1 < len(v); i += 2 {
		dst = append(dst, AttrType(binary.BigEndian.Uint16(v[i:])))
	}
	return dst, nil
}
