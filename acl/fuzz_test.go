package acl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParsePolicy feeds arbitrary YAML to ParsePolicy: it must never panic,
// every error must match ErrInvalid and name the file, and a policy that
// parses must survive a WriteYAML round trip and generation.
func FuzzParsePolicy(f *testing.F) {
	// The samples in testdata.
	if data, err := os.ReadFile(filepath.Join("testdata", "example.yaml")); err == nil {
		f.Add(data)
	}
	// A minimal flow between two zones.
	f.Add([]byte("services: [{name: s, protocol: tcp, ports: [80]}]\nzones:\n  - {name: a, type: internal, cidrs: [10.1.0.0/24]}\n  - {name: b, type: internal, cidrs: [10.2.0.0/24]}\nflows: [{from: a, to: b, services: [s]}]\n"))
	// Internet, all, IPv6 and custom profiles.
	f.Add([]byte("profiles: {p: [40000-40999, linux]}\nzones:\n  - {name: a, type: internal, cidrs: [\"2001:db8::/64\"], ephemeral: [p]}\nflows:\n  - {from: internet, to: a, tags: [+ephemeral_loose]}\n  - {from: all, to: a}\n"))
	// Wrong shapes: a list where a map belongs, null values, aliases.
	f.Add([]byte("zones: {a: b}\nflows: [[1]]\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("services:\n  - name: ~\n    ports: ~\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy("f.yaml", data)
		if err != nil {
			if !strings.Contains(err.Error(), "f.yaml:") {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		y := WriteYAML(p, "")
		q, err := ParsePolicy("rt.yaml", y)
		if err != nil {
			t.Fatalf("WriteYAML output does not parse: %v\n%s", err, y)
		}
		if !samePolicy(p, q) {
			t.Fatalf("round trip changed the policy:\n%s", y)
		}
		if res, err := Generate(p, Options{AllowUnbound: true, NoLimit: true}); err == nil {
			for _, format := range []string{"terraform", "table"} {
				if err := Render(&strings.Builder{}, res, format, "f.yaml"); err != nil {
					t.Fatalf("render %s: %v", format, err)
				}
			}
		}
	})
}

// FuzzParseNG feeds arbitrary text to the naclgen parser: no panics, errors
// with file:line, and accepted input round-trips through WriteYAML.
func FuzzParseNG(f *testing.F) {
	for _, n := range []string{"vpc.ng", "small.ng"} {
		if data, err := os.ReadFile(filepath.Join("testdata", n)); err == nil {
			f.Add(data)
		}
	}
	// A rule block with tags, any and the reserved zones.
	f.Add([]byte("service s 22/tcp\nzone a internal +single_az\nrule a {\n < internet s +ephemeral_loose\n > b any\n}\nzone b external\n"))
	// An unclosed block and a stray brace.
	f.Add([]byte("rule a {\n}\n}\nrule b {\n"))
	// Port edge cases.
	f.Add([]byte("service s 65535/udp 1-2/tcp 0/tcp /tcp 5/\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseNG("f.ng", data, NGOptions{})
		if err != nil {
			if !strings.Contains(err.Error(), "f.ng:") {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		y := WriteYAML(p, "")
		q, err := ParsePolicy("rt.yaml", y)
		if err != nil {
			t.Fatalf("imported YAML does not parse: %v\n%s", err, y)
		}
		if !samePolicy(p, q) {
			t.Fatalf("round trip changed the policy:\n%s", y)
		}
	})
}

// FuzzParseCIDRs feeds arbitrary YAML to the --cidrs parser: no panics,
// errors carry file:line, and every accepted prefix is masked.
func FuzzParseCIDRs(f *testing.F) {
	// A CIDR, a list, the vpc key, IPv6.
	f.Add([]byte("vpc: 10.0.0.0/16\na: [10.0.1.0/24, \"2001:db8::/64\"]\n"))
	// Host bits, a map value, a duplicate key.
	f.Add([]byte("a: 10.0.0.1/24\nb: {c: d}\na: 10.0.0.0/8\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseCIDRs("c.yaml", data)
		if err != nil {
			if !strings.Contains(err.Error(), "c.yaml:") {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		for z, ps := range m.Zones {
			for _, p := range ps {
				if p.Masked() != p {
					t.Fatalf("zone %s: %v has host bits", z, p)
				}
			}
		}
	})
}
