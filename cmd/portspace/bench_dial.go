package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/portspace/portspace/dial"
	"github.com/portspace/portspace/internal/bench"
	"github.com/portspace/portspace/internal/progress"
	"github.com/portspace/portspace/tuple"
)

// benchDialFlags are the raw flag values of "bench dial".
type benchDialFlags struct {
	proto, sources, ports, dests, fill, dialers string
	destPort                                    uint16
	conns, concurrency, workers, rounds, warmup int
	hold, timeout                               time.Duration
	census, json, ipv6, inNetns                 bool
	cpuProfile, traceFile                       string
	role, shard, strategy, udpLock              string
	// destFlag is the spelling of the destinations flag the user typed
	// (--destinations, or its alias --dests), for error messages.
	destFlag string
}

func newBenchDialCmd() *cobra.Command {
	var f benchDialFlags
	cmd := &cobra.Command{
		Use:   "dial",
		Short: "Open, hold and census connections with the portspace dialer and net.Dialer",
		Long: `dial starts loopback listeners (TCP, or UDP echo) on destination addresses in
127.0.0.0/8, opens connections with the portspace dialer and with a plain
net.Dialer bound to the source with port 0 (the baseline), holds them, and
reports per dialer: connections opened, failures by kind (exhausted,
EADDRNOTAVAIL, timeout, other), distinct 4-tuples, duplicates found by an
independent sock_diag census, connections per second, CPU time per
connection and p50/p99 connect latency.

With no flags it runs a TCP comparison of a few seconds that needs no root:
source 127.0.0.1, ports 40000-40999, 20 destinations, 4000 connections per
dialer and round, 4 rounds with the dialers' order alternating.

One process may hold only so many open files (RLIMIT_NOFILE); an in-process
TCP connection takes two (dialed and accepted), so in-process runs cap
--conns and say so. --workers N spreads the connections of the first of
--dialers over N dialer and N listener processes (docs/bench-dial.md: the
one-million-connection run).`,
		Example: `  portspace bench dial
  portspace bench dial --proto udp --json
  # capacity: 10 ports x 20 destinations = 200; the 201st is exhausted
  portspace bench dial --ports 40000-40009 --destinations 20 --conns 201 --concurrency 1 --rounds 1
  # latency with the port set 95% full (measure latency one dial at a time)
  portspace bench dial --ports 40000-40099 --destinations 20 --fill 0,95 --conns 2000 --concurrency 1
  # 200,000 connections over 11 dialer and 11 listener processes
  portspace bench dial --destinations 200 --conns 200000 --workers 11 --dialers portspace`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f.destFlag = "--destinations"
			if cmd.Flags().Changed("dests") {
				f.destFlag = "--dests"
			}
			cfg, names, err := f.config()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			if f.cpuProfile != "" {
				pf, err := os.Create(f.cpuProfile)
				if err != nil {
					return fmt.Errorf("bench dial: --cpuprofile: %w", err)
				}
				defer pf.Close()
				if err := pprof.StartCPUProfile(pf); err != nil {
					return fmt.Errorf("bench dial: --cpuprofile: %w", err)
				}
				defer pprof.StopCPUProfile()
			}
			if f.traceFile != "" {
				tf, err := os.Create(f.traceFile)
				if err != nil {
					return fmt.Errorf("bench dial: --trace: %w", err)
				}
				defer tf.Close()
				if err := trace.Start(tf); err != nil {
					return fmt.Errorf("bench dial: --trace: %w", err)
				}
				defer trace.Stop()
			}
			if f.ipv6 && !f.inNetns {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("bench dial: --ipv6: %w", err)
				}
				addrs := append([]netip.Addr{}, cfg.Sources...)
				addrs = append(addrs, cfg.Dests...)
				args := append(append([]string{exe}, os.Args[1:]...), "--in-netns")
				return bench.RunInNamespace(ctx, addrs, args, cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			dialers, err := benchDialers(cfg, names, f.strategy, f.udpLock)
			if err != nil {
				return err
			}
			if f.role != "" {
				return bench.RunRole(ctx, f.role, f.shard, cfg, dialers[0].Dialer, cmd.InOrStdin(), cmd.OutOrStdout())
			}
			var rep *bench.Report
			if f.workers > 0 {
				// A plain progress line on stderr while the worker
				// processes dial (none when stderr is not a terminal).
				pl := progress.New(cmd.ErrOrStderr(), progress.Options{Label: "bench dial", Total: int64(cfg.Conns), Unit: "dials"})
				rep, err = bench.RunWorkers(ctx, cfg, bench.WorkersOptions{
					Workers:  f.workers,
					Command:  workerCommand(f, names[0]),
					Dialer:   names[0],
					Progress: pl.Set,
				})
				if err != nil {
					pl.Clear()
				} else {
					if len(rep.Results) > 0 {
						pl.Set(int64(rep.Results[0].Attempted)) // every dial finished
					}
					pl.Done()
				}
			} else {
				// The same progress line over every dial of the run
				// (warm-up, pre-fill, measured), on terminals only.
				var pl *progress.Line
				if progress.IsTerminal(cmd.ErrOrStderr()) {
					var once sync.Once
					cfg.Progress = func(done, total int64) {
						once.Do(func() {
							pl = progress.New(cmd.ErrOrStderr(), progress.Options{Label: "bench dial", Total: total, Unit: "dials"})
						})
						pl.Set(done)
					}
				}
				rep, err = bench.Run(ctx, cfg, dialers)
				pl.Clear() // the table follows; its figures say what was done
			}
			if err != nil {
				return err
			}
			if f.workers > 0 {
				dialers = dialers[:1] // the worker processes run the first
			}
			rep.Notes = append(rep.Notes, strategyNotes(cfg, dialers)...)
			if f.json {
				err = rep.WriteJSON(cmd.OutOrStdout())
			} else {
				err = rep.WriteTable(cmd.OutOrStdout())
			}
			if err != nil {
				return err
			}
			return noneOpened(rep)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.proto, "proto", "tcp", "protocol: tcp or udp")
	fl.StringVar(&f.sources, "sources", bench.DefaultSource, "source addresses (comma-separated loopback addresses or prefixes)")
	fl.StringVar(&f.ports, "ports", bench.DefaultPorts, "the portspace dialer's port set (ranges such as 40000-40999,41000, or a=6,k=8,psid=N)")
	fl.StringVar(&f.dests, "destinations", fmt.Sprint(bench.DefaultDests), "destinations: a count (127.1.0.1 up) or a comma-separated list of loopback addresses or prefixes (alias --dests)")
	fl.StringVar(&f.dests, "dests", fmt.Sprint(bench.DefaultDests), "alias of --destinations")
	_ = fl.MarkHidden("dests")
	fl.Uint16Var(&f.destPort, "dest-port", 0, "the listeners' port (0: chosen by the kernel)")
	fl.IntVar(&f.conns, "conns", bench.DefaultConns, "measured connections per dialer (in-process runs cap what they hold)")
	fl.StringVar(&f.fill, "fill", "", "pre-fill levels in percent of the capacity, such as 95 or 0,95: hold that many connections, then measure --conns connections, each closed once open")
	fl.DurationVar(&f.hold, "hold", 0, "how long to hold the connections after the census")
	fl.IntVar(&f.rounds, "rounds", 4, "rounds per phase, the dialers' order alternating each round; figures are summed")
	fl.IntVar(&f.warmup, "warmup", 0, "connections each dialer opens and closes before measuring, then one unmeasured round (0: min(--conns, 1000); -1: neither)")
	fl.IntVar(&f.concurrency, "concurrency", bench.DefaultConcurrency, "dials in flight at once")
	fl.DurationVar(&f.timeout, "timeout", bench.DefaultTimeout, "timeout of each dial")
	fl.StringVar(&f.dialers, "dialers", bench.DialerPortspace+","+bench.DialerBaseline, "dialers to run, in order: portspace, net.Dialer")
	fl.StringVar(&f.strategy, "strategy", "auto", "the portspace dialer's port-selection strategy: auto, kernel or search")
	fl.StringVar(&f.udpLock, "udp-lock", "auto", "the portspace dialer's UDP lock (dial.Dialer.UDPLock): auto, file, dump, registry or owner")
	fl.BoolVar(&f.census, "census", true, "take a sock_diag census of the held connections")
	fl.BoolVar(&f.json, "json", false, "print the report as JSON")
	fl.BoolVar(&f.ipv6, "ipv6", false, "run over IPv6 in a network namespace the command creates (root): source and destinations in "+bench.NamespacePrefix.String()+" on its loopback; --destinations takes a count")
	fl.BoolVar(&f.inNetns, "in-netns", false, "internal: this process runs inside the namespace --ipv6 created")
	_ = fl.MarkHidden("in-netns")
	fl.StringVar(&f.cpuProfile, "cpuprofile", "", "internal: write a CPU profile of the run (runtime/pprof) to this file")
	_ = fl.MarkHidden("cpuprofile")
	fl.StringVar(&f.traceFile, "trace", "", "internal: write an execution trace of the run (runtime/trace) to this file")
	_ = fl.MarkHidden("trace")
	fl.IntVar(&f.workers, "workers", 0, "spread the run over this many dialer processes and as many listener processes (0: in-process)")
	fl.StringVar(&f.role, "role", "", "internal: run as a listener or dialer process of --workers")
	fl.StringVar(&f.shard, "shard", "", "internal: this process's destinations, FIRST-LAST (indices)")
	completeFlag(cmd, "proto", "tcp", "udp")
	completeFlag(cmd, "strategy", "auto", "kernel", "search")
	completeFlag(cmd, "udp-lock", "auto", "file", "dump", "registry", "owner")
	_ = cmd.RegisterFlagCompletionFunc("dialers", completeList(bench.DialerPortspace, bench.DialerBaseline))
	_ = fl.MarkHidden("role")
	_ = fl.MarkHidden("shard")
	return cmd
}

// config turns the flags into a bench.Config and the list of dialer names.
func (f benchDialFlags) config() (bench.Config, []string, error) {
	var cfg bench.Config
	if f.destFlag == "" {
		f.destFlag = "--destinations"
	}
	// The internal flags first: a bad --role is not reported as a --shard
	// problem.
	if f.role != "" && f.role != bench.RoleListener && f.role != bench.RoleDialer {
		return cfg, nil, fmt.Errorf("bench dial: --role %q: want %s or %s (internal: set by --workers)", f.role, bench.RoleListener, bench.RoleDialer)
	}
	p, err := tuple.ParseProto(f.proto)
	if err != nil || (p != tuple.TCP && p != tuple.UDP) {
		return cfg, nil, fmt.Errorf("bench dial: --proto %q: want tcp or udp", f.proto)
	}
	cfg.Proto = p
	if cfg.Sources, err = bench.ParseSources(f.sources); err != nil {
		return cfg, nil, err
	}
	if cfg.Ports, err = tuple.ParsePortSet(f.ports); err != nil {
		return cfg, nil, fmt.Errorf("bench dial: --ports: %w", err)
	}
	if cfg.Ports.Contains(0) {
		return cfg, nil, fmt.Errorf("bench dial: --ports %q: port 0 is not a source port (binding port 0 asks the kernel for any port)", f.ports)
	}
	if f.ipv6 {
		n, err := strconv.Atoi(strings.TrimSpace(f.dests))
		if err != nil {
			return cfg, nil, fmt.Errorf("bench dial: %s %q: with --ipv6, a count of destinations", f.destFlag, f.dests)
		}
		if f.sources != bench.DefaultSource {
			return cfg, nil, fmt.Errorf("bench dial: --sources %q: with --ipv6 the source is the namespace's own address", f.sources)
		}
		src, dests, err := bench.NamespaceIPv6(n)
		if err != nil {
			return cfg, nil, f.destError(err)
		}
		cfg.Sources, cfg.Dests, cfg.LocalPrefix = []netip.Addr{src}, dests, bench.NamespacePrefix
	} else if cfg.Dests, err = bench.ParseDests(f.dests); err != nil {
		return cfg, nil, f.destError(err)
	}
	if strings.TrimSpace(f.fill) != "" {
		if cfg.Fill, err = bench.ParseFill(f.fill); err != nil {
			return cfg, nil, err
		}
	}
	if f.conns < 1 {
		return cfg, nil, fmt.Errorf("bench dial: --conns %d: want at least 1", f.conns)
	}
	if f.concurrency < 1 {
		return cfg, nil, fmt.Errorf("bench dial: --concurrency %d: want at least 1", f.concurrency)
	}
	if f.workers < 0 {
		return cfg, nil, fmt.Errorf("bench dial: --workers %d: must not be negative", f.workers)
	}
	if f.workers > len(cfg.Dests) {
		return cfg, nil, fmt.Errorf("bench dial: --workers %d: more than the %d destinations of %s (each dialer process takes whole destinations): use at most --workers %d",
			f.workers, len(cfg.Dests), f.destFlag, len(cfg.Dests))
	}
	if f.warmup < -1 {
		return cfg, nil, fmt.Errorf("bench dial: --warmup %d: want -1 (none), 0 (min(--conns, 1000)) or a count", f.warmup)
	}
	cfg.DestPort = f.destPort
	cfg.Conns = f.conns
	if f.rounds < 1 {
		return cfg, nil, fmt.Errorf("bench dial: --rounds %d: want at least 1", f.rounds)
	}
	if f.hold < 0 {
		return cfg, nil, fmt.Errorf("bench dial: --hold %v: must not be negative", f.hold)
	}
	if f.timeout < 0 {
		return cfg, nil, fmt.Errorf("bench dial: --timeout %v: must not be negative (0: %v)", f.timeout, bench.DefaultTimeout)
	}
	cfg.Hold, cfg.Concurrency, cfg.Timeout = f.hold, f.concurrency, f.timeout
	cfg.Rounds, cfg.Warmup = f.rounds, f.warmup
	if !f.census {
		cfg.Census = bench.CensusOff
	}
	cfg.Exhausted = portspaceExhausted
	if _, err := dialStrategy(f.strategy); err != nil {
		return cfg, nil, err
	}
	if _, err := dialUDPLock(f.udpLock); err != nil {
		return cfg, nil, err
	}
	var names []string
	for n := range strings.SplitSeq(f.dialers, ",") {
		n = strings.TrimSpace(n)
		if n != bench.DialerPortspace && n != bench.DialerBaseline {
			return cfg, nil, fmt.Errorf("bench dial: --dialers %q: unknown dialer %q (want %s or %s)", f.dialers, n, bench.DialerPortspace, bench.DialerBaseline)
		}
		names = append(names, n)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, nil, err
	}
	return cfg, names, nil
}

// destError makes a destinations error of package bench name the flag the
// user typed (--destinations or --dests).
func (f benchDialFlags) destError(err error) error {
	var ie *bench.InputError
	if errors.As(err, &ie) {
		ie.Flag = f.destFlag
	}
	return err
}

// noneOpened fails a run in which a dialer opened none of the connections it
// attempted (every dial failed), after the report was printed: such a run
// measured nothing, and a script must not take it for a result.
func noneOpened(rep *bench.Report) error {
	for _, r := range rep.Results {
		if r.Attempted > 0 && r.Opened == 0 {
			return fmt.Errorf("bench dial: %s opened none of its %d connections (%s); see the notes above for the errors", r.Dialer, r.Attempted, r.Mode)
		}
	}
	return nil
}

// benchDialers builds the named dialers for cfg.
func benchDialers(cfg bench.Config, names []string, strategy, udpLock string) ([]bench.NamedDialer, error) {
	var out []bench.NamedDialer
	for _, n := range names {
		switch n {
		case bench.DialerBaseline:
			out = append(out, bench.NamedDialer{Name: n, Dialer: bench.NewBaseline(cfg.Proto, cfg.Sources)})
		case bench.DialerPortspace:
			d, err := newPortspaceDialer(cfg, strategy, udpLock)
			if err != nil {
				return nil, err
			}
			out = append(out, bench.NamedDialer{Name: n, Dialer: d})
		}
	}
	return out, nil
}

// workerCommand returns the argument list that re-runs this command as a
// worker process: the same flags, to which the coordinator adds --role and
// --shard.
func workerCommand(f benchDialFlags, dialer string) []string {
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	args := []string{exe, "bench", "dial",
		"--proto", f.proto, "--sources", f.sources, "--ports", f.ports, "--destinations", f.dests,
		"--conns", fmt.Sprint(f.conns), "--concurrency", fmt.Sprint(f.concurrency),
		"--timeout", f.timeout.String(), "--dialers", dialer, "--strategy", f.strategy, "--udp-lock", f.udpLock}
	if f.ipv6 {
		args = append(args, "--ipv6", "--in-netns")
	}
	return args
}

// portspaceExhausted is the portspace dialer's exhaustion sentinel.
var portspaceExhausted = dial.ErrExhausted

// newPortspaceDialer builds the portspace dialer for cfg.
func newPortspaceDialer(cfg bench.Config, strategy, udpLock string) (bench.Dialer, error) {
	s, err := dialStrategy(strategy)
	if err != nil {
		return nil, err
	}
	l, err := dialUDPLock(udpLock)
	if err != nil {
		return nil, err
	}
	return &dial.Dialer{Sources: cfg.Sources, Ports: cfg.Ports, Timeout: cfg.Timeout, Strategy: s, UDPLock: l}, nil
}

// dialUDPLock parses --udp-lock.
func dialUDPLock(name string) (dial.UDPLock, error) {
	for _, l := range []dial.UDPLock{dial.UDPLockAuto, dial.UDPLockFile, dial.UDPLockDump, dial.UDPLockRegistry, dial.UDPLockOwner} {
		if name == l.String() || (name == "" && l == dial.UDPLockAuto) {
			return l, nil
		}
	}
	return dial.UDPLockAuto, fmt.Errorf("bench dial: --udp-lock %q: want auto, file, dump, registry or owner", name)
}

// dialStrategy parses --strategy.
func dialStrategy(name string) (dial.Strategy, error) {
	switch name {
	case "auto", "":
		return dial.Auto, nil
	case "kernel":
		return dial.Kernel, nil
	case "search":
		return dial.Search, nil
	}
	return dial.Auto, fmt.Errorf("bench dial: --strategy %q: want auto, kernel or search", name)
}

// strategyNotes says which port-selection strategy the portspace dialer
// used for the run's protocol.
func strategyNotes(cfg bench.Config, dialers []bench.NamedDialer) []string {
	for _, d := range dialers {
		pd, ok := d.Dialer.(*dial.Dialer)
		if !ok {
			continue
		}
		s, err := pd.StrategyFor(cfg.Proto.String())
		if err != nil {
			return []string{fmt.Sprintf("portspace dialer: %v", err)}
		}
		note := fmt.Sprintf("portspace dialer strategy for %s: %v", cfg.Proto, s)
		if l, err := pd.UDPLockInUse(); cfg.Proto == tuple.UDP && err == nil && l != dial.UDPLockAuto {
			note += fmt.Sprintf(", UDP lock %v", l)
		}
		return []string{note}
	}
	return nil
}
