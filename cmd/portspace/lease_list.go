package main

import (
	"github.com/spf13/cobra"
)

func newLeaseListCmd() *cobra.Command {
	var f leaseFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List every slice: held, quarantined or free",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close()
			ls, err := s.List(cmd.Context())
			if err != nil {
				return err
			}
			return printLeases(cmd.OutOrStdout(), f.asJSON, true, ls...)
		},
	}
	f.add(cmd)
	return cmd
}
