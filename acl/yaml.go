package acl

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/portspace/portspace/ephemeral"
	"github.com/portspace/portspace/tuple"
)

// ParsePolicy parses a YAML policy (see docs/acl.md) and checks it: every
// key must be known, every name valid and unique, every tag, zone, service
// and profile a flow names must exist. Errors are *Error values (joined)
// naming file, line and item.
//
//	services:
//	  - {name: https, protocol: tcp, ports: [443]}
//	zones:
//	  - {name: web, type: internal, cidrs: [10.0.1.0/24]}
//	flows:
//	  - {from: internet, to: web, services: [https], tags: [+ephemeral_loose]}
func ParsePolicy(file string, data []byte) (*Policy, error) {
	d := &ydec{file: file}
	p := &Policy{File: file}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &Error{Pos: Pos{file, yamlErrLine(err)}, Msg: "YAML: " + yamlErrMsg(err)}
	}
	if len(root.Content) == 0 {
		return nil, &Error{Pos: Pos{file, 1}, Msg: "empty policy"}
	}
	top := d.mapping(root.Content[0], "policy", "vpc", "default_ephemeral", "profiles", "services", "zones", "flows", "allow")
	if v := top["vpc"]; v != nil {
		for _, n := range d.list(v, "vpc") {
			if pr, err := parsePrefix(n.Value); err != nil {
				d.errs.add(d.pos(n), "vpc", "%s", trimPkg(err))
			} else {
				p.VPC = append(p.VPC, pr)
			}
		}
		sortPrefixes(p.VPC)
	}
	if v := top["profiles"]; v != nil {
		p.Profiles = map[string][]string{}
		if v.Kind != yaml.MappingNode {
			d.errs.add(d.pos(v), "profiles", "want a map of profile name to ranges")
		} else {
			for i := 0; i+1 < len(v.Content); i += 2 {
				k, val := v.Content[i], v.Content[i+1]
				item := fmt.Sprintf("profile %q", k.Value)
				switch {
				case !validName(k.Value):
					d.errs.add(d.pos(k), item, "invalid name (a letter, then letters, digits, '_' or '-')")
				case isBuiltinProfile(k.Value):
					d.errs.add(d.pos(k), item, "redefines a built-in profile")
				case p.Profiles[k.Value] != nil:
					d.errs.add(d.pos(k), item, "defined twice")
				}
				var items []string
				for _, n := range d.list(val, item) {
					if _, err := ParseEphemeral(n.Value); err != nil {
						d.errs.add(d.pos(n), item, "%s", trimPkg(err))
					}
					items = append(items, n.Value)
				}
				p.Profiles[k.Value] = items
			}
		}
	}
	if v := top["default_ephemeral"]; v != nil {
		for _, n := range d.list(v, "default_ephemeral") {
			// Checked here, after the custom profiles, for the line.
			if _, err := p.ephemeral([]string{n.Value}); err != nil {
				d.errs.add(d.pos(n), "default_ephemeral", "%s", trimPkg(err))
			}
			p.DefaultEphemeral = append(p.DefaultEphemeral, n.Value)
		}
	}
	if v := top["services"]; v != nil {
		for _, n := range d.seq(v, "services") {
			d.service(p, n)
		}
	}
	if v := top["zones"]; v != nil {
		for _, n := range d.seq(v, "zones") {
			d.zone(p, n)
		}
	}
	if v := top["flows"]; v != nil {
		for _, n := range d.seq(v, "flows") {
			m := d.mapping(n, "flow", "from", "to", "services", "tags", "ephemeral")
			f := Flow{Pos: d.pos(n)}
			f.From = d.str(m["from"], n, "flow", "from", true)
			f.To = d.str(m["to"], n, "flow", "to", true)
			f.Services = d.services(m["services"], "flow "+f.Name())
			f.Tags = d.strs(m["tags"], "flow "+f.Name()+" tags")
			f.Ephemeral = d.strs(m["ephemeral"], "flow "+f.Name()+" ephemeral")
			p.Flows = append(p.Flows, f)
		}
	}
	if v := top["allow"]; v != nil {
		for _, n := range d.seq(v, "allow") {
			m := d.mapping(n, "allow", "from", "to", "services")
			a := Permit{Pos: d.pos(n)}
			a.From = d.str(m["from"], n, "allow", "from", true)
			a.To = d.str(m["to"], n, "allow", "to", true)
			a.Services = d.services(m["services"], "allow "+a.From+"->"+a.To)
			p.Allow = append(p.Allow, a)
		}
	}
	if err := d.errs.err(); err != nil {
		return nil, err
	}
	if err := p.check(); err != nil {
		return nil, err
	}
	return p, nil
}

func isBuiltinProfile(name string) bool {
	_, ok := ephemeral.Profile(name)
	return ok
}

