package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/portspace/portspace/punch"
)

func newPunchCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "punch",
		Short: "TCP hole punching: a rendezvous and a dialer that connects two peers behind NATs",
		Long: `punch connects two peers behind NATs by TCP simultaneous open, predicting
each NAT's port from its measured TCP mapping, and relays through the
rendezvous when no direct path works. See docs/punch.md.

  portspace punch rendezvous --listen ADDR [--listen ADDR]...
  portspace punch dial --rendezvous ADDR --id ME --peer THEM [--json] [--no-relay]`,
	}
	c.AddCommand(newPunchRendezvousCmd(), newPunchDialCmd())
	return c
}

func newPunchRendezvousCmd() *cobra.Command {
	var listen []string
	var wait time.Duration
	c := &cobra.Command{
		Use:   "rendezvous --listen ADDR [--listen ADDR]...",
		Short: "Run the rendezvous: registration, TCP mapping probes and the relay",
		Long: `rendezvous serves until interrupted. Give it two listeners at least, on two
addresses if it has them (192.0.2.1:7000 and 198.51.100.1:7000, or one
address and two ports): peers probe their NAT's TCP mapping against each.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(listen) == 0 {
				return fmt.Errorf("--listen: at least one address is required")
			}
			srv := &punch.Server{WaitTimeout: wait}
			for _, l := range listen {
				ap, err := netip.ParseAddrPort(l)
				if err != nil {
					return fmt.Errorf("--listen %q: %v", l, err)
				}
				if !ap.Addr().IsUnspecified() {
					srv.Endpoints = append(srv.Endpoints, ap)
				}
			}
			if wait < 0 {
				return fmt.Errorf("--wait %v: must not be negative", wait)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			fmt.Fprintf(cmd.ErrOrStderr(), "portspace punch rendezvous: listening on %v\n", listen)
			return srv.ListenAndServe(ctx, listen)
		},
	}
	c.Flags().StringArrayVar(&listen, "listen", nil, "address:port to listen on (repeat; give two or more for the mapping probe)")
	c.Flags().DurationVar(&wait, "wait", punch.DefaultWaitTimeout, "how long a registration waits for its peer")
	return c
}

func newPunchDialCmd() *cobra.Command {
	var (
		o       punch.Options
		local   string
		asJSON  bool
		timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "dial --rendezvous ADDR --id ME --peer THEM",
		Short: "Connect to a peer and copy standard input and output over the connection, like nc",
		Long: `dial registers as --id, waits for --peer, and connects by simultaneous open,
or through the rendezvous's relay when punching fails (unless --no-relay).
Standard input goes to the peer and the peer's bytes to standard output; at
the end of standard input the connection is half-closed. The result (method,
local and remote endpoints, time to connect, rounds) goes to standard error,
with --json as one JSON object on one line. It exits 0 once the peer has
closed its side and everything was copied, 1 when no connection was made.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, f := range []struct{ name, v string }{{"--rendezvous", o.Rendezvous}, {"--id", o.ID}, {"--peer", o.Peer}} {
				if f.v == "" {
					return fmt.Errorf("%s is required", f.name)
				}
			}
			if local != "" {
				ap, err := netip.ParseAddrPort(local)
				if err != nil {
					return fmt.Errorf("--local %q: %v", local, err)
				}
				o.Local = ap
			}
			if timeout <= 0 {
				return fmt.Errorf("--timeout %v: must be positive", timeout)
			}
			o.Timeout = timeout
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			conn, res, err := punch.Dial(ctx, o)
			report := func() {
				if asJSON {
					b, _ := json.Marshal(res)
					fmt.Fprintln(cmd.ErrOrStderr(), string(b))
					return
				}
				if res.Method != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "portspace punch: %s %v -> %v in %.1f ms, %d round(s)\n", res.Method, res.Local, res.Remote, res.MS, res.Rounds)
				}
				if res.Reason != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "portspace punch: %s\n", res.Reason)
				}
			}
			report()
			if err != nil {
				return err
			}
			defer conn.Close()
			return punch.Copy(conn, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	f := c.Flags()
	f.StringVar(&o.Rendezvous, "rendezvous", "", "the rendezvous's address:port")
	f.StringVar(&o.ID, "id", "", "this peer's ID")
	f.StringVar(&o.Peer, "peer", "", "the ID of the peer to connect to")
	f.StringVar(&o.Secret, "secret", "", "the secret that binds the ID (default: a random one)")
	f.StringVar(&local, "local", "", "local address:port to punch from (default: any address, a free port)")
	f.BoolVar(&o.NoRelay, "no-relay", false, "fail instead of relaying when punching fails")
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object on one line of standard error")
	f.DurationVar(&timeout, "timeout", punch.DefaultTimeout, "bound on the whole dial, the peer's registration included")
	return c
}
