package acl

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/portspace/portspace/tuple"
)

// NGOptions tunes ParseNG. The zero value follows naclgen's documentation.
type NGOptions struct {
	// CodeDefault makes return rules default to 1024-65535 as naclgen's
	// code does (ephem_start = 1024), instead of 32768-65535 as its
	// doc/EPHEMERAL_PORTS.md says; it sets the policy's default_ephemeral
	// to [loose].
	CodeDefault bool
}

// ParseNG parses a file in the input format of the original naclgen
// (github.com/bsycorp/naclgen, doc/REFERENCE.md) into a Policy:
//
//	service https 443/tcp          # service <name> <port/proto>...
//	zone dmz internal +single_az   # zone <name> internal|external [+tag...]
//	rule dmz {                     # rule <internal zone or all> {
//	  < internet https             #   accept from an external zone
//	  > int https +ephemeral_loose #   start flows to a zone
//	}
//
// "> b" in the block of a becomes the flow a->b, "< b" the flow b->a.
// Zones have no addresses; bind them with Policy.BindCIDRs or through
// Terraform's local.naclgen_subnets. Errors name the file, its 1-based line
// and the item. docs/acl.md lists where naclgen's code and documentation
// disagree and what this parser does.
func ParseNG(file string, data []byte, opt NGOptions) (*Policy, error) {
	p := &Policy{File: file}
	if opt.CodeDefault {
		p.DefaultEphemeral = []string{"loose"}
	}
	var errs errorList
	type ruleLine struct {
		subject string
		dir     string
		toks    []string
		pos     Pos
	}
	var rules []ruleLine
	subject := ""
	var blockPos Pos
	inBlock := false
	lines, first := 0, ""
	for i, raw := range strings.Split(string(data), "\n") {
		pos := Pos{file, i + 1}
		line, _, _ := strings.Cut(raw, "#")
		toks := strings.Fields(line)
		if len(toks) == 0 {
			continue
		}
		lines++
		if lines == 1 {
			first = toks[0]
		}
		cmd, args := toks[0], toks[1:]
		if inBlock {
			switch {
			case cmd == "}" && len(args) == 0:
				inBlock = false
			case (cmd == "<" || cmd == ">") && len(args) > 0:
				rules = append(rules, ruleLine{subject, cmd, args, pos})
			default:
				errs.add(pos, "rule "+subject, "cannot parse %q (want '< zone [services] [+tags]', '> zone ...' or '}')", strings.TrimSpace(line))
			}
			continue
		}
		switch {
		case cmd == "service" && len(args) >= 2:
			s := Service{Name: args[0], Pos: pos}
			item := fmt.Sprintf("service %q", s.Name)
			for _, a := range args[1:] {
				ps, err := parseNGPort(a)
				if err != nil {
					errs.add(pos, item, "%s", trimPkg(err))
					continue
				}
				s.Ports = append(s.Ports, ps)
			}
			if prev := p.Service(s.Name); prev != nil {
				// naclgen lets a later definition replace an earlier one.
				errs.add(pos, item, "defined twice (first at line %d)", prev.Pos.Line)
				continue
			}
			p.Services = append(p.Services, s)
		case cmd == "zone" && len(args) >= 2:
			z := Zone{Name: args[0], Pos: pos}
			item := fmt.Sprintf("zone %q", z.Name)
			switch args[1] {
			case "internal":
			case "external":
				z.External = true
			default:
				errs.add(pos, item, "want internal or external, got %q", args[1])
			}
			for _, t := range args[2:] {
				if t != TagStrict && t != TagSingleAZ && t != TagLoose {
					errs.add(pos, item, "unknown zone tag %q (want %s, %s or %s)", t, TagStrict, TagLoose, TagSingleAZ)
					continue
				}
				z.Tags = append(z.Tags, t)
			}
			if z.Name == ZoneInternet && z.External && len(z.Tags) == 0 {
				// doc/TUTORIAL.md declares it; naclgen's code rejects it.
				continue
			}
			if prev := p.Zone(z.Name); prev != nil {
				errs.add(pos, item, "defined twice (first at line %d)", prev.Pos.Line)
				continue
			}
			p.Zones = append(p.Zones, z)
		case cmd == "rule" && len(args) == 2 && args[1] == "{":
			subject, blockPos, inBlock = args[0], pos, true
		default:
			errs.add(pos, "", "cannot parse %q (want service, zone or rule lines)", strings.TrimSpace(line))
		}
	}
	if inBlock {
		errs.add(blockPos, "rule "+subject, "block is not closed with }")
	}
	if lines == 0 {
		return nil, &Error{Pos: Pos{file, 1}, Msg: "empty naclgen file (no service, zone or rule lines)"}
	}
	if len(errs) > 0 && looksLikeYAML(first) {
		return nil, &Error{Pos: Pos{file, 1}, Msg: "this is a YAML policy, not a naclgen file (acl generate and acl lint read YAML as it is; import converts .ng files)"}
	}
	for _, r := range rules {
		item := "rule " + r.subject
		target := r.toks[0]
		f := Flow{Pos: r.pos}
		for _, t := range r.toks[1:] {
			if strings.HasPrefix(t, "+") {
				if t != TagStrict && t != TagLoose {
					errs.add(r.pos, item, "unknown rule tag %q (want %s or %s)", t, TagStrict, TagLoose)
					continue
				}
				f.Tags = append(f.Tags, t)
			} else if t != "any" {
				f.Services = append(f.Services, t)
			}
		}
		if hasAny(r.toks[1:]) {
			f.Services = nil
		}
		if r.subject != ZoneAll {
			if z := p.Zone(r.subject); z != nil && z.External {
				errs.add(r.pos, item, "rules can only be defined on internal zones; %s is external", r.subject)
			}
		}
		if target == ZoneAll {
			errs.add(r.pos, item, "zone all cannot be a rule target")
			continue
		}
		if r.dir == ">" {
			f.From, f.To = r.subject, target
		} else {
			if z := p.Zone(target); z != nil && !z.External {
				errs.add(r.pos, item, "cannot accept (<) from internal zone %s; write '> %s' in the block of %s", target, r.subject, target)
				continue
			}
			if r.subject == ZoneAll {
				errs.add(r.pos, item, "zone all can only start flows (>)")
				continue
			}
			f.From, f.To = target, r.subject
		}
		p.Flows = append(p.Flows, f)
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	if err := p.check(); err != nil {
		return nil, err
	}
	return p, nil
}

func hasAny(toks []string) bool {
	for _, t := range toks {
		if t == "any" {
			return true
		}
	}
	return false
}

// parseNGPort parses naclgen's "port/proto" (tcp or udp, port 1-65535);
// portspace also accepts a range "lo-hi/proto".
func parseNGPort(s string) (PortSpec, error) {
	ports, proto, ok := strings.Cut(s, "/")
	if !ok || ports == "" || proto == "" {
		return PortSpec{}, fmt.Errorf("acl: port %q: want port/proto such as 443/tcp", s)
	}
	if proto != "tcp" && proto != "udp" {
		return PortSpec{}, fmt.Errorf("acl: port %q: unknown protocol %q (naclgen knows tcp and udp)", s, proto)
	}
	r, err := tuple.ParsePortRange(ports)
	if err != nil {
		return PortSpec{}, fmt.Errorf("acl: port %q: %w", s, err)
	}
	if r.First() == 0 {
		return PortSpec{}, fmt.Errorf("acl: port %q: port 0 is out of range (1-65535)", s)
	}
	pr := tuple.TCP
	if proto == "udp" {
		pr = tuple.UDP
	}
	return PortSpec{Proto: pr, Ports: tuple.PortSetOf(r)}, nil
}

// ApplyNGPolicy reads a naclgen .policy file (the same format) and turns its
// rules into p's allow list, so that lint rejects flows it does not permit,
// as naclgen's validate_policy_vs_impl does. Every zone of p must appear in
// the policy with the same type, and a service defined in both must be
// identical. Services only the policy defines are copied into p; allow
// entries naming zones that p lacks are dropped (no flow can use them).
func ApplyNGPolicy(p *Policy, file string, data []byte) error {
	pol, err := ParseNG(file, data, NGOptions{})
	if err != nil {
		return err
	}
	var errs errorList
	for i := range p.Zones {
		z := &p.Zones[i]
		pz := pol.Zone(z.Name)
		switch {
		case pz == nil:
			errs.add(z.Pos, fmt.Sprintf("zone %q", z.Name), "not defined in policy %s", file)
		case pz.External != z.External:
			errs.add(z.Pos, fmt.Sprintf("zone %q", z.Name), "is %s here but %s in policy %s (line %d)",
				zoneType(z), zoneType(pz), file, pz.Pos.Line)
		}
	}
	for _, ps := range pol.Services {
		s := p.Service(ps.Name)
		if s == nil {
			p.Services = append(p.Services, ps)
			continue
		}
		if !sameSpecs(s.Ports, ps.Ports) {
			errs.add(s.Pos, fmt.Sprintf("service %q", s.Name), "differs from policy %s (line %d)", file, ps.Pos.Line)
		}
	}
	known := func(z string) bool { return z == ZoneAll || z == ZoneInternet || p.Zone(z) != nil }
	for _, f := range pol.Flows {
		if !known(f.From) || !known(f.To) {
			continue
		}
		p.Allow = append(p.Allow, Permit{From: f.From, To: f.To, Services: f.Services, Pos: f.Pos})
	}
	if err := errs.err(); err != nil {
		return err
	}
	return p.check()
}

func zoneType(z *Zone) string {
	if z.External {
		return "external"
	}
	return "internal"
}

func sameSpecs(a, b []PortSpec) bool {
	a, b = normalizeSpecs(a), normalizeSpecs(b)
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Proto != b[i].Proto || !a[i].Ports.Equal(b[i].Ports) {
			return false
		}
	}
	return true
}

