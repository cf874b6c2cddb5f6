package acl

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestParseNG checks the translation of naclgen lines into flows, tags and
// services.
func TestParseNG(t *testing.T) {
	src := `
service https 443/tcp   # a comment
service dns   53/udp 53/tcp
zone dmz  internal +single_az
zone int  internal +ephemeral_strict
zone corp external +ephemeral_loose
zone internet external   # declared as in doc/TUTORIAL.md
rule dmz {
  < internet https +ephemeral_loose
  > int
}
rule all {
  > int dns
}
rule int {
  < corp any
}
`
	p, err := ParseNG("s.ng", []byte(src), NGOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var flows []string
	for _, f := range p.Flows {
		flows = append(flows, f.Name()+" "+strings.Join(f.Services, ",")+" "+strings.Join(f.Tags, ",")+" "+f.Pos.String())
	}
	want := []string{
		"internet->dmz https +ephemeral_loose s.ng:9",
		"dmz->int   s.ng:10",
		"all->int dns  s.ng:13",
		"corp->int   s.ng:16",
	}
	if !reflect.DeepEqual(flows, want) {
		t.Errorf("flows:\n got %q\nwant %q", flows, want)
	}
	if len(p.Zones) != 3 || p.Zone("internet") != nil {
		t.Errorf("zones %+v: want dmz, int, corp (internet stays reserved)", p.Zones)
	}
	if !p.Zone("dmz").Has(TagSingleAZ) || !p.Zone("corp").External {
		t.Errorf("zone tags/types lost: %+v", p.Zones)
	}
	if p.DefaultEphemeral != nil {
		t.Errorf("default ephemeral %v, want the documented strict default", p.DefaultEphemeral)
	}
	p2, _ := ParseNG("s.ng", []byte(src), NGOptions{CodeDefault: true})
	if got, _ := p2.ReturnRange(&p2.Flows[1], p2.Zone("dmz")); got.String() != "1024-65535" {
		t.Errorf("code default: %v", got)
	}
}

// TestNGErrors checks that errors name the file, the 1-based line and the
// item.
func TestNGErrors(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"klaatu barada nikto\n", `n.ng:1: cannot parse "klaatu barada nikto"`},
		{"zone a internal\nrule a {\n ] b\n}\n", `n.ng:3: rule a: cannot parse "] b"`},
		{"zone a internal +fast\n", `n.ng:1: zone "a": unknown zone tag "+fast"`},
		{"service s 22/sctp\n", `n.ng:1: service "s": port "22/sctp": unknown protocol`},
		{"service s 0/tcp\n", `n.ng:1: service "s": port "0/tcp": port 0 is out of range`},
		{"service s 70000/tcp\n", `n.ng:1: service "s": port "70000/tcp"`},
		{"zone all internal\n", `n.ng:1: zone "all": the name is reserved`},
		{"zone a internal\nrule a {\n > b\n}\n", `n.ng:3: flow a->b: unknown zone "b"`},
		{"zone a internal\nzone b internal\nrule a {\n > b web\n}\n", `n.ng:4: flow a->b: unknown service "web"`},
		{"zone a internal\nzone b internal\nrule a {\n < b\n}\n", `n.ng:4: rule a: cannot accept (<) from internal zone b`},
		{"zone a internal\nrule a {\n > all\n}\n", `n.ng:3: rule a: zone all cannot be a rule target`},
		{"zone a internal\nrule a {\n > internet +quick\n}\n", `n.ng:3: rule a: unknown rule tag "+quick"`},
		{"zone a internal\nzone x external\nrule x {\n > a\n}\n", `n.ng:4: rule x: rules can only be defined on internal zones`},
		{"zone a internal\nrule a {\n > internet\n", `n.ng:2: rule a: block is not closed`},
		{"zone a internal\nzone a external\n", `n.ng:2: zone "a": defined twice (first at line 1)`},
	} {
		_, err := ParseNG("n.ng", []byte(c.src), NGOptions{})
		if err == nil {
			t.Errorf("%q: no error", c.src)
			continue
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %v does not match ErrInvalid", c.src, err)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %q lacks %q", c.src, err, c.want)
		}
	}
}

