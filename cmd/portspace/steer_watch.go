package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/portspace/portspace/steer"
	"github.com/spf13/cobra"
)

func newSteerWatchCmd(f *steerFlags) *cobra.Command {
	var (
		form   string
		netns  string
		resync time.Duration
	)
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Keep this gateway's steering equal to the store's held slices",
		Long: `watch applies as apply does, then again whenever the store reports a
change, when a held grant expires, and at least every --resync, until
interrupted: the rules of slices that moved to another host, were released
or expired are removed. Changes are logged to standard error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fm, err := steer.ParseForm(form)
			if err != nil {
				return fmt.Errorf("--form: %w", err)
			}
			if resync <= 0 {
				return fmt.Errorf("--resync %v: must be positive", resync)
			}
			o, err := f.options()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			s, err := f.open(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			g, err := steer.OpenGateway(netns)
			if err != nil {
				return fmt.Errorf("--netns %q: %w", netns, err)
			}
			defer g.Close()
			r := &steer.Reconciler{Store: s, Gateway: g, Form: fm, Options: o,
				Logger: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))}
			err = r.Run(ctx, steer.WatchOptions{Resync: resync})
			if ctx.Err() != nil {
				return nil // interrupted: the steering stays as last applied
			}
			return err
		},
	}
	cmd.Flags().StringVar(&form, "form", "nft", "ip (a rule per slice) or nft (one verdict map)")
	cmd.Flags().StringVar(&netns, "netns", "", "apply in the network namespace at this path (default: this one)")
	cmd.Flags().DurationVar(&resync, "resync", 10*time.Second, "longest time between two reconciles")
	return cmd
}
