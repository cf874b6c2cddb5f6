package proxy

import (
	"syscall"
	"unsafe"
)

// readable reports whether the socket fd has data, EOF or a pending error:
// the queued byte count (TIOCINQ, into d.avail) and, when it is zero, a
// non-blocking one-byte MSG_PEEK that tells EOF or an error from nothing
// yet; false makes the runtime poller wait for the next readiness event.
func (d *direction) readable(fd uintptr) bool {
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&d.avail))); e == 0 && d.avail > 0 {
		return true
	}
	d.avail = 0
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
