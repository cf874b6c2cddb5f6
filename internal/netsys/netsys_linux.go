package netsys

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

var (
	probeOnce sync.Once
	caps      Caps
)

// Probe reports which kernel features work. It runs its probes once per
// process (the answers depend on the kernel, not on the network namespace)
// and then returns the cached result.
func Probe() Caps {
	probeOnce.Do(func() { caps = probe() })
	return caps
}

func probe() Caps {
	var c Caps
	if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
		c.BindAddressNoPort = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1) == nil
		// Any valid range works for the probe; the socket is never used.
		c.LocalPortRange = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_LOCAL_PORT_RANGE, 40000|40001<<16) == nil
		unix.Close(fd)
	}
	c.UDPDiag = probeUDPDiag()
	return c
}

// probeUDPDiag binds a UDP socket on the loopback address and checks that
// the exact sock_diag lookup finds it by cookie.
func probeUDPDiag() bool {
	fd, err := UDPSocket(false)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	lo := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)
	if unix.Bind(fd, &unix.SockaddrInet4{Addr: lo.Addr().As4()}) != nil {
		return false
	}
	local, err := localAddr(fd)
	if err != nil {
		return false
	}
	own, err := Cookie(fd)
	if err != nil {
		return false
	}
	got, found, err := LookupUDP(local, netip.AddrPortFrom(lo.Addr(), 9))
	return err == nil && found && got == own
}

// EphemeralRange reads net.ipv4.ip_local_port_range of the calling
// process's network namespace (it also governs IPv6).
func EphemeralRange() (PortRange, error) {
	const path = "/proc/sys/net/ipv4/ip_local_port_range"
	b, err := os.ReadFile(path)
	if err != nil {
		return PortRange{}, fmt.Errorf("netsys: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return PortRange{}, fmt.Errorf("netsys: %s: unexpected content %q", path, b)
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo > hi {
		return PortRange{}, fmt.Errorf("netsys: %s: unexpected content %q", path, b)
	}
	return PortRange{Lo: uint16(lo), Hi: uint16(hi)}, nil
}

// ReservedPorts reads net.ipv4.ip_local_reserved_ports of the calling
// process's network namespace: ports that automatic selection skips.
func ReservedPorts() ([]PortRange, error) {
	const path = "/proc/sys/net/ipv4/ip_local_reserved_ports"
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("netsys: %w", err)
	}
	return parseReserved(path, strings.TrimSpace(string(b)))
}

func parseReserved(path, s string) ([]PortRange, error) {
	var out []PortRange
	if s == "" {
		return nil, nil
	}
	for _, part := range strings.Split(s, ",") {
		a, b, isRange := strings.Cut(part, "-")
		lo, err := strconv.ParseUint(a, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("netsys: %s: bad entry %q", path, part)
		}
		hi := lo
		if isRange {
			if hi, err = strconv.ParseUint(b, 10, 16); err != nil || hi < lo {
				return nil, fmt.Errorf("netsys: %s: bad entry %q", path, part)
			}
		}
		out = append(out, PortRange{Lo: uint16(lo), Hi: uint16(hi)})
	}
	return out, nil
}

// Control runs f on the file descriptor behind c (as net.Dialer.Control
// hands it over) and returns f's error, or c's.
func Control(c syscall.RawConn, f func(fd int) error) error {
	var ferr error
	if err := c.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// SetBindAddressNoPort sets IP_BIND_ADDRESS_NO_PORT, so that bind with port
// 0 leaves the port to connect, which checks the whole 4-tuple. The option
// is at the IP level but applies to IPv6 sockets too.
func SetBindAddressNoPort(fd int) error {
	// Raw, as the lock steps' calls (raw_linux.go): it never blocks.
	return os.NewSyscallError("setsockopt IP_BIND_ADDRESS_NO_PORT", setsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1))
}

// SetLocalPortRange sets IP_LOCAL_PORT_RANGE (value lo | hi<<16): automatic
// port selection on this socket uses only lo..hi. The kernel ignores bounds
// outside the namespace's ip_local_port_range (it only narrows it).
func SetLocalPortRange(fd int, lo, hi uint16) error {
	return os.NewSyscallError("setsockopt IP_LOCAL_PORT_RANGE", setsockoptInt(fd, unix.IPPROTO_IP, unix.IP_LOCAL_PORT_RANGE, int(uint32(lo)|uint32(hi)<<16)))
}

// LocalPortRange reads IP_LOCAL_PORT_RANGE back.
func LocalPortRange(fd int) (PortRange, error) {
	v, err := unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_LOCAL_PORT_RANGE)
	if err != nil {
		return PortRange{}, os.NewSyscallError("getsockopt IP_LOCAL_PORT_RANGE", err)
	}
	return PortRange{Lo: uint16(uint32(v)), Hi: uint16(uint32(v) >> 16)}, nil
}

// UDPSocket creates a non-blocking, close-on-exec UDP socket.
func UDPSocket(v6 bool) (int, error) {
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if v6 {
		// Keep AF_INET6 sockets to IPv6 alone, as Go does for "udp6".
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return -1, os.NewSyscallError("setsockopt IPV6_V6ONLY", err)
		}
	}
	return fd, nil
}

// Close closes fd.
func Close(fd int) error { return os.NewSyscallError("close", unix.Close(fd)) }

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	a := ap.Addr()
	if a.Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
	if z := a.Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		} else if n, err := strconv.ParseUint(z, 10, 32); err == nil {
			sa.ZoneId = uint32(n)
		}
	}
	return sa
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// Connect connects fd to ap. On a non-blocking stream socket it may return
// EINPROGRESS; datagram sockets connect at once.
func Connect(fd int, ap netip.AddrPort) error {
	return os.NewSyscallError("connect", unix.Connect(fd, sockaddr(ap)))
}

func localAddr(fd int) (netip.AddrPort, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, os.NewSyscallError("getsockname", err)
	}
	return addrPort(sa), nil
}

// RouteSource returns the source address the kernel would use toward dst,
// learned by connecting a throwaway UDP socket (no packet is sent).
func RouteSource(dst netip.Addr) (netip.Addr, error) {
	fd, err := UDPSocket(dst.Is6())
	if err != nil {
		return netip.Addr{}, err
	}
	defer unix.Close(fd)
	if err := Connect(fd, netip.AddrPortFrom(dst, 9)); err != nil {
		return netip.Addr{}, err
	}
	ap, err := localAddr(fd)
	if err != nil {
		return netip.Addr{}, err
	}
	return ap.Addr(), nil
}

// FileConn turns fd into a net.Conn (a *net.UDPConn or *net.TCPConn) and
// closes fd; the conn owns a duplicate.
func FileConn(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("netsys: %w", err)
	}
	return c, nil
}

// IsAddrNotAvail reports whether err is EADDRNOTAVAIL: at bind, the address
// is not local; at connect, the 4-tuple is taken or no port is left.
func IsAddrNotAvail(err error) bool { return errors.Is(err, unix.EADDRNOTAVAIL) }

// IsAddrInUse reports whether err is EADDRINUSE: bind found the port locked
// by a socket that does not share it.
func IsAddrInUse(err error) bool { return errors.Is(err, unix.EADDRINUSE) }
