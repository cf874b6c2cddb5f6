package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/portspace/portspace/internal/natbench"
)

func newBenchNatCmd() *cobra.Command {
	var (
		c      natbench.Config
		modes  string
		asJSON bool
		role   string
		rate   float64
		flows  int
		subs   int
	)
	cmd := &cobra.Command{
		Use:   "nat",
		Short: "Measure plain routing, nftables masquerade and the portspace gateway between namespaces",
		Long: `Build three network namespaces (client | router | server, joined by veth
pairs) and measure, in one run and on the same traffic, the router doing
(a) plain routing, (b) Linux nftables masquerade, (c) the portspace gateway
with --passthrough and (d) the portspace gateway translating:

  TCP throughput with iperf3, one stream and eight streams;
  64-byte UDP from a sender of our own (sendmmsg), one flow and --flows
  flows (100,000 by default, over two server addresses): the rate received
  at full offered load, and the zero-loss rate (RFC 2544: the highest
  offered rate forwarded without loss, by binary search).

The table ends with the ratios to nftables masquerade and of the gateway to
its passthrough. Needs root, iperf3, nft and ethtool. A full run takes a few minutes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if role == "sender" {
				r, err := natbench.Send(flows, subs, rate, c.Trial)
				if err != nil {
					return err
				}
				return json.NewEncoder(cmd.OutOrStdout()).Encode(r)
			}
			if role != "" {
				return fmt.Errorf("bench nat: --role %q: only sender exists", role)
			}
			c.Flows, c.Subscribers = flows, subs
			if subs < 1 || subs > 200 {
				return fmt.Errorf("bench nat: --subscribers %d: want 1 to 200", subs)
			}
			if c.Shards < 1 || c.Shards > 200 {
				return fmt.Errorf("bench nat: --shards %d: want 1 to 200", c.Shards)
			}
			if c.Rounds < 1 {
				return fmt.Errorf("bench nat: --rounds %d: want at least 1", c.Rounds)
			}
			if modes != "" {
				known := map[string]bool{}
				for _, m := range natbench.KnownModes {
					known[m] = true
				}
				for _, m := range strings.Split(modes, ",") {
					if !known[m] {
						return fmt.Errorf("bench nat: --modes: unknown mode %q (known: %s)", m, strings.Join(natbench.KnownModes, ","))
					}
					c.Modes = append(c.Modes, m)
				}
			}
			c.Progress = cmd.ErrOrStderr()
			rep, err := natbench.Run(cmd.Context(), c)
			if err != nil {
				return fmt.Errorf("bench nat: %w", err)
			}
			if asJSON {
				return printJSONObject(cmd, rep)
			}
			return printNatBench(cmd.OutOrStdout(), rep)
		},
	}
	f := cmd.Flags()
	f.StringVar(&modes, "modes", "", "comma-separated modes (default: "+strings.Join(natbench.AllModes, ",")+"; also "+natbench.ModeSharded+")")
	f.StringVar(&c.Preset, "preset", "rfc-recommended", "the gateway's preset")
	f.DurationVar(&c.TCPDuration, "tcp-duration", 5*time.Second, "length of each iperf3 run")
	f.DurationVar(&c.Trial, "trial", 2*time.Second, "length of each UDP trial")
	f.IntVar(&flows, "flows", 100000, "flows of the many-flow UDP test")
	f.Float64Var(&c.MaxRate, "max-rate", 0, "cap of the zero-loss search in packets/s (0: the full-load rate)")
	f.Float64Var(&c.Resolution, "resolution", 0.03, "resolution of the zero-loss search (fraction)")
	f.IntVar(&c.Workers, "workers", 0, "the gateway's --workers")
	f.IntVar(&c.Shards, "shards", 2, "the gateway's --shards in mode "+natbench.ModeSharded+" (over as many external addresses)")
	f.IntVar(&subs, "subscribers", 1, "client addresses the UDP sender spreads its flows over (10.0.0.2, .3, ...)")
	f.IntVar(&c.Rounds, "rounds", 1, "run the modes this many times, round-robin, and report medians")
	f.BoolVar(&c.SplitGSO, "split-gso", false, "run the gateway with --split-gso")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	f.StringVar(&role, "role", "", "internal: run the UDP sender inside the client namespace")
	f.Float64Var(&rate, "rate", 0, "internal (--role sender): offered packets/s, 0 = full load")
	f.MarkHidden("role")
	f.MarkHidden("rate")
	return cmd
}

func printNatBench(w io.Writer, rep *natbench.Report) error {
	fmt.Fprintf(w, "preset %s, %d flows, %d rounds (medians), load at start %s, at end %s\n", rep.Preset, rep.Flows, rep.Rounds, rep.Load, rep.LoadEnd)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\ttcp 1 (Gbit/s)\ttcp 8 (Gbit/s)\tudp 1 flow rx (pps)\tudp 1 zero-loss\tudp many rx (pps)\tudp many zero-loss\t")
	for _, r := range rep.Results {
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.0f\t%.0f\t%.0f\t%.0f\t\n", r.Mode, r.TCP1, r.TCP8, r.UDP1Recv, r.UDP1ZeroLoss, r.UDPManyRecv, r.UDPManyZeroLoss)
	}
	names := make([]string, 0, len(rep.Ratios))
	for n := range rep.Ratios {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		m := rep.Ratios[n]
		fmt.Fprintf(tw, "%s\t%.2fx\t%.2fx\t%.2fx\t%.2fx\t%.2fx\t%.2fx\t\n", n, m["tcp_1_stream"], m["tcp_8_streams"],
			m["udp_1_flow_received"], m["udp_1_flow_zero_loss"], m["udp_many_flows_received"], m["udp_many_flows_zero_loss"])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rep.Results {
		if len(r.GatewayDrops) > 0 {
			fmt.Fprintf(w, "%s drops: %v\n", r.Mode, r.GatewayDrops)
		}
	}
	return nil
}
