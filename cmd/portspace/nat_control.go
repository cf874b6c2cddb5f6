package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/portspace/portspace/gateway"
)

// controlFlags are the flags that find a running gateway's control socket
// and choose the output form, shared by the subcommands that query it
// (nat sessions, nat stats).
type controlFlags struct {
	control, tun, stateDir string
	asJSON                 bool
}

func (c *controlFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&c.control, "control", "", "the gateway's control socket `PATH` (default /run/portspace/nat-TUN.sock)")
	f.StringVar(&c.tun, "tun", "psnat0", "the gateway's TUN name (names the default socket)")
	f.StringVar(&c.stateDir, "state-dir", "/run/portspace", "the gateway's --state-dir")
	f.BoolVar(&c.asJSON, "json", false, "print JSON")
}

// query asks the gateway for what (the control protocol's request name) and
// decodes the answer into v; errors name the subcommand, as in
// "nat stats: gateway: control socket ...".
func (c *controlFlags) query(sub, what string, v any) error {
	path := controlPath(gatewayFlags{control: c.control, tun: c.tun, stateDir: c.stateDir})
	if err := gateway.Query(path, what, v); err != nil {
		return fmt.Errorf("nat %s: %w", sub, err)
	}
	return nil
}
