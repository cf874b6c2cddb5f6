// Command portspace shares source ports and IPv4 addresses safely: it dials
// from chosen port sets, runs a NAT engine, and generates stateless ACLs.
// Each subcommand lives in its own file and is a thin layer over a package.
package main

import (
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
		newNatCmd,
		newNatprobeCmd,
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
	}
	for _, c := range subcommands() {
		root.AddCommand(c())
	}
	return root
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "portspace:", err)
		os.Exit(1)
	}
}
