package main

import "github.com/spf13/cobra"

// benchSubcommands holds the constructors of the "bench" subcommands; each
// file adds its own in init (bench_dial.go adds "bench dial").
var benchSubcommands []func() *cobra.Command

func init() { subcommands = append(subcommands, newBenchCmd) }

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure portspace on this machine (loopback only)",
		Long: `bench runs measurements on loopback (127.0.0.0/8, ::1) and prints them as a
table or JSON. Every figure published in docs/ comes from one of these
subcommands or from a Go benchmark.`,
	}
	for _, c := range benchSubcommands {
		cmd.AddCommand(c())
	}
	return cmd
}
