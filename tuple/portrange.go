package tuple

import (
	"iter"
	"strconv"
	"strings"
)

// PortRange is an inclusive range of 16-bit ports, such as Linux's
// ip_local_port_range 32768-60999. It is a comparable value; the zero
// PortRange is empty and invalid.
type PortRange struct {
	lo, hi uint16
	ok     bool
}

// PortRangeFrom returns the range lo-hi inclusive. If lo > hi the result is
// the invalid zero PortRange. It does not allocate.
func PortRangeFrom(lo, hi uint16) PortRange {
	if lo > hi {
		return PortRange{}
	}
	return PortRange{lo: lo, hi: hi, ok: true}
}

// SinglePort returns the range holding only port p.
func SinglePort(p uint16) PortRange { return PortRange{lo: p, hi: p, ok: true} }

// IsValid reports whether r holds at least one port.
func (r PortRange) IsValid() bool { return r.ok }

// First returns the lowest port of r (0 for the zero PortRange).
func (r PortRange) First() uint16 { return r.lo }

// Last returns the highest port of r (0 for the zero PortRange).
func (r PortRange) Last() uint16 { return r.hi }

// Len returns the number of ports in r, from 0 to 65536.
func (r PortRange) Len() int {
	if !r.ok {
		return 0
	}
	return int(r.hi) - int(r.lo) + 1
}

// Contains reports whether port p is in r.
func (r PortRange) Contains(p uint16) bool { return r.ok && r.lo <= p && p <= r.hi }

// ContainsRange reports whether every port of o is in r.
func (r PortRange) ContainsRange(o PortRange) bool {
	return r.ok && o.ok && r.lo <= o.lo && o.hi <= r.hi
}

// Overlaps reports whether r and o share at least one port.
func (r PortRange) Overlaps(o PortRange) bool {
	return r.ok && o.ok && r.lo <= o.hi && o.lo <= r.hi
}

// Intersect returns the ports in both r and o (invalid if none).
func (r PortRange) Intersect(o PortRange) PortRange {
	if !r.Overlaps(o) {
		return PortRange{}
	}
	return PortRange{lo: max(r.lo, o.lo), hi: min(r.hi, o.hi), ok: true}
}

// Nth returns the i-th port of r, counting from 0; ok is false when i is out
// of range.
func (r PortRange) Nth(i int) (port uint16, ok bool) {
	if i < 0 || i >= r.Len() {
		return 0, false
	}
	return r.lo + uint16(i), true
}

// All iterates over the ports of r in ascending order.
func (r PortRange) All() iter.Seq[uint16] {
	return func(yield func(uint16) bool) {
		if !r.ok {
			return
		}
		for p := uint32(r.lo); p <= uint32(r.hi); p++ {
			if !yield(uint16(p)) {
				return
			}
		}
	}
}

// String returns "lo-hi", or "p" for a single port, or "" for the zero range.
func (r PortRange) String() string { return string(r.AppendTo(nil)) }

// AppendTo appends the String form of r to b.
func (r PortRange) AppendTo(b []byte) []byte {
	if !r.ok {
		return b
	}
	b = strconv.AppendUint(b, uint64(r.lo), 10)
	if r.hi != r.lo {
		b = append(b, '-')
		b = strconv.AppendUint(b, uint64(r.hi), 10)
	}
	return b
}

// MarshalText implements encoding.TextMarshaler.
func (r PortRange) MarshalText() ([]byte, error) { return r.AppendTo(nil), nil }

// UnmarshalText implements encoding.TextUnmarshaler; empty text gives the zero range.
func (r *PortRange) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*r = PortRange{}
		return nil
	}
	v, err := ParsePortRange(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// ParsePortRange parses "lo-hi" (inclusive) or a single port "p". Ports are
// decimal numbers from 0 to 65535 and lo must not exceed hi.
func ParsePortRange(s string) (PortRange, error) {
	los, his, isRange := strings.Cut(s, "-")
	lo, err := parsePort(los)
	if err != nil {
		return PortRange{}, &ParseError{Type: "port range", In: s, Msg: err.Error()}
	}
	hi := lo
	if isRange {
		hi, err = parsePort(his)
		if err != nil {
			return PortRange{}, &ParseError{Type: "port range", In: s, Msg: err.Error()}
		}
		if lo > hi {
			return PortRange{}, &ParseError{Type: "port range", In: s, Msg: "first port exceeds last port"}
		}
	}
	return PortRange{lo: lo, hi: hi, ok: true}, nil
}

// MustParsePortRange is ParsePortRange that panics on error; intended for tests.
func MustParsePortRange(s string) PortRange {
	r, err := ParsePortRange(s)
	if err != nil {
		panic(err)
	}
	return r
}

type portError string

func (e portError) Error() string { return string(e) }

func parsePort(s string) (uint16, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, portError("missing port number")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, portError("port " + strconv.Quote(s) + " is not a decimal number")
		}
	}
	if len(s) > 5 {
		return 0, portError("port " + s + " exceeds 65535")
	}
	n, _ := strconv.Atoi(s)
	if n > 65535 {
		return 0, portError("port " + s + " exceeds 65535")
	}
	return uint16(n), nil
}
