package main

import (
	"fmt"
	"os"

	"github.com/portspace/portspace/lease"
	"github.com/spf13/cobra"
)

func newLeaseApplyCmd() *cobra.Command {
	var f leaseFlags
	cmd := &cobra.Command{
		Use:   "apply FILE",
		Short: "Make the store's pools those of a YAML pools file",
		Long: `apply reads a pools file (YAML) and makes the store's pools those; it is
idempotent. A change that would remove or re-cut a slice that is held or in
quarantine is refused, naming the slice; traits, quarantines and new
addresses and pools apply at once.`,
		Example: `  portspace lease apply pools.yaml
  portspace lease apply --store etcd://127.0.0.1:2379 pools.yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			pools, err := lease.ParsePools(args[0], data)
			if err != nil {
				return err
			}
			s, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.Apply(cmd.Context(), pools); err != nil {
				return err
			}
			n := 0
			ls, err := s.List(cmd.Context())
			if err != nil {
				return err
			}
			n = len(ls)
			if f.asJSON {
				return printJSONObject(cmd, map[string]int{"pools": len(pools), "slices": n})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d pools, %d slices\n", len(pools), n)
			return nil
		},
	}
	f.add(cmd)
	return cmd
}
