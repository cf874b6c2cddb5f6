package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newLeaseReleaseCmd() *cobra.Command {
	var (
		f leaseFlags
		g grantFlags
	)
	cmd := &cobra.Command{
		Use:   "release --id ID --token N",
		Short: "End a grant now (the slice enters its quarantine)",
		Args:  cobra.NoArgs,
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
			if err := s.Release(cmd.Context(), l); err != nil {
				return err
			}
			if f.asJSON {
				return printJSONObject(cmd, map[string]any{"id": l.ID, "token": l.Token, "released": true})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "released %s token %d\n", l.ID, l.Token)
			return nil
		},
	}
	f.add(cmd)
	g.add(cmd)
	return cmd
}
