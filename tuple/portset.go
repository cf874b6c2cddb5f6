package tuple

import (
	"fmt"
	"iter"
	"slices"
	"strconv"
	"strings"
)

// PortSet is a set of 16-bit ports: a union of inclusive ranges, or the
// RFC 7597 §5.1 port set of one PSID (offset bits a, PSID length k).
//
// A PortSet is an immutable, comparable value. Its ranges are kept sorted and
// merged (overlapping and adjacent ranges become one), so two sets built from
// ranges hold the same ports exactly when they are ==. A set built from a PSID
// also remembers that form for String; use Equal to compare ports alone.
// The zero PortSet is empty.
//
// Contains, Len, Nth and Index do not allocate; Contains, Nth and Index take
// O(log r) time for r ranges.
type PortSet struct {
	// recs holds one 8-byte record per range: first, last (uint16) and the
	// number of ports in earlier ranges (uint32), all big-endian. A string
	// keeps the type comparable and immutable.
	recs  string
	total uint32
	psid  psidForm
}

type psidForm struct {
	ok   bool
	a, k uint8
	id   uint16
}

const recLen = 8

func (s PortSet) rec(i int) (lo, hi uint16, before uint32) {
	r := s.recs[i*recLen : i*recLen+recLen]
	lo = uint16(r[0])<<8 | uint16(r[1])
	hi = uint16(r[2])<<8 | uint16(r[3])
	before = uint32(r[4])<<24 | uint32(r[5])<<16 | uint32(r[6])<<8 | uint32(r[7])
	return
}

// PortSetOf returns the union of the given ranges. Invalid ranges are ignored.
func PortSetOf(ranges ...PortRange) PortSet {
	rs := make([]PortRange, 0, len(ranges))
	for _, r := range ranges {
		if r.ok {
			rs = append(rs, r)
		}
	}
	return buildSet(rs)
}

// buildSet sorts and merges rs (it may reorder rs) and encodes the result.
func buildSet(rs []PortRange) PortSet {
	if len(rs) == 0 {
		return PortSet{}
	}
	slices.SortFunc(rs, func(a, b PortRange) int { return int(a.lo) - int(b.lo) })
	merged := rs[:1]
	for _, r := range rs[1:] {
		last := &merged[len(merged)-1]
		if uint32(r.lo) <= uint32(last.hi)+1 {
			if r.hi > last.hi {
				last.hi = r.hi
			}
			continue
		}
		merged = append(merged, r)
	}
	b := make([]byte, 0, len(merged)*recLen)
	var total uint32
	for _, r := range merged {
		b = append(b, byte(r.lo>>8), byte(r.lo), byte(r.hi>>8), byte(r.hi),
			byte(total>>24), byte(total>>16), byte(total>>8), byte(total))
		total += uint32(r.Len())
	}
	return PortSet{recs: string(b), total: total}
}

// PSIDPortSet returns the ports of PSID psid in the RFC 7597 §5.1 scheme:
// each port is A (a bits) | PSID (k bits) | j (m = 16-a-k bits). When a > 0,
// A = 0 is excluded so that the set holds no system ports (0-1023 when a = 6);
// when a = 0 the set is one contiguous block. a+k must not exceed 16 and psid
// must fit in k bits.
func PSIDPortSet(a, k uint8, psid uint16) (PortSet, error) {
	if int(a)+int(k) > 16 {
		return PortSet{}, fmt.Errorf("tuple: psid port set: a (%d) + k (%d) exceeds 16 bits", a, k)
	}
	if k < 16 && uint32(psid) >= 1<<k {
		return PortSet{}, fmt.Errorf("tuple: psid port set: psid %d does not fit in k=%d bits", psid, k)
	}
	m := 16 - a - k
	block := uint32(1) << m
	var rs []PortRange
	if a == 0 {
		lo := uint32(psid) << m
		rs = append(rs, PortRange{lo: uint16(lo), hi: uint16(lo + block - 1), ok: true})
	}
	for A := uint32(1); a > 0 && A < 1<<a; A++ {
		lo := A<<(16-a) | uint32(psid)<<m
		rs = append(rs, PortRange{lo: uint16(lo), hi: uint16(lo + block - 1), ok: true})
	}
	s := buildSet(rs)
	s.psid = psidForm{ok: true, a: a, k: k, id: psid}
	return s, nil
}

