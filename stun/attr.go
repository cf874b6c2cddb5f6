package stun

// Type is a STUN message type: a method and a class interleaved in 14 bits
// (RFC 8489 section 5, figure 3).
type Type uint16

// Message types used by the Binding method (RFC 8489 section 18.2).
const (
	BindingRequest    Type = 0x0001
	BindingIndication Type = 0x0011
	BindingSuccess    Type = 0x0101
	BindingError      Type = 0x0111
)

// Class is the class of a STUN message (RFC 8489 section 5).
type Class uint8

// The four classes (RFC 8489 section 5).
const (
	ClassRequest    Class = 0
	ClassIndication Class = 1
	ClassSuccess    Class = 2
	ClassError      Class = 3
)

// MethodBinding is the Binding method (RFC 8489 section 18.2).
const MethodBinding uint16 = 0x001

// Class returns the class bits of t (RFC 8489 section 5).
func (t Type) Class() Class { return Class((t>>4)&1 | (t>>7)&2) }

// Method returns the 12-bit method of t (RFC 8489 section 5).
func (t Type) Method() uint16 {
	return uint16(t&0xf | (t>>1)&0x70 | (t>>2)&0xf80)
}

// NewType combines a method and a class into a message type (RFC 8489
// section 5).
func NewType(method uint16, c Class) Type {
	m := Type(method)
	return m&0xf | (m&0x70)<<1 | (m&0xf80)<<2 | Type(c&1)<<4 | Type(c&2)<<7
}

// AttrType is a STUN attribute type (RFC 8489 section 14). Types below
// 0x8000 are comprehension-required.
type AttrType uint16

// Attribute types of RFC 8489 section 18.3, RFC 5780 section 7 and RFC 3489
// section 11.2.
const (
	AttrMappedAddress     AttrType = 0x0001 // RFC 8489 14.1
	AttrResponseAddress   AttrType = 0x0002 // RFC 3489 11.2.2 (not honoured: a reflection vector)
	AttrChangeRequest     AttrType = 0x0003 // RFC 5780 7.2, RFC 3489 11.2.4
	AttrSourceAddress     AttrType = 0x0004 // RFC 3489 11.2.5
	AttrChangedAddress    AttrType = 0x0005 // RFC 3489 11.2.3
	AttrUsername          AttrType = 0x0006 // RFC 8489 14.3
	AttrPassword          AttrType = 0x0007 // RFC 3489 11.2.7
	AttrMessageIntegrity  AttrType = 0x0008 // RFC 8489 14.5
	AttrErrorCode         AttrType = 0x0009 // RFC 8489 14.8
	AttrUnknownAttributes AttrType = 0x000A // RFC 8489 14.9
	AttrReflectedFrom     AttrType = 0x000B // RFC 3489 11.2.11
	AttrRealm             AttrType = 0x0014 // RFC 8489 14.9
	AttrNonce             AttrType = 0x0015 // RFC 8489 14.10
	AttrXORMappedAddress  AttrType = 0x0020 // RFC 8489 14.2
	AttrPadding           AttrType = 0x0026 // RFC 5780 7.6
	AttrResponsePort      AttrType = 0x0027 // RFC 5780 7.5
	AttrXORMappedAddrOld  AttrType = 0x8020 // pre-RFC 5389 drafts; some RFC 3489 servers send it
	AttrSoftware          AttrType = 0x8022 // RFC 8489 14.14
	AttrAlternateServer   AttrType = 0x8023 // RFC 8489 14.15
	AttrCacheTimeout      AttrType = 0x8027 // RFC 5780 7.7
	AttrFingerprint       AttrType = 0x8028 // RFC 8489 14.7
	AttrResponseOrigin    AttrType = 0x802B // RFC 5780 7.3
	AttrOtherAddress      AttrType = 0x802C // RFC 5780 7.4
)

// Required reports whether the attribute type is comprehension-required
// (RFC 8489 section 14: 0x0000 to 0x7FFF).
func (a AttrType) Required() bool { return a < 0x8000 }

// CHANGE-REQUEST flags (RFC 5780 section 7.2).
const (
	ChangeIP   uint32 = 0x04
	ChangePort uint32 = 0x02
)

// Error codes used by the server (RFC 8489 section 14.8).
const (
	CodeTryAlternate     = 300
	CodeBadRequest       = 400
	CodeUnauthorized     = 401
	CodeUnknownAttribute = 420
	CodeServerError      = 500
)
