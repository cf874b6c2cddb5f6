package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/portspace/portspace/lease"
	"github.com/spf13/cobra"
)

// leaseJSON is one lease as `portspace lease ... --json` prints it.
type leaseJSON struct {
	ID      string `json:"id"`
	Pool    string `json:"pool"`
	Addr    string `json:"addr"`
	Ports   string `json:"ports"`
	Holder  string `json:"holder"`
	Token   uint64 `json:"token"`
	Expires string `json:"expires"`
	State   string `json:"state,omitempty"`
}

func toJSON(l lease.Lease, withState bool) leaseJSON {
	j := leaseJSON{ID: l.ID, Pool: l.Pool, Addr: l.Addr.String(), Ports: l.Ports.String(), Holder: l.Holder, Token: l.Token}
	if !l.Expires.IsZero() {
		j.Expires = l.Expires.UTC().Format(time.RFC3339)
	}
	if withState {
		j.State = l.State.String()
	}
	return j
}

// leaseFlags are the flags every lease subcommand has.
type leaseFlags struct {
	store  string
	asJSON bool
}

func (f *leaseFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.store, "store", "", "store URL: bolt:PATH, etcd://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...][/PREFIX] or etcds://...?cacert=FILE&cert=FILE&key=FILE (default: bolt: in the state directory)")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print JSON on standard output")
}

// open opens the store named by --store.
func (f *leaseFlags) open(ctx context.Context) (lease.Store, error) {
	s, err := lease.Open(ctx, f.store)
	if err != nil {
		return nil, fmt.Errorf("--store: %w", err)
	}
	return s, nil
}

func newLeaseCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lease",
		Short: "Lease slices of shared egress addresses' port space to hosts",
		Long: `lease manages the slices of shared egress addresses: apply a pools file,
claim a slice for a holder by traits, renew or release it, list every slice.

The store is --store URL: bolt:PATH (one machine, any number of processes;
the default is bolt: = leases.db in $PORTSPACE_STATE, else /var/lib/portspace
as root, else $XDG_STATE_HOME/portspace) or etcd://HOST:PORT[,HOST:PORT...]
(a fleet; etcd 3.4 or later). etcds:// speaks TLS, with the options
?cacert=FILE&cert=FILE&key=FILE; USER:PASSWORD@ before the hosts (or USER@
with ?password-file=FILE) authenticates with etcd's users and roles. See
docs/lease.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	for _, c := range leaseSubcommands() {
		cmd.AddCommand(c())
	}
	return cmd
}

// leaseSubcommands lists the lease subcommands, one constructor per file.
func leaseSubcommands() []func() *cobra.Command {
	return []func() *cobra.Command{
		newLeaseApplyCmd,
		newLeaseClaimCmd,
		newLeaseRenewCmd,
		newLeaseReleaseCmd,
		newLeaseListCmd,
	}
}

// printLeases writes leases as JSON (an object for one, an array for a
// list) or as a table.
func printLeases(w io.Writer, asJSON, isList bool, ls ...lease.Lease) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if !isList {
			return enc.Encode(toJSON(ls[0], false))
		}
		out := make([]leaseJSON, 0, len(ls))
		for _, l := range ls {
			out = append(out, toJSON(l, true))
		}
		return enc.Encode(out)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDR\tPORTS\tSTATE\tHOLDER\tTOKEN\tEXPIRES")
	for _, l := range ls {
		j := toJSON(l, true)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", j.ID, j.Addr, j.Ports, j.State, dash(j.Holder), j.Token, dash(j.Expires))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// parseTraits parses --trait KEY=VALUE flags.
func parseTraits(in []string) (map[string]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, t := range in {
		k, v, ok := strings.Cut(t, "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("--trait %q: want KEY=VALUE, for example geo=de", t)
		}
		if prev, dup := m[k]; dup && prev != v {
			return nil, fmt.Errorf("--trait %q: %s is already %s", t, k, prev)
		}
		m[k] = v
	}
	return m, nil
}
