package acl

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portspace/portspace/tuple"
)

func mustPolicy(t *testing.T, src string) *Policy {
	t.Helper()
	p, err := ParsePolicy("t.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func ruleStrings(rs []Rule) []string {
	var out []string
	for _, r := range rs {
		ports := "-"
		if r.Proto.HasPorts() {
			ports = r.Ports.String()
		}
		out = append(out, fmt.Sprintf("%d %s %s %s %s", r.Number, r.Action, ProtoName(r.Proto), ports, r.Peer()))
	}
	return out
}

func wantRules(t *testing.T, what string, got []Rule, want ...string) {
	t.Helper()
	g := ruleStrings(got)
	if strings.Join(g, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got: %q\nwant: %q", what, g, want)
	}
}

// TestSeedFourRules checks seed 004's example: a flow from A to B on a
// service gives exactly A egress to B on the port, B ingress from A on the
// port, B egress to A on 32768-65535 and A ingress from B on 32768-65535
// (plus each zone's own traffic).
func TestSeedFourRules(t *testing.T) {
	p := mustPolicy(t, `
services: [{name: svc, protocol: tcp, ports: [1000]}]
zones:
  - {name: a, type: internal, cidrs: [10.1.0.0/24]}
  - {name: b, type: internal, cidrs: [10.2.0.0/24]}
flows: [{from: a, to: b, services: [svc]}]
`)
	res, err := Generate(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := res.ACLs[0], res.ACLs[1]
	wantRules(t, "A egress", a.Egress, "100 allow all - 10.1.0.0/24", "1000 allow tcp 1000 10.2.0.0/24")
	wantRules(t, "B ingress", b.Ingress, "100 allow all - 10.2.0.0/24", "1000 allow tcp 1000 10.1.0.0/24")
	wantRules(t, "B egress", b.Egress, "100 allow all - 10.2.0.0/24", "1000 allow tcp 32768-65535 10.1.0.0/24")
	wantRules(t, "A ingress", a.Ingress, "100 allow all - 10.1.0.0/24", "1000 allow tcp 32768-65535 10.2.0.0/24")
}

// TestEphemeralSelection checks the return range: default strict, the
// +ephemeral_loose tag, named profiles and custom ranges united per flow
// and per zone, and the policy default.
func TestEphemeralSelection(t *testing.T) {
	p := mustPolicy(t, `
profiles: {vpn: [40000-40999]}
services: [{name: s, protocol: udp, ports: [53]}]
zones:
  - {name: a, type: internal, cidrs: [10.1.0.0/24]}
  - {name: b, type: internal, cidrs: [10.2.0.0/24], ephemeral: [freebsd]}
  - {name: c, type: internal, cidrs: [10.3.0.0/24], tags: [+ephemeral_loose]}
flows:
  - {from: a, to: b, services: [s]}
  - {from: a, to: c, services: [s], tags: [+ephemeral_loose]}
  - {from: b, to: a, services: [s], ephemeral: [windows-legacy, vpn]}
  - {from: c, to: a, services: [s]}
`)
	want := []string{"32768-65535", "1024-65535", "1025-5000,10000-65535", "1024-65535"}
	for i := range p.Flows {
		f := &p.Flows[i]
		got, err := p.ReturnRange(f, p.Zone(f.From))
		if err != nil || got.String() != want[i] {
			t.Errorf("flow %s: return range %v (%v), want %s", f.Name(), got, err, want[i])
		}
	}
	p.DefaultEphemeral = []string{"linux"}
	if got, _ := p.ReturnRange(&p.Flows[0], p.Zone("a")); got.String() != "32768-60999" {
		t.Errorf("default_ephemeral linux: %v", got)
	}
}

// TestInternetAndAll checks the VPC deny before internet rules, IPv6
// internet rules only for zones with IPv6, and the all zone.
func TestInternetAndAll(t *testing.T) {
	p := mustPolicy(t, `
vpc: [10.0.0.0/16]
services:
  - {name: https, protocol: tcp, ports: [443]}
  - {name: dns, protocol: udp, ports: [53]}
zones:
  - {name: web, type: internal, cidrs: [10.0.1.0/24, "2001:db8::/64"]}
  - {name: app, type: internal, cidrs: [10.0.2.0/24]}
  - {name: dns, type: internal, cidrs: [10.0.3.0/24]}
flows:
  - {from: internet, to: web, services: [https]}
  - {from: all, to: dns, services: [dns]}
`)
	res, err := Generate(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	wantRules(t, "web ingress", res.ACLs[2].Ingress,
		"100 allow all - 10.0.1.0/24",
		"200 allow all - 2001:db8::/64", // own traffic first
		"1000 allow udp 32768-65535 10.0.3.0/24",
		"10000 deny all - 10.0.0.0/16",
		"10100 deny all - 2001:db8::/64", // no IPv6 VPC range given: the internal zones'
		"11000 allow tcp 443 0.0.0.0/0",
		"11100 allow tcp 443 ::/0")
	// dns hears from app and web: 10.0.1.0/24 + 10.0.2.0/24 are not
	// siblings, so two rules.
	wantRules(t, "dns ingress", res.ACLs[1].Ingress,
		"100 allow all - 10.0.3.0/24",
		"1000 allow udp 53 10.0.1.0/24",
		"1100 allow udp 53 10.0.2.0/24")
}

// TestMergeMinimal checks that adjacent ports and sibling CIDRs merge and
// that duplicates vanish.
func TestMergeMinimal(t *testing.T) {
	p := mustPolicy(t, `
services:
  - {name: a, ports: [80/tcp, 81/tcp, 82-90/tcp, 443/tcp]}
  - {name: b, ports: [444/tcp, 80/tcp]}
zones:
  - {name: srv, type: internal, cidrs: [10.9.0.0/24]}
  - {name: c1, type: internal, cidrs: [10.8.0.0/25]}
  - {name: c2, type: internal, cidrs: [10.8.0.128/25]}
flows:
  - {from: c1, to: srv, services: [a, b]}
  - {from: c2, to: srv, services: [a]}
  - {from: c2, to: srv, services: [b]}
`)
	res, err := Generate(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	wantRules(t, "srv ingress merged", res.ACLs[2].Ingress,
		"100 allow all - 10.9.0.0/24",
		"1000 allow tcp 80-90 10.8.0.0/24",
		"1100 allow tcp 443-444 10.8.0.0/24")
	raw, err := Generate(p, Options{NoMerge: true})
	if err != nil {
		t.Fatal(err)
	}
	if n := raw.ACLs[2].Count(false, false); n != 11 {
		t.Errorf("unmerged srv ingress has %d rules, want 11 (1 self + 5 port items x 2 sources)", n)
	}
}

// TestMergeEquivalent is a property test: on random rule sets, merging
// allows exactly the packets that the unmerged rules allow.
func TestMergeEquivalent(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	prefixes := []string{"10.0.0.0/24", "10.0.1.0/24", "10.0.0.0/23", "10.0.2.0/25", "10.0.2.128/25", "10.0.0.0/16", "10.0.3.7/32"}
	for iter := range 300 {
		var atoms []atom
		for range 1 + r.IntN(8) {
			a := atom{proto: []tuple.Proto{ProtoAll, tuple.TCP, tuple.UDP, tuple.ICMP}[r.IntN(4)], peer: peer{prefix: netip.MustParsePrefix(prefixes[r.IntN(len(prefixes))])}}
			if a.proto.HasPorts() {
				lo := uint16(r.IntN(40))
				a.ports = tuple.PortSetOf(tuple.PortRangeFrom(lo, lo+uint16(r.IntN(10))))
			}
			atoms = append(atoms, a)
		}
		m := mergeAtoms(atoms)
		for range 400 {
			addr := netip.AddrFrom4([4]byte{10, 0, byte(r.IntN(5)), byte(r.IntN(256))})
			proto := []tuple.Proto{tuple.TCP, tuple.UDP, tuple.ICMP}[r.IntN(3)]
			port := uint16(r.IntN(55))
			want := false
			for _, a := range atoms {
				if a.peer.prefix.Contains(addr) && (a.proto == ProtoAll || a.proto == proto && (!proto.HasPorts() || a.ports.Contains(port))) {
					want = true
				}
			}
			got := false
			for _, x := range m {
				if x.peer.prefix.Contains(addr) && (x.proto == ProtoAll || x.proto == proto && (!proto.HasPorts() || x.ports.Contains(port))) {
					got = true
				}
			}
			if got != want {
				t.Fatalf("iteration %d: %v %s port %d: merged %v, unmerged %v\natoms %+v\nmerged %+v", iter, addr, proto, port, got, want, atoms, m)
			}
		}
		if len(m) > len(atoms)*4 {
			t.Fatalf("merge grew %d atoms into %d rules", len(atoms), len(m))
		}
	}
}

func TestAggregate(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"10.0.0.0/25 10.0.0.128/25", "10.0.0.0/24"},
		{"10.0.0.0/24 10.0.1.0/24 10.0.2.0/24 10.0.3.0/24", "10.0.0.0/22"},
		{"10.0.1.0/24 10.0.2.0/24", "10.0.1.0/24 10.0.2.0/24"},
		{"10.0.0.0/16 10.0.5.0/24 10.0.0.0/16", "10.0.0.0/16"},
		{"2001:db8::/65 2001:db8:0:0:8000::/65 10.0.0.0/8", "10.0.0.0/8 2001:db8::/64"},
		{"0.0.0.0/1 128.0.0.0/1", "0.0.0.0/0"},
	} {
		var in []netip.Prefix
		for _, s := range strings.Fields(c.in) {
			in = append(in, netip.MustParsePrefix(s))
		}
		var got []string
		for _, p := range aggregate(in) {
			got = append(got, p.String())
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("aggregate(%s) = %s, want %s", c.in, got, c.want)
		}
	}
}

// TestLimit checks the rule quota: exact counts in the error, the default
// deny counted (26 rules and the deny fail at 26, pass at 27), --max-rules
// up to 40.
func TestLimit(t *testing.T) {
	var b strings.Builder
	b.WriteString("services:\n")
	for i := range 25 {
		fmt.Fprintf(&b, "  - {name: s%d, ports: [%d/tcp]}\n", i, 100+2*i)
	}
	b.WriteString("zones:\n  - {name: a, type: internal, cidrs: [10.1.0.0/24]}\n  - {name: b, type: internal, cidrs: [10.2.0.0/24]}\nflows:\n  - {from: a, to: b, services: [")
	for i := range 25 {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "s%d", i)
	}
	b.WriteString("]}\n")
	p := mustPolicy(t, b.String())
	_, err := Generate(p, Options{})
	if !errors.Is(err, ErrTooManyRules) {
		t.Fatalf("got %v, want ErrTooManyRules", err)
	}
	for _, want := range []string{"limit of 20", "t.yaml:28: zone a egress IPv4: 27 rules (26 + default deny)", "t.yaml:29: zone b ingress IPv4: 27 rules (26 + default deny)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "zone a ingress") {
		t.Errorf("a's ingress (2 rules) reported over: %v", err)
	}
	if _, err := Generate(p, Options{MaxRules: 26}); !errors.Is(err, ErrTooManyRules) || !strings.Contains(err.Error(), "27 rules (26 + default deny)") {
		t.Errorf("max 26 with 26 rules and the default deny: err = %v, want ErrTooManyRules for 27 rules", err)
	}
	if _, err := Generate(p, Options{MaxRules: 27}); err != nil {
		t.Errorf("max 27: %v", err)
	}
	if _, err := Generate(p, Options{MaxRules: 41}); err == nil {
		t.Error("max 41 accepted")
	}
}

// TestBadInput checks that every error names the file, the line and the
// item, and matches ErrInvalid.
func TestBadInput(t *testing.T) {
	base := "services: [{name: s, protocol: tcp, ports: [80]}]\nzones:\n  - {name: a, type: internal, cidrs: [10.1.0.0/24]}\n  - {name: b, type: internal, cidrs: [10.2.0.0/24]}\n"
	for _, c := range []struct {
		name, src, want string
	}{
		{"unknown top key", "service: []\n", `t.yaml:1: policy: unknown key "service"`},
		{"unknown zone key", "zones:\n  - {name: a, type: internal, cidr: [10.0.0.0/8]}\n", `t.yaml:2: zone: unknown key "cidr"`},
		{"unknown zone in flow", base + "flows: [{from: a, to: c, services: [s]}]\n", `t.yaml:5: flow a->c: unknown zone "c"`},
		{"unknown service", base + "flows:\n  - {from: a, to: b, services: [web]}\n", `t.yaml:6: flow a->b: unknown service "web"`},
		{"unknown flow tag", base + "flows:\n  - {from: a, to: b, tags: [+fast]}\n", `t.yaml:6: flow a->b: unknown tag "+fast"`},
		{"unknown zone tag", "zones:\n  - {name: a, type: internal, tags: [+x]}\n", `t.yaml:2: zone "a": unknown tag "+x"`},
		{"unknown profile", base + "flows:\n  - {from: a, to: b, ephemeral: [solaris]}\n", `t.yaml:6: flow a->b: ephemeral "solaris" is neither a profile`},
		{"bad cidr", "zones:\n  - name: a\n    type: internal\n    cidrs: [10.1.0.1/24]\n", `t.yaml:4: zone "a": CIDR "10.1.0.1/24" has host bits set`},
		{"bad port", "services:\n  - {name: s, ports: [70000/tcp]}\n", `t.yaml:2: service "s": port "70000/tcp"`},
		{"port without protocol", "services:\n  - name: s\n    ports: [80]\n", `t.yaml:3: service "s": port "80" has no protocol`},
		{"reserved zone", "zones:\n  - {name: internet, type: external}\n", `t.yaml:2: zone "internet": the name is reserved`},
		{"all as target", base + "flows:\n  - {from: a, to: all}\n", `t.yaml:6: flow a->all: zone all can only start a flow`},
		{"missing type", "zones:\n  - {name: a}\n", `t.yaml:2: zone "a": missing "type"`},
		{"duplicate zone", "zones:\n  - {name: a, type: internal}\n  - {name: a, type: external}\n", `t.yaml:3: zone "a": defined twice`},
		{"bad yaml", "zones: [\n", `t.yaml:`},
		{"empty services", base + "flows:\n  - from: a\n    to: b\n    services: []\n", `t.yaml:8: flow a->b: services is empty; omit the key`},
		{"unknown default profile", base + "default_ephemeral: [linux, bsd]\n", `t.yaml:5: default_ephemeral: ephemeral "bsd" is neither a profile`},
		{"icmp with ports", "services:\n  - name: s\n    protocol: icmp\n    ports: [8]\n", `t.yaml:4: service "s": protocol icmp has no ports`},
		{"external only", "zones:\n  - {name: x, type: external, cidrs: [192.0.2.0/24]}\nflows:\n  - {from: internet, to: x}\n", `t.yaml:4: flow internet->x: neither zone is internal`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParsePolicy("t.yaml", []byte(c.src))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("%v does not match ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q lacks %q", err, c.want)
			}
		})
	}
}

