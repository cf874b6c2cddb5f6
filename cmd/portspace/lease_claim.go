package main

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/portspace/portspace/lease"
	"github.com/spf13/cobra"
)

func newLeaseClaimCmd() *cobra.Command {
	var (
		f      leaseFlags
		holder string
		traits []string
		ttl    time.Duration
		host   string
	)
	cmd := &cobra.Command{
		Use:   "claim --holder NAME [--trait KEY=VALUE ...]",
		Short: "Claim one more slice of a pool with the given traits",
		Long: `claim grants the holder one more free slice of a pool whose traits include
every --trait, for --ttl (renew before it ends). --host is the holder's
address as the steering gateway reaches it.`,
		Example: `  portspace lease claim --holder web-1 --trait geo=de --ttl 30s --json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if holder == "" {
				return fmt.Errorf("--holder: required")
			}
			if ttl <= 0 {
				return fmt.Errorf("--ttl %v: want a positive duration", ttl)
			}
			tr, err := parseTraits(traits)
			if err != nil {
				return err
			}
			req := lease.Request{Holder: holder, Traits: tr, TTL: ttl}
			if host != "" {
				if req.Host, err = netip.ParseAddr(host); err != nil {
					return fmt.Errorf("--host %q: not an IP address", host)
				}
			}
			s, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close()
			l, err := s.Claim(cmd.Context(), req)
			if err != nil {
				return err
			}
			return printLeases(cmd.OutOrStdout(), f.asJSON, false, l)
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&holder, "holder", "", "the claimant's name (required)")
	cmd.Flags().StringArrayVar(&traits, "trait", nil, "a trait the pool must offer, KEY=VALUE (repeatable)")
	cmd.Flags().DurationVar(&ttl, "ttl", 30*time.Second, "how long the grant lasts without a renew")
	cmd.Flags().StringVar(&host, "host", "", "the holder's address as the steering gateway reaches it")
	return cmd
}
