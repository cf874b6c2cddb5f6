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

// ConnectTCP is only supported on Linux.
func ConnectTCP(local, remote netip.AddrPort, first, ttl int) (int, error) {
	return -1, unsupported("TCP connect with a first TTL")
}

// ICMP is an ICMP error a socket received, and who sent it.
type ICMP struct {
	Type, Code uint8
	From       netip.Addr
}

// ICMPError is only supported on Linux; it reports none.
func ICMPError(fd int) (ICMP, bool) { return ICMP{}, false }

// SockError is only supported on Linux.
func SockError(fd int) error { return unsupported("SO_ERROR") }

// SetRecvErr is only supported on Linux.
func SetRecvErr(fd int, v6 bool) error { return unsupported("IP_RECVERR") }

// Dup is only supported on Linux.
func Dup(fd int) (int, error) { return -1, unsupported("dup") }
