//go:build !linux

package tunnet

import (
	"fmt"
	"net/netip"
)

// Apply sets up p (Linux only).
func Apply(p Plan) (*Setup, error) {
	return nil, fmt.Errorf("tunnet: TUN gateway: %w", ErrUnsupported)
}

// Recover removes what a previous run with the same TUN name and state
// directory left behind (Linux only).
func Recover(stateDir, tun string) error {
	return fmt.Errorf("tunnet: recover: %w", ErrUnsupported)
}

// Remove closes the queues and removes everything Apply added.
func (s *Setup) Remove() error { return fmt.Errorf("tunnet: remove: %w", ErrUnsupported) }

// LocalAddrs returns the addresses configured on this host's interfaces
// (Linux only).
func LocalAddrs() (map[netip.Addr]string, error) {
	return nil, fmt.Errorf("tunnet: addresses: %w", ErrUnsupported)
}
