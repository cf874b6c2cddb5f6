package main

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/steer"
	"github.com/spf13/cobra"
)

func newSteerHostCmd(f *steerFlags) *cobra.Command {
	var (
		host  string
		netns string
	)
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Make this host hold the shared addresses of its slices without answering ARP",
		Long: `host puts the shared addresses of the slices that --host holds in the store
on --host-link ("lo" by default, labelled lo:portspace; another name is a
dummy link with ARP off), removes the ones it no longer holds, and sets
net.ipv4.conf.all.arp_ignore=1 and arp_announce=2, so that the host accepts
the replies the gateway steers to it but never answers ARP for the shared
address (the gateway does not route the address itself to any one host).`,
		Example: `  portspace steer host --store etcd://10.0.0.5:2379 --host 10.0.1.2`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, err := netip.ParseAddr(host)
			if err != nil {
				return fmt.Errorf("--host %q: want the host's IP address as the gateway reaches it", host)
			}
			o, err := f.options()
			if err != nil {
				return err
			}
			ls, err := f.list(cmd.Context())
			if err != nil {
				return err
			}
			now := time.Now()
			var addrs []netip.Addr
			for _, l := range ls {
				if l.State == lease.Held && l.Expires.After(now) && l.Host.Unmap() == h.Unmap() && !slices.Contains(addrs, l.Addr) {
					addrs = append(addrs, l.Addr)
				}
			}
			if err := steer.HoldShared(netns, o, addrs); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "host %s holds %d shared addresses on %s\n", h, len(addrs), o.HostLink)
			return nil
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "this host's address as the gateway reaches it (as given in its claims)")
	cmd.Flags().StringVar(&netns, "netns", "", "act in the network namespace at this path (default: this one)")
	return cmd
}