// TestLint checks each finding.
func TestLint(t *testing.T) {
	p := mustPolicy(t, `
services:
  - {name: alt, protocol: tcp, ports: [8443]}
  - {name: hi, protocol: tcp, ports: [40000]}
  - {name: web, protocol: tcp, ports: [443]}
  - {name: unused, protocol: udp, ports: [9]}
zones:
  - {name: a, type: internal, cidrs: [10.1.0.0/24]}
  - {name: b, type: internal, cidrs: [10.2.0.0/24]}
  - {name: c, type: internal, cidrs: [10.3.0.0/24]}
  - {name: lonely, type: internal, cidrs: [10.4.0.0/24]}
flows:
  - {from: a, to: b, services: [alt], tags: [+ephemeral_loose]}
  - {from: c, to: a, services: [hi]}
  - {from: a, to: c, services: [web]}
allow:
  - {from: a, to: b}
  - {from: c, to: a, services: [web]}
`)
	var got []string
	for _, f := range Lint(p) {
		got = append(got, f.String())
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{
		"t.yaml:13: error: flow a->b: service alt port 8443/tcp lies inside the return range 1024-65535",
		"t.yaml:13: warning: flow a->b: return range 1024-65535 overlaps the Kubernetes NodePort range 30000-32767",
		"t.yaml:14: error: flow c->a: service hi port 40000/tcp lies inside the return range 32768-65535",
		"t.yaml:14: error: flow c->a: service hi port 40000/tcp served by zone a lies inside the return range 1024-65535 of flow a->b",
		"t.yaml:14: error: flow c->a: not permitted by the policy's allow list (services hi)",
		"t.yaml:15: error: flow a->c: not permitted by the policy's allow list (services web)",
		`t.yaml:6: warning: service "unused": no flow uses it`,
		`t.yaml:11: warning: zone "lonely": no flow uses it`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("lint lacks %q; got:\n%s", want, all)
		}
	}
	if strings.Contains(all, "flow a->b: not permitted") {
		t.Errorf("allow entry without services should permit a->b:\n%s", all)
	}
	if _, err := Generate(p, Options{}); err == nil || !strings.Contains(err.Error(), "t.yaml:13: flow a->b: service alt port 8443/tcp") {
		t.Errorf("Generate does not fail on lint errors: %v", err)
	}
}

