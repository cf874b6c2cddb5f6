package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/portspace/portspace/gateway"
	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/natlog"
)

// reopenLog is the --log file, reopened on SIGHUP (log rotation).
type reopenLog struct {
	mu   sync.Mutex
	path string
	f    *os.File
	w    *natlog.LogWriter
	opts natlog.LogOptions
}

func (l *reopenLog) open() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("nat gateway: --log: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w != nil {
		l.w.Flush()
		l.f.Close()
	}
	l.f, l.w = f, natlog.NewLogWriter(f, l.opts)
	return nil
}

// Record writes ev to the current file. The engine calls it under the
// gateway's lock.
func (l *reopenLog) Record(ev nat.Event) {
	l.mu.Lock()
	l.w.Record(ev)
	l.mu.Unlock()
}

func (l *reopenLog) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.w.Flush()
	return errors.Join(err, l.f.Close())
}

// gatewayFlags are the flags of `nat gateway`.
type gatewayFlags struct {
	preset, config, logFile, metrics, control, tun, stateDir string
	external, inside                                         []string
	passthrough, splitGSO                                    bool
	workers, shards, mtu                                     int
	verbose                                                  bool
}

// engineConfig builds the engine's configuration from the flags and the
// --config file.
func (f gatewayFlags) engineConfig() (nat.Config, error) {
	cfg, err := nat.Preset(f.preset)
	if err != nil {
		return nat.Config{}, fmt.Errorf("nat gateway: --preset: %w", err)
	}
	if f.config != "" {
		data, err := os.ReadFile(f.config)
		if err != nil {
			return nat.Config{}, fmt.Errorf("nat gateway: --config: %w", err)
		}
		if cfg, _, err = gateway.ParseConfig(f.config, data, cfg); err != nil {
			return nat.Config{}, fmt.Errorf("nat gateway: --config %w", err)
		}
	}
	if len(f.external) > 0 {
		cfg.External = nil
		for _, s := range f.external {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil || !a.Is4() {
				return nat.Config{}, fmt.Errorf("nat gateway: --external %q: want an IPv4 address", s)
			}
			cfg.External = append(cfg.External, a)
		}
	}
	if len(f.inside) > 0 {
		cfg.Internal = nil
		for _, s := range f.inside {
			p, err := netip.ParsePrefix(strings.TrimSpace(s))
			if err != nil || !p.Addr().Is4() {
				return nat.Config{}, fmt.Errorf("nat gateway: --inside %q: want an IPv4 CIDR such as 10.0.0.0/24", s)
			}
			cfg.Internal = append(cfg.Internal, p.Masked())
		}
	}
	if len(cfg.External) == 0 {
		return nat.Config{}, errors.New("nat gateway: --external: at least one external address is required")
	}
	if len(cfg.Internal) == 0 {
		return nat.Config{}, errors.New("nat gateway: --inside: at least one inside network is required")
	}
	return cfg, nil
}

