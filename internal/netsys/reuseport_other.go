//go:build !linux

package netsys

// SetReusePort is only supported on Linux.
func SetReusePort(fd int) error { return unsupported("SO_REUSEPORT") }

// IsConnRefused is only supported on Linux; it reports false.
func IsConnRefused(err error) bool { return false }

// IsUnreachable is only supported on Linux; it reports false.
func IsUnreachable(err error) bool { return false }