// PSID returns the RFC 7597 parameters s was built from, if it was built by
// PSIDPortSet or parsed from the PSID form.
func (s PortSet) PSID() (a, k uint8, psid uint16, ok bool) {
	return s.psid.a, s.psid.k, s.psid.id, s.psid.ok
}

// IsValid reports whether s holds at least one port.
func (s PortSet) IsValid() bool { return s.total > 0 }

// Len returns the number of ports in s.
func (s PortSet) Len() int { return int(s.total) }

// NumRanges returns the number of maximal ranges in s.
func (s PortSet) NumRanges() int { return len(s.recs) / recLen }

// Range returns the i-th maximal range of s in ascending order.
func (s PortSet) Range(i int) PortRange {
	lo, hi, _ := s.rec(i)
	return PortRange{lo: lo, hi: hi, ok: true}
}

// Bounds returns the smallest range that holds all of s.
func (s PortSet) Bounds() PortRange {
	if s.total == 0 {
		return PortRange{}
	}
	lo, _, _ := s.rec(0)
	_, hi, _ := s.rec(s.NumRanges() - 1)
	return PortRange{lo: lo, hi: hi, ok: true}
}

// find returns the index of the range holding p, or -1.
func (s PortSet) find(p uint16) int {
	i, j := 0, s.NumRanges()
	for i < j {
		h := int(uint(i+j) >> 1)
		lo, hi, _ := s.rec(h)
		switch {
		case p < lo:
			j = h
		case p > hi:
			i = h + 1
		default:
			return h
		}
	}
	return -1
}

// Contains reports whether port p is in s.
func (s PortSet) Contains(p uint16) bool { return s.find(p) >= 0 }

// Index returns the position of p among the ports of s in ascending order, or
// -1 if p is not in s. It is the inverse of Nth.
func (s PortSet) Index(p uint16) int {
	i := s.find(p)
	if i < 0 {
		return -1
	}
	lo, _, before := s.rec(i)
	return int(before) + int(p-lo)
}

// Nth returns the i-th port of s in ascending order, counting from 0; ok is
// false when i is out of range. Together with Len it lets callers map a hash
// onto the set uniformly (RFC 6056 §3.3).
func (s PortSet) Nth(i int) (port uint16, ok bool) {
	if i < 0 || i >= int(s.total) {
		return 0, false
	}
	lo, hi := 0, s.NumRanges()
	for hi-lo > 1 {
		h := int(uint(lo+hi) >> 1)
		_, _, before := s.rec(h)
		if int(before) <= i {
			lo = h
		} else {
			hi = h
		}
	}
	first, _, before := s.rec(lo)
	return first + uint16(i-int(before)), true
}

// Ranges iterates over the maximal ranges of s in ascending order.
func (s PortSet) Ranges() iter.Seq[PortRange] {
	return func(yield func(PortRange) bool) {
		for i := range s.NumRanges() {
			if !yield(s.Range(i)) {
				return
			}
		}
	}
}

// All iterates over the ports of s in ascending order.
func (s PortSet) All() iter.Seq[uint16] {
	return func(yield func(uint16) bool) {
		for r := range s.Ranges() {
			for p := range r.All() {
				if !yield(p) {
					return
				}
			}
		}
	}
}

// Equal reports whether s and o hold the same ports, whatever their form.
func (s PortSet) Equal(o PortSet) bool { return s.recs == o.recs }

// Union returns the ports in s or o.
func (s PortSet) Union(o PortSet) PortSet {
	rs := slices.Collect(s.Ranges())
	rs = slices.AppendSeq(rs, o.Ranges())
	return buildSet(rs)
}

// Intersect returns the ports in both s and o.
func (s PortSet) Intersect(o PortSet) PortSet {
	var rs []PortRange
	i, j := 0, 0
	for i < s.NumRanges() && j < o.NumRanges() {
		a, b := s.Range(i), o.Range(j)
		if x := a.Intersect(b); x.ok {
			rs = append(rs, x)
		}
		if a.hi < b.hi {
			i++
		} else {
			j++
		}
	}
	return buildSet(rs)
}

// Subtract returns the ports in s that are not in o.
func (s PortSet) Subtract(o PortSet) PortSet {
	var rs []PortRange
	for a := range s.Ranges() {
		lo := uint32(a.lo)
		for b := range o.Ranges() {
			if uint32(b.hi) < lo || b.lo > a.hi {
				continue
			}
			if uint32(b.lo) > lo {
				rs = append(rs, PortRange{lo: uint16(lo), hi: b.lo - 1, ok: true})
			}
			lo = uint32(b.hi) + 1
		}
		if lo <= uint32(a.hi) {
			rs = append(rs, PortRange{lo: uint16(lo), hi: a.hi, ok: true})
		}
	}
	return buildSet(rs)
}

