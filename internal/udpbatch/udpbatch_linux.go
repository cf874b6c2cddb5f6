package udpbatch

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reader reads up to a batch of datagrams per recvmmsg(2) call. It is not
// safe for concurrent use; give each reading goroutine its own Reader.
type Reader struct {
	rc    syscall.RawConn
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	bufs  [][]byte
	n     int
	err   error
	fn    func(fd uintptr) bool
}

// NewReader prepares a Reader of batch datagrams of at most size bytes
// each on c. Datagrams longer than size are dropped (MSG_TRUNC).
func NewReader(c *net.UDPConn, batch, size int) (*Reader, error) {
	if batch < 1 || size < 1 {
		return nil, fmt.Errorf("udpbatch: batch %d and size %d must be positive", batch, size)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("udpbatch: %w", err)
	}
	r := &Reader{rc: rc, hdrs: make([]unix.Mmsghdr, batch), iovs: make([]unix.Iovec, batch),
		names: make([]unix.RawSockaddrInet6, batch), bufs: make([][]byte, batch)}
	for i := range r.hdrs {
		r.bufs[i] = make([]byte, size)
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(size)
		r.hdrs[i].Hdr.Iov = &r.iovs[i]
		r.hdrs[i].Hdr.SetIovlen(1)
		r.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
	}
	r.fn = r.read
	return r, nil
}

// The batches go through Syscall6, not RawSyscall6. RawSyscall6 (no
// entersyscall, so sysmon cannot hand the P away mid-sendmmsg) cost the STUN
// server about a tenth less CPU per answer in one run, but under load some
// sockets' answers stopped for seconds (BenchmarkServerProcess clients gave
// up after 5 s without an answer; not in the runs with Syscall6), so it is not used.

func (r *Reader) read(fd uintptr) bool {
	for i := range r.hdrs {
		r.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		r.hdrs[i].Hdr.Flags = 0
		r.hdrs[i].Len = 0
	}
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), 0, 0, 0)
		switch e {
		case 0:
			r.n, r.err = int(n), nil
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.n, r.err = 0, e
		return true
	}
}

// Read waits for at least one datagram and returns how many it read (Msg
// 0 to n-1). A closed connection returns net.ErrClosed.
func (r *Reader) Read() (int, error) {
	if err := r.rc.Read(r.fn); err != nil {
		return 0, err
	}
	if r.err != nil {
		return 0, fmt.Errorf("udpbatch: recvmmsg: %w", r.err)
	}
	return r.n, nil
}

// Msg returns the i-th datagram of the last Read and its source. A
// truncated datagram comes back empty.
func (r *Reader) Msg(i int) ([]byte, netip.AddrPort) {
	h := &r.hdrs[i]
	if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
		return nil, netip.AddrPort{}
	}
	return r.bufs[i][:h.Len], fromSockaddr(&r.names[i])
}

func fromSockaddr(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(p[0])<<8|uint16(p[1]))
	}
	return netip.AddrPort{}
}

// Writer sends a batch of datagrams per sendmmsg(2) call from buffers it
// owns. It is not safe for concurrent use.
type Writer struct {
	rc    syscall.RawConn
	v6    bool
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	bufs  [][]byte
	n     int
	off   int
	sent  int
	err   error
	fn    func(fd uintptr) bool
}

// NewWriter prepares a Writer of batch datagrams of at most size bytes on
// c.
func NewWriter(c *net.UDPConn, batch, size int) (*Writer, error) {
	if batch < 1 || size < 1 {
		return nil, fmt.Errorf("udpbatch: batch %d and size %d must be positive", batch, size)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("udpbatch: %w", err)
	}
	la, _ := c.LocalAddr().(*net.UDPAddr)
	w := &Writer{rc: rc, v6: la != nil && la.IP.To4() == nil, hdrs: make([]unix.Mmsghdr, batch),
		iovs: make([]unix.Iovec, batch), names: make([]unix.RawSockaddrInet6, batch), bufs: make([][]byte, batch)}
	for i := range w.hdrs {
		w.bufs[i] = make([]byte, 0, size)
		w.hdrs[i].Hdr.Iov = &w.iovs[i]
		w.hdrs[i].Hdr.SetIovlen(1)
		w.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&w.names[i]))
	}
	w.fn = w.write
	return w, nil
}

// Len returns the number of datagrams waiting for Flush.
func (w *Writer) Len() int { return w.n }

// Next returns the next free buffer (length 0) to build a datagram in, or
// nil when the batch is full: Flush first.
func (w *Writer) Next() []byte {
	if w.n == len(w.bufs) {
		return nil
	}
	return w.bufs[w.n][:0]
}

// Commit queues b, which must have been built in the buffer Next returned,
// for sending to to.
func (w *Writer) Commit(b []byte, to netip.AddrPort) {
	if w.n == len(w.bufs) || len(b) == 0 {
		return
	}
	i := w.n
	w.bufs[i] = b
	w.iovs[i].Base = &b[0]
	w.iovs[i].SetLen(len(b))
	sa := &w.names[i]
	a := to.Addr()
	if a.Is4() && !w.v6 {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		p[0], p[1] = byte(to.Port()>>8), byte(to.Port())
		w.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet4
	} else {
		*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		p[0], p[1] = byte(to.Port()>>8), byte(to.Port())
		w.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
	}
	w.n++
}

func (w *Writer) write(fd uintptr) bool {
	for w.off < w.n {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.hdrs[w.off])), uintptr(w.n-w.off), 0, 0, 0)
		switch e {
		case 0:
			w.off += int(n)
			w.sent += int(n)
			continue
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		// A datagram the kernel refuses (no route, a full socket
		// buffer as ENOBUFS) is skipped: the client retransmits.
		w.err = e
		w.off++
	}
	return true
}

// Flush sends the queued datagrams and empties the batch. It returns how
// many were sent and the last per-datagram error, if any.
func (w *Writer) Flush() (int, error) {
	if w.n == 0 {
		return 0, nil
	}
	w.off, w.sent, w.err = 0, 0, nil
	err := w.rc.Write(w.fn)
	sent := w.sent
	w.n = 0
	if err != nil {
		return sent, err
	}
	if w.err != nil {
		if errors.Is(w.err, unix.EAGAIN) {
			return sent, nil
		}
		return sent, fmt.Errorf("udpbatch: sendmmsg: %w", w.err)
	}
	return sent, nil
}
