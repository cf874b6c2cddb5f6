package acl

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/portspace/portspace/tuple"
)

// Action is what a rule does with a matching packet.
type Action uint8

// Rule actions. The zero Action is neither: a Rule whose action was never
// set is rejected by Render instead of allowing (fail closed).
const (
	Allow Action = iota + 1
	Deny
)

// String returns "allow", "deny" or "action(N)" for an invalid Action.
func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Rule is one numbered entry of a network ACL. Like an AWS NACL entry it
// matches the peer's addresses (the source on ingress, the destination on
// egress) and the destination port.
type Rule struct {
	Number int
	Egress bool
	Action Action
	Proto  tuple.Proto
	// Ports is the destination port range; valid only for TCP and UDP.
	Ports tuple.PortRange
	// Prefix is the peer's addresses. It is invalid when Ref is set.
	Prefix netip.Prefix
	// Ref names an unbound peer (a zone or "vpc") whose addresses the
	// Terraform binding local.naclgen_subnets["cidrs"] supplies.
	Ref string
	// Why lists what needs the rule ("self", "vpc deny", "a->b https",
	// "a->b https return"), sorted.
	Why []string
}

// IPv6 reports whether the rule matches IPv6 addresses (unbound peers
// count as IPv4, as in naclgen's Terraform binding).
func (r *Rule) IPv6() bool { return r.Prefix.IsValid() && !r.Prefix.Addr().Is4() }

// Peer returns the peer's CIDR or, for an unbound peer, "<zone>".
func (r *Rule) Peer() string {
	if r.Ref != "" {
		return "<" + r.Ref + ">"
	}
	return r.Prefix.String()
}

// ACL is the generated network ACL of one internal zone.
type ACL struct {
	Zone     string
	SingleAZ bool
	// Prefixes are the zone's own addresses (empty when unbound).
	Prefixes []netip.Prefix
	Ingress  []Rule
	Egress   []Rule
}

// Count returns the number of rules in one direction and address family,
// not counting AWS's default deny.
func (a *ACL) Count(egress, ipv6 bool) int {
	rs := a.Ingress
	if egress {
		rs = a.Egress
	}
	n := 0
	for i := range rs {
		if rs[i].IPv6() == ipv6 {
			n++
		}
	}
	return n
}

// Options tunes Generate. The zero value is the default.
type Options struct {
	// MaxRules is the AWS quota of rules per ACL, direction and address
	// family, including the default deny; 0 means 20. AWS can raise it to
	// at most 40.
	MaxRules int
	// NoMerge only removes duplicate rules and skips the merging of
	// port ranges and CIDRs, to show how much merging saves.
	NoMerge bool
	// AllowUnbound lets zones without addresses through, as references
	// for Terraform's local.naclgen_subnets binding. Other formats need
	// every zone that a rule names to be bound.
	AllowUnbound bool
	// NoLimit skips the rule-quota check (for lint's counts).
	NoLimit bool
}

// DefaultMaxRules is AWS's default quota of rules per network ACL, per
// direction and address family, including the default deny rule.
const DefaultMaxRules = 20

// MaxRulesLimit is the highest quota AWS grants.
const MaxRulesLimit = 40

// Result is what Generate produced: one ACL per internal zone, sorted by
// zone name, and the lint warnings.
type Result struct {
	ACLs     []ACL
	Warnings []Finding
}

// ErrTooManyRules is matched (errors.Is) when an ACL exceeds the rule quota.
var ErrTooManyRules = errors.New("acl: too many rules")

// LimitError reports the ACLs, directions and families over the quota with
// their exact counts.
type LimitError struct {
	Max  int
	Over []string // "p.yaml:7: zone dmz ingress IPv4: 23 rules (22 + default deny)"
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("acl: over the limit of %d rules per ACL, direction and address family (including the default deny; --max-rules, at most %d): %s",
		e.Max, MaxRulesLimit, strings.Join(e.Over, "; "))
}

// Is makes errors.Is(err, ErrTooManyRules) true.
func (e *LimitError) Is(target error) bool { return target == ErrTooManyRules }