// ContainsSet reports whether every port of o is in s.
func (s PortSet) ContainsSet(o PortSet) bool { return o.Subtract(s).total == 0 }

// String returns the set as comma-separated ranges ("1024-2047,4000-4095"),
// or in the PSID form ("a=6,k=8,psid=18") when it was built from one. The
// zero set gives "".
func (s PortSet) String() string { return string(s.AppendTo(nil)) }

// AppendTo appends the String form of s to b.
func (s PortSet) AppendTo(b []byte) []byte {
	if s.psid.ok {
		b = append(b, "a="...)
		b = strconv.AppendUint(b, uint64(s.psid.a), 10)
		b = append(b, ",k="...)
		b = strconv.AppendUint(b, uint64(s.psid.k), 10)
		b = append(b, ",psid="...)
		return strconv.AppendUint(b, uint64(s.psid.id), 10)
	}
	for i := range s.NumRanges() {
		if i > 0 {
			b = append(b, ',')
		}
		b = s.Range(i).AppendTo(b)
	}
	return b
}

// MarshalText implements encoding.TextMarshaler.
func (s PortSet) MarshalText() ([]byte, error) { return s.AppendTo(nil), nil }

// UnmarshalText implements encoding.TextUnmarshaler; empty text gives the empty set.
func (s *PortSet) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*s = PortSet{}
		return nil
	}
	v, err := ParsePortSet(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// ParsePortSet parses a comma-separated list of ports and inclusive ranges,
// "1024-2047,4000-4095,8080", or the RFC 7597 form "a=6,k=8,psid=18"
// (keys in any order; a defaults to 6, the RFC's default, when omitted).
// Spaces around items are ignored. The empty string is an error.
func ParsePortSet(in string) (PortSet, error) {
	if strings.TrimSpace(in) == "" {
		return PortSet{}, &ParseError{Type: "port set", In: in, Msg: "empty"}
	}
	if strings.Contains(in, "=") {
		return parsePSID(in)
	}
	var rs []PortRange
	for item := range strings.SplitSeq(in, ",") {
		r, err := ParsePortRange(strings.TrimSpace(item))
		if err != nil {
			msg := err.(*ParseError).Msg
			return PortSet{}, &ParseError{Type: "port set", In: in, Msg: "item " + strconv.Quote(strings.TrimSpace(item)) + ": " + msg}
		}
		rs = append(rs, r)
	}
	return buildSet(rs), nil
}

func parsePSID(in string) (PortSet, error) {
	vals := map[string]int{"a": 6}
	seen := map[string]bool{}
	for item := range strings.SplitSeq(in, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(item), "=")
		k = strings.TrimSpace(k)
		if !ok || (k != "a" && k != "k" && k != "psid") {
			return PortSet{}, &ParseError{Type: "port set", In: in, Msg: "item " + strconv.Quote(item) + ": want a=N, k=N or psid=N"}
		}
		if seen[k] {
			return PortSet{}, &ParseError{Type: "port set", In: in, Msg: "key " + k + " given twice"}
		}
		seen[k] = true
		n, err := strconv.ParseUint(strings.TrimSpace(v), 0, 16)
		if err != nil {
			return PortSet{}, &ParseError{Type: "port set", In: in, Msg: k + ": " + strconv.Quote(v) + " is not a number from 0 to 65535"}
		}
		vals[k] = int(n)
	}
	if !seen["k"] || !seen["psid"] {
		return PortSet{}, &ParseError{Type: "port set", In: in, Msg: "the PSID form needs k= and psid="}
	}
	if vals["a"] > 16 || vals["k"] > 16 {
		return PortSet{}, &ParseError{Type: "port set", In: in, Msg: "a and k are bit counts from 0 to 16"}
	}
	s, err := PSIDPortSet(uint8(vals["a"]), uint8(vals["k"]), uint16(vals["psid"]))
	if err != nil {
		return PortSet{}, &ParseError{Type: "port set", In: in, Msg: strings.TrimPrefix(err.Error(), "tuple: psid port set: ")}
	}
	return s, nil
}

// MustParsePortSet is ParsePortSet that panics on error; intended for tests.
func MustParsePortSet(s string) PortSet {
	v, err := ParsePortSet(s)
	if err != nil {
		panic(err)
	}
	return v
}
