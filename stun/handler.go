package stun

import (
	"errors"
	"fmt"
	"net/netip"
)

// Socket names one of a behaviour-discovery server's four transport
// addresses (RFC 5780 section 6): bit 1 set means the alternate address,
// bit 0 set the alternate port. A single-homed server has only
// SocketPrimary.
type Socket uint8

// The four sockets of RFC 5780 section 6, as (address, port).
const (
	SocketPrimary Socket = 0 // (primary address, primary port)
	SocketAltPort Socket = 1 // (primary address, alternate port)
	SocketAltAddr Socket = 2 // (alternate address, primary port)
	SocketAltBoth Socket = 3 // (alternate address, alternate port)
)

// Reply is a response computed by Handler.Handle: the bytes, the socket to
// send them from and the address to send them to.
type Reply struct {
	Data []byte
	Via  Socket
	To   netip.AddrPort
}

// Handler computes the response to one Binding request for a
// behaviour-discovery server (RFC 5780 section 6; RFC 3489 section 8.2 for
// requests without the magic cookie). It holds no sockets and no mutable
// state, so any number of goroutines may call Handle at once.
type Handler struct {
	addrs    [4]netip.AddrPort
	dual     bool
	software string
}

// ErrBadConfig is wrapped by NewHandler, Listen and Serve for options that
// cannot work.
var ErrBadConfig = errors.New("stun: bad configuration")

// NewHandler returns a Handler for a server whose primary transport address
// is primary and whose alternate (other) address and port are in alternate
// (RFC 5780 section 6: the four sockets are both addresses times both
// ports). A zero alternate makes a single-homed server: no OTHER-ADDRESS,
// and CHANGE-REQUEST is answered with 420 (RFC 5780 section 6).
func NewHandler(primary, alternate netip.AddrPort, software string) (*Handler, error) {
	if !primary.IsValid() || primary.Addr().IsUnspecified() || primary.Port() == 0 {
		return nil, fmt.Errorf("%w: primary %v must be a specific address and a port", ErrBadConfig, primary)
	}
	h := &Handler{software: software}
	h.addrs[SocketPrimary] = primary
	if alternate.IsValid() {
		a, p := alternate.Addr(), alternate.Port()
		switch {
		case a.IsUnspecified() || p == 0:
			return nil, fmt.Errorf("%w: alternate %v must be a specific address and a port", ErrBadConfig, alternate)
		case a.Unmap().Is4() != primary.Addr().Unmap().Is4():
			return nil, fmt.Errorf("%w: primary %v and alternate %v are of different families", ErrBadConfig, primary, alternate)
		case a == primary.Addr():
			return nil, fmt.Errorf("%w: alternate address %v equals the primary's (RFC 5780 needs two addresses)", ErrBadConfig, a)
		case p == primary.Port():
			return nil, fmt.Errorf("%w: alternate port %d equals the primary's (RFC 5780 needs two ports)", ErrBadConfig, p)
		}
		h.dual = true
		h.addrs[SocketAltPort] = netip.AddrPortFrom(primary.Addr(), p)
		h.addrs[SocketAltAddr] = netip.AddrPortFrom(a, primary.Port())
		h.addrs[SocketAltBoth] = alternate
	}
	return h, nil
}

// Sockets returns the transport addresses the server listens on: four for
// a dual-homed server, one for a single-homed one, indexed by Socket.
func (h *Handler) Sockets() []netip.AddrPort {
	if h.dual {
		return h.addrs[:]
	}
	return h.addrs[:1]
}

// otherOf is the socket OTHER-ADDRESS (and CHANGED-ADDRESS) names for a
// request that arrived on each socket. RFC 5780 section 7.4 makes it the
// receiving socket's opposite (Ca, Cp), and so it is for three sockets; for
// (alternate address, primary port) it is (alternate address, alternate
// port), as coturn answers, because coturn's turnutils_natdiscovery sends
// mapping test III to the OTHER-ADDRESS of test II's answer (RFC 5780
// section 4.3 means the alternate address and port) and would otherwise
// test the primary address's alternate port.
var otherOf = [4]Socket{SocketAltBoth, SocketAltAddr, SocketAltBoth, SocketPrimary}

// maxUnknown bounds the UNKNOWN-ATTRIBUTES list of a 420 response.
const maxUnknown = 8

