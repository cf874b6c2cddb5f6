package netsys

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Readable reports whether the stream socket fd has data, EOF or a pending
// error, without reading: it stores the queued byte count (TIOCINQ) in
// *avail and, when that is zero, peeks one byte into *peek (MSG_PEEK,
// non-blocking) to tell EOF or an error from nothing yet. False means wait
// for the next readiness event. The caller owns avail and peek (fields of a
// long-lived value), so the call allocates nothing.
func Readable(fd uintptr, avail *int32, peek *byte) bool {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.TIOCINQ, uintptr(unsafe.Pointer(avail))); e == 0 && *avail > 0 {
		return true
	}
	*avail = 0
	for {
		_, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(peek)), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		return true
	}
}
