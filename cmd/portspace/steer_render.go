package main

import (
	"fmt"
	"time"

	"github.com/portspace/portspace/steer"
	"github.com/spf13/cobra"
)

func newSteerRenderCmd(f *steerFlags) *cobra.Command {
	var (
		format string
		at     string
	)
	cmd := &cobra.Command{
		Use:   "render",
		Short: "Print the gateway's steering as ip commands or an nft -f file",
		Long: `render lists the store and prints the steering of its held slices:
  --format ip      ip(8) commands of the ip form (for a fresh gateway)
  --format nft     the nft -f file of the nft form (it replaces the table)
  --format nft-ip  the routes and fwmark rules that go with the nft file
  --format hosts   per host, what it needs to hold its shared addresses
                   without answering ARP for them`,
		Example: `  portspace steer render --store bolt:/var/lib/portspace/leases.db --format nft > steer.nft
  nft -f steer.nft && portspace steer render --format nft-ip | sh -e`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fm, err := steer.ParseFormat(format)
			if err != nil {
				return fmt.Errorf("--format: %w", err)
			}
			now := time.Now()
			if at != "" {
				if now, err = time.Parse(time.RFC3339, at); err != nil {
					return fmt.Errorf("--at %q: want an RFC 3339 time", at)
				}
			}
			o, err := f.options()
			if err != nil {
				return err
			}
			ls, err := f.list(cmd.Context())
			if err != nil {
				return err
			}
			p, err := steer.NewPlan(ls, now, o, nil)
			if err != nil {
				return err
			}
			out, err := steer.Render(p, fm)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	cmd.Flags().StringVar(&format, "format", "ip", "ip, nft, nft-ip or hosts")
	cmd.Flags().StringVar(&at, "at", "", "render the slices held at this RFC 3339 time (default: now)")
	return cmd
}
