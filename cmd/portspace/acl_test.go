package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/portspace/portspace/acl"
)

// TestACLGenerateFailsQuietly checks that a failing generation writes
// nothing to stdout: a lint error, a quota overflow and an unbound zone.
func TestACLGenerateFailsQuietly(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`services: [{name: s, protocol: tcp, ports: [40000]}]
zones:
  - {name: a, type: internal, cidrs: [10.1.0.0/24]}
  - {name: b, type: internal, cidrs: [10.2.0.0/24]}
flows: [{from: a, to: b, services: [s]}]
`), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"acl", "generate", bad, "--format", "terraform"}, "bad.yaml:5: flow a->b: service s port 40000/tcp lies inside the return range 32768-65535"},
		{[]string{"acl", "generate", "../../acl/testdata/vpc.ng", "--cidrs", "../../acl/testdata/vpc-cidrs.yaml", "--max-rules", "8"}, "zone shared ingress IPv4: 12 rules (11 + default deny)"},
		{[]string{"acl", "generate", "../../acl/testdata/small.ng", "--format", "aws-json"}, `small.ng:6: zone "front": has no cidrs`},
		{[]string{"acl", "generate", bad, "--format", "pdf"}, `--format "pdf": unknown format`},
	} {
		out, _, err := runCLI(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.args, err, c.want)
		}
		if out != "" {
			t.Errorf("%v: wrote %d bytes to stdout on failure", c.args, len(out))
		}
	}
}

// TestACLImportGenerate imports a naclgen file, generates from the YAML it
// wrote, and compares with generating from the .ng file directly.
func TestACLImportGenerate(t *testing.T) {
	y, _, err := runCLI(t, "acl", "import", "../../acl/testdata/vpc.ng", "--cidrs", "../../acl/testdata/vpc-cidrs.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(y, `cidrs: [10.20.20.0/22]`) {
		t.Errorf("import did not write the bound cidrs:\n%s", y)
	}
	path := filepath.Join(t.TempDir(), "vpc.ng.yaml")
	os.WriteFile(path, []byte(y), 0o644)
	viaYAML, _, err := runCLI(t, "acl", "generate", path, "-f", "aws-json")
	if err != nil {
		t.Fatal(err)
	}
	direct, _, err := runCLI(t, "acl", "generate", "../../acl/testdata/vpc.ng", "--cidrs", "../../acl/testdata/vpc-cidrs.yaml", "-f", "aws-json")
	if err != nil {
		t.Fatal(err)
	}
	if viaYAML != direct || !strings.Contains(direct, `"NetworkAclId": "shared"`) {
		t.Errorf("import+generate differs from direct generation")
	}
	lint, _, err := runCLI(t, "acl", "lint", "../../acl/testdata/vpc.ng", "--cidrs", "../../acl/testdata/vpc-cidrs.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(lint, "total") {
		t.Errorf("lint prints no counts:\n%s", lint)
	}
}

// TestACLLintPolicy checks naclgen's implementation-versus-policy check
// through lint --policy: a flow the policy does not permit fails.
func TestACLLintPolicy(t *testing.T) {
	dir := t.TempDir()
	impl := filepath.Join(dir, "i.ng")
	pol := filepath.Join(dir, "i.policy")
	os.WriteFile(impl, []byte("service ssh 22/tcp\nzone a internal\nzone b internal\nrule a {\n > b ssh\n}\n"), 0o644)
	os.WriteFile(pol, []byte("zone a internal\nzone b internal\nrule b {\n > a\n}\n"), 0o644)
	out, errOut, err := runCLI(t, "acl", "lint", impl, "--policy", pol)
	if err == nil || !strings.Contains(errOut, "i.ng:5: error: flow a->b: not permitted by the policy's allow list (services ssh)") {
		t.Errorf("lint --policy: err %v, stderr:\n%s", err, errOut)
	}
	if strings.Contains(out, "not permitted") {
		t.Errorf("lint wrote a finding to stdout:\n%s", out)
	}
	// import fails as naclgen does when the policy blocks a flow, and
	// writes no YAML.
	out, errOut, err = runCLI(t, "acl", "import", impl, "--policy", pol)
	if err == nil || !strings.Contains(errOut, "i.ng:5: error: flow a->b: not permitted") || out != "" {
		t.Errorf("import --policy of a blocked flow: err %v, stdout %q, stderr %q", err, out, errOut)
	}
	os.WriteFile(pol, []byte("zone a internal\nzone b internal\nrule a {\n > b\n}\n"), 0o644)
	if _, _, err := runCLI(t, "acl", "lint", impl, "--policy", pol); err != nil {
		t.Errorf("permitted flow: %v", err)
	}
	if out, _, err := runCLI(t, "acl", "import", impl, "--policy", pol); err != nil || !strings.Contains(out, "allow:") {
		t.Errorf("import of a permitted flow: err %v, output:\n%s", err, out)
	}
}