// TestNGPolicy checks the implementation-versus-policy check through the
// allow list.
func TestNGPolicy(t *testing.T) {
	impl := "service ssh 22/tcp\nservice https 443/tcp\nzone a internal\nzone b internal\nrule a {\n > b ssh https\n}\n"
	p, err := ParseNG("i.ng", []byte(impl), NGOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pol := "service https 443/tcp\nservice smtp 25/tcp\nzone a internal\nzone b internal\nzone c internal\nrule a {\n > b https\n > c\n}\n"
	if err := ApplyNGPolicy(p, "i.policy", []byte(pol)); err != nil {
		t.Fatal(err)
	}
	if len(p.Allow) != 1 || p.Service("smtp") == nil {
		t.Fatalf("allow %+v; smtp copied: %v", p.Allow, p.Service("smtp") != nil)
	}
	var errs []string
	for _, f := range Lint(p) {
		if f.Severity == SevError {
			errs = append(errs, f.String())
		}
	}
	if len(errs) != 1 || !strings.Contains(errs[0], "i.ng:6: error: flow a->b: not permitted by the policy's allow list (services ssh)") {
		t.Errorf("lint errors %q", errs)
	}
	p, _ = ParseNG("i.ng", []byte(impl), NGOptions{})
	err = ApplyNGPolicy(p, "i.policy", []byte("service ssh 2222/tcp\nzone a external\n"))
	for _, want := range []string{`i.ng:1: service "ssh": differs from policy i.policy (line 1)`, `i.ng:3: zone "a": is internal here but external in policy i.policy`, `i.ng:4: zone "b": not defined in policy`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("policy mismatch: %v lacks %q", err, want)
		}
	}
}

// TestImportRoundTrip checks that the YAML written for an imported file
// parses back to the same policy and generates the same rules.
func TestImportRoundTrip(t *testing.T) {
	for _, name := range []string{"vpc.ng", "small.ng"} {
		path := filepath.Join("testdata", name)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		p, err := ParseNG(path, data, NGOptions{})
		if err != nil {
			t.Fatal(err)
		}
		y := WriteYAML(p, "imported")
		q, err := ParsePolicy("rt.yaml", y)
		if err != nil {
			t.Fatalf("%s: re-parse: %v\n%s", name, err, y)
		}
		if !samePolicy(p, q) {
			t.Errorf("%s: round trip changed the policy:\n%s", name, y)
		}
		a, err1 := renderAll(p, "terraform")
		b, err2 := renderAll(q, "terraform")
		if err1 != nil || err2 != nil || a != b {
			t.Errorf("%s: terraform differs after import (%v, %v)", name, err1, err2)
		}
	}
}

// samePolicy compares two policies, ignoring positions and file names.
func samePolicy(a, b *Policy) bool {
	strip := func(p *Policy) Policy {
		c := *p
		c.File = ""
		c.Services = append([]Service(nil), p.Services...)
		for i := range c.Services {
			c.Services[i].Pos = Pos{}
			c.Services[i].Ports = normalizeSpecs(c.Services[i].Ports)
		}
		c.Zones = append([]Zone(nil), p.Zones...)
		for i := range c.Zones {
			c.Zones[i].Pos = Pos{}
		}
		c.Flows = append([]Flow(nil), p.Flows...)
		for i := range c.Flows {
			c.Flows[i].Pos = Pos{}
		}
		c.Allow = append([]Permit(nil), p.Allow...)
		for i := range c.Allow {
			c.Allow[i].Pos = Pos{}
		}
		if len(c.Profiles) == 0 {
			c.Profiles = nil
		}
		return c
	}
	return reflect.DeepEqual(strip(a), strip(b))
}

func renderAll(p *Policy, format string) (string, error) {
	res, err := Generate(p, Options{AllowUnbound: true, NoLimit: true})
	if err != nil {
		return "", err
	}
	var b strings.Builder
	err = Render(&b, res, format, "x")
	return b.String(), err
}