// check verifies names, references and tags; it is shared by ParsePolicy
// and the naclgen importer.
func (p *Policy) check() error {
	var errs errorList
	svcs := map[string]bool{}
	for _, s := range p.Services {
		item := fmt.Sprintf("service %q", s.Name)
		switch {
		case !validName(s.Name):
			errs.add(s.Pos, item, "invalid name (a letter, then letters, digits, '_' or '-')")
		case s.Name == "any":
			errs.add(s.Pos, item, "the name any is reserved (no services means any)")
		case svcs[s.Name]:
			errs.add(s.Pos, item, "defined twice")
		}
		if len(s.Ports) == 0 {
			errs.add(s.Pos, item, "has no ports")
		}
		svcs[s.Name] = true
	}
	zones := map[string]*Zone{}
	for i := range p.Zones {
		z := &p.Zones[i]
		item := fmt.Sprintf("zone %q", z.Name)
		switch {
		case !validName(z.Name):
			errs.add(z.Pos, item, "invalid name (a letter, then letters, digits, '_' or '-')")
		case z.Name == ZoneAll || z.Name == ZoneInternet || z.Name == ZoneVPC:
			errs.add(z.Pos, item, "the name is reserved")
		case zones[z.Name] != nil:
			errs.add(z.Pos, item, "defined twice")
		}
		zones[z.Name] = z
		for _, t := range z.Tags {
			if t != TagLoose && t != TagStrict && t != TagSingleAZ {
				errs.add(z.Pos, item, "unknown tag %q (want %s, %s or %s)", t, TagLoose, TagStrict, TagSingleAZ)
			}
		}
		if _, err := p.ephemeral(z.Ephemeral); err != nil {
			errs.add(z.Pos, item, "%s", trimPkg(err))
		}
	}
	zoneRef := func(pos Pos, item, name string, from bool) *Zone {
		switch name {
		case "":
			return nil
		case ZoneAll:
			if !from {
				errs.add(pos, item, "zone all can only start a flow (from)")
			}
			return nil
		case ZoneInternet:
			return nil
		}
		z := zones[name]
		if z == nil {
			errs.add(pos, item, "unknown zone %q", name)
		}
		return z
	}
	svcRefs := func(pos Pos, item string, names []string) {
		for _, s := range names {
			if !svcs[s] {
				errs.add(pos, item, "unknown service %q", s)
			}
		}
	}
	internal := func(name string, z *Zone) bool { return name == ZoneAll || (z != nil && !z.External) }
	for i := range p.Flows {
		f := &p.Flows[i]
		item := "flow " + f.Name()
		fz := zoneRef(f.Pos, item, f.From, true)
		tz := zoneRef(f.Pos, item, f.To, false)
		if f.From != "" && f.To != "" && f.From == f.To {
			errs.add(f.Pos, item, "a zone's traffic to itself is always allowed; remove this flow")
		}
		if (f.From == ZoneInternet || fz != nil) && (f.To == ZoneInternet || tz != nil) && !internal(f.From, fz) && !internal(f.To, tz) {
			errs.add(f.Pos, item, "neither zone is internal, so no ACL would carry it")
		}
		svcRefs(f.Pos, item, f.Services)
		for _, t := range f.Tags {
			if t != TagLoose && t != TagStrict {
				errs.add(f.Pos, item, "unknown tag %q (want %s or %s)", t, TagLoose, TagStrict)
			}
		}
		if _, err := p.ephemeral(f.Ephemeral); err != nil {
			errs.add(f.Pos, item, "%s", trimPkg(err))
		}
	}
	for _, a := range p.Allow {
		item := "allow " + a.From + "->" + a.To
		zoneRef(a.Pos, item, a.From, true)
		zoneRef(a.Pos, item, a.To, false)
		svcRefs(a.Pos, item, a.Services)
	}
	if _, err := p.ephemeral(p.DefaultEphemeral); err != nil {
		errs.add(Pos{p.File, 1}, "default_ephemeral", "%s", trimPkg(err))
	}
	return errs.err()
}

// ydec walks a yaml.Node tree, collecting errors with positions.
type ydec struct {
	file string
	errs errorList
}

func (d *ydec) pos(n *yaml.Node) Pos { return Pos{d.file, n.Line} }

// mapping returns the values of a mapping node by key, reporting unknown
// and duplicate keys.
func (d *ydec) mapping(n *yaml.Node, item string, keys ...string) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	if n.Kind != yaml.MappingNode {
		d.errs.add(d.pos(n), item, "want a map with keys %s", strings.Join(keys, ", "))
		return out
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch {
		case !slices.Contains(keys, k.Value):
			d.errs.add(d.pos(k), item, "unknown key %q (want %s)", k.Value, strings.Join(keys, ", "))
		case out[k.Value] != nil:
			d.errs.add(d.pos(k), item, "key %q given twice", k.Value)
		default:
			out[k.Value] = v
		}
	}
	return out
}

