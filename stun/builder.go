package stun

import (
	"encoding/binary"
	"hash/crc32"
	"net/netip"
)

// Builder appends one STUN message to a buffer the caller owns (RFC 8489
// section 5). It allocates only when the buffer's capacity is too small.
//
//	var b stun.Builder
//	b.Start(buf[:0], stun.BindingRequest, id)
//	b.AddChangeRequest(stun.ChangePort)
//	pkt := b.Bytes()
type Builder struct {
	buf []byte
	id  TransactionID
}

// Start begins a message of type t with transaction ID id in dst (whose
// contents are replaced from len(dst) on; pass buf[:0] to reuse buf).
func (b *Builder) Start(dst []byte, t Type, id TransactionID) {
	b.id = id
	b.buf = binary.BigEndian.AppendUint16(dst[:0], uint16(t))
	b.buf = append(b.buf, 0, 0)
	b.buf = append(b.buf, id[:]...)
}

// Add appends an attribute with the given value and zero padding to a
// multiple of 4 bytes (RFC 8489 section 14).
func (b *Builder) Add(t AttrType, v []byte) {
	b.header(t, len(v))
	b.buf = append(b.buf, v...)
	b.pad(len(v))
}

// AddString is Add for a string value (SOFTWARE, a reason phrase).
func (b *Builder) AddString(t AttrType, v string) {
	b.header(t, len(v))
	b.buf = append(b.buf, v...)
	b.pad(len(v))
}

// AddZeros appends an attribute of n zero bytes, as PADDING is sent (RFC
// 5780 section 7.6).
func (b *Builder) AddZeros(t AttrType, n int) {
	b.header(t, n)
	for i := 0; i < (n+3)&^3; i++ {
		b.buf = append(b.buf, 0)
	}
}

// AddUint32 appends a 32-bit attribute such as CHANGE-REQUEST.
func (b *Builder) AddUint32(t AttrType, v uint32) {
	b.header(t, 4)
	b.buf = binary.BigEndian.AppendUint32(b.buf, v)
}

// AddChangeRequest appends CHANGE-REQUEST with the given ChangeIP and
// ChangePort flags (RFC 5780 section 7.2).
func (b *Builder) AddChangeRequest(flags uint32) { b.AddUint32(AttrChangeRequest, flags) }

// AddResponsePort appends RESPONSE-PORT (RFC 5780 section 7.5).
func (b *Builder) AddResponsePort(port uint16) {
	b.header(AttrResponsePort, 4)
	b.buf = binary.BigEndian.AppendUint16(b.buf, port)
	b.buf = append(b.buf, 0, 0)
}

// AddAddr appends a plain address attribute: MAPPED-ADDRESS,
// RESPONSE-ORIGIN, OTHER-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS (RFC 8489
// section 14.1).
func (b *Builder) AddAddr(t AttrType, ap netip.AddrPort) { b.addr(t, ap, false) }

// AddXORAddr appends an XOR-encoded address attribute, XOR-MAPPED-ADDRESS
// (RFC 8489 section 14.2).
func (b *Builder) AddXORAddr(t AttrType, ap netip.AddrPort) { b.addr(t, ap, true) }

func (b *Builder) addr(t AttrType, ap netip.AddrPort, xor bool) {
	a := ap.Addr().Unmap()
	port := ap.Port()
	if xor {
		port ^= uint16(MagicCookie >> 16)
	}
	if a.Is4() {
		b.header(t, 8)
		b.buf = append(b.buf, 0, 0x01)
		b.buf = binary.BigEndian.AppendUint16(b.buf, port)
		v := a.As4()
		if xor {
			for i := range v {
				v[i] ^= b.id[i]
			}
		}
		b.buf = append(b.buf, v[:]...)
		return
	}
	b.header(t, 20)
	b.buf = append(b.buf, 0, 0x02)
	b.buf = binary.BigEndian.AppendUint16(b.buf, port)
	v := a.As16()
	if xor {
		for i := range v {
			v[i] ^= b.id[i]
		}
	}
	b.buf = append(b.buf, v[:]...)
}

// AddErrorCode appends ERROR-CODE with code (300 to 699) and a reason
// phrase (RFC 8489 section 14.8).
func (b *Builder) AddErrorCode(code int, reason string) {
	b.header(AttrErrorCode, 4+len(reason))
	b.buf = append(b.buf, 0, 0, byte(code/100), byte(code%100))
	b.buf = append(b.buf, reason...)
	b.pad(4 + len(reason))
}

// AddUnknownAttributes appends UNKNOWN-ATTRIBUTES listing types (RFC 8489
// section 14.9).
func (b *Builder) AddUnknownAttributes(types []AttrType) {
	b.header(AttrUnknownAttributes, 2*len(types))
	for _, t := range types {
		b.buf = binary.BigEndian.AppendUint16(b.buf, uint16(t))
	}
	b.pad(2 * len(types))
}

// AddFingerprint appends FINGERPRINT, which must be the last attribute (RFC
// 8489 section 14.7).
func (b *Builder) AddFingerprint() {
	n := len(b.buf)
	b.header(AttrFingerprint, 4)
	binary.BigEndian.PutUint16(b.buf[2:4], uint16(n+8-HeaderSize))
	crc := crc32.ChecksumIEEE(b.buf[:n]) ^ fingerprintXOR
	b.buf = binary.BigEndian.AppendUint32(b.buf, crc)
}

// Len returns the length of the message built so far, header included.
func (b *Builder) Len() int { return len(b.buf) }

// Bytes sets the header's length field and returns the message.
func (b *Builder) Bytes() []byte {
	b.setLength()
	return b.buf
}

func (b *Builder) header(t AttrType, n int) {
	b.buf = binary.BigEndian.AppendUint16(b.buf, uint16(t))
	b.buf = binary.BigEndian.AppendUint16(b.buf, uint16(n))
}

func (b *Builder) pad(n int) {
	for ; n%4 != 0; n++ {
		b.buf = append(b.buf, 0)
	}
}

// setLength writes the body length (RFC 8489 section 5).
func (b *Builder) setLength() {
	binary.BigEndian.PutUint16(b.buf[2:4], uint16(len(b.buf)-HeaderSize))
}
