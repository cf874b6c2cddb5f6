package proxy

import (
	"syscall"
	"unsafe"
)

// readable reports whether the socket fd has data, EOF or a pending error,
// by a non-blocking one-byte MSG_PEEK; false makes the runtime poller wait
// for the next readiness event.
func (d *direction) readable(fd uintptr) bool {
	for {
		_, _, e := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&d.peek[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		return true
	}
}
