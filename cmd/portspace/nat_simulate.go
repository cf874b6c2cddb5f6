package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/portspace/portspace/internal/progress"
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

		progressMode string
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
			// Everything is checked before any output is opened, and the
			// log is written to a temporary file renamed over FILE only
			// when the run succeeded: a failed run leaves FILE as it was.
			if err := simParseFlags(cmd, &c, external, ports, overlap); err != nil {
				return err
			}
			if compact && logFile == "" {
				return errors.New("nat simulate: --log-compact needs --log FILE")
			}
			if logFile != "" && compare {
				return errors.New("nat simulate: --log writes one run; drop --compare-overlapping or choose --overlapping")
			}
			modes := []natsim.OverlapMode{c.Overlap}
			if compare {
				modes = []natsim.OverlapMode{natsim.OverlapOff, natsim.OverlapOn}
			}
			for _, m := range modes {
				cc := c
				cc.Overlap = m
				if err := simCheck(cc); err != nil {
					return err
				}
			}
			line, err := simProgress(cmd, progressMode, c.Duration, len(modes))
			if err != nil {
				return err
			}
			base := time.Duration(0)
			c.Progress = func(done, _ time.Duration) { line.Set(int64((base + done) / time.Second)) }
			var out *simLogFile
			var lw *natlog.LogWriter
			if logFile != "" {
				if out, err = createSimLog(logFile); err != nil {
					line.Clear()
					return fmt.Errorf("nat simulate: --log: %w", err)
				}
				defer out.Abort() // a no-op after Commit
				lw = natlog.NewLogWriter(out, natlog.LogOptions{Destinations: c.LogDestinations, Compact: compact})
				c.Events = lw
			}
			var runs []natsim.SimResult
			for _, m := range modes {
				cc := c
				cc.Overlap = m
				r, err := natsim.Simulate(cc)
				if err != nil {
					line.Clear()
					return simFlagError(err)
				}
				runs = append(runs, r)
				base += c.Duration
			}
			line.Done()
			if lw != nil {
				if err := lw.Flush(); err != nil {
					return fmt.Errorf("nat simulate: --log %s: %w", logFile, err)
				}
				if err := out.Commit(); err != nil {
					return fmt.Errorf("nat simulate: --log: %w", err)
				}
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				if compare {
					return enc.Encode(map[string]natsim.SimResult{"without_overlapping": runs[0], "with_overlapping": runs[1]})
				}
				return enc.Encode(runs[0])
			}
			return printSimTable(w, runs)
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
	f.StringVar(&progressMode, "progress", "auto", "progress line on stderr: auto (when stderr is a terminal), always or never")
	completeFlag(cmd, "preset", presetList()...)
	completeFlag(cmd, "overlapping", "preset", "on", "off")
	completeFlag(cmd, "progress", "auto", "always", "never")
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
	row("log bytes per flow", func(r natsim.SimResult) string { return fmt.Sprintf("%.1f", r.LogBytesPerFlow) })
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

// presetList returns the names of the engine presets.
func presetList() []string {
	var names []string
	for _, p := range nat.Presets() {
		names = append(names, p.Name)
	}
	return names
}

// presetNames lists the engine presets for the --preset help.
func presetNames() string { return strings.Join(presetList(), ", ") }

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

// simFlags maps natsim.SimConfig fields to the flags that set them, so that
// errors name what the user typed.
var simFlags = map[string]string{
	"Preset": "--preset", "Subscribers": "--subscribers", "Destinations": "--destinations",
	"DestZipf": "--dest-zipf", "FlowRate": "--flow-rate", "FlowLifetime": "--flow-lifetime",
	"UDPShare": "--udp-share", "ICMPShare": "--icmp-share", "Keepalive": "--keepalive",
	"Duration": "--duration", "Tick": "--tick", "Ports": "--ports", "External": "--external",
}

// simParseFlags fills c from the flags that need parsing and refuses the
// values natsim would replace by its defaults (zero) or accept silently
// (a negative share), naming the flag.
func simParseFlags(cmd *cobra.Command, c *natsim.SimConfig, external []string, ports, overlap string) error {
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
	val := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	for _, chk := range []struct {
		flag string
		bad  bool
		want string
	}{
		{"subscribers", c.Subscribers < 1, "at least 1"},
		{"destinations", c.Destinations < 1, "at least 1"},
		{"flow-rate", !(c.FlowRate > 0), "above 0 flows per second"},
		{"flow-lifetime", c.FlowLifetime <= 0, "above 0"},
		{"duration", c.Duration <= 0, "above 0"},
		{"keepalive", c.Keepalive <= 0, "at least 1s"},
		{"tick", c.Tick <= 0, "at least 1s"},
		{"udp-share", !(c.UDPShare >= 0 && c.UDPShare <= 1), "between 0 and 1"},
		{"icmp-share", !(c.ICMPShare >= 0 && c.ICMPShare <= 1), "between 0 and 1"},
	} {
		if chk.bad {
			return fmt.Errorf("nat simulate: --%s %s: must be %s", chk.flag, val(chk.flag), chk.want)
		}
	}
	return nil
}

// simCheck validates c as Simulate would, including the engine
// configuration, without running it.
func simCheck(c natsim.SimConfig) error {
	cfg, err := c.EngineConfig(nil)
	if err != nil {
		return simFlagError(err)
	}
	if _, err := nat.New(cfg); err != nil {
		return simFlagError(err)
	}
	return nil
}

// simFlagError rewrites a natsim or nat configuration error to name the
// flag that set the field.
func simFlagError(err error) error {
	var se *natsim.ConfigError
	if errors.As(err, &se) {
		if flag, ok := simFlags[se.Field]; ok {
			return fmt.Errorf("nat simulate: %s: %w", flag, se.Err)
		}
	}
	var ne *nat.ConfigError
	if errors.As(err, &ne) {
		flag, ok := simFlags[ne.Field]
		if !ok {
			flag = "--preset" // a setting the preset made
		}
		return fmt.Errorf("nat simulate: %s: %w", flag, ne.Err)
	}
	return fmt.Errorf("nat simulate: %w", err)
}

// simProgress returns the progress line of runs simulations of d each (nil,
// which does nothing, when mode says no or stderr is not a terminal).
func simProgress(cmd *cobra.Command, mode string, d time.Duration, runs int) (*progress.Line, error) {
	o := progress.Options{Label: "simulated", Total: int64(runs) * int64(d/time.Second), Unit: "s"}
	switch mode {
	case "auto", "":
	case "always":
		o.Always = true
	case "never":
		return nil, nil
	default:
		return nil, fmt.Errorf("nat simulate: --progress %q: want auto, always or never", mode)
	}
	return progress.New(cmd.ErrOrStderr(), o), nil
}

// simLogFile is the --log output: a temporary file next to the target,
// renamed over it by Commit, removed by Abort, so that a run that fails
// never truncates or half-writes the file the user named.
type simLogFile struct {
	*os.File
	target string
	done   bool
}

func createSimLog(target string) (*simLogFile, error) {
	if fi, err := os.Stat(target); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", target)
	}
	f, err := os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".tmp*")
	if err != nil {
		return nil, err
	}
	return &simLogFile{File: f, target: target}, nil
}

// Commit closes the temporary file and renames it over the target.
func (f *simLogFile) Commit() error {
	f.done = true
	if err := f.File.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), f.target); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}

// Abort removes the temporary file unless Commit ran.
func (f *simLogFile) Abort() {
	if f.done {
		return
	}
	f.done = true
	f.File.Close()
	os.Remove(f.Name())
}
