package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/proxy"
	"github.com/portspace/portspace/tuple"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
)

type proxyFlags struct {
	config, store, holder, metrics, pools, check, host, logLevel string
	listen                                                       []string
	allowOpen                                                    bool
}

func newProxyCmd() *cobra.Command {
	var f proxyFlags
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the egress proxy (SOCKS5 and HTTP on one port) that dials from leased port slices",
		Long: `proxy serves SOCKS5 (RFC 1928, RFC 1929) and HTTP proxying (CONNECT and
absolute-form http://) on each listener, and dials every outgoing connection
from a port slice it leases from the store, choosing the slice's pool by the
request's traits. With no flags it listens on 127.0.0.1:1080, uses the
embedded lease store, and, when the store has no pools yet, a default pool
cut from this machine's primary address. Flags override the file.

Signals: SIGHUP reloads users, traits, limits and the guard from --config
without dropping connections (a bad file keeps the running configuration;
changes to listen, metrics, store, holder, pools (the file's path or its
content), max-slices and session-idle are logged as needing a restart and
keep their running values);
SIGTERM and SIGINT stop accepting, drain for timeouts.drain, and release the
slices. See docs/proxy.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.check != "" {
				return checkProxyConfig(cmd, f.check)
			}
			return runProxy(cmd, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "YAML configuration `file` (see docs/proxy.md)")
	fl.StringArrayVar(&f.listen, "listen", nil, "listen on `ADDR:PORT` (repeatable; default 127.0.0.1:1080)")
	fl.StringVar(&f.store, "store", "", "lease store `URL`: bolt:PATH or etcd://HOST:PORT,... (default: the embedded bolt store)")
	fl.StringVar(&f.holder, "holder", "", "this host's `name` in the store (default: the host name)")
	fl.StringVar(&f.metrics, "metrics", "", "serve /metrics, /healthz and /readyz on `ADDR:PORT`")
	fl.StringVar(&f.pools, "pools", "", "lease pools `file` applied to the store at start")
	fl.StringVar(&f.host, "host", "", "this host's `address` as the steering gateway reaches it (lease requests)")
	fl.StringVar(&f.check, "check-config", "", "check a configuration `file` (and its pools file) and exit")
	fl.StringVar(&f.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fl.BoolVar(&f.allowOpen, "allow-open", false, "allow a non-loopback listener without users")
	return cmd
}

// loadProxyConfig reads --config (or starts empty) and applies the flags.
func loadProxyConfig(f proxyFlags) (*proxy.Config, error) {
	cfg := &proxy.Config{}
	if f.config != "" {
		var err error
		if cfg, err = proxy.LoadConfig(f.config); err != nil {
			return nil, err
		}
	}
	if len(f.listen) > 0 {
		cfg.Listen = nil
		for _, l := range f.listen {
			ap, err := netip.ParseAddrPort(l)
			if err != nil {
				return nil, fmt.Errorf("--listen %q: want ADDRESS:PORT, for example 127.0.0.1:1080", l)
			}
			cfg.Listen = append(cfg.Listen, ap)
		}
	}
	if f.metrics != "" {
		ap, err := netip.ParseAddrPort(f.metrics)
		if err != nil {
			return nil, fmt.Errorf("--metrics %q: want ADDRESS:PORT, for example 127.0.0.1:9180", f.metrics)
		}
		cfg.Metrics = ap
	}
	if f.store != "" {
		cfg.Store = f.store
	}
	if f.holder != "" {
		cfg.Holder = f.holder
	}
	if f.pools != "" {
		cfg.Pools = f.pools
	}
	if f.allowOpen {
		cfg.AllowOpen = true
	}
	return cfg, nil
}

// poolsPath resolves the pools file relative to the configuration file.
func poolsPath(cfg *proxy.Config, fromFlag bool) string {
	if cfg.Pools == "" || filepath.IsAbs(cfg.Pools) || fromFlag || cfg.File() == "" {
		return cfg.Pools
	}
	return filepath.Join(filepath.Dir(cfg.File()), cfg.Pools)
}

func readPools(path string) ([]lease.Pool, error) {
	pools, _, err := readPoolsSum(path)
	return pools, err
}

// readPoolsSum reads the pools file and returns the SHA-256 of its bytes
// too, so that a reload can tell that the file changed (poolsChanged).
func readPoolsSum(path string) ([]lease.Pool, [sha256.Size]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, [sha256.Size]byte{}, fmt.Errorf("pools: %w", err)
	}
	pools, err := lease.ParsePools(path, b)
	return pools, sha256.Sum256(b), err
}

// poolsChanged reports whether the pools file at path no longer holds the
// bytes whose SHA-256 is sum (or cannot be read): a reload keeps the pools
// applied at start, and says so when the file's content changed even
// though its path did not.
func poolsChanged(path string, sum [sha256.Size]byte) bool {
	b, err := os.ReadFile(path)
	return err != nil || sha256.Sum256(b) != sum
}

func offered(pools []lease.Pool) map[string]map[string]bool {
	return (&proxy.LeaseEgress{Pools: pools}).Offered()
}

func checkProxyConfig(cmd *cobra.Command, file string) error {
	cfg, err := proxy.LoadConfig(file)
	if err != nil {
		return err
	}
	if err := cfg.CheckOpen(); err != nil {
		return err
	}
	if cfg.Pools != "" {
		pools, err := readPools(poolsPath(cfg, false))
		if err != nil {
			return err
		}
		if err := cfg.CheckTraits(offered(pools)); err != nil {
			return err
		}
	}
	if cfg.GeoIP != "" {
		g, err := proxy.OpenGeoIP(cfg.GeoIP)
		if err != nil {
			return fmt.Errorf("%s: geoip %s: %w", file, cfg.GeoIP, err)
		}
		g.Close()
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d listeners, %d users, %d client rules)\n", file, len(cfg.Listeners()), len(cfg.Users), len(cfg.Clients))
	return nil
}

// primaryAddr is the machine's primary address: the first global unicast
// IPv4 address of an interface that is up, else 127.0.0.1.
func primaryAddr() netip.Addr {
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && p.Addr().IsGlobalUnicast() {
				return p.Addr()
			}
		}
	}
	return netip.MustParseAddr("127.0.0.1")
}

// defaultPool cuts the primary address's ephemeral ports into 1,024-port
// slices.
func defaultPool() (lease.Pool, error) {
	r, err := netsys.EphemeralRange()
	if err != nil {
		return lease.Pool{}, fmt.Errorf("default pool: %w", err)
	}
	const slice = 1024
	n := (int(r.Hi) - int(r.Lo) + 1) / slice
	if n == 0 {
		return lease.Pool{}, fmt.Errorf("default pool: the ephemeral range %d-%d is smaller than one %d-port slice", r.Lo, r.Hi, slice)
	}
	return lease.Pool{Name: "default", Addrs: []netip.Addr{primaryAddr()}, Traits: map[string]string{},
		Ports: tuple.PortSetOf(tuple.PortRangeFrom(r.Lo, r.Lo+uint16(n*slice-1))), Slice: slice, Quarantine: lease.DefaultQuarantine}, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func runProxy(cmd *cobra.Command, f proxyFlags) error {
	level, err := parseLevel(f.logLevel)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
	cfg, err := loadProxyConfig(f)
	if err != nil {
		return err
	}
	if err := cfg.CheckOpen(); err != nil {
		return err
	}
	defaultHolder := cfg.Holder == ""
	if defaultHolder {
		if cfg.Holder, err = os.Hostname(); err != nil {
			return fmt.Errorf("proxy: no --holder and no host name: %w", err)
		}
	}
	var host netip.Addr
	if f.host != "" {
		if host, err = netip.ParseAddr(f.host); err != nil {
			return fmt.Errorf("--host %q: want an IP address", f.host)
		}
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	store, err := lease.Open(ctx, cfg.Store)
	if err != nil {
		return err
	}
	defer store.Close()
	var pools []lease.Pool
	var poolsFile string // the pools file applied at start, and its SHA-256
	var poolsSum [sha256.Size]byte
	switch {
	case cfg.Pools != "":
		poolsFile = poolsPath(cfg, f.pools != "")
		if pools, poolsSum, err = readPoolsSum(poolsFile); err != nil {
			return err
		}
		if err := store.Apply(ctx, pools); err != nil {
			return err
		}
	default:
		ls, err := store.List(ctx)
		if err != nil {
			return err
		}
		if len(ls) == 0 {
			p, err := defaultPool()
			if err != nil {
				return err
			}
			pools = []lease.Pool{p}
			if err := store.Apply(ctx, pools); err != nil {
				return err
			}
			log.Info("proxy: the store had no pools; applied the default pool", "addr", p.Addrs[0], "ports", p.Ports.String(), "slice", p.Slice)
		}
	}
	metrics := proxy.NewMetrics()
	eg := &proxy.LeaseEgress{Store: store, Holder: cfg.Holder, Host: host, Pools: pools, MaxSlices: cfg.MaxSlicesOrDefault(), SessionIdle: cfg.SessionIdle, Logger: log, Metrics: metrics}
	srv, err := proxy.NewServer(cfg, eg, proxy.Options{Logger: log, Metrics: metrics})
	if err != nil {
		return err
	}
	// Claim a first slice now (one per pool whose traits we know), so the
	// steering gateway routes its replies before the first client comes.
	prime := []map[string]string{nil}
	if len(pools) > 0 {
		prime = prime[:0]
		for _, p := range pools {
			prime = append(prime, p.Traits)
		}
	}
	for _, tr := range prime {
		if l, err := eg.Claim(ctx, tr); err != nil {
			log.Warn("proxy: no slice at start; dials will claim one", "traits", proxy.TraitsString(tr), "err", err)
		} else {
			log.Info("proxy: holding", "slice", l.ID, "addr", l.Addr, "ports", l.Ports.String())
		}
	}
	egCtx, egStop := context.WithCancel(context.Background())
	egDone := make(chan struct{})
	go func() { eg.Run(egCtx); close(egDone) }()
	defer func() { egStop(); <-egDone }()
	if err := srv.Listen(); err != nil {
		return err
	}
	if cfg.Metrics.IsValid() {
		ms, err := serveMetrics(cfg.Metrics, srv, store, metrics)
		if err != nil {
			srv.Shutdown(context.Background())
			return err
		}
		defer ms.Close()
	}
	metricsAt, storeAt := "off", cfg.Store
	if cfg.Metrics.IsValid() {
		metricsAt = cfg.Metrics.String()
	}
	if storeAt == "" {
		storeAt = "bolt: (the default file)"
	}
	log.Info("proxy: serving", "listen", fmt.Sprint(srv.Addrs()), "holder", cfg.Holder, "store", storeAt, "metrics", metricsAt)
	fmt.Fprintf(cmd.OutOrStdout(), "portspace proxy: serving SOCKS5 and HTTP on %v\n", srv.Addrs())

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			if f.config == "" {
				log.Info("proxy: SIGHUP without --config: nothing to reload")
				continue
			}
			ncfg, err := loadProxyConfig(f)
			var restart []string
			if err == nil {
				if defaultHolder && ncfg.Holder == "" {
					ncfg.Holder = cfg.Holder // the same default as at start
				}
				// Listeners, store, holder, pools and slice limits stay
				// as they were opened and claimed at start.
				restart = proxy.RestartOnly(srv.Config(), ncfg)
				if poolsFile != "" && !slices.Contains(restart, "pools") && poolsChanged(poolsFile, poolsSum) {
					restart = append(restart, "pools") // the same path, new content
				}
				err = srv.Reload(ncfg) // counts its own result
			} else {
				metrics.Reloads.WithLabelValues("error").Inc()
			}
			if err != nil {
				log.Error("proxy: reload refused; the running configuration stays", "config", f.config, "err", err)
				continue
			}
			log.Info("proxy: reloaded", "config", f.config)
			if len(restart) > 0 {
				log.Warn("proxy: reload changed settings that take effect only at a restart; they keep their running values", "config", f.config, "settings", strings.Join(restart, ","))
			}
		case <-ctx.Done():
			drain := srv.Config().DrainTimeout() // a reload may have changed it
			log.Info("proxy: draining", "timeout", drain.String())
			dctx, cancel := context.WithTimeout(context.Background(), drain)
			err := srv.Shutdown(dctx)
			cancel()
			if errors.Is(err, context.DeadlineExceeded) {
				log.Warn("proxy: drain timed out; closed the remaining connections")
			}
			return nil
		}
	}
}

// serveMetrics serves /metrics, /healthz and /readyz; ready means every
// proxy listener accepts and the store answers a List.
func serveMetrics(addr netip.AddrPort, srv *proxy.Server, store lease.Store, m *proxy.Metrics) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !srv.Ready() {
			http.Error(w, "listeners not accepting", http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if _, err := store.List(ctx); err != nil {
			http.Error(w, "store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	return hs, nil
}
