//go:build !linux

package netsys

import "net/netip"

// SetReusePort is only supported on Linux.
func SetReusePort(fd int) error { return unsupported("SO_REUSEPORT") }

// IsConnRefused is only supported on Linux; it reports false.
func IsConnRefused(err error) bool { return false }

// IsUnreachable is only supported on Linux; it reports false.
func IsUnreachable(err error) bool { return false }

// SetTTL is only supported on Linux.
func SetTTL(fd int, v6 bool, ttl int) error { return unsupported("IP_TTL") }

// ConnectLowTTL is only supported on Linux.
func ConnectLowTTL(local, remote netip.AddrPort, first, ttl int) (int, error) {
	return -1, unsupported("TCP connect with a low TTL")
}

// SockError is only supported on Linux.
func SockError(fd int) error { return unsupported("SO_ERROR") }
