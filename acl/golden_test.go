package acl

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/portspace/portspace/internal/netnstest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// goldenCase is one input whose output in every format is pinned.
type goldenCase struct {
	name   string // golden file prefix
	policy string // testdata file (.yaml or .ng)
	cidrs  string // optional --cidrs file
}

var goldenCases = []goldenCase{
	{"doc", "doc.yaml", ""}, // docs/acl.md shows these outputs
	{"example", "example.yaml", ""},
	{"vpc", "vpc.ng", "vpc-cidrs.yaml"},
	{"small-unbound", "small.ng", ""}, // Terraform binds through local.naclgen_subnets
}

func loadCase(t testing.TB, c goldenCase) *Policy {
	t.Helper()
	path := filepath.Join("testdata", c.policy)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var p *Policy
	if strings.HasSuffix(path, ".ng") {
		p, err = ParseNG(path, data, NGOptions{})
	} else {
		p, err = ParsePolicy(path, data)
	}
	if err != nil {
		t.Fatal(err)
	}
	if c.cidrs != "" {
		cp := filepath.Join("testdata", c.cidrs)
		d, err := os.ReadFile(cp)
		if err != nil {
			t.Fatal(err)
		}
		m, err := ParseCIDRs(cp, d)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.BindCIDRs(m); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func render(t testing.TB, p *Policy, format, source string) ([]byte, error) {
	res, err := Generate(p, Options{AllowUnbound: !NeedsBinding(format)})
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	err = Render(&b, res, format, source)
	return b.Bytes(), err
}

var formatExt = map[string]string{
	"terraform": "tf", "aws-json": "json", "cloudformation": "cfn.json", "nftables": "nft", "table": "txt",
}

// TestGolden pins every output format for each sample; go test -update
// rewrites the files.
func TestGolden(t *testing.T) {
	for _, c := range goldenCases {
		for _, format := range Formats {
			name := c.name + "." + formatExt[format]
			t.Run(name, func(t *testing.T) {
				p := loadCase(t, c)
				got, err := render(t, p, format, c.policy)
				golden := filepath.Join("testdata", "golden", name)
				if c.cidrs == "" && strings.HasSuffix(c.policy, ".ng") && NeedsBinding(format) {
					// Unbound zones: only terraform and table can render.
					if err == nil {
						t.Fatalf("%s rendered unbound zones", format)
					}
					if !strings.Contains(err.Error(), "has no cidrs") {
						t.Errorf("error %q does not say the zone has no cidrs", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				// Byte-identical on a second run.
				again, err := render(t, loadCase(t, c), format, c.policy)
				if err != nil || !bytes.Equal(got, again) {
					t.Fatalf("second run differs (err %v)", err)
				}
				if *update {
					if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(golden, got, 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run go test -update)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs from %s (run go test -update and review the diff):\n%s", name, golden, firstDiff(got, want))
				}
			})
		}
	}
}

func firstDiff(got, want []byte) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var a, b string
		if i < len(g) {
			a = g[i]
		}
		if i < len(w) {
			b = w[i]
		}
		if a != b {
			return "line " + strconv.Itoa(i+1) + ":\n got: " + a + "\nwant: " + b
		}
	}
	return ""
}

// TestNFTCheck loads every nftables golden file with nft -c (parse and
// kernel validation, nothing applied) inside a fresh network namespace.
func TestNFTCheck(t *testing.T) {
	netnstest.RequireCommand(t, "nft")
	ns := netnstest.New(t)
	files, err := filepath.Glob(filepath.Join("testdata", "golden", "*.nft"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no nftables golden files (%v)", err)
	}
	// shapePolicy adds ICMPv6, all-protocol and IPv6 internet rules.
	p, err := ParsePolicy("shape.yaml", []byte(shapePolicy))
	if err != nil {
		t.Fatal(err)
	}
	text, err := render(t, p, "nftables", "shape.yaml")
	if err != nil {
		t.Fatal(err)
	}
	shape := filepath.Join(t.TempDir(), "shape.nft")
	if err := os.WriteFile(shape, text, 0o644); err != nil {
		t.Fatal(err)
	}
	files = append(files, shape)
	for _, f := range files {
		abs, _ := filepath.Abs(f)
		if out, err := ns.Run("nft", "-c", "-f", abs); err != nil {
			t.Errorf("nft -c -f %s: %v\n%s", f, err, out)
		}
	}
}

// TestTerraformFmt runs `terraform fmt -check` on every Terraform golden
// file where terraform is installed (an extra, independent syntax and
// layout check; CI does not install terraform, and the golden files pin
// the output there).
func TestTerraformFmt(t *testing.T) {
	tf, err := exec.LookPath("terraform")
	if err != nil {
		t.Skip("terraform is not installed; TestGolden still pins the output")
	}
	files, err := filepath.Glob(filepath.Join("testdata", "golden", "*.tf"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Terraform golden files (%v)", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// `terraform fmt -` formats standard input to standard output.
		cmd := exec.Command(tf, "fmt", "-no-color", "-")
		cmd.Stdin = bytes.NewReader(data)
		cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Errorf("terraform fmt %s: %v\n%s", f, err, stderr.Bytes())
			continue
		}
		if !bytes.Equal(out, data) {
			t.Errorf("%s is not as terraform fmt lays it out:\n%s", f, firstDiff(data, out))
		}
	}
}
