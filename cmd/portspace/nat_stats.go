package main

import (
	"fmt"
	"net/netip"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/portspace/portspace/gateway"
)

func newNatStatsCmd() *cobra.Command {
	var c controlFlags
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show a running gateway's counters: packets by verdict, drops by reason, sessions, port use",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var s gateway.Stats
			if err := c.query("stats", "stats", &s); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if c.asJSON {
				return printJSONObject(cmd, s)
			}
			tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
			row := func(k string, v any) { fmt.Fprintf(tw, "%s\t%v\n", k, v) }
			row("tun", s.TUN)
			row("workers", s.Workers)
			row("up", time.Since(s.Started).Round(time.Second))
			row("read", fmt.Sprintf("%d packets, %d bytes, %d batches", s.RxPackets, s.RxBytes, s.Batches))
			row("outbound forwarded", fmt.Sprintf("%d packets, %d bytes", s.OutForwarded, s.OutForwardedBytes))
			row("inbound forwarded", fmt.Sprintf("%d packets, %d bytes", s.InForwarded, s.InForwardedBytes))
			row("hairpinned", fmt.Sprintf("%d packets, %d bytes", s.Hairpinned, s.HairpinnedBytes))
			row("icmp replies", s.Replies)
			row("passthrough", s.Passed)
			row("dropped", fmt.Sprintf("%d outbound, %d inbound", s.OutDropped, s.InDropped))
			reasons := make([]string, 0, len(s.Drops))
			for r := range s.Drops {
				reasons = append(reasons, r)
			}
			slices.Sort(reasons)
			for _, r := range reasons {
				row("  drop "+r, s.Drops[r])
			}
			row("tun errors", fmt.Sprintf("%d read, %d write", s.ReadErrors, s.WriteErrors))
			row("sessions", s.Engine.Sessions)
			row("mappings", s.Engine.Mappings)
			addrs := make([]netip.Addr, 0, len(s.PortsInUse))
			for a := range s.PortsInUse {
				addrs = append(addrs, a)
			}
			slices.SortFunc(addrs, netip.Addr.Compare)
			for _, a := range addrs {
				row("  ports in use "+a.String(), s.PortsInUse[a])
			}
			return tw.Flush()
		},
	}
	c.register(cmd)
	return cmd
}