// Handle computes the response to the request req that arrived from src on
// socket at, appending it to out[:0] (RFC 5780 section 6, RFC 8489 section
// 6.3). It returns false when the message must be dropped silently: not
// STUN, malformed framing, not a request. Errors a client should hear get
// a 400 (PADDING with RESPONSE-PORT, malformed CHANGE-REQUEST or
// RESPONSE-PORT, CHANGE-REQUEST or RESPONSE-PORT over TCP, a method other
// than Binding) or a 420 listing the unknown comprehension-required
// attributes. A response is never larger than the request by more than its
// fixed attributes (PADDING is mirrored at the request's length), so the
// server is no amplifier. Handle does not allocate when out has room for
// len(req)+128 bytes.
func (h *Handler) Handle(out, req []byte, src netip.AddrPort, at Socket, tcp bool) (Reply, bool) {
	var m Message
	if err := Parse(req, &m); err != nil {
		return Reply{}, false
	}
	if m.Type.Class() != ClassRequest {
		return Reply{}, false
	}
	if int(at) >= len(h.Sockets()) {
		return Reply{}, false
	}
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	var b Builder
	if m.Type.Method() != MethodBinding {
		return h.errorReply(&b, out, &m, src, at, CodeBadRequest, "Bad Request: only Binding is served", nil), true
	}
	var unknown [maxUnknown]AttrType
	nu := 0
	for _, a := range m.Attributes() {
		if !a.Type.Required() || h.known(a.Type) {
			continue
		}
		if a.Type == AttrChangeRequest && !h.dual {
			if f, err := m.ChangeRequest(); err == nil && f == 0 {
				continue // an empty CHANGE-REQUEST asks for nothing
			}
		}
		if nu < maxUnknown && !contains(unknown[:nu], a.Type) {
			unknown[nu] = a.Type
			nu++
		}
	}
	if nu > 0 {
		return h.errorReply(&b, out, &m, src, at, CodeUnknownAttribute, "Unknown Attribute", unknown[:nu]), true
	}
	via, to := at, src
	if m.Has(AttrChangeRequest) {
		f, err := m.ChangeRequest()
		if err != nil {
			return h.errorReply(&b, out, &m, src, at, CodeBadRequest, "Bad Request: malformed CHANGE-REQUEST", nil), true
		}
		if f != 0 && tcp {
			return h.errorReply(&b, out, &m, src, at, CodeBadRequest, "Bad Request: CHANGE-REQUEST is for UDP only", nil), true
		}
		if f&ChangeIP != 0 {
			via ^= SocketAltAddr
		}
		if f&ChangePort != 0 {
			via ^= SocketAltPort
		}
	}
	padding, hasPadding := m.Get(AttrPadding)
	if m.Has(AttrResponsePort) {
		p, err := m.ResponsePort()
		switch {
		case err != nil || p == 0:
			return h.errorReply(&b, out, &m, src, at, CodeBadRequest, "Bad Request: malformed RESPONSE-PORT", nil), true
		case hasPadding:
			return h.errorReply(&b, out, &m, src, at, CodeBadRequest, "Bad Request: PADDING with RESPONSE-PORT", nil), true
		case tcp:
			return h.errorReply(&b, out, &m, src, at, CodeBadRequest, "Bad Request: RESPONSE-PORT is for UDP only", nil), true
		}
		to = netip.AddrPortFrom(src.Addr(), p)
	}
	b.Start(out, BindingSuccess, m.ID)
	origin := h.addrs[via]
	if m.Legacy() {
		// RFC 3489 section 11.1: MAPPED-ADDRESS, SOURCE-ADDRESS and
		// CHANGED-ADDRESS, and nothing a classic client would have to
		// discard as unknown.
		b.AddAddr(AttrMappedAddress, src)
		b.AddAddr(AttrSourceAddress, origin)
		if h.dual {
			b.AddAddr(AttrChangedAddress, h.addrs[otherOf[at]])
		}
	} else {
		b.AddXORAddr(AttrXORMappedAddress, src)
		b.AddAddr(AttrMappedAddress, src)
		b.AddAddr(AttrResponseOrigin, origin)
		if h.dual {
			b.AddAddr(AttrOtherAddress, h.addrs[otherOf[at]])
		}
		if h.software != "" {
			b.AddString(AttrSoftware, h.software)
		}
	}
	if hasPadding {
		b.AddZeros(AttrPadding, len(padding))
	}
	if !m.Legacy() && m.Has(AttrFingerprint) {
		b.AddFingerprint()
	}
	return Reply{Data: b.Bytes(), Via: via, To: to}, true
}

// known reports whether the server understands a comprehension-required
// attribute of a request. RESPONSE-ADDRESS (RFC 3489) is not honoured: it
// would let anyone aim responses at a third party.
func (h *Handler) known(t AttrType) bool {
	switch t {
	case AttrMappedAddress, AttrSourceAddress, AttrChangedAddress,
		AttrUsername, AttrPassword, AttrMessageIntegrity, AttrErrorCode,
		AttrUnknownAttributes, AttrRealm, AttrNonce, AttrXORMappedAddress,
		AttrPadding, AttrResponsePort:
		return true
	case AttrChangeRequest:
		return h.dual
	}
	return false
}

func (h *Handler) errorReply(b *Builder, out []byte, m *Message, src netip.AddrPort, at Socket, code int, reason string, unknown []AttrType) Reply {
	b.Start(out, BindingError, m.ID)
	b.AddErrorCode(code, reason)
	if len(unknown) > 0 {
		b.AddUnknownAttributes(unknown)
	}
	return Reply{Data: b.Bytes(), Via: at, To: src}
}

func contains(ts []AttrType, t AttrType) bool {
	for _, x := range ts {
		if x == t {
			return true
		}
	}
	return false
}
