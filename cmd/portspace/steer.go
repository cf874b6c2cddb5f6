package main

import (
	"context"
	"fmt"
	"time"

	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/steer"
	"github.com/spf13/cobra"
)

// steerFlags are the flags every steer subcommand shares.
type steerFlags struct {
	store     string
	priority  uint32
	tableBase uint32
	nftTable  string
	hostLink  string
}

func (f *steerFlags) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.store, "store", "", `lease store URL: "bolt:PATH", "etcd://[USER:PASSWORD@]HOST:PORT,..." or "etcds://HOST:PORT,...?cacert=FILE&cert=FILE&key=FILE" (default: the embedded store in the state directory; see docs/lease.md)`)
	pf.Uint32Var(&f.priority, "priority", steer.DefaultPriority, "first of the 100 rule priorities steer owns")
	pf.Uint32Var(&f.tableBase, "table-base", steer.DefaultTableBase, "first of the tables steer owns (the catch-all; hosts get the next 999)")
	pf.StringVar(&f.nftTable, "nft-table", steer.DefaultNFTable, "name of the inet nftables table steer owns")
	pf.StringVar(&f.hostLink, "host-link", steer.DefaultHostLink, `interface a host holds shared addresses on ("lo", or a dummy link steer creates)`)
}

func (f *steerFlags) options() (steer.Options, error) {
	o := steer.Options{Priority: f.priority, TableBase: f.tableBase, NFTable: f.nftTable, HostLink: f.hostLink}
	if err := o.Validate(); err != nil {
		return o, fmt.Errorf("--priority/--table-base/--nft-table/--host-link: %w", err)
	}
	return o, nil
}

// open opens the store named by --store, failing within a few seconds when
// it cannot be reached. The store must exist: a mistyped bolt path or etcd
// prefix would otherwise be a new empty store, whose empty plan removes
// the steering.
func (f *steerFlags) open(ctx context.Context) (lease.Store, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := lease.OpenWith(ctx, f.store, lease.Options{Bolt: lease.BoltOptions{MustExist: true}, Etcd: lease.EtcdOptions{MustExist: true}})
	if err != nil {
		return nil, fmt.Errorf("--store %q: %w", f.store, err)
	}
	return s, nil
}

// list returns the store's leases.
func (f *steerFlags) list(ctx context.Context) ([]lease.Lease, error) {
	s, err := f.open(ctx)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	ls, err := s.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("--store %q: %w", f.store, err)
	}
	return ls, nil
}

func newSteerCmd() *cobra.Command {
	f := &steerFlags{}
	cmd := &cobra.Command{
		Use:   "steer",
		Short: "Route each port slice's replies to the host that holds it",
		Long: `steer configures the Linux gateway in front of hosts that share an egress
address by port slices (portspace lease): replies to the shared address are
routed by destination port to the host whose lease holds that port.

Two forms: "ip", one routing rule per slice range and protocol ("ip rule ...
to ADDR ipproto tcp dport LO-HI lookup TABLE", Linux 4.17+), and "nft", one
nftables verdict map per shared address (a hash map over aligned port blocks,
or over port intervals) plus fwmark rules per host (a two-level goto tree of
groups of 16 marks), whose per-packet cost does not grow with the number of
slices. Everything steer installs lies in ranges it owns: rule priorities
--priority..+99, tables --table-base..+999, marks 0x70730001.. and the
nftables table inet --nft-table. See docs/steer.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	f.register(cmd)
	for _, c := range []func(*steerFlags) *cobra.Command{newSteerRenderCmd, newSteerApplyCmd, newSteerWatchCmd, newSteerHostCmd} {
		cmd.AddCommand(c(f))
	}
	return cmd
}
