package acl

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/portspace/portspace/tuple"
)

// Severity grades a lint finding.
type Severity uint8

// Severities: an error stops generation, a warning is only reported.
const (
	SevWarning Severity = iota
	SevError
)

// String returns "warning" or "error".
func (s Severity) String() string {
	if s == SevError {
		return "error"
	}
	return "warning"
}

// Finding is one lint result, at a place in the policy, about one item.
type Finding struct {
	Severity Severity
	Pos      Pos
	Item     string
	Msg      string
}

// String returns "file:line: severity: item: message".
func (f Finding) String() string {
	return fmt.Sprintf("%s: %s: %s: %s", f.Pos, f.Severity, f.Item, f.Msg)
}

func (f Finding) asError() error { return &Error{Pos: f.Pos, Item: f.Item, Msg: f.Msg} }

// Lint checks a parsed policy and returns its findings sorted by place:
//
//   - error: a TCP or UDP service port of a flow lies inside the flow's
//     own return range (the return rules would open it);
//   - error: a port that a zone serves lies inside the return range of a
//     flow that the zone starts (its ingress return rule opens that port to
//     the flow's other zone);
//   - error: a flow that the policy's allow list does not permit (naclgen's
//     implementation-versus-policy check);
//   - warning: a return range that overlaps Kubernetes' NodePort range
//     30000-32767;
//   - warning: zones and services that no flow uses;
//   - warning: zones whose CIDRs overlap;
//   - warning: a flow whose zones share no address family.
//
// A policy built by hand rather than parsed is first checked like a parsed
// one: unknown zones, services, tags or profiles are error findings, and
// Lint stops there.
func Lint(p *Policy) []Finding {
	var out []Finding
	add := func(sev Severity, pos Pos, item, format string, args ...any) {
		out = append(out, Finding{sev, pos, item, fmt.Sprintf(format, args...)})
	}
	if err := p.check(); err != nil {
		for _, e := range flatten(err) {
			var ae *Error
			if errors.As(e, &ae) {
				add(SevError, ae.Pos, ae.Item, "%s", ae.Msg)
			} else {
				add(SevError, Pos{p.File, 1}, "policy", "%s", trimPkg(e))
			}
		}
		return out
	}
	g := &gen{p: p}
	type served struct {
		flow  *Flow
		svc   string
		proto tuple.Proto
		ports tuple.PortSet
	}
	servedBy := map[string][]served{} // zone -> ports it serves
	type started struct {
		flow   *Flow
		ret    tuple.PortSet
		protos []tuple.Proto // the protocols of its return rules
	}
	startedBy := map[string][]started{} // zone -> return ranges it accepts
	usedZones := map[string]bool{}
	usedSvcs := map[string]bool{}
	for _, ef := range g.expandFlows() {
		f := ef.f
		item := "flow " + f.Name()
		usedZones[f.From], usedZones[f.To], usedZones[ef.from] = true, true, true
		for _, s := range f.Services {
			usedSvcs[s] = true
		}
		ret, err := p.ReturnRange(f, p.Zone(ef.from))
		if err != nil {
			add(SevError, f.Pos, item, "%s", trimPkg(err))
			continue
		}
		if f.From == ZoneAll {
			item += " (as " + ef.from + ")"
		}
		if ov := ret.Intersect(tuple.PortSetOf(NodePortRange)); ov.IsValid() {
			add(SevWarning, f.Pos, item, "return range %s overlaps the Kubernetes NodePort range %s (ports %s)",
				ret, NodePortRange, ov)
		}
		st := started{flow: f, ret: ret}
		for _, ns := range g.specs(f) {
			st.protos = append(st.protos, ns.spec.Proto)
		}
		startedBy[ef.from] = append(startedBy[ef.from], st)
		for _, ns := range g.specs(f) {
			if !ns.spec.Proto.HasPorts() {
				continue
			}
			if ov := ns.spec.Ports.Intersect(ret); ov.IsValid() {
				add(SevError, f.Pos, item, "service %s port %s/%s lies inside the return range %s",
					ns.name, ov, ns.spec.Proto, ret)
			}
			servedBy[f.To] = append(servedBy[f.To], served{f, ns.name, ns.spec.Proto, ns.spec.Ports})
		}
		if fz, tz := p.Zone(ef.from), p.Zone(f.To); fz != nil && tz != nil && len(fz.Prefixes) > 0 && len(tz.Prefixes) > 0 {
			a4, a6 := families(fz)
			b4, b6 := families(tz)
			if !(a4 && b4) && !(a6 && b6) {
				add(SevWarning, f.Pos, item, "zones %s and %s share no address family, so the flow yields no rules", ef.from, f.To)
			}
		}
	}
	// A port served by zone Z inside a return range that Z accepts.
	for z, ss := range servedBy {
		if zz := p.Zone(z); zz == nil || zz.External {
			continue // no ACL of ours carries it
		}
		for _, s := range ss {
			for _, st := range startedBy[z] {
				// Only a return rule of the served protocol (or of all
				// protocols) opens the port.
				if st.flow == s.flow || !slices.Contains(st.protos, s.proto) && !slices.Contains(st.protos, ProtoAll) {
					continue
				}
				if ov := s.ports.Intersect(st.ret); ov.IsValid() {
					add(SevError, s.flow.Pos, "flow "+s.flow.Name(),
						"service %s port %s/%s served by zone %s lies inside the return range %s of flow %s (%s), which opens it to zone %s",
						s.svc, ov, s.proto, z, st.ret, st.flow.Name(), st.flow.Pos, st.flow.To)
				}
			}
		}
	}
	for i := range p.Zones {
		for j := i + 1; j < len(p.Zones); j++ {
			a, b := &p.Zones[i], &p.Zones[j]
			for _, pa := range a.Prefixes {
				for _, pb := range b.Prefixes {
					if pa.Overlaps(pb) {
						add(SevWarning, b.Pos, fmt.Sprintf("zone %q", b.Name), "%s overlaps %s of zone %s (line %d); rules for one also match the other",
							pb, pa, a.Name, a.Pos.Line)
					}
				}
			}
		}
	}
	for i := range p.Zones {
		z := &p.Zones[i]
		if !usedZones[z.Name] && !(usedZones[ZoneAll] && !z.External) {
			add(SevWarning, z.Pos, fmt.Sprintf("zone %q", z.Name), "no flow uses it")
		}
	}
	for _, a := range p.Allow {
		for _, s := range a.Services {
			usedSvcs[s] = true
		}
	}
	for _, s := range p.Services {
		if !usedSvcs[s.Name] {
			add(SevWarning, s.Pos, fmt.Sprintf("service %q", s.Name), "no flow uses it")
		}
	}
	if len(p.Allow) > 0 {
		for i := range p.Flows {
			f := &p.Flows[i]
			if blocked := p.blockedServices(f); len(blocked) > 0 {
				add(SevError, f.Pos, "flow "+f.Name(), "not permitted by the policy's allow list (services %s)",
					strings.Join(blocked, ", "))
			}
		}
	}
	// A total order, so that output does not depend on map iteration.
	slices.SortFunc(out, func(a, b Finding) int {
		if c := strings.Compare(a.Pos.File, b.Pos.File); c != 0 {
			return c
		}
		if a.Pos.Line != b.Pos.Line {
			return a.Pos.Line - b.Pos.Line
		}
		if a.Severity != b.Severity {
			return int(b.Severity) - int(a.Severity)
		}
		if c := strings.Compare(a.Item, b.Item); c != 0 {
			return c
		}
		return strings.Compare(a.Msg, b.Msg)
	})
	out = slices.Compact(out)
	return out
}

// blockedServices returns the services of f that no allow entry permits
// ("any" when f has no services and no entry allows any).
func (p *Policy) blockedServices(f *Flow) []string {
	want := f.Services
	if len(want) == 0 {
		want = []string{"any"}
	}
	left := map[string]bool{}
	for _, s := range want {
		left[s] = true
	}
	for _, a := range p.Allow {
		if a.To != f.To || (a.From != f.From && a.From != ZoneAll) {
			continue
		}
		if a.From == ZoneAll && f.From != ZoneAll {
			if z := p.Zone(f.From); z == nil || z.External {
				continue
			}
		}
		if len(a.Services) == 0 {
			return nil
		}
		for _, s := range a.Services {
			delete(left, s)
		}
	}
	var out []string
	for s := range left {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// flatten returns the errors that errors.Join combined, or err itself.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
