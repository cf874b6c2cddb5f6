package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/portspace/portspace/natprobe"
	"github.com/spf13/cobra"
)

func newNatprobeCmd() *cobra.Command {
	var (
		tcp, lifetime, asJSON, verbose bool
		tcpPort                        uint16
		lifetimeMax                    time.Duration
		local, altLocal                string
	)
	cmd := &cobra.Command{
		Use:   "natprobe SERVER[:PORT] [--tcp] [--lifetime] [--json]",
		Short: "Classify the NAT toward a STUN server (RFC 5780, RFC 4787, RFC 3489 names)",
		Long: `natprobe runs the RFC 5780 behaviour-discovery tests against a STUN server
(mapping 4.3, filtering 4.4, hairpinning 3.4, ALG 3.6, and with --lifetime the
binding lifetime 4.6 by binary search) plus port preservation, parity,
overlapping (directly with --alt-local, a second local address) and the
allocation pattern; --tcp adds the TCP mapping from one
reused local port. Results use RFC 4787 names with the RFC 3489 class beside.
Against an RFC 3489 server (no OTHER-ADDRESS) it uses CHANGED-ADDRESS.
SERVER is an IP literal; PORT defaults to 3478. A UDP run without --lifetime
takes about 2 s. The exit status is 1 when the server did not answer.`,
		Example: `  portspace natprobe 192.0.2.10
  portspace natprobe 192.0.2.10:3478 --tcp --json
  portspace natprobe 192.0.2.10 --lifetime --lifetime-max 2m`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			server, err := parseServer(args[0])
			if err != nil {
				return err
			}
			o := natprobe.Options{Server: server, TCP: tcp, TCPLocalPort: tcpPort, Lifetime: lifetime, LifetimeMax: lifetimeMax}
			if local != "" {
				if o.Local, err = netip.ParseAddr(local); err != nil {
					return fmt.Errorf("--local %q: want an IP address: %w", local, err)
				}
			}
			if altLocal != "" {
				if o.AltLocal, err = netip.ParseAddr(altLocal); err != nil {
					return fmt.Errorf("--alt-local %q: want an IP address: %w", altLocal, err)
				}
			}
			if lifetimeMax < 0 {
				return fmt.Errorf("--lifetime-max %v: must not be negative", lifetimeMax)
			}
			if verbose {
				o.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelDebug}))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			res, perr := natprobe.Probe(ctx, o)
			if errors.Is(perr, natprobe.ErrBadOptions) {
				return perr
			}
			if asJSON {
				b, err := json.Marshal(res)
				if err != nil {
					return err
				}
				if _, err := fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b); err != nil {
					return err
				}
			} else if err := res.WriteText(cmd.OutOrStdout()); err != nil {
				return err
			}
			if errors.Is(perr, context.Canceled) {
				return fmt.Errorf("natprobe: interrupted")
			}
			return perr
		},
	}
	f := cmd.Flags()
	f.BoolVar(&tcp, "tcp", false, "also classify the TCP mapping from one reused local port")
	f.Uint16Var(&tcpPort, "tcp-port", 0, "local port the TCP test reuses (0: the kernel picks one)")
	f.BoolVar(&lifetime, "lifetime", false, "measure the UDP binding lifetime (takes minutes)")
	f.DurationVar(&lifetimeMax, "lifetime-max", natprobe.DefaultLifetimeMax, "longest lifetime the --lifetime search tries")
	f.StringVar(&local, "local", "", "local address to probe from (default: the route's source toward SERVER)")
	f.StringVar(&altLocal, "alt-local", "", "a second local address of this host: test port overlapping directly")
	f.BoolVar(&asJSON, "json", false, "print one JSON object on standard output")
	f.BoolVar(&verbose, "verbose", false, "log every transaction on standard error")
	return cmd
}

// parseServer accepts ADDR, ADDR:PORT, [V6] and [V6]:PORT; the port
// defaults to 3478 (RFC 8489 section 18.1).
func parseServer(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	in := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if a, err := netip.ParseAddr(in); err == nil {
		return netip.AddrPortFrom(a, 3478), nil
	}
	if i := strings.LastIndex(s, ":"); i > 0 {
		if _, err := strconv.ParseUint(s[i+1:], 10, 16); err != nil {
			return netip.AddrPort{}, fmt.Errorf("SERVER %q: bad port %q", s, s[i+1:])
		}
	}
	return netip.AddrPort{}, fmt.Errorf("SERVER %q: want an IP literal with an optional :PORT (no names are resolved)", s)
}
