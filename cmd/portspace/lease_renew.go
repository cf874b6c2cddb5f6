package main

import (
	"fmt"

	"github.com/portspace/portspace/lease"
	"github.com/spf13/cobra"
)

// grantFlags are --id and --token, which name one grant.
type grantFlags struct {
	id    string
	token uint64
}

func (g *grantFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&g.id, "id", "", "the slice's ID, as claim printed it (required)")
	cmd.Flags().Uint64Var(&g.token, "token", 0, "the grant's token, as claim printed it (required)")
}

func (g *grantFlags) lease() (lease.Lease, error) {
	if g.id == "" {
		return lease.Lease{}, fmt.Errorf("--id: required")
	}
	if g.token == 0 {
		return lease.Lease{}, fmt.Errorf("--token: required (tokens start at 1)")
	}
	return lease.Lease{ID: g.id, Token: g.token}, nil
}

func newLeaseRenewCmd() *cobra.Command {
	var (
		f leaseFlags
		g grantFlags
	)
	cmd := &cobra.Command{
		Use:     "renew --id ID --token N",
		Short:   "Extend a grant by its TTL",
		Example: `  portspace lease renew --id de-residential/192.0.2.10/3 --token 7`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := g.lease()
			if err != nil {
				return err
			}
			s, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close()
			r, err := s.Renew(cmd.Context(), l)
			if err != nil {
				return err
			}
			return printLeases(cmd.OutOrStdout(), f.asJSON, false, r)
		},
	}
	f.add(cmd)
	g.add(cmd)
	return cmd
}