// TestACLMaxRules checks --max-rules: values AWS cannot grant fail before
// anything is printed, and lint marks and counts the directions over it.
func TestACLMaxRules(t *testing.T) {
	const ng = "../../acl/testdata/vpc.ng"
	const cidrs = "../../acl/testdata/vpc-cidrs.yaml"
	for _, sub := range []string{"generate", "lint"} {
		for _, m := range []string{"0", "1", "41"} {
			out, _, err := runCLI(t, "acl", sub, ng, "--cidrs", cidrs, "--max-rules", m)
			if err == nil || !strings.Contains(err.Error(), "--max-rules "+m+": want 2 to 40") || out != "" {
				t.Errorf("%s --max-rules %s: err %v, stdout %q", sub, m, err, out)
			}
		}
	}
	// docs/acl.md: merged, the largest direction (shared ingress) holds
	// 12 rules; with a limit of 11 exactly the directions above it are
	// marked and counted.
	out, _, err := runCLI(t, "acl", "lint", ng, "--cidrs", cidrs, "--max-rules", "11")
	if !errors.Is(err, acl.ErrTooManyRules) {
		t.Fatalf("lint --max-rules 11: %v", err)
	}
	over := 0
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || f[0] == "zone" || f[0] == "total" {
			continue
		}
		n, _ := strconv.Atoi(f[3])
		if marked := strings.HasSuffix(l, "OVER"); marked != (n > 11) {
			t.Errorf("line %q: %d rules, OVER mark %v", l, n, marked)
		}
		if n > 11 {
			over++
		}
	}
	if over == 0 || !strings.Contains(err.Error(), strconv.Itoa(over)+" ACL directions over the limit of 11") {
		t.Errorf("%d directions over 11; error %v\n%s", over, err, out)
	}
}

// tableRules counts the rule lines of `acl generate --format table` output.
func tableRules(out string) int {
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "  ingress ") || strings.HasPrefix(l, "  egress ") {
			n++
		}
	}
	return n
}

// TestACLFlagsChangeOutput checks the flags no other test reads: lint's
// unmerged column (the figures docs/acl.md publishes for vpc.ng), --no-merge
// and --ng-code-default.
func TestACLFlagsChangeOutput(t *testing.T) {
	vpc := []string{"../../acl/testdata/vpc.ng", "--cidrs", "../../acl/testdata/vpc-cidrs.yaml"}
	out, _, err := runCLI(t, append([]string{"acl", "lint"}, vpc...)...)
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(out[strings.LastIndex(out, "total"):]); len(f) < 3 || f[1] != "108" || f[2] != "181" {
		t.Errorf("lint total line = %q, want merged 108 and unmerged 181", f)
	}
	merged, _, err := runCLI(t, append([]string{"acl", "generate", "--format", "table"}, vpc...)...)
	if err != nil {
		t.Fatal(err)
	}
	raw, _, err := runCLI(t, append([]string{"acl", "generate", "--format", "table", "--no-merge", "--max-rules", "40"}, vpc...)...)
	if err != nil {
		t.Fatal(err)
	}
	// Table lines leave out the 12 default denies that the lint totals count.
	if m, r := tableRules(merged), tableRules(raw); m != 108-12 || r != 181-12 {
		t.Errorf("table rules: merged %d, --no-merge %d; want %d and %d", m, r, 108-12, 181-12)
	}
	def, _, err := runCLI(t, "acl", "generate", "--format", "table", "../../acl/testdata/small.ng")
	if err != nil {
		t.Fatal(err)
	}
	code, _, err := runCLI(t, "acl", "generate", "--format", "table", "--ng-code-default", "../../acl/testdata/small.ng")
	if err != nil {
		t.Fatal(err)
	}
	if d, c := strings.Count(def, "1024-65535"), strings.Count(code, "1024-65535"); c <= d {
		t.Errorf("--ng-code-default should widen return rules to naclgen's 1024-65535: %d such rules with it, %d without", c, d)
	}
}

