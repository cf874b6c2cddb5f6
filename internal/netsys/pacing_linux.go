package netsys

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

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
	r, e := rtt(fd)
	if e != 0 || r >= maxRTTus {
		return false, e
	}
	var name [CCNameMax]byte
	l := uint32(CCNameMax)
	if _, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION,
		uintptr(unsafe.Pointer(&name[0])), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return false, syscall.Errno(e)
	}
	if !bytes.HasPrefix(name[:l], []byte("bbr")) || len(cc) >= CCNameMax {
		return false, 0
	}
	var want [CCNameMax]byte
	copy(want[:], cc)
	if _, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION,
		uintptr(unsafe.Pointer(&want[0])), uintptr(len(cc)), 0); e != 0 {
		return false, syscall.Errno(e)
	}
	return true, 0
}

// ShortPath reports whether the stream socket fd's smoothed round-trip
// time (tcp_info rtt, as UnpaceShortPath reads it) is below maxRTTus
// microseconds; false when it cannot be read. It allocates nothing.
func ShortPath(fd uintptr, maxRTTus int) bool {
	r, e := rtt(fd)
	return e == 0 && r < maxRTTus
}

// rtt returns fd's smoothed round-trip time in microseconds (tcp_info rtt:
// on a socket that only receives, the handshake's; rcv_rtt, which grows
// with the queue in front of a slow reader, is not used).
func rtt(fd uintptr) (int, syscall.Errno) {
	var ti unix.TCPInfo
	l := uint32(unsafe.Sizeof(ti))
	if _, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&ti)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return 0, syscall.Errno(e)
	}
	return int(ti.Rtt), 0
}

// CapShortPathRcvbuf sets SO_RCVBUF of the stream socket fd to size when
// its smoothed round-trip time is below maxRTTus microseconds, bounding the
// queue in front of a reader slower than its sender (autotuning grows it
// to net.ipv4.tcp_rmem's maximum, whose pages then go cold in the cache
// before they are read) on a hop short enough that size bytes still fill
// it (2 MiB at 1 ms: 2 GB/s); longer hops keep autotuning. When size is
// above net.core.rmem_max (RmemMax), which would clamp it (Linux's
// default, 208 KiB, fills a 1 ms hop at only 200 MB/s), it leaves
// autotuning alone. It reports whether it set the size. It allocates
// nothing.
func CapShortPathRcvbuf(fd uintptr, maxRTTus, size int) (bool, syscall.Errno) {
	return capShortPathRcvbuf(fd, maxRTTus, size, RmemMax())
}

func capShortPathRcvbuf(fd uintptr, maxRTTus, size, rmemMax int) (bool, syscall.Errno) {
	if size > rmemMax {
		return false, 0
	}
	r, e := rtt(fd)
	if e != 0 || r >= maxRTTus {
		return false, e
	}
	v := int32(size)
	if _, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_RCVBUF,
		uintptr(unsafe.Pointer(&v)), 4, 0); e != 0 {
		return false, syscall.Errno(e)
	}
	return true, 0
}

// RmemMax returns net.core.rmem_max, the largest SO_RCVBUF a process
// without CAP_NET_ADMIN may set, read once per process (0 when it cannot
// be read).
func RmemMax() int { return rmemMax() }

var rmemMax = sync.OnceValue(func() int {
	b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return n
})

// CongestionControl returns the name of fd's congestion control
// (TCP_CONGESTION).
func CongestionControl(fd uintptr) (string, error) {
	return unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
}
