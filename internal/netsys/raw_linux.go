package netsys

import (
	"net/netip"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The lock steps' system calls (socket options, bind, the OFD lock) never
// block, so they go through unix.RawSyscall6 rather than unix.Syscall6,
// which tells the scheduler around each call (entersyscall, exitsyscall:
// about a tenth of such a call's cost on this machine). The net package
// does the same for socket(2). They build their arguments on the stack and
// allocate nothing.

// setsockoptInt is unix.SetsockoptInt without the scheduler's bookkeeping.
func setsockoptInt(fd, level, opt, v int) error {
	iv := int32(v)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&iv)), 4, 0)
	if e != 0 {
		return e
	}
	return nil
}

// SetReuseAddr sets or clears SO_REUSEADDR.
func SetReuseAddr(fd int, on bool) error {
	v := 0
	if on {
		v = 1
	}
	return os.NewSyscallError("setsockopt SO_REUSEADDR", setsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, v))
}

// Cookie returns the socket's SO_COOKIE, the 64-bit identity sock_diag
// reports for it.
func Cookie(fd int) (uint64, error) {
	var c uint64
	l := uint32(8)
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_COOKIE, uintptr(unsafe.Pointer(&c)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, os.NewSyscallError("getsockopt SO_COOKIE", e)
	}
	return c, nil
}

// Bind binds fd to ap.
func Bind(fd int, ap netip.AddrPort) error {
	a := ap.Addr()
	if a.Is4() {
		sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		putPort(&sa.Port, ap.Port())
		return rawBind(fd, unsafe.Pointer(&sa), unix.SizeofSockaddrInet4)
	}
	if a.Zone() != "" {
		// A zone needs an interface lookup: the general path.
		return os.NewSyscallError("bind", unix.Bind(fd, sockaddr(ap)))
	}
	sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
	putPort(&sa.Port, ap.Port())
	return rawBind(fd, unsafe.Pointer(&sa), unix.SizeofSockaddrInet6)
}

func rawBind(fd int, sa unsafe.Pointer, n uintptr) error {
	_, _, e := unix.RawSyscall(unix.SYS_BIND, uintptr(fd), uintptr(sa), n)
	if e != 0 {
		return os.NewSyscallError("bind", e)
	}
	return nil
}

// putPort stores port in network byte order in a sockaddr's port field.
func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}

// ofdSetLk is fcntl(fd, F_OFD_SETLK, lk) without the scheduler's
// bookkeeping (F_OFD_SETLK never waits).
func ofdSetLk(fd int, lk *unix.Flock_t) error {
	_, _, e := unix.RawSyscall(unix.SYS_FCNTL, uintptr(fd), unix.F_OFD_SETLK, uintptr(unsafe.Pointer(lk)))
	if e != 0 {
		return e
	}
	return nil
}
