package main

import (
	"fmt"
	"time"

	"github.com/portspace/portspace/steer"
	"github.com/spf13/cobra"
)

func newSteerApplyCmd(f *steerFlags) *cobra.Command {
	var (
		form  string
		netns string
	)
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Make this gateway steer the store's held slices (idempotent)",
		Long: `apply lists the store and makes the gateway's owned rules, routes and
nftables table equal to the steering of the held slices, through netlink:
only the difference is changed, the nftables table is replaced in one
transaction, and nothing outside the owned ranges is touched. Each host keeps
the table it has. It needs CAP_NET_ADMIN.`,
		Example: `  portspace steer apply --store etcd://10.0.0.5:2379 --form nft`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fm, err := steer.ParseForm(form)
			if err != nil {
				return fmt.Errorf("--form: %w", err)
			}
			o, err := f.options()
			if err != nil {
				return err
			}
			ls, err := f.list(cmd.Context())
			if err != nil {
				return err
			}
			g, err := steer.OpenGateway(netns)
			if err != nil {
				return fmt.Errorf("--netns %q: %w", netns, err)
			}
			defer g.Close()
			keep, err := g.Tables(o)
			if err != nil {
				return err
			}
			p, err := steer.NewPlan(ls, time.Now(), o, keep)
			if err != nil {
				return err
			}
			st, err := g.Apply(p, fm)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "form %s: %d slices, %d hosts; rules +%d -%d, routes +%d -%d, nft table replaced: %v\n",
				fm, len(p.Slices), len(p.Hosts), st.RulesAdded, st.RulesDeleted, st.RoutesAdded, st.RoutesDeleted, st.NFT)
			return nil
		},
	}
	cmd.Flags().StringVar(&form, "form", "nft", "ip (a rule per slice) or nft (one verdict map)")
	cmd.Flags().StringVar(&netns, "netns", "", "apply in the network namespace at this path (default: this one)")
	return cmd
}