// seq returns the items of a sequence node.
func (d *ydec) seq(n *yaml.Node, item string) []*yaml.Node {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.errs.add(d.pos(n), item, "want a list")
		return nil
	}
	return n.Content
}

// list returns the scalar items of a sequence node, or the node itself if
// it is a single scalar.
func (d *ydec) list(n *yaml.Node, item string) []*yaml.Node {
	if n.Kind == yaml.ScalarNode {
		if n.Tag == "!!null" {
			return nil
		}
		return []*yaml.Node{n}
	}
	var out []*yaml.Node
	for _, c := range d.seq(n, item) {
		if c.Kind != yaml.ScalarNode {
			d.errs.add(d.pos(c), item, "want a plain value, not a list or map")
			continue
		}
		out = append(out, c)
	}
	return out
}

func (d *ydec) strs(n *yaml.Node, item string) []string {
	if n == nil {
		return nil
	}
	var out []string
	for _, c := range d.list(n, item) {
		out = append(out, c.Value)
	}
	return out
}

// services returns a flow's or allow entry's services. An empty list is an
// error rather than "any": a generated or edited policy that lost its
// services must not silently open every protocol and port.
func (d *ydec) services(n *yaml.Node, item string) []string {
	s := d.strs(n, item+" services")
	if n != nil && len(s) == 0 {
		d.errs.add(d.pos(n), item, "services is empty; omit the key to allow every protocol and port")
	}
	return s
}

// str returns a scalar value; parent gives the position when it is missing.
func (d *ydec) str(n, parent *yaml.Node, item, key string, required bool) string {
	if n == nil {
		if required {
			d.errs.add(d.pos(parent), item, "missing %q", key)
		}
		return ""
	}
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		d.errs.add(d.pos(n), item, "%q wants a plain value", key)
		return ""
	}
	return n.Value
}

func (d *ydec) service(p *Policy, n *yaml.Node) {
	m := d.mapping(n, "service", "name", "protocol", "ports")
	s := Service{Pos: d.pos(n)}
	s.Name = d.str(m["name"], n, "service", "name", true)
	item := fmt.Sprintf("service %q", s.Name)
	var def tuple.Proto
	hasDef, badDef := false, false
	if v := m["protocol"]; v != nil {
		pr, err := ParseProtocol(d.str(v, n, item, "protocol", false))
		if err != nil {
			d.errs.add(d.pos(v), item, "%s", trimPkg(err))
			badDef = true // reported once: its ports do not also lack a protocol
		} else {
			def, hasDef = pr, true
		}
	}
	var ports []*yaml.Node
	if v := m["ports"]; v != nil {
		ports = d.list(v, item+" ports")
	}
	switch {
	case hasDef && !def.HasPorts() && len(ports) > 0:
		d.errs.add(d.pos(m["ports"]), item, "protocol %s has no ports", def)
		ports = nil
	case hasDef && !def.HasPorts():
		s.Ports = append(s.Ports, PortSpec{Proto: def})
	case hasDef && len(ports) == 0:
		s.Ports = append(s.Ports, PortSpec{Proto: def, Ports: fullPorts})
	}
	for _, pn := range ports {
		if badDef && !strings.Contains(pn.Value, "/") {
			continue
		}
		ps, err := parsePortItem(pn.Value, def, hasDef)
		if err != nil {
			d.errs.add(d.pos(pn), item, "%s", trimPkg(err))
			continue
		}
		s.Ports = append(s.Ports, ps)
	}
	if !hasDef && !badDef && len(ports) == 0 && m["name"] != nil {
		d.errs.add(s.Pos, item, "has neither protocol nor ports")
	}
	p.Services = append(p.Services, s)
}

func (d *ydec) zone(p *Policy, n *yaml.Node) {
	m := d.mapping(n, "zone", "name", "type", "cidrs", "tags", "ephemeral")
	z := Zone{Pos: d.pos(n)}
	z.Name = d.str(m["name"], n, "zone", "name", true)
	item := fmt.Sprintf("zone %q", z.Name)
	switch t := d.str(m["type"], n, item, "type", true); t {
	case "internal":
	case "external":
		z.External = true
	case "":
	default:
		d.errs.add(d.pos(m["type"]), item, "type %q: want internal or external", t)
	}
	if v := m["cidrs"]; v != nil {
		for _, c := range d.list(v, item+" cidrs") {
			pr, err := parsePrefix(c.Value)
			if err != nil {
				d.errs.add(d.pos(c), item, "%s", trimPkg(err))
				continue
			}
			z.Prefixes = append(z.Prefixes, pr)
		}
		z.Prefixes = uniqPrefixes(z.Prefixes)
	}
	z.Tags = d.strs(m["tags"], item+" tags")
	z.Ephemeral = d.strs(m["ephemeral"], item+" ephemeral")
	p.Zones = append(p.Zones, z)
}