// TestLintServedProtocol checks that a served TCP port inside the return
// range of a flow whose return rules are UDP only is no error (nothing
// opens it), while a TCP flow with the same range is.
func TestLintServedProtocol(t *testing.T) {
	src := `
services:
  - {name: hi, protocol: tcp, ports: [40000]}
  - {name: dns, protocol: udp, ports: [53]}
  - {name: web, protocol: tcp, ports: [443]}
zones:
  - {name: a, type: internal, cidrs: [10.1.0.0/24]}
  - {name: b, type: internal, cidrs: [10.2.0.0/24]}
  - {name: c, type: internal, cidrs: [10.3.0.0/24]}
flows:
  - {from: c, to: a, services: [hi], ephemeral: [windows-legacy]}
`
	for _, c := range []struct {
		flow string
		want bool
	}{
		{"  - {from: a, to: b, services: [dns]}\n", false},
		{"  - {from: a, to: b, services: [web]}\n", true},
		{"  - {from: a, to: b}\n", true}, // all protocols
	} {
		got := false
		for _, f := range Lint(mustPolicy(t, src+c.flow)) {
			if f.Severity == SevError && strings.Contains(f.Msg, "served by zone a") {
				got = true
			}
		}
		if got != c.want {
			t.Errorf("%s: served-port error %v, want %v", strings.TrimSpace(c.flow), got, c.want)
		}
	}
}