func newNatGatewayCmd() *cobra.Command {
	var f gatewayFlags
	cmd := &cobra.Command{
		Use:   "gateway --preset NAME --external ADDR[,ADDR...] --inside CIDR[,CIDR...]",
		Short: "Run the NAT engine as a gateway on a TUN device between an inside and an outside network",
		Long: `Run the NAT engine on this Linux router. The gateway creates a TUN device
with offloads, routes into it the traffic arriving from the inside networks'
interfaces and the traffic addressed to the external addresses (a /32 route
each, answered on the outside network by proxy ARP), translates, and writes
the packets back for the kernel to forward. The external addresses must not
be configured on any interface. Everything it sets up is removed on exit, and
after a SIGKILL on the next start.

  portspace nat gateway --preset symmetric --external 192.0.2.1 --inside 10.0.0.0/24

--config FILE sets any engine setting in YAML, keys named after nat.Config's
fields (udp-timeout, mapping, filtering, preserve-port, ...; see
docs/gateway.md); a "preset:" key first picks the base. --passthrough
forwards through the same TUN path without translating (the benchmark
baseline; routing alone must work). SIGTERM or SIGINT stops it cleanly;
SIGHUP reopens --log and re-reads --config, applying the settings a running
engine can change without dropping sessions (timers, refresh, ICMP answers,
session limits); other changes are reported and need a restart.

While it runs, 'portspace nat sessions' and 'portspace nat stats' read its
control socket (--control), and --metrics ADDR serves Prometheus metrics.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGateway(cmd, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.preset, "preset", "rfc-recommended", "engine preset: "+presetNames())
	fl.StringSliceVar(&f.external, "external", nil, "external IPv4 addresses (not configured on any interface)")
	fl.StringSliceVar(&f.inside, "inside", nil, "inside IPv4 networks (CIDR)")
	fl.StringVar(&f.config, "config", "", "YAML `FILE` of engine settings (see docs/gateway.md)")
	fl.StringVar(&f.logFile, "log", "", "append the event log (JSON lines, for nat whois) to `FILE`")
	fl.StringVar(&f.metrics, "metrics", "", "serve Prometheus metrics on `ADDR` (e.g. 127.0.0.1:9310) at /metrics")
	fl.StringVar(&f.control, "control", "", "control socket `PATH` (default /run/portspace/nat-TUN.sock)")
	fl.StringVar(&f.tun, "tun", "psnat0", "TUN device name")
	fl.StringVar(&f.stateDir, "state-dir", "/run/portspace", "directory of the state file listing what the gateway set up")
	fl.BoolVar(&f.passthrough, "passthrough", false, "forward through the TUN without translating (benchmark baseline)")
	fl.BoolVar(&f.splitGSO, "split-gso", false, "split super-packets into segments and coalesce them again (wireguard/tun's offload code) instead of translating each once")
	fl.IntVar(&f.workers, "workers", 0, "TUN queues and worker goroutines (default: the number of CPUs)")
	fl.IntVar(&f.shards, "shards", 1, "NAT engines, each owning whole external addresses and the subscribers hashed to it (needs at least as many --external addresses)")
	fl.IntVar(&f.mtu, "mtu", 1500, "MTU of the TUN device")
	fl.BoolVar(&f.verbose, "verbose", false, "log at debug level")
	return cmd
}

func controlPath(f gatewayFlags) string {
	if f.control != "" {
		return f.control
	}
	return f.stateDir + "/nat-" + f.tun + ".sock"
}

func runGateway(cmd *cobra.Command, f gatewayFlags) error {
	cfg, err := f.engineConfig()
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if f.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
	var lw *reopenLog
	if f.logFile != "" {
		lw = &reopenLog{path: f.logFile, opts: natlog.LogOptions{Destinations: cfg.LogDestinations}}
		if err := lw.open(); err != nil {
			return err
		}
		defer lw.close()
		cfg.Events = lw
	}
	g, err := gateway.New(gateway.Options{Engine: cfg, Passthrough: f.passthrough, TUN: f.tun, MTU: f.mtu,
		Workers: f.workers, Shards: f.shards, StateDir: f.stateDir, Logger: logger, SplitGSO: f.splitGSO})
	if err != nil {
		return natGatewayError(err)
	}
	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()
	if err := os.MkdirAll(f.stateDir, 0o755); err == nil || f.control != "" {
		if err := g.ServeControl(ctx, controlPath(f)); err != nil {
			cancel()
			logger.Error("control socket", "err", err)
		}
	}
	if f.metrics != "" {
		ln, err := net.Listen("tcp", f.metrics)
		if err != nil {
			cancel()
			g.Run(ctx) // removes the TUN set-up
			return fmt.Errorf("nat gateway: --metrics %s: %w", f.metrics, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			g.WriteMetrics(w)
		})
		srv := &http.Server{Handler: mux}
		go srv.Serve(ln)
		defer srv.Close()
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-sigs:
				if s != syscall.SIGHUP {
					logger.Info("stopping", "signal", s.String())
					cancel()
					return
				}
				reload(f, g, lw, logger)
			}
		}
	}()
	fmt.Fprintf(cmd.OutOrStdout(), "nat gateway: %s on %s, external %v, inside %v (control %s)\n",
		presetOrPassthrough(f), f.tun, cfg.External, cfg.Internal, controlPath(f))
	return g.Run(ctx)
}

func presetOrPassthrough(f gatewayFlags) string {
	if f.passthrough {
		return "passthrough"
	}
	return "preset " + f.preset
}

// reload handles SIGHUP: reopen the event log, re-read the configuration
// and apply the settings a running engine can change (nat.Reloadable)
// without dropping its sessions; a change to any other setting is
// reported and applies only after a restart.
func reload(f gatewayFlags, g *gateway.Gateway, lw *reopenLog, logger *slog.Logger) {
	if lw != nil {
		if err := lw.open(); err != nil {
			logger.Error("SIGHUP: reopen log", "err", err)
		} else {
			logger.Info("SIGHUP: log reopened", "file", f.logFile)
		}
	}
	cfg, err := f.engineConfig()
	if err != nil {
		logger.Error("SIGHUP: configuration not reloaded", "err", err)
		return
	}
	diff := gateway.ConfigDiff(g.Config(), cfg)
	if len(diff) == 0 {
		logger.Info("SIGHUP: configuration unchanged")
		return
	}
	if err := g.Reload(cfg); err != nil {
		logger.Warn("SIGHUP: not reloaded; these settings changed and need a restart (nothing was changed)", "settings", diff, "err", err)
		return
	}
	logger.Info("SIGHUP: reloaded, sessions kept", "settings", diff)
}

// natGatewayError names the subcommand in an error from package gateway,
// whose errors already start with "gateway: ": "nat gateway: --shards ..."
// rather than "nat gateway: gateway: --shards ...".
func natGatewayError(err error) error {
	if strings.HasPrefix(err.Error(), "gateway: ") {
		return fmt.Errorf("nat %w", err)
	}
	return fmt.Errorf("nat gateway: %w", err)
}
