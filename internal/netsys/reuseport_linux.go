package netsys

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// SetReusePort sets SO_REUSEADDR and SO_REUSEPORT, so that a listener and
// several connecting sockets can share one local address and port, as TCP
// hole punching needs (every socket that talks to the rendezvous, the probe
// server and the peer leaves from the port the NAT mapped).
func SetReusePort(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return os.NewSyscallError("setsockopt SO_REUSEADDR", err)
	}
	return os.NewSyscallError("setsockopt SO_REUSEPORT", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1))
}

// IsConnRefused reports whether err is ECONNREFUSED (a SYN answered by RST).
func IsConnRefused(err error) bool { return errors.Is(err, unix.ECONNREFUSED) }

// IsUnreachable reports whether err is a host or network unreachable error
// (an ICMP error answered the SYN).
func IsUnreachable(err error) bool {
	return errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH)
}
