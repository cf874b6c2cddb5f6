package tuple

import (
	"fmt"
	"strings"
)

// Proto is an IP protocol number (IANA "Assigned Internet Protocol Numbers").
// The zero Proto is not a valid transport protocol.
type Proto uint8

// The transport protocols portspace handles.
const (
	ICMP Proto = 1  // RFC 792
	TCP  Proto = 6  // RFC 9293
	UDP  Proto = 17 // RFC 768
)

// String returns "tcp", "udp", "icmp", or "proto(N)" for other numbers.
func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case ICMP:
		return "icmp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// IsValid reports whether p is TCP, UDP or ICMP.
func (p Proto) IsValid() bool { return p == TCP || p == UDP || p == ICMP }

// HasPorts reports whether p carries 16-bit port numbers (TCP and UDP).
func (p Proto) HasPorts() bool { return p == TCP || p == UDP }

// ParseProto parses "tcp", "udp" or "icmp" (case-insensitive).
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "icmp":
		return ICMP, nil
	}
	return 0, &ParseError{Type: "protocol", In: s, Msg: "want tcp, udp or icmp"}
}

// MarshalText implements encoding.TextMarshaler.
func (p Proto) MarshalText() ([]byte, error) {
	if !p.IsValid() {
		return nil, fmt.Errorf("tuple: cannot marshal %v", p)
	}
	return []byte(p.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Proto) UnmarshalText(b []byte) error {
	v, err := ParseProto(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// ParseError reports an input that could not be parsed. It names the kind of
// value, the input and what was wrong with it.
type ParseError struct {
	Type string // "port range", "port set", "tuple", "protocol"
	In   string // the input as given
	Msg  string // what is wrong
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("tuple: parse %s %q: %s", e.Type, e.In, e.Msg)
}

// Is makes errors.Is(err, ErrSyntax) true for every ParseError.
func (e *ParseError) Is(target error) bool { return target == ErrSyntax }

// ErrSyntax is matched (errors.Is) by every parse error of this package.
var ErrSyntax = fmt.Errorf("tuple: syntax error")