// TestUnbound checks that only Terraform and table render zones without
// addresses, and that --cidrs binds them.
func TestUnbound(t *testing.T) {
	p, err := ParseNG("x.ng", []byte("service s 80/tcp\nzone a internal\nzone b internal\nrule a {\n > b s\n}\n"), NGOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(p, Options{}); err == nil || !strings.Contains(err.Error(), `x.ng:2: zone "a": has no cidrs`) {
		t.Errorf("unbound zone: %v", err)
	}
	m, err := ParseCIDRs("c.yaml", []byte("a: 10.1.0.0/24\nb: [10.2.0.0/25, 10.2.0.128/25]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.BindCIDRs(m); err != nil {
		t.Fatal(err)
	}
	res, err := Generate(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	wantRules(t, "a egress", res.ACLs[0].Egress, "100 allow all - 10.1.0.0/24", "1000 allow tcp 80 10.2.0.0/24")
	m, _ = ParseCIDRs("c.yaml", []byte("a: 10.1.0.0/24\nzz: 10.3.0.0/24\n"))
	if err := p.BindCIDRs(m); err == nil || !strings.Contains(err.Error(), `c.yaml:2: zone "zz": not a zone`) {
		t.Errorf("unknown zone in cidrs: %v", err)
	}
	if _, err := ParseCIDRs("c.yaml", []byte("a: 10.1.0.1/24\n")); err == nil || !strings.Contains(err.Error(), "c.yaml:1: zone \"a\"") {
		t.Errorf("bad cidr: %v", err)
	}
}

// TestNumberingStable checks that rule numbers start at fixed bases per
// section, so adding a flow between zones does not renumber the VPC deny
// or the internet rules.
func TestNumberingStable(t *testing.T) {
	src := `
services: [{name: s, protocol: tcp, ports: [443]}, {name: t, protocol: tcp, ports: [22]}]
zones:
  - {name: a, type: internal, cidrs: [10.1.0.0/24]}
  - {name: b, type: internal, cidrs: [10.2.0.0/24]}
flows:
  - {from: internet, to: a, services: [s]}
`
	one, err := Generate(mustPolicy(t, src), Options{})
	if err != nil {
		t.Fatal(err)
	}
	two, err := Generate(mustPolicy(t, src+"  - {from: b, to: a, services: [t]}\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	// No vpc given: the deny covers the internal zones' CIDRs.
	wantRules(t, "one flow", one.ACLs[0].Ingress, "100 allow all - 10.1.0.0/24",
		"10000 deny all - 10.1.0.0/24", "10100 deny all - 10.2.0.0/24", "11000 allow tcp 443 0.0.0.0/0")
	wantRules(t, "two flows", two.ACLs[0].Ingress, "100 allow all - 10.1.0.0/24", "1000 allow tcp 22 10.2.0.0/24",
		"10000 deny all - 10.1.0.0/24", "10100 deny all - 10.2.0.0/24", "11000 allow tcp 443 0.0.0.0/0")
}

// TestOverlapWarning checks the lint warning for zones whose CIDRs overlap.
func TestOverlapWarning(t *testing.T) {
	p := mustPolicy(t, `
zones:
  - {name: a, type: internal, cidrs: [10.1.0.0/24]}
  - {name: b, type: external, cidrs: [10.0.0.0/8]}
flows: [{from: b, to: a}]
`)
	found := false
	for _, f := range Lint(p) {
		if strings.Contains(f.String(), `t.yaml:4: warning: zone "b": 10.0.0.0/8 overlaps 10.1.0.0/24 of zone a (line 3)`) {
			found = true
		}
	}
	if !found {
		t.Errorf("no overlap warning in %v", Lint(p))
	}
}

// TestSampleCounts pins the rule counts that docs/acl.md publishes for the
// naclgen-format sample testdata/vpc.ng with testdata/vpc-cidrs.yaml
// (reproduce: portspace acl lint acl/testdata/vpc.ng --cidrs
// acl/testdata/vpc-cidrs.yaml).
func TestSampleCounts(t *testing.T) {
	p := loadCase(t, goldenCase{"vpc", "vpc.ng", "vpc-cidrs.yaml"})
	count := func(noMerge bool) (total, over, mx int) {
		res, err := Generate(p, Options{NoMerge: noMerge, NoLimit: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range res.ACLs {
			for _, eg := range []bool{false, true} {
				n := a.Count(eg, false) + 1
				total += n
				if n > DefaultMaxRules {
					over++
				}
				mx = max(mx, n)
			}
		}
		return
	}
	mt, mo, mm := count(false)
	rt, ro, rm := count(true)
	if mt != 108 || mo != 0 || mm != 12 || rt != 181 || ro != 2 || rm != 37 {
		t.Errorf("vpc.ng: merged %d rules (max %d, %d over 20), unmerged %d (max %d, %d over); docs/acl.md says 108 (12, 0) and 181 (37, 2)",
			mt, mm, mo, rt, rm, ro)
	}
}

// TestLintDeterministic checks that findings come out in the same order on
// every run (they are gathered from maps).
func TestLintDeterministic(t *testing.T) {
	src := `
services: [{name: a, protocol: tcp, ports: [40001]}, {name: b, protocol: tcp, ports: [40002]}, {name: c, protocol: tcp, ports: [40003]}]
zones:
  - {name: x, type: internal, cidrs: [10.1.0.0/24]}
  - {name: y, type: internal, cidrs: [10.2.0.0/24]}
  - {name: z, type: internal, cidrs: [10.3.0.0/24]}
flows:
  - {from: x, to: y, services: [a, b, c]}
  - {from: y, to: z, services: [a, b, c]}
  - {from: y, to: x, services: [a, b, c]}
`
	p := mustPolicy(t, src)
	first := fmt.Sprint(Lint(p))
	for range 20 {
		if got := fmt.Sprint(Lint(p)); got != first {
			t.Fatalf("lint order changed:\n%s\n%s", first, got)
		}
	}
}

// BenchmarkGenerate measures parsing, linting, generating and rendering
// the six-zone sample as Terraform.
func BenchmarkGenerate(b *testing.B) {
	data, err := os.ReadFile(filepath.Join("testdata", "vpc.ng"))
	if err != nil {
		b.Fatal(err)
	}
	cd, err := os.ReadFile(filepath.Join("testdata", "vpc-cidrs.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		p, err := ParseNG("vpc.ng", data, NGOptions{})
		if err != nil {
			b.Fatal(err)
		}
		m, _ := ParseCIDRs("vpc-cidrs.yaml", cd)
		if err := p.BindCIDRs(m); err != nil {
			b.Fatal(err)
		}
		res, err := Generate(p, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := Render(io.Discard, res, "terraform", "vpc.ng"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestVPCDenyEveryFamily checks that in every ACL, direction and address
// family with internet rules a VPC deny of that family comes first, also
// when some zones are unbound (Terraform binding) and others carry IPv6:
// without it ::/0 would match the VPC's own IPv6 subnets.
func TestVPCDenyEveryFamily(t *testing.T) {
	p := mustPolicy(t, `
services: [{name: https, protocol: tcp, ports: [443]}]
zones:
  - {name: a, type: internal}
  - {name: b, type: internal, cidrs: [10.1.0.0/24, "2001:db8:1::/64"]}
  - {name: c, type: internal, cidrs: ["2001:db8:2::/64"]}
flows:
  - {from: internet, to: b, services: [https]}
  - {from: c, to: internet, services: [https]}
  - {from: a, to: b, services: [https]}
`)
	res, err := Generate(p, Options{AllowUnbound: true})
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, a := range res.ACLs {
		for _, rs := range [][]Rule{a.Ingress, a.Egress} {
			for _, v6 := range []bool{false, true} {
				denied := map[string]bool{}
				for _, r := range rs {
					if r.IPv6() != v6 { // unbound peers count as IPv4
						continue
					}
					if r.Action == Deny {
						denied[r.Peer()] = true
					}
					if r.Prefix.IsValid() && r.Prefix.Bits() == 0 {
						checked++
						if len(denied) == 0 {
							t.Errorf("zone %s %s rule %d (%s) has no VPC deny of its family before it",
								a.Zone, dirName(r.Egress), r.Number, r.Peer())
						}
					}
				}
			}
		}
	}
	if checked != 6 {
		t.Errorf("checked %d internet rules, want 6 (b: 2 ingress, 2 egress; c: 1 each way)", checked)
	}
	b := res.ACLs[1]
	wantRules(t, "b ingress", b.Ingress,
		"100 allow all - 10.1.0.0/24", "200 allow all - 2001:db8:1::/64",
		"1000 allow tcp 443 <a>",
		"10000 deny all - <vpc>", "10100 deny all - 2001:db8:1::/64", "10200 deny all - 2001:db8:2::/64",
		"11000 allow tcp 443 0.0.0.0/0", "11100 allow tcp 443 ::/0")
}

// TestUnboundExternal checks that an external zone without addresses that
// no flow names does not stop generation, even with a flow from all (which
// stands for internal zones only).
func TestUnboundExternal(t *testing.T) {
	p := mustPolicy(t, `
zones:
  - {name: a, type: internal, cidrs: [10.1.0.0/24]}
  - {name: b, type: internal, cidrs: [10.2.0.0/24]}
  - {name: spare, type: external}
flows: [{from: all, to: b}]
`)
	if _, err := Generate(p, Options{}); err != nil {
		t.Errorf("unused unbound external zone: %v", err)
	}
	p.Flows = append(p.Flows, Flow{From: "spare", To: "a", Pos: Pos{"t.yaml", 7}})
	if _, err := Generate(p, Options{}); err == nil || !strings.Contains(err.Error(), `t.yaml:5: zone "spare": has no cidrs`) {
		t.Errorf("used unbound external zone: %v", err)
	}
}

// TestHandBuiltPolicy checks that a Policy built in code with unknown
// references gets errors from Lint and Generate, not a panic.
func TestHandBuiltPolicy(t *testing.T) {
	p := &Policy{File: "h.yaml",
		Zones: []Zone{{Name: "a", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}, Pos: Pos{"h.yaml", 2}}},
		Flows: []Flow{{From: "a", To: "b", Services: []string{"x"}, Pos: Pos{"h.yaml", 3}}},
	}
	_, err := Generate(p, Options{})
	for _, want := range []string{`h.yaml:3: flow a->b: unknown zone "b"`, `h.yaml:3: flow a->b: unknown service "x"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Generate: %v, want %q", err, want)
		}
	}
	if fs := Lint(p); len(fs) != 2 || fs[0].Severity != SevError {
		t.Errorf("Lint: %v", fs)
	}
}

// TestMergeNestedPrefixes checks that a peer whose ports a strictly larger
// prefix already allows gets no rule of its own: partly covered ports are
// subtracted, and a containing all-protocol rule removes the peer entirely.
func TestMergeNestedPrefixes(t *testing.T) {
	p := mustPolicy(t, `
services:
  - {name: ssh, protocol: tcp, ports: [22-23]}
  - {name: admin, protocol: tcp, ports: [22, 2222]}
  - {name: everything, protocol: all}
zones:
  - {name: srv, type: internal, cidrs: [192.168.9.0/24]}
  - {name: corp, type: external, cidrs: [10.0.0.0/8]}
  - {name: part, type: external, cidrs: [10.5.0.0/16]}
  - {name: wide, type: external, cidrs: [172.16.0.0/12]}
  - {name: narrow, type: external, cidrs: [172.16.4.0/24]}
flows:
  - {from: corp, to: srv, services: [ssh]}
  - {from: part, to: srv, services: [admin]}
  - {from: wide, to: srv, services: [everything]}
  - {from: narrow, to: srv, services: [everything]}
`)
	res, err := Generate(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var srv *ACL
	for i := range res.ACLs {
		if res.ACLs[i].Zone == "srv" {
			srv = &res.ACLs[i]
		}
	}
	if srv == nil {
		t.Fatal("no ACL for zone srv")
	}
	var peers []string
	for _, r := range ruleStrings(srv.Ingress) {
		if strings.Contains(r, "10.5.0.0/16") && !strings.Contains(r, " 2222 ") {
			t.Errorf("part keeps a rule that corp's 10.0.0.0/8 already covers: %s", r)
		}
		if strings.Contains(r, "172.16.4.0/24") {
			t.Errorf("narrow keeps a rule inside wide's all-protocol rule: %s", r)
		}
		peers = append(peers, r)
	}
	want := []string{"allow tcp 22-23 10.0.0.0/8", "allow tcp 2222 10.5.0.0/16", "allow all - 172.16.0.0/12"}
	for _, w := range want {
		found := false
		for _, r := range peers {
			found = found || strings.HasSuffix(r, w)
		}
		if !found {
			t.Errorf("srv ingress lacks %q; got %q", w, peers)
		}
	}
}

// TestLintFamiliesAndAll checks two lint rules: a flow between zones with no
// address family in common is reported, and an internal zone that only a
// flow from `all` uses is not reported as unused.
func TestLintFamiliesAndAll(t *testing.T) {
	p := mustPolicy(t, `
services: [{name: web, protocol: tcp, ports: [443]}]
zones:
  - {name: v4, type: internal, cidrs: [10.1.0.0/24]}
  - {name: v6, type: internal, cidrs: ["2001:db8:1::/64"]}
  - {name: quiet, type: internal, cidrs: [10.2.0.0/24]}
flows:
  - {from: v4, to: v6, services: [web]}
  - {from: all, to: v4, services: [web]}
`)
	var got []string
	for _, f := range Lint(p) {
		got = append(got, f.String())
	}
	all := strings.Join(got, "\n")
	if !strings.Contains(all, "zones v4 and v6 share no address family") {
		t.Errorf("lint does not report the IPv4-only to IPv6-only flow:\n%s", all)
	}
	if strings.Contains(all, `zone "quiet": no flow uses it`) {
		t.Errorf("zone quiet is a source of the flow from all, yet reported unused:\n%s", all)
	}
}

// TestZeroValuesFailClosed checks that an Action or a protocol that was
// never set allows nothing: the zero Action is not "allow", the zero
// protocol is not "all", and Render refuses a rule carrying either in every
// format rather than emitting an allow-all.
func TestZeroValuesFailClosed(t *testing.T) {
	var a Action
	if a == Allow || a.String() == "allow" {
		t.Errorf("zero Action is %q", a)
	}
	var pr tuple.Proto
	if pr == ProtoAll || ProtoName(pr) == "all" {
		t.Errorf("zero protocol is %q", ProtoName(pr))
	}
	if s := (PortSpec{}).String(); s == "all" {
		t.Errorf("zero PortSpec is %q", s)
	}
	good := Rule{Number: 100, Action: Allow, Proto: tuple.TCP, Ports: tuple.PortRangeFrom(443, 443), Prefix: netip.MustParsePrefix("10.0.0.0/8")}
	zone := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}
	for name, r := range map[string]Rule{
		"zero action":   func() Rule { r := good; r.Action = 0; return r }(),
		"zero protocol": func() Rule { r := good; r.Proto = 0; return r }(),
		"zero rule":     {Number: 200, Prefix: netip.MustParsePrefix("0.0.0.0/0")},
	} {
		for _, f := range Formats {
			res := &Result{ACLs: []ACL{{Zone: "z", Prefixes: zone, Ingress: []Rule{good, r}}}}
			var b bytes.Buffer
			err := Render(&b, res, f, "t.yaml")
			if err == nil || !strings.Contains(err.Error(), "invalid") {
				t.Errorf("%s, %s: err = %v, want an invalid-rule error", name, f, err)
			}
			if b.Len() != 0 {
				t.Errorf("%s, %s: wrote %d bytes", name, f, b.Len())
			}
		}
		res := &Result{ACLs: []ACL{{Zone: "z", Prefixes: zone, Ingress: []Rule{good}}}}
		if err := Render(io.Discard, res, "nftables", "t.yaml"); err != nil {
			t.Fatalf("a valid rule: %v", err)
		}
	}
	if _, err := ParseProtocol(""); err == nil {
		t.Error(`ParseProtocol("") succeeded`)
	}
}
