package netsys

import (
	"encoding/binary"
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

// ConnectTCP starts a non-blocking TCP connect from local to remote whose
// SYN leaves with TTL (hop limit) first, then sets the socket's TTL to ttl
// for every later packet (the SYN-ACK of a simultaneous open, a
// retransmitted SYN); first == ttl sends everything at ttl. The socket
// shares local with SO_REUSEADDR and SO_REUSEPORT and queues ICMP errors
// (IP_RECVERR), so that ICMPError can say who answered a failed connect.
// It returns the descriptor with the connect in progress; the caller waits
// for writability and reads SockError.
func ConnectTCP(local, remote netip.AddrPort, first, ttl int) (int, error) {
	v6 := remote.Addr().Is6()
	family, level, recverr := unix.AF_INET, unix.IPPROTO_IP, unix.IP_RECVERR
	if v6 {
		family, level, recverr = unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_RECVERR
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
	if err := unix.SetsockoptInt(fd, level, recverr, 1); err != nil {
		return fail(os.NewSyscallError("setsockopt IP_RECVERR", err))
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
	if first != ttl {
		if err := SetTTL(fd, v6, ttl); err != nil {
			return fail(err)
		}
	}
	return fd, nil
}

// ICMP is an ICMP error a socket received (RFC 792 type and code), and the
// address of the host that sent it.
type ICMP struct {
	Type, Code uint8
	From       netip.Addr
}

// ICMPError reads the newest ICMP error queued on fd (IP_RECVERR); ok is
// false when none is queued.
func ICMPError(fd int) (icmp ICMP, ok bool) {
	var oob [256]byte
	var buf [64]byte
	for {
		_, oobn, _, _, err := unix.Recvmsg(fd, buf[:], oob[:], unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			return icmp, ok
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if !(m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR) &&
				!(m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR) {
				continue
			}
			const eeLen = 16 // struct sock_extended_err
			if len(m.Data) < eeLen {
				continue
			}
			origin := m.Data[4]
			if origin != unix.SO_EE_ORIGIN_ICMP && origin != unix.SO_EE_ORIGIN_ICMP6 {
				continue
			}
			icmp = ICMP{Type: m.Data[5], Code: m.Data[6]}
			// SO_EE_OFFENDER: the sender's sockaddr follows the struct.
			off := m.Data[eeLen:]
			family := 0
			if len(off) >= 2 {
				family = int(binary.NativeEndian.Uint16(off))
			}
			if family == unix.AF_INET && len(off) >= 8 {
				icmp.From = netip.AddrFrom4([4]byte(off[4:8]))
			} else if family == unix.AF_INET6 && len(off) >= 24 {
				icmp.From = netip.AddrFrom16([16]byte(off[8:24])).Unmap()
			}
			ok = true
		}
	}
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

// SetRecvErr turns on IP_RECVERR (IPV6_RECVERR for an IPv6 socket), so that
// ICMP errors the socket receives queue for ICMPError.
func SetRecvErr(fd int, v6 bool) error {
	level, opt := unix.IPPROTO_IP, unix.IP_RECVERR
	if v6 {
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_RECVERR
	}
	return os.NewSyscallError("setsockopt IP_RECVERR", unix.SetsockoptInt(fd, level, opt, 1))
}

// Dup duplicates fd (close-on-exec), so that a socket can be inspected
// after the runtime has closed its own descriptor.
func Dup(fd int) (int, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	return nfd, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
}
