package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/portspace/portspace/gateway"
)

func newNatSessionsCmd() *cobra.Command {
	var c controlFlags
	cmd := &cobra.Command{
		Use:   "sessions",
		Short: "List a running gateway's live sessions (like conntrack -L)",
		Long: `List the live sessions of a running 'portspace nat gateway', read from its
control socket: protocol, inside endpoint, external endpoint, remote
endpoint, TCP state, seconds until it expires, and flags (M: holds the
mapping, I: opened by an inbound packet).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var ss []gateway.SessionRecord
			if err := c.query("sessions", "sessions", &ss); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if c.asJSON {
				return printJSONObject(cmd, ss)
			}
			tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "proto\tinside\texternal\tremote\tstate\texpires\tflags")
			now := time.Now()
			for _, s := range ss {
				flags := ""
				if s.Mapping {
					flags += "M"
				}
				if s.Inbound {
					flags += "I"
				}
				state := s.State
				if state == "" {
					state = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%ds\t%s\n", s.Proto, s.Internal, s.External, s.Remote, state,
					int(s.Expires.Sub(now).Round(time.Second)/time.Second), flags)
			}
			fmt.Fprintf(tw, "%d sessions\n", len(ss))
			return tw.Flush()
		},
	}
	c.register(cmd)
	return cmd
}
