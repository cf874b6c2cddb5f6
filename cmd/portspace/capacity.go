package main

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/portspace/portspace/capacity"
	"github.com/spf13/cobra"
)

// capacityOutput is the --json document: the port specification as given,
// then the inputs and figures of capacity.Result.
type capacityOutput struct {
	PortsSpec string `json:"ports_spec"`
	capacity.Result
}

func newCapacityCmd() *cobra.Command {
	var (
		ports        string
		timeWait     time.Duration
		hold         time.Duration
		destinations int64
		sources      int64
		sourceList   string
		sharing      string
		asJSON       bool
	)
	cmd := &cobra.Command{
		Use:   "capacity",
		Short: "Connections a source port set can hold open and open per second",
		Long: `capacity computes, for a source port set, a TIME-WAIT duration and a number
of destinations, the most connections open at once to each destination and in
total, and the highest sustained rate of new connections:
ports × sources / (hold + TIME-WAIT) per destination.

--ports takes port ranges ("1024-2047,4000-4095"), the RFC 7597 PSID form
("a=6,k=8,psid=18") or platform profile names, alone or mixed ("linux,8080"):
` + profileList() + `.`,
		Example: `  portspace capacity --ports 1000-1999 --time-wait 60s --destinations 1
  portspace capacity --ports linux --destinations 4 --sources 192.0.2.1,192.0.2.2 --json
  portspace capacity --ports windows-legacy --sharing exclusive`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := capacity.ParsePorts(ports, capacity.PlatformProfiles{})
			if err != nil {
				return fmt.Errorf("--ports: %w", err)
			}
			if destinations < 0 {
				return fmt.Errorf("capacity: --destinations %d: must not be negative", destinations)
			}
			if hold < 0 {
				return fmt.Errorf("capacity: --hold %v: must not be negative", hold)
			}
			if timeWait <= 0 {
				return fmt.Errorf("capacity: --time-wait %v: must be positive", timeWait)
			}
			switch {
			case cmd.Flags().Changed("sources") && cmd.Flags().Changed("source-count"):
				return fmt.Errorf("capacity: give --sources (a list of addresses) or --source-count (a number), not both")
			case cmd.Flags().Changed("sources"):
				addrs, err := parseAddrList(sourceList)
				if err != nil {
					return fmt.Errorf("capacity: --sources %q: %w", sourceList, err)
				}
				sources = int64(len(addrs))
			case sources < 1:
				return fmt.Errorf("capacity: --source-count %d: need at least one source address", sources)
			}
			sh, err := capacity.ParseSharing(sharing)
			if err != nil {
				return fmt.Errorf("--sharing: %w", err)
			}
			res, err := capacity.Compute(capacity.Input{
				Ports: set, TimeWait: timeWait, Hold: hold,
				Destinations: destinations, Sources: sources, Sharing: sh,
			})
			if err != nil {
				return err
			}
			out := capacityOutput{PortsSpec: ports, Result: res}
			if asJSON {
				return printJSONObject(cmd, out)
			}
			return writeCapacityTable(cmd.OutOrStdout(), out, timeWait, hold)
		},
	}
	f := cmd.Flags()
	f.StringVar(&ports, "ports", "linux", "source ports: ranges, a PSID form or profile names (RANGE|PROFILE[,...])")
	f.DurationVar(&timeWait, "time-wait", capacity.DefaultTimeWait, "how long a closed 4-tuple stays in TIME-WAIT (Linux: 60s)")
	f.DurationVar(&hold, "hold", 0, "how long each connection stays open before the client closes it")
	f.Int64Var(&destinations, "destinations", 1, "number of distinct destination endpoints (address:port)")
	f.StringVar(&sourceList, "sources", "", "source addresses (comma-separated), each with the whole port set; their number is what counts")
	f.Int64Var(&sources, "source-count", 1, "number of source addresses, each with the whole port set (instead of listing them with --sources)")
	f.StringVar(&sharing, "sharing", "4-tuple", "4-tuple (connect() picks the port) or exclusive (bind() before connect())")
	f.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	_ = cmd.RegisterFlagCompletionFunc("ports", completeList(capacity.PlatformProfiles{}.ProfileNames()...))
	completeFlag(cmd, "sharing", "4-tuple", "exclusive")
	return cmd
}

// profileList names the platform profiles with their ports for the help text.
func profileList() string {
	var s string
	p := capacity.PlatformProfiles{}
	for i, n := range p.ProfileNames() {
		set, _ := p.Profile(n)
		if i > 0 {
			s += ", "
		}
		s += n + " (" + set.String() + ")"
	}
	return s
}

func writeCapacityTable(w io.Writer, o capacityOutput, timeWait, hold time.Duration) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	rate := func(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) + "/s" }
	ports := o.Ports
	if o.PortsSpec != o.Ports {
		ports = o.PortsSpec + " = " + o.Ports
	}
	rows := [][2]string{
		{"ports", fmt.Sprintf("%s (%d ports)", ports, o.PortCount)},
		{"time-wait", timeWait.String()},
		{"hold", hold.String()},
		{"destinations", strconv.FormatInt(o.Destinations, 10)},
		{"sources", strconv.FormatInt(o.Sources, 10)},
		{"sharing", o.Sharing.String()},
		{"", ""},
		{"max concurrent per destination", strconv.FormatInt(o.MaxConcurrentPerDestination, 10)},
		{"max new connections per destination", rate(o.MaxNewPerSecond)},
		{"max concurrent, all destinations", strconv.FormatInt(o.TotalMaxConcurrent, 10)},
		{"max new connections, all destinations", rate(o.TotalMaxNewPerSecond)},
		{"per source address: concurrent per destination", strconv.FormatInt(o.PerSourceMaxConcurrentPerDestination, 10)},
		{"per source address: new per destination", rate(o.PerSourceMaxNewPerSecond)},
	}
	for _, r := range rows {
		if r[0] == "" {
			fmt.Fprintln(tw)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

// parseAddrList parses a comma-separated list of IP addresses; duplicates
// are an error (they would count one address twice).
func parseAddrList(in string) ([]netip.Addr, error) {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for item := range strings.SplitSeq(in, ",") {
		item = strings.TrimSpace(item)
		a, err := netip.ParseAddr(item)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address", item)
		}
		if seen[a] {
			return nil, fmt.Errorf("%v is listed twice", a)
		}
		seen[a] = true
		out = append(out, a)
	}
	return out, nil
}
