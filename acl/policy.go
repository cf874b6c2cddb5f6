package acl

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/portspace/portspace/tuple"
)

// ProtoAll is the protocol of a service or rule that matches every IP
// protocol and every port (AWS's protocol -1; no protocol match in
// nftables). Services and rules carry a tuple.Proto: TCP, UDP, ICMP or
// ProtoAll. ProtoAll is IANA's reserved protocol number 255, which no packet
// carries, so it cannot stand for a real protocol; the zero tuple.Proto is
// invalid, and a rule whose protocol was never set is rejected when rendered
// instead of matching everything (fail closed).
const ProtoAll tuple.Proto = 255

// ProtoName returns "tcp", "udp", "icmp" or "all" (for ProtoAll), and
// tuple.Proto's "proto(N)" for anything else.
func ProtoName(p tuple.Proto) string {
	if p == ProtoAll {
		return "all"
	}
	return p.String()
}

// validProto reports whether p is a protocol a service or rule may carry:
// TCP, UDP, ICMP or ProtoAll.
func validProto(p tuple.Proto) bool { return p == ProtoAll || p.IsValid() }

// protoRank orders protocols in output: all, tcp, udp, icmp (the order of
// the generated files, independent of the protocol numbers).
func protoRank(p tuple.Proto) int {
	switch p {
	case ProtoAll:
		return 0
	case tuple.TCP:
		return 1
	case tuple.UDP:
		return 2
	case tuple.ICMP:
		return 3
	}
	return 4 + int(p)
}

// ParseProtocol parses "tcp", "udp", "icmp" or "all" (also "any";
// case-insensitive).
func ParseProtocol(s string) (tuple.Proto, error) {
	switch strings.ToLower(s) {
	case "all", "any":
		return ProtoAll, nil
	}
	p, err := tuple.ParseProto(s)
	if err != nil {
		return 0, fmt.Errorf("acl: unknown protocol %q (want tcp, udp, icmp or all)", s)
	}
	return p, nil
}

// Reserved zone names: All stands for every internal zone and may only
// start a flow; Internet is 0.0.0.0/0 and ::/0, and rules towards it come
// after a deny of the VPC's own range.
const (
	ZoneAll      = "all"
	ZoneInternet = "internet"
	// ZoneVPC is the name --cidrs and Terraform bindings use for the
	// VPC's address range; it cannot be declared as a zone.
	ZoneVPC = "vpc"
)

// Tags that zones and flows accept. TagLoose and TagStrict select the loose
// (1024-65535) and strict (32768-65535) return range; TagSingleAZ marks a
// zone whose subnet exists in one availability zone (Terraform binding).
const (
	TagLoose    = "+ephemeral_loose"
	TagStrict   = "+ephemeral_strict"
	TagSingleAZ = "+single_az"
)

// Pos is a place in an input file: its name and 1-based line.
type Pos struct {
	File string
	Line int
}

// String returns "file:line".
func (p Pos) String() string { return fmt.Sprintf("%s:%d", p.File, p.Line) }

// ErrInvalid is matched (errors.Is) by every *Error: a policy, naclgen file
// or CIDR map that cannot be used.
var ErrInvalid = errors.New("acl: invalid input")

// Error is a problem in an input file, at a line, about one item (such as
// `zone "dmz"` or `flow mgn->dmz`).
type Error struct {
	Pos  Pos
	Item string // the item, such as `zone "dmz"`; may be empty
	Msg  string
}

