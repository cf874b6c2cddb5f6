package netsys

import (
	"bytes"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tcpCCNameMax is TCP_CA_NAME_MAX (linux/tcp.h).
const tcpCCNameMax = 16

// UnpaceShortPath switches the stream socket fd from a pacing congestion
// control (BBR: its name starts with "bbr") to cc (say "reno", which every
// user may set) when fd's smoothed round-trip time (tcp_info rtt) is below
// maxRTTus microseconds: a loopback or LAN hop, where pacing has no queue
// to spare and, on a qdisc without pacing (lo's noqueue), costs a
// high-resolution timer per burst (docs/proxy.md, "Pacing on a short
// hop"). It reports whether it switched; an errno when a system call
// failed (EPERM: cc is not in net.ipv4.tcp_allowed_congestion_control and
// the process lacks CAP_NET_ADMIN). It allocates nothing.
func UnpaceShortPath(fd uintptr, maxRTTus int, cc string) (bool, syscall.Errno) {
	var ti unix.TCPInfo
	l := uint32(unsafe.Sizeof(ti))
	if _, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&ti)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return false, syscall.Errno(e)
	}
	if int(ti.Rtt) >= maxRTTus {
		return false, 0
	}
	var name [tcpCCNameMax]byte
	l = tcpCCNameMax
	if _, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION,
		uintptr(unsafe.Pointer(&name[0])), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return false, syscall.Errno(e)
	}
	if !bytes.HasPrefix(name[:l], []byte("bbr")) || len(cc) >= tcpCCNameMax {
		return false, 0
	}
	var want [tcpCCNameMax]byte
	copy(want[:], cc)
	if _, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION,
		uintptr(unsafe.Pointer(&want[0])), uintptr(len(cc)), 0); e != 0 {
		return false, syscall.Errno(e)
	}
	return true, 0
}

// CongestionControl returns the name of fd's congestion control
// (TCP_CONGESTION).
func CongestionControl(fd uintptr) (string, error) {
	return unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
}
