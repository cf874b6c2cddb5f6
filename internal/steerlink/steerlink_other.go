//go:build !linux

package steerlink

import "net/netip"

// Handle is a netlink connection to one network namespace.
type Handle struct{}

// Open returns ErrUnsupported on this system.
func Open(netnsPath string) (*Handle, error) { return nil, ErrUnsupported }

// Close does nothing on this system.
func (h *Handle) Close() error { return nil }

// Apply returns ErrUnsupported on this system.
func (h *Handle) Apply(o Owned, want State) (Stats, error) { return Stats{}, ErrUnsupported }

// HostTables returns ErrUnsupported on this system.
func (h *Handle) HostTables(o Owned) (map[netip.Addr]uint32, error) { return nil, ErrUnsupported }

// HoldShared returns ErrUnsupported on this system.
func (h *Handle) HoldShared(link string, addrs []netip.Addr) error { return ErrUnsupported }
