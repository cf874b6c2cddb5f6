package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/signal"
	"syscall"

	"github.com/portspace/portspace/stun"
	"github.com/spf13/cobra"
)

func newStunCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stun",
		Short: "STUN behaviour-discovery server (RFC 5780)",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newStunServeCmd())
	return cmd
}

func newStunServeCmd() *cobra.Command {
	var (
		primary, alternate string
		tcp, unlimited     bool
		noOffload          bool
		rate               float64
		burst, workers     int
		software           string
		verbose            bool
	)
	cmd := &cobra.Command{
		Use:   "serve --primary ADDR:PORT --alternate ADDR:PORT [--tcp]",
		Short: "Answer STUN Binding requests on two addresses and two ports",
		Long: `serve runs a behaviour-discovery STUN server (RFC 5780 section 6): four UDP
sockets, the primary and alternate addresses times the primary and alternate
ports, answering from the socket CHANGE-REQUEST names, with XOR-MAPPED-ADDRESS,
MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS; RESPONSE-PORT and PADDING;
400 and 420 errors. Requests without the magic cookie (RFC 3489 clients such
as Debian's stun) get MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS.
--tcp also listens on TCP at the same four addresses (mapping tests only).
Without --alternate the server is single-homed and refuses CHANGE-REQUEST.
Each client address may send --rate requests per second (burst --burst).
--workers goroutines read each UDP socket (batches of 64 with recvmmsg and
sendmmsg), so that the primary address is served by every CPU. Where Linux
has them, a run of requests a client sent as one UDP GSO message is read as
one (UDP_GRO) and consecutive answers of one size to one client leave as one
UDP GSO message (UDP_SEGMENT) that the kernel splits into the datagrams;
--no-offload turns both off.`,
		Example: `  portspace stun serve --primary 192.0.2.10:3478 --alternate 192.0.2.11:3479
  portspace stun serve --primary 192.0.2.10:3478 --alternate 192.0.2.11:3479 --tcp`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := stun.Options{TCP: tcp, Rate: rate, Burst: burst, Unlimited: unlimited, Software: software, Workers: workers, NoOffload: noOffload}
			var err error
			if primary == "" {
				return fmt.Errorf("--primary is required (ADDR:PORT)")
			}
			if o.Primary, err = netip.ParseAddrPort(primary); err != nil {
				return fmt.Errorf("--primary %q: want ADDR:PORT: %w", primary, err)
			}
			if alternate != "" {
				if o.Alternate, err = netip.ParseAddrPort(alternate); err != nil {
					return fmt.Errorf("--alternate %q: want ADDR:PORT: %w", alternate, err)
				}
			}
			if rate < 0 || burst < 0 {
				return fmt.Errorf("--rate %v and --burst %d must not be negative", rate, burst)
			}
			if workers < 0 {
				return fmt.Errorf("--workers %d must not be negative", workers)
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			o.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			s, err := stun.Listen(o)
			if errors.Is(err, stun.ErrBadConfig) {
				return fmt.Errorf("--primary %q --alternate %q: %w", primary, alternate, err)
			}
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			err = s.Serve(ctx)
			st := s.Stats()
			o.Logger.Info("stun: stopped", "requests", st.Requests, "responses", st.Responses,
				"errors", st.Errors, "dropped", st.Dropped, "limited", st.Limited, "reads", st.Reads, "sends", st.Sends)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&primary, "primary", "", "primary transport address ADDR:PORT (required)")
	f.StringVar(&alternate, "alternate", "", "alternate address and port ADDR:PORT (RFC 5780 needs both to differ from the primary's)")
	f.BoolVar(&tcp, "tcp", false, "also serve STUN over TCP on the same addresses")
	f.Float64Var(&rate, "rate", stun.DefaultRate, "requests per second per client address")
	f.IntVar(&burst, "burst", stun.DefaultBurst, "burst of requests per client address")
	f.BoolVar(&unlimited, "unlimited", false, "no per-client rate limit (benchmarks on loopback only)")
	f.IntVar(&workers, "workers", 0, "goroutines reading each UDP socket, each with its own descriptors (0: one per CPU, at most 8)")
	f.BoolVar(&noOffload, "no-offload", false, "no UDP GRO on the sockets nor UDP GSO on the answers")
	f.StringVar(&software, "software", "", "SOFTWARE attribute to send (none by default)")
	f.BoolVar(&verbose, "verbose", false, "debug logging")
	return cmd
}