// TestACLLintStreams checks that lint, like generate, writes its findings to
// stderr and only the count table to stdout.
func TestACLLintStreams(t *testing.T) {
	out, errOut, err := runCLI(t, "acl", "lint", "../../acl/testdata/doc.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut, "doc.yaml:8: warning: flow internet->web") {
		t.Errorf("stderr lacks the NodePort warning:\n%s", errOut)
	}
	if strings.Contains(out, "warning") || !strings.HasPrefix(out, "zone") || !strings.Contains(out, "total") {
		t.Errorf("stdout is not just the table:\n%s", out)
	}
}

// TestACLBadInputOnce runs acl with inputs that used to be accepted or
// reported in a cascade, and checks each fails with one error that names
// the flag or file the user typed, and writes nothing to stdout.
func TestACLBadInputOnce(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	emptyNG := write("empty.ng", "# only a comment\n\n")
	emptyYAML := write("empty.yaml", "")
	emptyCIDRs := write("cidrs.yaml", "\n")
	adir := filepath.Join(dir, "adir.yaml")
	os.Mkdir(adir, 0o755)
	badProto := write("proto.yaml", "services: [{name: s, protocol: tcpx, ports: [80, 81]}]\nzones: [{name: a, type: internal, cidrs: [10.1.0.0/24]}]\nflows: [{from: a, to: internet, services: [s]}]\n")
	badCIDR := write("bad-cidrs.yaml", "a: 10.1.0.0/33\n")
	const doc = "../../acl/testdata/doc.yaml"
	for _, c := range []struct {
		args []string
		want string // the whole error contains this
		not  string // and not this (the cascade)
	}{
		{[]string{"acl", "generate", emptyNG}, "empty.ng:1: empty naclgen file", ""},
		{[]string{"acl", "generate", emptyYAML}, "empty.yaml:1: empty policy", ""},
		{[]string{"acl", "generate", doc, "--cidrs", emptyCIDRs}, "--cidrs " + emptyCIDRs + ": empty", ""},
		{[]string{"acl", "generate", doc, "--ng-code-default"}, "--ng-code-default applies to naclgen .ng input", ""},
		{[]string{"acl", "generate", doc, "--policy", emptyNG}, "--policy applies to naclgen .ng input", ""},
		{[]string{"acl", "generate", adir}, adir + ": is a directory", "read"},
		{[]string{"acl", "lint", doc, "--cidrs", adir}, "--cidrs " + adir + ": is a directory", "read"},
		{[]string{"acl", "generate", "../../acl/testdata/small.ng", "--policy", adir}, "--policy " + adir + ": is a directory", "read"},
		{[]string{"acl", "generate", badProto}, `unknown protocol "tcpx"`, "no protocol"},
		{[]string{"acl", "generate", doc, "--cidrs", badCIDR}, `bad CIDR "10.1.0.0/33"`, "no CIDRs"},
		{[]string{"acl", "import", doc}, "doc.yaml:1: this is a YAML policy, not a naclgen file", "cannot parse"},
	} {
		out, _, err := runCLI(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.args[1:], err, c.want)
			continue
		}
		if c.not != "" && strings.Contains(err.Error(), c.not) {
			t.Errorf("%v: error %q also says %q", c.args[1:], err, c.not)
		}
		if n := strings.Count(err.Error(), c.want); n != 1 {
			t.Errorf("%v: %q reported %d times: %v", c.args[1:], c.want, n, err)
		}
		if out != "" {
			t.Errorf("%v: wrote %d bytes to stdout", c.args[1:], len(out))
		}
	}
}