func (e *Error) Error() string {
	if e.Item == "" {
		return fmt.Sprintf("acl: %s: %s", e.Pos, e.Msg)
	}
	return fmt.Sprintf("acl: %s: %s: %s", e.Pos, e.Item, e.Msg)
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// errorList collects *Error values and joins them, sorted by place.
type errorList []*Error

func (l *errorList) add(pos Pos, item, format string, args ...any) {
	*l = append(*l, &Error{Pos: pos, Item: item, Msg: fmt.Sprintf(format, args...)})
}

func (l errorList) err() error {
	if len(l) == 0 {
		return nil
	}
	s := slices.Clone(l)
	slices.SortStableFunc(s, func(a, b *Error) int {
		if c := strings.Compare(a.Pos.File, b.Pos.File); c != 0 {
			return c
		}
		return a.Pos.Line - b.Pos.Line
	})
	errs := make([]error, len(s))
	for i, e := range s {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// PortSpec is one protocol of a service with its ports; Ports is empty for
// ICMP and All.
type PortSpec struct {
	Proto tuple.Proto
	Ports tuple.PortSet
}

// String returns "443/tcp", "8000-8099,9000/tcp", "icmp" or "all".
func (s PortSpec) String() string {
	if !s.Proto.HasPorts() {
		return ProtoName(s.Proto)
	}
	return s.Ports.String() + "/" + s.Proto.String()
}

// Service is a named set of protocol ports, such as https = 443/tcp.
type Service struct {
	Name  string
	Ports []PortSpec
	Pos   Pos
}

// Zone is a named network: an internal zone (a subnet group whose ACL
// portspace generates) or an external one (only a peer). A zone without
// Prefixes is unbound: Terraform output refers to its addresses through
// local.naclgen_subnets, and other formats need --cidrs.
type Zone struct {
	Name     string
	External bool
	Prefixes []netip.Prefix // masked, sorted (IPv4 first), no duplicates
	Tags     []string
	// Ephemeral lists the profiles and ranges of the zone's clients: the
	// return range of every flow that this zone starts includes them.
	Ephemeral []string
	Pos       Pos
}

// Has reports whether z carries the tag.
func (z *Zone) Has(tag string) bool { return slices.Contains(z.Tags, tag) }

// Flow lets zone From start connections to zone To on Services (none means
// every protocol and port). Its return range is the union of its Ephemeral
// items and tags and its From zone's; when both are empty, the policy's
// default.
type Flow struct {
	From, To  string
	Services  []string
	Tags      []string
	Ephemeral []string
	Pos       Pos
}

// Name returns "from->to", the way errors and comments name a flow.
func (f *Flow) Name() string { return f.From + "->" + f.To }

// Permit is an entry of a policy's declared allow list (naclgen's .policy
// file): flows from From to To on Services (none means any) are permitted.
// When a policy has any Allow entry, every flow must be permitted by them.
type Permit struct {
	From, To string
	Services []string
	Pos      Pos
}

// Policy is a parsed ACL policy.
type Policy struct {
	File string
	// VPC is the VPC's own address range, denied before internet rules.
	// When empty it is the union of the internal zones' prefixes, or the
	// Terraform binding local.naclgen_subnets["cidrs"]["vpc"] when a zone
	// is unbound.
	VPC []netip.Prefix
	// DefaultEphemeral is the return range used when neither a flow nor
	// its initiating zone names one; empty means DefaultProfile.
	DefaultEphemeral []string
	// Profiles are custom named ephemeral profiles.
	Profiles map[string][]string
	Services []Service
	Zones    []Zone
	Flows    []Flow
	Allow    []Permit
}

// Zone returns the zone named name, or nil.
func (p *Policy) Zone(name string) *Zone {
	for i := range p.Zones {
		if p.Zones[i].Name == name {
			return &p.Zones[i]
		}
	}
	return nil
}

// Service returns the service named name, or nil.
func (p *Policy) Service(name string) *Service {
	for i := range p.Services {
		if p.Services[i].Name == name {
			return &p.Services[i]
		}
	}
	return nil
}

// ephemeral resolves profile names (custom ones first) and ranges.
func (p *Policy) ephemeral(items []string) (tuple.PortSet, error) {
	var set tuple.PortSet
	for _, it := range items {
		if c, ok := p.Profiles[it]; ok {
			s, err := ParseEphemeral(c...)
			if err != nil {
				return tuple.PortSet{}, err
			}
			set = set.Union(s)
			continue
		}
		s, err := ParseEphemeral(it)
		if err != nil {
			return tuple.PortSet{}, err
		}
		set = set.Union(s)
	}
	return set, nil
}

// ReturnRange returns the return (ephemeral) port set of flow f when zone
// from starts it: the union of f's Ephemeral items and tags and from's; if
// both are empty, the policy default.
func (p *Policy) ReturnRange(f *Flow, from *Zone) (tuple.PortSet, error) {
	var items []string
	items = append(items, f.Ephemeral...)
	items = append(items, tagProfiles(f.Tags)...)
	if from != nil {
		items = append(items, from.Ephemeral...)
		items = append(items, tagProfiles(from.Tags)...)
	}
	if len(items) == 0 {
		items = p.DefaultEphemeral
		if len(items) == 0 {
			items = []string{DefaultProfile}
		}
	}
	return p.ephemeral(items)
}

func tagProfiles(tags []string) []string {
	var out []string
	for _, t := range tags {
		switch t {
		case TagLoose:
			out = append(out, "loose")
		case TagStrict:
			out = append(out, "strict")
		}
	}
	return out
}

// validName reports whether s is a valid zone, service or profile name:
// a letter, then letters, digits, '_' or '-' (naclgen's rule).
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// parsePortItem parses "443", "8000-8099", "53/udp", "8000-8099/tcp",
// "icmp" or "all"; def is the protocol for items without one (0 = none).
func parsePortItem(s string, def tuple.Proto, hasDef bool) (PortSpec, error) {
	ports, proto, hasProto := strings.Cut(s, "/")
	if !hasProto {
		if pr, err := ParseProtocol(s); err == nil && !pr.HasPorts() {
			return PortSpec{Proto: pr}, nil
		}
	}
	var pr tuple.Proto
	switch {
	case hasProto:
		var err error
		if pr, err = ParseProtocol(proto); err != nil {
			return PortSpec{}, err
		}
	case hasDef:
		pr = def
	default:
		return PortSpec{}, fmt.Errorf("acl: port %q has no protocol (write %s/tcp or set protocol)", s, s)
	}
	if !pr.HasPorts() {
		return PortSpec{}, fmt.Errorf("acl: protocol %s has no ports (in %q)", ProtoName(pr), s)
	}
	r, err := tuple.ParsePortRange(ports)
	if err != nil {
		return PortSpec{}, fmt.Errorf("acl: port %q: %w", s, err)
	}
	return PortSpec{Proto: pr, Ports: tuple.PortSetOf(r)}, nil
}

// parsePrefix parses a CIDR and insists that it has no host bits.
func parsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("acl: bad CIDR %q: %w", s, err)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("acl: bad CIDR %q: IPv4-mapped IPv6 prefixes are not allowed", s)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("acl: bad CIDR %q: zones are not allowed", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("acl: CIDR %q has host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

func sortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, comparePrefix)
}

func comparePrefix(a, b netip.Prefix) int {
	if a.Addr().Is4() != b.Addr().Is4() {
		if a.Addr().Is4() {
			return -1
		}
		return 1
	}
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
