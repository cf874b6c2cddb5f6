package netsys

import (
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Pipe is a non-blocking kernel pipe through which splice(2) moves a
// stream socket's bytes to another socket without copying them through
// user space. Its methods allocate nothing and never block; a Pipe is not
// safe for concurrent use.
type Pipe struct {
	r, w int
	n    int // bytes in the pipe
}

// NewPipe opens a pipe (O_NONBLOCK, O_CLOEXEC) and asks the kernel for size
// bytes of capacity (F_SETPIPE_SZ); when that is refused (above
// /proc/sys/fs/pipe-max-size, or past the user's pipe-user-pages limits) the
// pipe keeps the kernel's default size.
func NewPipe(size int) (*Pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	if size > 0 {
		_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, size)
	}
	return &Pipe{r: fds[0], w: fds[1]}, nil
}

// Buffered returns the number of bytes in the pipe.
func (p *Pipe) Buffered() int { return p.n }

// Close closes both ends of the pipe.
func (p *Pipe) Close() error {
	err := unix.Close(p.r)
	if e := unix.Close(p.w); err == nil {
		err = e
	}
	return err
}

// splice calls splice(2) with SPLICE_F_NONBLOCK and SPLICE_F_MOVE,
// retrying on EINTR.
//
// It is a raw system call (no entersyscall/exitsyscall): both ends are
// non-blocking, so the call never sleeps, though moving 1 MiB into a
// loopback socket runs that socket's whole receive path and can take a few
// hundred microseconds. Through the runtime's Syscall, a call that long
// makes sysmon take the P away, hand it to another thread and wake again
// 20 µs later: in a bulk tunnel that was 10-18% of the proxy's CPU, with
// 2,200 nanosleeps, 290 futex calls and 3,100 context switches per GiB.
// Raw, the calling thread keeps its P and none of that happens
// (docs/proxy.md, "Bulk through one tunnel against direct").
func splice(in, out int, max int) (int, syscall.Errno) {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(max),
			unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, syscall.Errno(e)
		}
		return int(n), 0
	}
}

// SpliceFrom moves up to max bytes queued on the stream socket fd into the
// pipe (splice(2), non-blocking). It returns the bytes moved; 0 and no
// error at end of stream; EAGAIN when nothing is queued (or the pipe is
// full); another errno for a socket error.
func (p *Pipe) SpliceFrom(fd uintptr, max int) (int, syscall.Errno) {
	n, e := splice(int(fd), p.w, max)
	p.n += n
	return n, e
}

// SpliceTo moves the pipe's bytes to the stream socket fd (splice(2),
// non-blocking) until the pipe is empty or the socket's send buffer is
// full. It returns the bytes moved; EAGAIN when the socket took less than
// the pipe held (wait for it to be writable and call again); another errno
// for a socket error.
func (p *Pipe) SpliceTo(fd uintptr) (int, syscall.Errno) {
	total := 0
	for p.n > 0 {
		n, e := splice(p.r, int(fd), p.n)
		p.n -= n
		total += n
		if e != 0 {
			return total, e
		}
		if n == 0 {
			// A pipe with bytes in it never splices nothing: the bytes
			// went missing. Report it rather than spin.
			return total, unix.EIO
		}
	}
	return total, 0
}

// ReadFD reads into b from the socket fd without blocking (read(2), the fd
// being non-blocking as Go's sockets are), retrying on EINTR: n bytes; 0 and
// no error at end of stream; EAGAIN when nothing is queued.
func ReadFD(fd uintptr, b []byte) (int, syscall.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	for {
		// Raw, like splice: the socket is non-blocking.
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, syscall.Errno(e)
		}
		return int(n), 0
	}
}

// SendFD writes b to the stream socket fd without blocking (send(2) with
// MSG_NOSIGNAL, the fd being non-blocking as Go's sockets are; a raw
// system call like splice), retrying on EINTR: the bytes the socket took;
// EAGAIN when its send buffer is full (wait for it to be writable and call
// again with the rest); another errno for a socket error.
func SendFD(fd uintptr, b []byte) (int, syscall.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			unix.MSG_NOSIGNAL, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, syscall.Errno(e)
		}
		if n == 0 {
			return 0, unix.EIO // a stream socket never takes nothing without an error
		}
		return int(n), 0
	}
}