// Generate lints p (failing on any error finding) and builds the ACL of
// every internal zone: its own traffic, four rules per flow and service
// (forward and return, on both zones), a deny of the VPC before the
// internet rules; then it merges, numbers and counts them.
func Generate(p *Policy, opt Options) (*Result, error) {
	if opt.MaxRules == 0 {
		opt.MaxRules = DefaultMaxRules
	}
	if opt.MaxRules < 2 || opt.MaxRules > MaxRulesLimit {
		return nil, fmt.Errorf("acl: max rules %d: want 2 to %d", opt.MaxRules, MaxRulesLimit)
	}
	findings := Lint(p)
	var errs []error
	var warns []Finding
	for _, f := range findings {
		if f.Severity == SevError {
			errs = append(errs, f.asError())
		} else {
			warns = append(warns, f)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	g := &gen{p: p, opt: opt}
	if err := g.checkBound(); err != nil {
		return nil, err
	}
	res := &Result{Warnings: warns}
	var zones []*Zone
	for i := range p.Zones {
		if !p.Zones[i].External {
			zones = append(zones, &p.Zones[i])
		}
	}
	slices.SortFunc(zones, func(a, b *Zone) int { return strings.Compare(a.Name, b.Name) })
	var over []string
	for _, z := range zones {
		a, err := g.acl(z)
		if err != nil {
			return nil, err
		}
		for _, eg := range []bool{false, true} {
			for _, v6 := range []bool{false, true} {
				if n := a.Count(eg, v6); n+1 > opt.MaxRules {
					over = append(over, fmt.Sprintf("%s: zone %s %s %s: %d rules (%d + default deny)",
						z.Pos, z.Name, dirName(eg), famName(v6), n+1, n))
				}
			}
		}
		res.ACLs = append(res.ACLs, *a)
	}
	if len(over) > 0 && !opt.NoLimit {
		return nil, &LimitError{Max: opt.MaxRules, Over: over}
	}
	return res, nil
}

func dirName(egress bool) string {
	if egress {
		return "egress"
	}
	return "ingress"
}

func famName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

type gen struct {
	p   *Policy
	opt Options
}

// checkBound fails when a zone that a rule needs has no addresses and
// unbound zones are not allowed.
func (g *gen) checkBound() error {
	if g.opt.AllowUnbound {
		return nil
	}
	var errs errorList
	used := map[string]bool{}
	for _, f := range g.p.Flows {
		used[f.From], used[f.To] = true, true
	}
	for i := range g.p.Zones {
		z := &g.p.Zones[i]
		// Internal zones get ACLs; external ones matter only as peers
		// ("all" expands to internal zones only).
		if len(z.Prefixes) == 0 && (!z.External || used[z.Name]) {
			errs.add(z.Pos, fmt.Sprintf("zone %q", z.Name), "has no cidrs; give them in the policy or with --cidrs (--format terraform binds them through local.naclgen_subnets instead)")
		}
	}
	return errs.err()
}

// Rule sections, in rule-number order.
const (
	secSelf = iota
	secNormal
	secDeny
	secInternet
)

// RuleStep is the distance between consecutive rule numbers.
const RuleStep = 100

// sectionBase holds the first rule number of each section: the zone's own
// traffic from 100, flows between zones from 1000, the VPC deny from 10000,
// internet flows from 11000 (AWS allows 1-32766).
var sectionBase = [...]int{secSelf: 100, secNormal: 1000, secDeny: 10000, secInternet: 11000}

// peer is a rule's peer: a prefix or an unbound reference.
type peer struct {
	prefix netip.Prefix
	ref    string
}

func (p peer) v6() bool { return p.prefix.IsValid() && !p.prefix.Addr().Is4() }

// atom is one unmerged rule with its reason.
type atom struct {
	egress  bool
	section int
	action  Action
	proto   tuple.Proto
	ports   tuple.PortSet // tcp/udp only
	peer    peer
	why     string
}

var fullPorts = tuple.PortSetOf(tuple.PortRangeFrom(0, 65535))

// families returns whether zone z carries IPv4 and IPv6 (unbound: IPv4).
func families(z *Zone) (v4, v6 bool) {
	if len(z.Prefixes) == 0 {
		return true, false
	}
	for _, p := range z.Prefixes {
		if p.Addr().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	return
}

// peers returns the peers of zone name as seen from an ACL of the given
// families, and whether they are the internet.
func (g *gen) peers(name string, v4, v6 bool) ([]peer, bool) {
	if name == ZoneInternet {
		var out []peer
		if v4 {
			out = append(out, peer{prefix: netip.MustParsePrefix("0.0.0.0/0")})
		}
		if v6 {
			out = append(out, peer{prefix: netip.MustParsePrefix("::/0")})
		}
		return out, true
	}
	z := g.p.Zone(name)
	if len(z.Prefixes) == 0 {
		if v4 {
			return []peer{{ref: name}}, false
		}
		return nil, false
	}
	var out []peer
	for _, pr := range z.Prefixes {
		if pr.Addr().Is4() && v4 || !pr.Addr().Is4() && v6 {
			out = append(out, peer{prefix: pr})
		}
	}
	return out, false
}

// vpcPeers returns the VPC's addresses of one family.
func (g *gen) vpcPeers(v6 bool) []peer {
	var out []peer
	for _, pr := range g.p.VPC {
		if pr.Addr().Is4() != v6 {
			out = append(out, peer{prefix: pr})
		}
	}
	if len(out) > 0 {
		return out
	}
	// Without a declared range: the internal zones' prefixes of the
	// family. Unbound zones count as IPv4 (naclgen's binding), so an
	// unbound zone makes the IPv4 deny the Terraform reference to the
	// whole VPC, while the IPv6 deny still covers the bound zones' IPv6
	// prefixes.
	var all []netip.Prefix
	unbound := false
	for i := range g.p.Zones {
		z := &g.p.Zones[i]
		if z.External {
			continue
		}
		if len(z.Prefixes) == 0 {
			unbound = true
			continue
		}
		for _, pr := range z.Prefixes {
			if pr.Addr().Is4() != v6 {
				all = append(all, pr)
			}
		}
	}
	if unbound && !v6 {
		return []peer{{ref: ZoneVPC}}
	}
	for _, pr := range aggregate(all) {
		out = append(out, peer{prefix: pr})
	}
	return out
}

// expandFlows returns the flows with "all" replaced by each internal zone.
func (g *gen) expandFlows() []expFlow {
	var out []expFlow
	for i := range g.p.Flows {
		f := &g.p.Flows[i]
		if f.From != ZoneAll {
			out = append(out, expFlow{f: f, from: f.From})
			continue
		}
		for j := range g.p.Zones {
			z := &g.p.Zones[j]
			if !z.External && z.Name != f.To {
				out = append(out, expFlow{f: f, from: z.Name})
			}
		}
	}
	return out
}

type expFlow struct {
	f    *Flow
	from string
}

// specs returns the port specs of a flow's services (any: all).
func (g *gen) specs(f *Flow) []namedSpec {
	if len(f.Services) == 0 {
		return []namedSpec{{"any", PortSpec{Proto: ProtoAll}}}
	}
	var out []namedSpec
	for _, s := range f.Services {
		for _, ps := range g.p.Service(s).Ports {
			out = append(out, namedSpec{s, ps})
		}
	}
	return out
}

type namedSpec struct {
	name string
	spec PortSpec
}

func (g *gen) acl(z *Zone) (*ACL, error) {
	v4, v6 := families(z)
	var atoms []atom
	add := func(egress bool, sec int, act Action, pr tuple.Proto, ports tuple.PortSet, ps []peer, why string) {
		if !pr.HasPorts() {
			ports = tuple.PortSet{}
		}
		for _, p := range ps {
			atoms = append(atoms, atom{egress: egress, section: sec, action: act, proto: pr, ports: ports, peer: p, why: why})
		}
	}
	self, _ := g.peers(z.Name, v4, v6)
	for _, eg := range []bool{false, true} {
		add(eg, secSelf, Allow, ProtoAll, tuple.PortSet{}, self, "self")
	}
	for _, ef := range g.expandFlows() {
		f := ef.f
		var other string
		initiator := false
		switch {
		case ef.from == z.Name:
			other, initiator = f.To, true
		case f.To == z.Name:
			other = ef.from
		default:
			continue
		}
		ps, internet := g.peers(other, v4, v6)
		sec := secNormal
		if internet {
			sec = secInternet
		}
		ret, err := g.p.ReturnRange(f, g.p.Zone(ef.from))
		if err != nil {
			return nil, &Error{Pos: f.Pos, Item: "flow " + f.Name(), Msg: trimPkg(err)}
		}
		label := ef.from + "->" + f.To
		for _, ns := range g.specs(f) {
			fwd := label + " " + ns.name
			// The initiator sends on egress and hears replies on ingress;
			// the responder the other way round.
			add(initiator, sec, Allow, ns.spec.Proto, ns.spec.Ports, ps, fwd)
			add(!initiator, sec, Allow, ns.spec.Proto, ret, ps, fwd+" return")
		}
	}
	for _, eg := range []bool{false, true} {
		for _, fam6 := range []bool{false, true} {
			has := false
			for _, a := range atoms {
				if a.section == secInternet && a.egress == eg && a.peer.v6() == fam6 {
					has = true
				}
			}
			if has {
				add(eg, secDeny, Deny, ProtoAll, tuple.PortSet{}, g.vpcPeers(fam6), "vpc deny")
			}
		}
	}
	a := &ACL{Zone: z.Name, SingleAZ: z.Has(TagSingleAZ), Prefixes: z.Prefixes}
	for _, eg := range []bool{false, true} {
		var rules []Rule
		next := 0
		for sec := secSelf; sec <= secInternet; sec++ {
			var part []atom
			for _, at := range atoms {
				if at.egress == eg && at.section == sec {
					part = append(part, at)
				}
			}
			built := g.build(part, eg)
			// Each section starts at its fixed base (or after the one
			// before, if that ran long), so that a change in one section
			// does not renumber the others.
			next = max(next, sectionBase[sec])
			for i := range built {
				built[i].Number = next
				next += RuleStep
			}
			rules = append(rules, built...)
		}
		if eg {
			a.Egress = rules
		} else {
			a.Ingress = rules
		}
	}
	return a, nil
}

// build turns the atoms of one section and direction into sorted rules,
// merged unless NoMerge.
func (g *gen) build(atoms []atom, egress bool) []Rule {
	if len(atoms) == 0 {
		return nil
	}
	act := atoms[0].action
	type key struct {
		proto  tuple.Proto
		ports  tuple.PortRange
		prefix netip.Prefix
		ref    string
	}
	set := map[key]bool{}
	if g.opt.NoMerge {
		for _, a := range atoms {
			if !a.proto.HasPorts() {
				set[key{a.proto, tuple.PortRange{}, a.peer.prefix, a.peer.ref}] = true
				continue
			}
			for r := range a.ports.Ranges() {
				set[key{a.proto, r, a.peer.prefix, a.peer.ref}] = true
			}
		}
	} else {
		for _, k := range mergeAtoms(atoms) {
			set[key{k.proto, k.ports, k.peer.prefix, k.peer.ref}] = true
		}
	}
	var rules []Rule
	for k := range set {
		r := Rule{Egress: egress, Action: act, Proto: k.proto, Ports: k.ports, Prefix: k.prefix, Ref: k.ref}
		whys := map[string]bool{}
		for _, a := range atoms {
			if overlaps(a, &r) {
				whys[a.why] = true
			}
		}
		for w := range whys {
			r.Why = append(r.Why, w)
		}
		slices.Sort(r.Why)
		rules = append(rules, r)
	}
	slices.SortFunc(rules, compareRules)
	return rules
}

func overlaps(a atom, r *Rule) bool {
	if a.proto != r.Proto && a.proto != ProtoAll && r.Proto != ProtoAll {
		return false
	}
	if a.proto.HasPorts() && r.Proto.HasPorts() && !a.ports.Intersect(tuple.PortSetOf(r.Ports)).IsValid() {
		return false
	}
	if a.peer.ref != "" || r.Ref != "" {
		return a.peer.ref == r.Ref
	}
	return a.peer.prefix.Overlaps(r.Prefix)
}

func compareRules(a, b Rule) int {
	if c := cmp.Compare(boolInt(a.IPv6()), boolInt(b.IPv6())); c != 0 {
		return c
	}
	if c := cmp.Compare(boolInt(a.Ref != ""), boolInt(b.Ref != "")); c != 0 {
		return c
	}
	if a.Ref != b.Ref {
		return strings.Compare(a.Ref, b.Ref)
	}
	if c := comparePrefix(a.Prefix, b.Prefix); c != 0 {
		return c
	}
	if c := cmp.Compare(protoRank(a.Proto), protoRank(b.Proto)); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Ports.First(), b.Ports.First()); c != 0 {
		return c
	}
	return cmp.Compare(a.Ports.Last(), b.Ports.Last())
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// merged is one rule that mergeAtoms produced.
type merged struct {
	proto tuple.Proto
	ports tuple.PortRange
	peer  peer
}

// mergeAtoms computes a small set of rules that allows exactly the union of
// the atoms (all of one action): per peer, the port sets of each protocol
// are united ("all" swallows the rest); ports that a containing prefix
// already allows are dropped; then the prefixes that share a protocol and
// port range are aggregated into the fewest CIDRs.
func mergeAtoms(atoms []atom) []merged {
	type protoSet struct {
		all   bool
		ports map[tuple.Proto]tuple.PortSet // icmp: fullPorts as a marker
	}
	byPeer := map[peer]*protoSet{}
	var peers []peer
	for _, a := range atoms {
		ps := byPeer[a.peer]
		if ps == nil {
			ps = &protoSet{ports: map[tuple.Proto]tuple.PortSet{}}
			byPeer[a.peer] = ps
			peers = append(peers, a.peer)
		}
		switch a.proto {
		case ProtoAll:
			ps.all = true
		case tuple.ICMP:
			ps.ports[tuple.ICMP] = fullPorts
		default:
			ps.ports[a.proto] = ps.ports[a.proto].Union(a.ports)
		}
	}
	// Drop what a strictly containing prefix already allows.
	for _, p := range peers {
		if p.ref != "" {
			continue
		}
		ps := byPeer[p]
		for _, q := range peers {
			if q.ref != "" || q == p || q.prefix.Bits() >= p.prefix.Bits() || !q.prefix.Contains(p.prefix.Addr()) {
				continue
			}
			qs := byPeer[q]
			if qs.all {
				ps.all = false
				clear(ps.ports)
				continue
			}
			for pr, set := range qs.ports {
				ps.ports[pr] = ps.ports[pr].Subtract(set)
			}
		}
	}
	type pkey struct {
		proto tuple.Proto
		ports tuple.PortRange
		ref   string
	}
	groups := map[pkey][]netip.Prefix{}
	var keys []pkey
	addTo := func(k pkey, pr netip.Prefix) {
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], pr)
	}
	for _, p := range peers {
		ps := byPeer[p]
		if ps.all {
			addTo(pkey{ProtoAll, tuple.PortRange{}, p.ref}, p.prefix)
			continue
		}
		for pr, set := range ps.ports {
			if pr == tuple.ICMP {
				if set.IsValid() {
					addTo(pkey{tuple.ICMP, tuple.PortRange{}, p.ref}, p.prefix)
				}
				continue
			}
			for r := range set.Ranges() {
				addTo(pkey{pr, r, p.ref}, p.prefix)
			}
		}
	}
	var out []merged
	for _, k := range keys {
		if k.ref != "" {
			out = append(out, merged{k.proto, k.ports, peer{ref: k.ref}})
			continue
		}
		for _, pr := range aggregate(groups[k]) {
			out = append(out, merged{k.proto, k.ports, peer{prefix: pr}})
		}
	}
	return out
}

// aggregate returns the fewest prefixes that cover exactly the union of ps:
// duplicates and contained prefixes are dropped and sibling prefixes
// (two halves of one parent) are joined, repeatedly. IPv4 sorts first.
func aggregate(ps []netip.Prefix) []netip.Prefix {
	in := slices.Clone(ps)
	for i := range in {
		in[i] = in[i].Masked()
	}
	sortPrefixes(in)
	var st []netip.Prefix
	for _, p := range in {
		if n := len(st); n > 0 && st[n-1].Bits() <= p.Bits() && st[n-1].Contains(p.Addr()) &&
			st[n-1].Addr().Is4() == p.Addr().Is4() {
			continue
		}
		st = append(st, p)
		for n := len(st); n >= 2; n = len(st) {
			a, b := st[n-2], st[n-1]
			if a.Bits() != b.Bits() || a.Bits() == 0 || a.Addr().Is4() != b.Addr().Is4() {
				break
			}
			pa := netip.PrefixFrom(a.Addr(), a.Bits()-1).Masked()
			pb := netip.PrefixFrom(b.Addr(), b.Bits()-1).Masked()
			if pa != pb {
				break
			}
			st = append(st[:n-2], pa)
		}
	}
	return st
}
