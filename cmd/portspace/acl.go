package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/portspace/portspace/acl"
	"github.com/portspace/portspace/ephemeral"
)

func newACLCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "acl",
		Short: "Generate stateless network ACLs (AWS NACL, nftables) from a policy",
		Long: `acl turns a YAML policy of services, zones and flows (or a naclgen .ng
file) into stateless ACLs whose return rules cover the clients' ephemeral
ports. See docs/acl.md.`,
	}
	c.AddCommand(newACLGenerateCmd(), newACLLintCmd(), newACLImportCmd(), newACLProfilesCmd())
	return c
}

// aclInput holds the flags shared by generate and lint.
type aclInput struct {
	cidrs       string
	policy      string
	codeDefault bool
}

func (in *aclInput) flags(c *cobra.Command) {
	c.Flags().StringVar(&in.cidrs, "cidrs", "", "YAML map of zone (or vpc) to a CIDR or list of CIDRs; overrides the policy's addresses")
	c.Flags().StringVar(&in.policy, "policy", "", "for .ng input: naclgen .policy file that must permit every flow (its rules become the allow list)")
	c.Flags().BoolVar(&in.codeDefault, "ng-code-default", false, "for .ng input: default return range 1024-65535 as naclgen's code (not its docs)")
}

// readInput reads a file named on the command line. A failure names the
// flag that gave it (flag is "" for the POLICY argument) and the path once:
// "acl: --cidrs adir.yaml: is a directory".
func readInput(flag, path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		if flag != "" {
			return nil, fmt.Errorf("acl: %s %s: %w", flag, path, err)
		}
		return nil, fmt.Errorf("acl: %s: %w", path, err)
	}
	return data, nil
}

// isNG reports whether path is read as a naclgen file: a .ng name, or any
// name when the command reads only naclgen files (import).
func isNG(path string, ng bool) bool { return ng || strings.HasSuffix(path, ".ng") }

// load reads a YAML policy or, for a .ng file (or any file when ng is
// set), a naclgen file with its --policy, and binds --cidrs. Flags that do
// not apply to the input are errors, not silently ignored.
func (in *aclInput) load(path string, ng bool) (*acl.Policy, error) {
	ng = isNG(path, ng)
	if !ng && in.policy != "" {
		return nil, fmt.Errorf("acl: --policy applies to naclgen .ng input; a YAML policy has an allow list")
	}
	if !ng && in.codeDefault {
		return nil, fmt.Errorf("acl: --ng-code-default applies to naclgen .ng input; a YAML policy sets default_ephemeral instead")
	}
	data, err := readInput("", path)
	if err != nil {
		return nil, err
	}
	var p *acl.Policy
	if ng {
		p, err = acl.ParseNG(path, data, acl.NGOptions{CodeDefault: in.codeDefault})
	} else {
		p, err = acl.ParsePolicy(path, data)
	}
	if err != nil {
		return nil, err
	}
	if in.policy != "" {
		pd, err := readInput("--policy", in.policy)
		if err != nil {
			return nil, err
		}
		if err := acl.ApplyNGPolicy(p, in.policy, pd); err != nil {
			return nil, err
		}
	}
	if in.cidrs != "" {
		data, err := readInput("--cidrs", in.cidrs)
		if err != nil {
			return nil, err
		}
		if strings.TrimSpace(string(data)) == "" {
			return nil, fmt.Errorf("acl: --cidrs %s: empty (want a YAML map of zone or vpc to CIDRs)", in.cidrs)
		}
		m, err := acl.ParseCIDRs(in.cidrs, data)
		if err != nil {
			return nil, err
		}
		if err := p.BindCIDRs(m); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func printWarnings(w io.Writer, fs []acl.Finding) {
	for _, f := range fs {
		fmt.Fprintln(w, f)
	}
}

func newACLGenerateCmd() *cobra.Command {
	var in aclInput
	var format string
	var maxRules int
	var noMerge bool
	c := &cobra.Command{
		Use:   "generate POLICY",
		Short: "Write the ACLs of a policy (YAML or naclgen .ng) to stdout",
		Long: `generate lints the policy (errors stop it), builds every internal zone's
ACL, merges port ranges and CIDRs, checks the AWS rule quota and writes
the result in one format: ` + strings.Join(acl.Formats, ", ") + `.
Nothing is written to stdout when it fails; warnings go to stderr.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !validFormat(format) {
				return fmt.Errorf("acl: --format %q: unknown format (want %s)", format, strings.Join(acl.Formats, ", "))
			}
			if err := checkMaxRules(maxRules); err != nil {
				return err
			}
			p, err := in.load(args[0], false)
			if err != nil {
				return err
			}
			res, err := acl.Generate(p, acl.Options{MaxRules: maxRules, NoMerge: noMerge, AllowUnbound: !acl.NeedsBinding(format)})
			if err != nil {
				return err
			}
			var out bytes.Buffer
			if err := acl.Render(&out, res, format, args[0]); err != nil {
				return err
			}
			printWarnings(cmd.ErrOrStderr(), res.Warnings)
			_, err = cmd.OutOrStdout().Write(out.Bytes())
			return err
		},
	}
	in.flags(c)
	c.Flags().StringVarP(&format, "format", "f", "terraform", "output format: "+strings.Join(acl.Formats, ", "))
	completeFlag(c, "format", acl.Formats...)
	c.Flags().IntVar(&maxRules, "max-rules", acl.DefaultMaxRules, "rules allowed per ACL, direction and address family, including the default deny (AWS: 20, at most 40)")
	c.Flags().BoolVar(&noMerge, "no-merge", false, "only remove duplicates; do not merge port ranges and CIDRs")
	return c
}

// checkMaxRules refuses a --max-rules that AWS cannot grant.
func checkMaxRules(n int) error {
	if n < 2 || n > acl.MaxRulesLimit {
		return fmt.Errorf("acl: --max-rules %d: want 2 to %d (AWS's default quota is %d rules per ACL, direction and address family, including the default deny)",
			n, acl.MaxRulesLimit, acl.DefaultMaxRules)
	}
	return nil
}

func validFormat(f string) bool {
	for _, x := range acl.Formats {
		if x == f {
			return true
		}
	}
	return false
}

func newACLLintCmd() *cobra.Command {
	var in aclInput
	var maxRules int
	c := &cobra.Command{
		Use:   "lint POLICY",
		Short: "Check a policy and print its rule counts before and after merging",
		Long: `lint prints every finding (service ports inside return ranges, NodePort
overlap, unused zones and services, flows the allow list does not permit)
on stderr and, on stdout, per ACL, direction and address family, the rule
count including the default deny after merging and with --no-merge. It
fails on any error finding or a count over --max-rules.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkMaxRules(maxRules); err != nil {
				return err
			}
			p, err := in.load(args[0], false)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			findings := acl.Lint(p)
			nerr := 0
			for _, f := range findings {
				fmt.Fprintln(cmd.ErrOrStderr(), f)
				if f.Severity == acl.SevError {
					nerr++
				}
			}
			if nerr > 0 {
				return fmt.Errorf("acl: %s: %d lint errors", args[0], nerr)
			}
			opt := acl.Options{MaxRules: maxRules, AllowUnbound: true, NoLimit: true}
			merged, err := acl.Generate(p, opt)
			if err != nil {
				return err
			}
			opt.NoMerge = true
			raw, err := acl.Generate(p, opt)
			if err != nil {
				return err
			}
			limit := maxRules
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "zone\tdirection\tfamily\trules\tunmerged\tlimit\n")
			over := 0
			total, totalRaw := 0, 0
			for i := range merged.ACLs {
				a, r := &merged.ACLs[i], &raw.ACLs[i]
				for _, eg := range []bool{false, true} {
					for _, v6 := range []bool{false, true} {
						n, nr := a.Count(eg, v6), r.Count(eg, v6)
						if n == 0 && nr == 0 {
							continue
						}
						mark := ""
						if n+1 > limit {
							mark, over = " OVER", over+1
						}
						total, totalRaw = total+n+1, totalRaw+nr+1
						fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d%s\n", a.Zone, aclDirection(eg), aclFamily(v6), n+1, nr+1, limit, mark)
					}
				}
			}
			fmt.Fprintf(tw, "total\t\t\t%d\t%d\t\n", total, totalRaw)
			tw.Flush()
			if over > 0 {
				return fmt.Errorf("%w: %s: %d ACL directions over the limit of %d rules (including the default deny)", acl.ErrTooManyRules, args[0], over, limit)
			}
			return nil
		},
	}
	in.flags(c)
	c.Flags().IntVar(&maxRules, "max-rules", acl.DefaultMaxRules, "rules allowed per ACL, direction and address family, including the default deny")
	return c
}

