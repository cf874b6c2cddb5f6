package natprobe

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// jsonResult is the `portspace natprobe --json` document; see
// docs/natprobe.md for every field.
type jsonResult struct {
	Server          string   `json:"server"`
	Other           *string  `json:"other"`
	RFC5780         bool     `json:"rfc5780"`
	Local           *string  `json:"local"`
	Mapped          *string  `json:"mapped"`
	NAT             *bool    `json:"nat"`
	Mapping         *string  `json:"mapping"`
	Filtering       *string  `json:"filtering"`
	Hairpinning     *bool    `json:"hairpinning"`
	Preservation    *bool    `json:"preservation"`
	Parity          *bool    `json:"parity"`
	Overlapping     *bool    `json:"overlapping"`
	Allocation      *string  `json:"allocation"`
	Delta           *int     `json:"delta"`
	ALG             *bool    `json:"alg"`
	OriginRewritten *bool    `json:"origin_rewritten"`
	OriginNotes     []string `json:"origin_notes,omitempty"`
	RFC3489         *string  `json:"rfc3489"`
	LifetimeSeconds *float64 `json:"lifetime_seconds"`
	LifetimeAtLeast bool     `json:"lifetime_at_least,omitempty"`
	InboundRefresh  *bool    `json:"inbound_refresh"`
	Samples         []Sample `json:"samples"`
	Skipped         []string `json:"skipped"`
	ElapsedMS       int64    `json:"elapsed_ms"`
	TCP             *jsonTCP `json:"tcp,omitempty"`
}

type jsonTCP struct {
	Local        *string  `json:"local"`
	Mapped       *string  `json:"mapped"`
	Mapping      *string  `json:"mapping"`
	Preservation *bool    `json:"preservation"`
	Allocation   *string  `json:"allocation"`
	Delta        *int     `json:"delta"`
	Samples      []Sample `json:"samples"`
	Skipped      []string `json:"skipped"`
	ElapsedMS    int64    `json:"elapsed_ms"`
}

func str[T ~string](s T) *string {
	if s == "" {
		return nil
	}
	v := string(s)
	return &v
}

func ap(a netip.AddrPort) *string {
	if !a.IsValid() {
		return nil
	}
	v := a.String()
	return &v
}

func delta(a Allocation, d int) *int {
	if a != Sequential {
		return nil
	}
	return &d
}

// MarshalJSON encodes the result as one object whose undetermined fields
// are null: mapping and filtering (RFC 4787 names), hairpinning,
// preservation, parity, allocation, mapped, rfc3489 and, after ProbeTCP, a
// tcp object (docs/natprobe.md lists them all).
func (r Result) MarshalJSON() ([]byte, error) {
	j := jsonResult{Server: r.Server.String(), Other: ap(r.Other), RFC5780: r.RFC5780,
		Local: ap(r.Local), Mapped: ap(r.Mapped), NAT: r.NAT,
		Mapping: str(r.Mapping), Filtering: str(r.Filtering), Hairpinning: r.Hairpinning,
		Preservation: r.Preservation, Parity: r.Parity, Overlapping: r.Overlapping,
		Allocation: str(r.Allocation), Delta: delta(r.Allocation, r.Delta), ALG: r.ALG,
		OriginRewritten: r.OriginRewritten, OriginNotes: r.OriginNotes, InboundRefresh: r.InboundRefresh,
		RFC3489: str(r.RFC3489), LifetimeAtLeast: r.LifetimeAtLeast,
		Samples: r.Samples, Skipped: r.Skipped, ElapsedMS: r.Elapsed.Milliseconds()}
	if j.Samples == nil {
		j.Samples = []Sample{}
	}
	if j.Skipped == nil {
		j.Skipped = []string{}
	}
	if r.Lifetime > 0 || r.LifetimeAtLeast {
		s := r.Lifetime.Seconds()
		j.LifetimeSeconds = &s
	}
	if t := r.TCP; t != nil {
		j.TCP = &jsonTCP{Local: ap(t.Local), Mapped: ap(t.Mapped), Mapping: str(t.Mapping),
			Preservation: t.Preservation, Allocation: str(t.Allocation), Delta: delta(t.Allocation, t.Delta),
			Samples: t.Samples, Skipped: t.Skipped, ElapsedMS: t.Elapsed.Milliseconds()}
		if j.TCP.Samples == nil {
			j.TCP.Samples = []Sample{}
		}
		if j.TCP.Skipped == nil {
			j.TCP.Skipped = []string{}
		}
	}
	return json.Marshal(j)
}

// WriteText writes the result as aligned "name value" lines for people.
func (r Result) WriteText(w io.Writer) error {
	var b strings.Builder
	line := func(k, v string) { fmt.Fprintf(&b, "%-14s %s\n", k, v) }
	orNone := func(s string) string {
		if s == "" {
			return "not determined"
		}
		return s
	}
	yn := func(p *bool) string {
		if p == nil {
			return "not determined"
		}
		if *p {
			return "yes"
		}
		return "no"
	}
	srv := r.Server.String()
	switch {
	case r.RFC5780:
		srv += " (RFC 5780, other address " + r.Other.String() + ")"
	case r.Other.IsValid():
		srv += " (RFC 3489, changed address " + r.Other.String() + ")"
	default:
		srv += " (no other address)"
	}
	line("server", srv)
	if r.Mapped.IsValid() {
		line("mapped", r.Mapped.String()+" from "+r.Local.String())
	}
	line("mapping", orNone(string(r.Mapping)))
	line("filtering", orNone(string(r.Filtering)))
	line("rfc3489", orNone(string(r.RFC3489)))
	line("hairpinning", yn(r.Hairpinning))
	line("preservation", yn(r.Preservation))
	line("parity", yn(r.Parity))
	ov := yn(r.Overlapping)
	if r.Overlapping == nil {
		ov = "not seen"
	}
	line("overlapping", ov)
	alloc := orNone(string(r.Allocation))
	if r.Allocation == Sequential {
		alloc += fmt.Sprintf(" (delta %+d)", r.Delta)
	}
	line("allocation", alloc)
	line("alg", yn(r.ALG))
	origin := "not determined"
	if r.OriginRewritten != nil {
		origin = "as sent"
		if *r.OriginRewritten {
			origin = "rewritten: " + strings.Join(r.OriginNotes, "; ")
		}
	}
	line("origin", origin)
	if r.Lifetime > 0 || r.LifetimeAtLeast {
		lt := r.Lifetime.String()
		if r.LifetimeAtLeast {
			lt = "at least " + lt
		}
		line("lifetime", lt)
	}
	if r.InboundRefresh != nil {
		line("refresh", map[bool]string{true: "outbound and inbound", false: "outbound only"}[*r.InboundRefresh])
	}
	if t := r.TCP; t != nil {
		line("tcp mapped", orNone(ap2(t.Mapped, t.Local)))
		line("tcp mapping", orNone(string(t.Mapping)))
		line("tcp preserve", yn(t.Preservation))
		talloc := orNone(string(t.Allocation))
		if t.Allocation == Sequential {
			talloc += fmt.Sprintf(" (delta %+d)", t.Delta)
		}
		line("tcp allocation", talloc)
		for _, s := range t.Skipped {
			line("not run", s)
		}
	}
	for _, s := range r.Skipped {
		line("not run", s)
	}
	line("elapsed", r.Elapsed.Round(1e6).String())
	_, err := io.WriteString(w, b.String())
	return err
}

func ap2(m, l netip.AddrPort) string {
	if !m.IsValid() {
		return ""
	}
	return m.String() + " from " + l.String()
}
