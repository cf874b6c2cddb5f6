//go:build !linux

package netsys

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"syscall"
)

func unsupported(what string) error {
	return fmt.Errorf("netsys: %s on %s: %w", what, runtime.GOOS, ErrUnsupported)
}

// Probe reports the kernel features available; none outside Linux.
func Probe() Caps { return Caps{} }

// EphemeralRange is only supported on Linux.
func EphemeralRange() (PortRange, error) { return PortRange{}, unsupported("ephemeral port range") }

// ReservedPorts is only supported on Linux.
func ReservedPorts() ([]PortRange, error) { return nil, unsupported("reserved ports") }

// Control is only supported on Linux.
func Control(c syscall.RawConn, f func(fd int) error) error { return unsupported("socket control") }

// SetReuseAddr is only supported on Linux.
func SetReuseAddr(fd int, on bool) error { return unsupported("SO_REUSEADDR") }

// SetBindAddressNoPort is only supported on Linux.
func SetBindAddressNoPort(fd int) error { return unsupported("IP_BIND_ADDRESS_NO_PORT") }

// SetLocalPortRange is only supported on Linux.
func SetLocalPortRange(fd int, lo, hi uint16) error { return unsupported("IP_LOCAL_PORT_RANGE") }

// LocalPortRange is only supported on Linux.
func LocalPortRange(fd int) (PortRange, error) {
	return PortRange{}, unsupported("IP_LOCAL_PORT_RANGE")
}

// UDPSocket is only supported on Linux.
func UDPSocket(v6 bool) (int, error) { return -1, unsupported("raw UDP socket") }

// Close is only supported on Linux.
func Close(fd int) error { return unsupported("close") }

// Bind is only supported on Linux.
func Bind(fd int, ap netip.AddrPort) error { return unsupported("bind") }

// Connect is only supported on Linux.
func Connect(fd int, ap netip.AddrPort) error { return unsupported("connect") }

// Cookie is only supported on Linux.
func Cookie(fd int) (uint64, error) { return 0, unsupported("SO_COOKIE") }

// LookupUDP is only supported on Linux.
func LookupUDP(local, remote netip.AddrPort) (uint64, bool, error) {
	return 0, false, unsupported("sock_diag")
}

// RouteSource is only supported on Linux.
func RouteSource(dst netip.Addr) (netip.Addr, error) {
	return netip.Addr{}, unsupported("route source lookup")
}

// FileConn is only supported on Linux.
func FileConn(fd int, name string) (net.Conn, error) { return nil, unsupported("file conn") }

// IsAddrNotAvail reports whether err is EADDRNOTAVAIL.
func IsAddrNotAvail(err error) bool { return false }

// IsAddrInUse reports whether err is EADDRINUSE.
func IsAddrInUse(err error) bool { return false }

// Diag is a sock_diag socket; only supported on Linux.
type Diag struct{}

// OpenDiag is only supported on Linux.
func OpenDiag() (*Diag, error) { return nil, unsupported("sock_diag") }

// Close does nothing outside Linux.
func (d *Diag) Close() error { return nil }

// OtherUnboundUDP is only supported on Linux.
func (d *Diag) OtherUnboundUDP(local netip.AddrPort, own uint64) (bool, error) {
	return false, unsupported("sock_diag")
}

// LookupUDP is only supported on Linux.
func (d *Diag) LookupUDP(local, remote netip.AddrPort) (uint64, bool, error) {
	return 0, false, unsupported("sock_diag")
}

// LookupUDPOn is only supported on Linux.
func (d *Diag) LookupUDPOn(local, remote netip.AddrPort, ifindex int) (UDPOwner, bool, error) {
	return UDPOwner{}, false, unsupported("sock_diag")
}

// PortLockFile is a port lock file; only supported on Linux.
type PortLockFile struct{}

// NetNSID is only supported on Linux.
func NetNSID() (string, error) { return "", unsupported("network namespace identity") }

// OpenPortLockFile is only supported on Linux.
func OpenPortLockFile(dir, netns, proto string, a netip.Addr) (*PortLockFile, error) {
	return nil, unsupported("port lock file")
}

// TryLock is only supported on Linux.
func (l *PortLockFile) TryLock(port uint16) (bool, error) { return false, unsupported("port lock") }

// Unlock is only supported on Linux.
func (l *PortLockFile) Unlock(port uint16) error { return unsupported("port lock") }

// Close does nothing outside Linux.
func (l *PortLockFile) Close() error { return nil }
