package main

import "github.com/spf13/cobra"

// natSubcommands lists the constructors of the `portspace nat` subcommands;
// each lives in its own nat_*.go file.
func natSubcommands() []func() *cobra.Command {
	return []func() *cobra.Command{
		newNatSimulateCmd,
		newNatWhoisCmd,
		newNatGatewayCmd,
		newNatSessionsCmd,
		newNatStatsCmd,
	}
}

func newNatCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "nat",
		Short: "NAT engine tools: simulate traffic through a preset, answer whois from the event log, run a gateway",
		Long: `Tools around the portspace NAT engine (package nat).

  portspace nat simulate   replay synthetic traffic through a preset with a fake clock
  portspace nat whois      which subscriber held an external address:port at a time
  portspace nat gateway    run the engine as a gateway on a TUN device between networks
  portspace nat sessions   a running gateway's live sessions
  portspace nat stats      a running gateway's counters`,
	}
	for _, sc := range natSubcommands() {
		c.AddCommand(sc())
	}
	return c
}