// yamlScalar returns s as a YAML scalar, quoted unless it is a plain token
// that YAML reads back as the same string.
func yamlScalar(s string) string {
	plain := s != ""
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("+_-./", c)) {
			plain = false
		}
	}
	switch strings.ToLower(s) {
	case "null", "true", "false", "yes", "no", "on", "off", "y", "n", "~":
		plain = false
	}
	if plain && (s[0] == '-' || s[0] == '.') {
		plain = false
	}
	if plain {
		return s
	}
	return strconv.Quote(s)
}

func yamlList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = yamlScalar(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// WriteYAML renders p as a YAML policy that ParsePolicy reads back to the
// same policy (positions aside). header, if not empty, becomes a comment at
// the top.
func WriteYAML(p *Policy, header string) []byte {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(header, "\n"), "\n") {
		if header != "" {
			b.WriteString("# " + l + "\n")
		}
	}
	if len(p.VPC)+len(p.DefaultEphemeral)+len(p.Profiles)+len(p.Services)+len(p.Zones)+len(p.Flows)+len(p.Allow) == 0 {
		b.WriteString("{}\n")
	}
	if len(p.VPC) > 0 {
		var vs []string
		for _, v := range p.VPC {
			vs = append(vs, v.String())
		}
		b.WriteString("vpc: " + yamlList(vs) + "\n")
	}
	if len(p.DefaultEphemeral) > 0 {
		b.WriteString("default_ephemeral: " + yamlList(p.DefaultEphemeral) + "\n")
	}
	if len(p.Profiles) > 0 {
		b.WriteString("profiles:\n")
		var names []string
		for n := range p.Profiles {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			b.WriteString("  " + yamlScalar(n) + ": " + yamlList(p.Profiles[n]) + "\n")
		}
	}
	if len(p.Services) > 0 {
		b.WriteString("services:\n")
		for _, s := range p.Services {
			var items []string
			for _, ps := range s.Ports {
				if !ps.Proto.HasPorts() {
					items = append(items, ps.Proto.String())
					continue
				}
				for r := range ps.Ports.Ranges() {
					items = append(items, r.String()+"/"+ps.Proto.String())
				}
			}
			b.WriteString("  - name: " + yamlScalar(s.Name) + "\n    ports: " + yamlList(items) + "\n")
		}
	}
	if len(p.Zones) > 0 {
		b.WriteString("zones:\n")
		for _, z := range p.Zones {
			b.WriteString("  - name: " + yamlScalar(z.Name) + "\n    type: " + zoneType(&z) + "\n")
			if len(z.Prefixes) > 0 {
				var cs []string
				for _, c := range z.Prefixes {
					cs = append(cs, c.String())
				}
				b.WriteString("    cidrs: " + yamlList(cs) + "\n")
			}
			if len(z.Tags) > 0 {
				b.WriteString("    tags: " + yamlList(z.Tags) + "\n")
			}
			if len(z.Ephemeral) > 0 {
				b.WriteString("    ephemeral: " + yamlList(z.Ephemeral) + "\n")
			}
		}
	}
	writeFlow := func(from, to string, svcs, tags, eph []string) {
		b.WriteString("  - from: " + yamlScalar(from) + "\n    to: " + yamlScalar(to) + "\n")
		if len(svcs) > 0 {
			b.WriteString("    services: " + yamlList(svcs) + "\n")
		}
		if len(tags) > 0 {
			b.WriteString("    tags: " + yamlList(tags) + "\n")
		}
		if len(eph) > 0 {
			b.WriteString("    ephemeral: " + yamlList(eph) + "\n")
		}
	}
	if len(p.Flows) > 0 {
		b.WriteString("flows:\n")
		for _, f := range p.Flows {
			writeFlow(f.From, f.To, f.Services, f.Tags, f.Ephemeral)
		}
	}
	if len(p.Allow) > 0 {
		b.WriteString("allow:\n")
		for _, a := range p.Allow {
			writeFlow(a.From, a.To, a.Services, nil, nil)
		}
	}
	return []byte(b.String())
}

// looksLikeYAML reports whether the first token of a file is the start of a
// YAML document ("services:", "---", "{", "- ") rather than a naclgen line.
func looksLikeYAML(tok string) bool {
	return strings.HasSuffix(tok, ":") || tok == "---" || strings.HasPrefix(tok, "{") || tok == "-"
}
