package main

import "github.com/spf13/cobra"

// benchSubcommands lists the constructors of the "bench" subcommands; each
// lives in its own bench_*.go file.
func benchSubcommands() []func() *cobra.Command {
	return []func() *cobra.Command{
		newBenchDialCmd,
		newBenchNatCmd,
		newBenchProxyCmd,
	}
}

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure portspace on this machine (loopback only)",
		Long: `bench runs measurements on loopback (127.0.0.0/8, ::1) and prints them as a
table or JSON. Every figure published in docs/ comes from one of these
subcommands or from a Go benchmark.`,
	}
	for _, c := range benchSubcommands() {
		cmd.AddCommand(c())
	}
	return cmd
}
