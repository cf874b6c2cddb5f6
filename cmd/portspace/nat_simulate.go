package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/natlog"
	"github.com/portspace/portspace/natsim"
	"github.com/portspace/portspace/tuple"
	"github.com/spf13/cobra"
)

func newNatSimulateCmd() *cobra.Command {
	var (
		c        natsim.SimConfig
		external []string
		ports    string
		overlap  string
		compare  bool
		asJSON   bool
		logFile  string
		compact  bool
	)
	cmd := &cobra.Command{
		Use:   "simulate",
		Short: "Replay synthetic traffic through a NAT preset with a fake clock",
		Long: `Replay synthetic flows (Poisson arrivals, exponential lifetimes) from
--subscribers inside hosts to --destinations remote endpoints through the NAT
engine configured by --preset, on a fake clock (no waiting: a day of traffic
runs in seconds). Reports flows established and refused, peak concurrent
flows per external address, external ports used, flows sharing one external
port, engine drops by reason, and the size of the JSON-lines event log.

How many concurrent connections does one IPv4 address carry, with and
without port overlapping (RFC 7857 §3)?

  portspace nat simulate --compare-overlapping --subscribers 2000 \
      --destinations 100 --flow-rate 2000 --flow-lifetime 60s --duration 10m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, s := range external {
				a, err := netip.ParseAddr(strings.TrimSpace(s))
				if err != nil || !a.Is4() {
					return fmt.Errorf("nat simulate: --external %q: want an IPv4 address", s)
				}
				c.External = append(c.External, a)
			}
			if ports != "" {
				ps, err := tuple.ParsePortSet(ports)
				if err != nil {
					return fmt.Errorf("nat simulate: --ports: %w", err)
				}
				c.Ports = ps
			}
			switch overlap {
			case "preset", "":
				c.Overlap = natsim.OverlapPreset
			case "on":
				c.Overlap = natsim.OverlapOn
			case "off":
				c.Overlap = natsim.OverlapOff
			default:
				return fmt.Errorf("nat simulate: --overlapping %q: want preset, on or off", overlap)
			}
			var lw *natlog.LogWriter
			if logFile != "" {
				if compare {
					return errors.New("nat simulate: --log writes one run; drop --compare-overlapping or choose --overlapping")
				}
				fh, err := os.Create(logFile)
				if err != nil {
					return fmt.Errorf("nat simulate: --log: %w", err)
				}
				defer fh.Close()
				lw = natlog.NewLogWriter(fh, natlog.LogOptions{Destinations: c.LogDestinations, Compact: compact})
				c.Events = lw
			}
			var runs []natsim.SimResult
			if compare {
				without, with, err := natsim.CompareOverlapping(c)
				if err != nil {
					return err
				}
				runs = []natsim.SimResult{without, with}
			} else {
				r, err := natsim.Simulate(c)
				if err != nil {
					return err
				}
				runs = []natsim.SimResult{r}
			}
			if lw != nil {
				if err := lw.Flush(); err != nil {
					return fmt.Errorf("nat simulate: --log %s: %w", logFile, err)
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if compare {
					return enc.Encode(map[string]natsim.SimResult{"without_overlapping": runs[0], "with_overlapping": runs[1]})
				}
				return enc.Encode(runs[0])
			}
			return printSimTable(out, runs)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Preset, "preset", "rfc-recommended", "engine preset: "+presetNames())
	f.Uint64Var(&c.Seed, "seed", 1, "random seed (same seed, same result)")
	f.DurationVar(&c.Duration, "duration", 10*time.Minute, "simulated time")
	f.IntVar(&c.Subscribers, "subscribers", 100, "inside hosts (from 100.64.0.1)")
	f.IntVar(&c.Destinations, "destinations", 50, "distinct remote endpoints (198.18.0.0/15 port 443)")
	f.Float64Var(&c.DestZipf, "dest-zipf", 0, "Zipf exponent (>1) for destination popularity; 0 = uniform")
	f.Float64Var(&c.FlowRate, "flow-rate", 10, "new flows per second, all subscribers together")
	f.DurationVar(&c.FlowLifetime, "flow-lifetime", 30*time.Second, "mean flow lifetime (exponential)")
	f.Float64Var(&c.UDPShare, "udp-share", 0, "fraction of flows that are UDP (rest TCP)")
	f.Float64Var(&c.ICMPShare, "icmp-share", 0, "fraction of flows that are ICMP echo (ping)")
	f.DurationVar(&c.Keepalive, "keepalive", 20*time.Second, "interval of packets within a flow")
	f.DurationVar(&c.Tick, "tick", time.Second, "engine Expire interval")
	f.StringSliceVar(&external, "external", nil, "external IPv4 addresses (default 192.0.2.1)")
	f.StringVar(&ports, "ports", "", "external ports, overriding the preset (e.g. 1024-65535)")
	f.StringVar(&overlap, "overlapping", "preset", "port overlapping: preset, on or off")
	f.BoolVar(&compare, "compare-overlapping", false, "run twice, overlapping off and on, and show both")
	f.BoolVar(&c.LogDestinations, "log-destinations", false, "log destinations (RFC 6888 REQ-12 says not to; shows the cost)")
	f.BoolVar(&asJSON, "json", false, "print results as JSON")
	f.StringVar(&logFile, "log", "", "write the run's event log (JSON lines) to `FILE`, for portspace nat whois")
	f.BoolVar(&compact, "log-compact", false, "with --log: leave out mappings inside port blocks")
	return cmd
}

func printSimTable(w io.Writer, runs []natsim.SimResult) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	row := func(name string, f func(r natsim.SimResult) string) {
		fmt.Fprintf(tw, "%s\t", name)
		for _, r := range runs {
			fmt.Fprintf(tw, "%s\t", f(r))
		}
		fmt.Fprintln(tw)
	}
	num := func(n int) string { return fmt.Sprint(n) }
	row("", func(r natsim.SimResult) string {
		if r.Overlapping {
			return "overlapping"
		}
		return "no overlapping"
	})
	row("preset", func(r natsim.SimResult) string { return r.Preset })
	row("mapping / filtering", func(r natsim.SimResult) string {
		return short(r.Mapping) + "/" + short(r.Filtering)
	})
	row("external addresses", func(r natsim.SimResult) string { return num(r.External) })
	row("subscribers / destinations", func(r natsim.SimResult) string { return fmt.Sprintf("%d/%d", r.Subscribers, r.Dests) })
	row("simulated time", func(r natsim.SimResult) string { return r.Duration.String() })
	row("flows started", func(r natsim.SimResult) string { return num(r.Flows) })
	row("flows established", func(r natsim.SimResult) string { return num(r.Established) })
	row("flows refused", func(r natsim.SimResult) string { return num(r.Refused) })
	row("packets", func(r natsim.SimResult) string { return fmt.Sprint(r.Packets) })
	row("peak concurrent flows", func(r natsim.SimResult) string { return num(r.PeakConcurrent) })
	row("steady concurrent flows (mean, 2nd half)", func(r natsim.SimResult) string { return fmt.Sprintf("%.0f", r.SteadyConcurrent) })
	row("peak flows per external address", func(r natsim.SimResult) string { return num(r.PeakPerAddress) })
	if len(runs[0].PerAddress) > 1 && len(runs[0].PerAddress) <= 16 {
		for i := range runs[0].PerAddress {
			row(fmt.Sprintf("  peak flows / ports via %v", runs[0].PerAddress[i].Addr), func(r natsim.SimResult) string {
				a := r.PerAddress[i]
				return fmt.Sprintf("%d / %d", a.PeakFlows, a.PortsUsed)
			})
		}
	}
	row("peak external ports in use", func(r natsim.SimResult) string { return num(r.PeakPortsInUse) })
	row("max flows sharing one port", func(r natsim.SimResult) string { return num(r.MaxFlowsPerPort) })
	row("external ports used (run)", func(r natsim.SimResult) string { return num(r.PortsUsed) })
	row("peak engine mappings", func(r natsim.SimResult) string { return num(r.PeakMappings) })
	row("steady engine mappings (mean, 2nd half)", func(r natsim.SimResult) string { return fmt.Sprintf("%.0f", r.SteadyMappings) })
	row("peak engine sessions", func(r natsim.SimResult) string { return num(r.PeakSessions) })
	row("engine table bytes", func(r natsim.SimResult) string { return num(r.TableBytes) })
	row("log events", func(r natsim.SimResult) string { return fmt.Sprint(r.LogEvents) })
	row("log bytes", func(r natsim.SimResult) string { return fmt.Sprint(r.LogBytes) })
	row("log bytes per flow", func(r natsim.SimResult) string { return fmt.Sprintf("%.1f", r.LogBytesPerFlw) })
	row("log MB per day", func(r natsim.SimResult) string { return fmt.Sprintf("%.1f", r.LogBytesPerDay/1e6) })
	row("compact log events", func(r natsim.SimResult) string { return fmt.Sprint(r.CompactLogEvents) })
	row("compact log MB per day", func(r natsim.SimResult) string { return fmt.Sprintf("%.1f", r.CompactLogBytesPerDay/1e6) })
	reasons := map[string]bool{}
	var order []string
	for _, r := range runs {
		for _, k := range r.SortedDrops() {
			if !reasons[k] {
				reasons[k] = true
				order = append(order, k)
			}
		}
	}
	for _, k := range order {
		row("drops: "+k, func(r natsim.SimResult) string { return fmt.Sprint(r.Drops[k]) })
	}
	return tw.Flush()
}

// presetNames lists the engine presets for the --preset help.
func presetNames() string {
	var names []string
	for _, p := range nat.Presets() {
		names = append(names, p.Name)
	}
	return strings.Join(names, ", ")
}

// short abbreviates behaviour names: "endpoint-independent" -> "EI",
// "address-and-port-dependent" -> "APD".
func short(s string) string {
	switch s {
	case "endpoint-independent":
		return "EI"
	case "address-dependent":
		return "AD"
	case "address-and-port-dependent":
		return "APD"
	}
	return s
}
