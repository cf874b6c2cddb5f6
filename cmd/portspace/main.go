// Command portspace shares source ports and IPv4 addresses safely: it dials
// from chosen port sets, runs a NAT engine, and generates stateless ACLs.
// Each subcommand lives in its own file and is a thin layer over a package.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// subcommands lists the constructors of the top-level subcommands, in the
// order "portspace help" shows them. This is the one place a subcommand is
// registered; each constructor lives in its own file.
func subcommands() []func() *cobra.Command {
	return []func() *cobra.Command{
		newACLCmd,
		newBenchCmd,
		newCapacityCmd,
		newLeaseCmd,
		newNatCmd,
		newNatprobeCmd,
		newProxyCmd,
		newPunchCmd,
		newSteerCmd,
		newStunCmd,
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "portspace",
		Short:         "Share source ports and IPv4 addresses by 4-tuple",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE:          func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		// --version prints the module's build information (version.go).
		Version: version(),
	}
	root.SetVersionTemplate("portspace {{.Version}}\n")
	for _, c := range subcommands() {
		root.AddCommand(c())
	}
	return root
}

// exitError carries the exit status main uses for err (default 1), for
// commands whose status says more than failed or not (nat whois: 1 when
// nobody held the endpoint, 2 for an error).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// exitCode returns the exit status for err: an exitError's code, else 1.
func exitCode(err error) int {
	if ee := (*exitError)(nil); errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "portspace:", err)
		os.Exit(exitCode(err))
	}
}

// printJSONObject writes v to the command's standard output as indented
// JSON, the form every --json flag prints.
func printJSONObject(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
