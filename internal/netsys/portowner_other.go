//go:build !linux

package netsys

// SetReusePortFlag is only supported on Linux.
func SetReusePortFlag(fd int, on bool) error { return unsupported("SO_REUSEPORT") }

// ProbePortOwner is only supported on Linux; it returns an unsupported
// error.
func ProbePortOwner() error { return unsupported("the UDP port owner lock") }
