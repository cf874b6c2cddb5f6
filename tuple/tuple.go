package tuple

import (
	"net/netip"
	"strings"
)

// Tuple is a transport connection's identity: protocol, local endpoint and
// remote endpoint (the "4-tuple" of RFC 9293 §3.1, with the protocol it is a
// 5-tuple). It is a comparable value of 72 bytes on 64-bit platforms (a
// one-byte Proto padded to 8, and two 32-byte netip.AddrPorts); the zero
// Tuple is invalid.
type Tuple struct {
	Proto  Proto
	Local  netip.AddrPort
	Remote netip.AddrPort
}

// From returns the tuple of proto from local to remote. It does not allocate.
func From(proto Proto, local, remote netip.AddrPort) Tuple {
	return Tuple{Proto: proto, Local: local, Remote: remote}
}

// IsValid reports whether t has a valid protocol and two valid endpoints of
// the same address family.
func (t Tuple) IsValid() bool {
	return t.Proto.IsValid() && t.Local.IsValid() && t.Remote.IsValid() &&
		t.Local.Addr().Is4() == t.Remote.Addr().Is4()
}

// Reverse returns the tuple seen from the other end (local and remote swapped).
func (t Tuple) Reverse() Tuple {
	return Tuple{Proto: t.Proto, Local: t.Remote, Remote: t.Local}
}

// String returns the form "tcp 192.0.2.1:40000->198.51.100.7:443".
func (t Tuple) String() string {
	return string(t.AppendTo(make([]byte, 0, 64)))
}

// AppendTo appends the String form of t to b.
func (t Tuple) AppendTo(b []byte) []byte {
	b = append(b, t.Proto.String()...)
	b = append(b, ' ')
	b = t.Local.AppendTo(b)
	b = append(b, "->"...)
	return t.Remote.AppendTo(b)
}

// MarshalText implements encoding.TextMarshaler.
func (t Tuple) MarshalText() ([]byte, error) { return t.AppendTo(nil), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *Tuple) UnmarshalText(b []byte) error {
	v, err := ParseTuple(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// ParseTuple parses the String form, "PROTO LOCAL->REMOTE", where both
// endpoints are in the form netip.ParseAddrPort accepts.
func ParseTuple(s string) (Tuple, error) {
	proto, rest, ok := strings.Cut(s, " ")
	if !ok {
		return Tuple{}, &ParseError{Type: "tuple", In: s, Msg: `want "PROTO LOCAL->REMOTE"`}
	}
	p, err := ParseProto(proto)
	if err != nil {
		return Tuple{}, &ParseError{Type: "tuple", In: s, Msg: "unknown protocol " + quote(proto)}
	}
	l, r, ok := strings.Cut(rest, "->")
	if !ok {
		return Tuple{}, &ParseError{Type: "tuple", In: s, Msg: `missing "->"`}
	}
	local, err := netip.ParseAddrPort(l)
	if err != nil {
		return Tuple{}, &ParseError{Type: "tuple", In: s, Msg: "local endpoint: " + err.Error()}
	}
	remote, err := netip.ParseAddrPort(r)
	if err != nil {
		return Tuple{}, &ParseError{Type: "tuple", In: s, Msg: "remote endpoint: " + err.Error()}
	}
	t := Tuple{Proto: p, Local: local, Remote: remote}
	if local.Addr().Is4() != remote.Addr().Is4() {
		return Tuple{}, &ParseError{Type: "tuple", In: s, Msg: "endpoints of different address families"}
	}
	return t, nil
}

// MustParseTuple is ParseTuple that panics on error; intended for tests.
func MustParseTuple(s string) Tuple {
	t, err := ParseTuple(s)
	if err != nil {
		panic(err)
	}
	return t
}

func quote(s string) string { return `"` + s + `"` }