func aclDirection(egress bool) string {
	if egress {
		return "egress"
	}
	return "ingress"
}

func aclFamily(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

func newACLImportCmd() *cobra.Command {
	var in aclInput
	c := &cobra.Command{
		Use:   "import FILE.ng",
		Short: "Convert a naclgen .ng file (and its .policy) to a YAML policy on stdout",
		Long: `import reads a file in naclgen's input format (and with --policy its
.policy file, whose rules become the allow list) and writes the same
policy as YAML. --cidrs writes zone addresses into it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := in.load(args[0], true)
			if err != nil {
				return err
			}
			// As naclgen does, an implementation that its --policy does
			// not permit (or any other error finding) fails the import.
			nerr := 0
			for _, f := range acl.Lint(p) {
				if f.Severity == acl.SevError {
					fmt.Fprintln(cmd.ErrOrStderr(), f)
					nerr++
				}
			}
			if nerr > 0 {
				return fmt.Errorf("acl: %s: %d lint errors; nothing imported", args[0], nerr)
			}
			header := "Imported by portspace acl import from " + filepath.Base(args[0])
			if in.policy != "" {
				header += " and " + filepath.Base(in.policy)
			}
			header += "."
			if in.cidrs == "" {
				header += "\nnaclgen files carry no addresses: add cidrs, or pass --cidrs FILE to\n" +
					"generate; --format terraform binds them through local.naclgen_subnets."
			}
			_, err = cmd.OutOrStdout().Write(acl.WriteYAML(p, header))
			return err
		},
	}
	in.flags(c)
	return c
}

func newACLProfilesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "profiles",
		Short: "List the named ephemeral-port profiles",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			for _, n := range ephemeral.Names() {
				s, _ := ephemeral.Profile(n)
				fmt.Fprintf(tw, "%s\t%s\t%d ports\n", n, s, s.Len())
			}
			return tw.Flush()
		},
	}
}
