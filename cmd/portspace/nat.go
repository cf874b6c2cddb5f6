package main

import "github.com/spf13/cobra"

// natSubcommands holds the constructors of the `portspace nat` subcommands;
// each subcommand's file (nat_*.go) adds its own in init.
var natSubcommands []func() *cobra.Command

func init() { subcommands = append(subcommands, newNatCmd) }

func newNatCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "nat",
		Short: "NAT engine tools: simulate traffic through a preset, answer whois from the event log",
		Long: `Tools around the portspace NAT engine (package nat).

  portspace nat simulate   replay synthetic traffic through a preset with a fake clock
  portspace nat whois      which subscriber held an external address:port at a time`,
	}
	for _, sc := range natSubcommands {
		c.AddCommand(sc())
	}
	return c
}
