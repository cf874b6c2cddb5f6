package netsys

import (
	"errors"
	"net/netip"
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

// SetTTL sets the IPv4 TTL (IP_TTL) or, for an IPv6 socket, the unicast hop
// limit (IPV6_UNICAST_HOPS) of the packets the socket sends.
func SetTTL(fd int, v6 bool, ttl int) error {
	if v6 {
		return os.NewSyscallError("setsockopt IPV6_UNICAST_HOPS", unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, ttl))
	}
	return os.NewSyscallError("setsockopt IP_TTL", unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl))
}

// ConnectLowTTL starts a non-blocking TCP connect from local to remote whose
// SYN leaves with TTL (hop limit) first, then sets the socket's TTL to ttl
// for every later packet (the SYN-ACK of a simultaneous open, a
// retransmitted SYN). The socket shares local with SO_REUSEADDR and
// SO_REUSEPORT. It returns the descriptor with the connect in progress; the
// caller waits for writability and reads SockError.
func ConnectLowTTL(local, remote netip.AddrPort, first, ttl int) (int, error) {
	v6 := remote.Addr().Is6()
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	fail := func(err error) (int, error) {
		unix.Close(fd)
		return -1, err
	}
	if err := SetReusePort(fd); err != nil {
		return fail(err)
	}
	if err := SetTTL(fd, v6, first); err != nil {
		return fail(err)
	}
	if err := Bind(fd, local); err != nil {
		return fail(err)
	}
	if err := unix.Connect(fd, sockaddr(remote)); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fail(os.NewSyscallError("connect", err))
	}
	// connect has sent the SYN; everything after it goes at the full TTL.
	if err := SetTTL(fd, v6, ttl); err != nil {
		return fail(err)
	}
	return fd, nil
}

// SockError returns the socket's pending error (SO_ERROR): after a
// non-blocking connect becomes writable, nil means connected.
func SockError(fd int) error {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return os.NewSyscallError("getsockopt SO_ERROR", err)
	}
	if v != 0 {
		return os.NewSyscallError("connect", unix.Errno(v))
	}
	return nil
}