// normalizeSpecs merges the port sets of specs with the same protocol, in
// the order tcp, udp, icmp; an "all" spec covers everything.
func normalizeSpecs(in []PortSpec) []PortSpec {
	merged := map[tuple.Proto]PortSpec{}
	for _, s := range in {
		e := merged[s.Proto]
		e.Proto = s.Proto
		e.Ports = e.Ports.Union(s.Ports)
		merged[s.Proto] = e
	}
	if _, ok := merged[ProtoAll]; ok {
		return []PortSpec{{Proto: ProtoAll}}
	}
	var out []PortSpec
	for _, pr := range []tuple.Proto{tuple.TCP, tuple.UDP, tuple.ICMP} {
		if s, ok := merged[pr]; ok {
			out = append(out, s)
		}
	}
	return out
}

func trimPkg(err error) string { return strings.TrimPrefix(err.Error(), "acl: ") }

// yamlErrLine extracts the line from a yaml.v3 error ("yaml: line 3: ...").
func yamlErrLine(err error) int {
	var line int
	s := err.Error()
	if i := strings.Index(s, "line "); i >= 0 {
		fmt.Sscanf(s[i+5:], "%d", &line)
	}
	if line == 0 {
		line = 1
	}
	return line
}

func yamlErrMsg(err error) string {
	s := strings.TrimPrefix(err.Error(), "yaml: ")
	if i := strings.Index(s, "line "); i == 0 {
		if j := strings.Index(s, ": "); j >= 0 {
			s = s[j+2:]
		}
	}
	return s
}

// CIDRMap is a parsed --cidrs file: zone name (or "vpc") to prefixes.
type CIDRMap struct {
	File  string
	Zones map[string][]netip.Prefix
	pos   map[string]Pos
}

// ParseCIDRs parses a --cidrs file: a YAML map of zone name (or "vpc") to a
// CIDR or a list of CIDRs.
func ParseCIDRs(file string, data []byte) (*CIDRMap, error) {
	d := &ydec{file: file}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &Error{Pos: Pos{file, yamlErrLine(err)}, Msg: "YAML: " + yamlErrMsg(err)}
	}
	out := &CIDRMap{File: file, Zones: map[string][]netip.Prefix{}, pos: map[string]Pos{}}
	if len(root.Content) == 0 {
		return out, nil
	}
	n := root.Content[0]
	if n.Kind != yaml.MappingNode {
		return nil, &Error{Pos: d.pos(n), Item: "cidrs", Msg: "want a map of zone name to CIDRs"}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		item := fmt.Sprintf("zone %q", k.Value)
		if _, dup := out.Zones[k.Value]; dup {
			d.errs.add(d.pos(k), item, "given twice")
		}
		var ps []netip.Prefix
		bad := false
		for _, c := range d.list(v, item) {
			pr, err := parsePrefix(c.Value)
			if err != nil {
				d.errs.add(d.pos(c), item, "%s", trimPkg(err))
				bad = true
				continue
			}
			ps = append(ps, pr)
		}
		if len(ps) == 0 && !bad {
			d.errs.add(d.pos(k), item, "no CIDRs")
		}
		out.Zones[k.Value] = ps
		out.pos[k.Value] = d.pos(k)
	}
	if err := d.errs.err(); err != nil {
		return nil, err
	}
	return out, nil
}

// BindCIDRs sets the addresses of zones (and of the VPC, key "vpc") from a
// --cidrs map, replacing those in the policy. A name that is not a declared
// zone is an error naming the map's file and line.
func (p *Policy) BindCIDRs(m *CIDRMap) error {
	var names []string
	for k := range m.Zones {
		names = append(names, k)
	}
	slices.Sort(names)
	var errs errorList
	for _, name := range names {
		ps := m.Zones[name]
		if name == ZoneVPC {
			p.VPC = uniqPrefixes(ps)
			continue
		}
		z := p.Zone(name)
		if z == nil {
			errs.add(m.pos[name], fmt.Sprintf("zone %q", name), "not a zone of policy %s", p.File)
			continue
		}
		z.Prefixes = uniqPrefixes(ps)
	}
	return errs.err()
}

// uniqPrefixes returns ps sorted (IPv4 first) without duplicates. Merging
// is left to generation, so that --no-merge shows the declared addresses.
func uniqPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	sortPrefixes(out)
	return slices.Compact(out)
}
