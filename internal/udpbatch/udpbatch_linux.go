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
	ctrl  []byte // controlSize bytes per datagram: the UDP_GRO message
	n     int
	err   error
	fn    func(fd uintptr) bool
}

// controlSize is the room for one UDP_GRO control message (a cmsghdr and
// an int, aligned) with some to spare.
const controlSize = 64

// MaxCoalesced is the buffer size a Reader needs per datagram on a socket
// with UDP_GRO (EnableGRO): the kernel delivers up to a 64 KiB run of
// datagrams as one.
const MaxCoalesced = 1 << 16

// NewReader prepares a Reader of batch datagrams of at most size bytes
// each on c. Datagrams longer than size are dropped (MSG_TRUNC); on a
// socket with UDP_GRO (EnableGRO) size should be MaxCoalesced, and of a
// coalesced run longer than size the whole datagrams that fit are kept.
func NewReader(c *net.UDPConn, batch, size int) (*Reader, error) {
	if batch < 1 || size < 1 {
		return nil, fmt.Errorf("udpbatch: batch %d and size %d must be positive", batch, size)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("udpbatch: %w", err)
	}
	r := &Reader{rc: rc, hdrs: make([]unix.Mmsghdr, batch), iovs: make([]unix.Iovec, batch),
		names: make([]unix.RawSockaddrInet6, batch), bufs: make([][]byte, batch), ctrl: make([]byte, batch*controlSize)}
	mem := make([]byte, batch*size)
	for i := range r.hdrs {
		r.bufs[i] = mem[i*size : (i+1)*size : (i+1)*size]
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(size)
		r.hdrs[i].Hdr.Iov = &r.iovs[i]
		r.hdrs[i].Hdr.SetIovlen(1)
		r.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		r.hdrs[i].Hdr.Control = &r.ctrl[i*controlSize]
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
		r.hdrs[i].Hdr.SetControllen(controlSize)
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
// truncated datagram comes back empty. On a socket with UDP_GRO the
// datagram may be a run of datagrams from that source coalesced by the
// kernel: Seg tells their size.
func (r *Reader) Msg(i int) ([]byte, netip.AddrPort) {
	h := &r.hdrs[i]
	n := int(h.Len)
	if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
		seg := r.Seg(i)
		if seg == 0 {
			return nil, netip.AddrPort{}
		}
		n -= n % seg // the whole datagrams of a run cut short
		if n == 0 {
			return nil, netip.AddrPort{}
		}
	}
	return r.bufs[i][:n], fromSockaddr(&r.names[i])
}

// Seg returns the size of the datagrams coalesced in Msg(i) (all but the
// last of the run have it, the last may be shorter), or 0 when Msg(i) is
// one datagram. Only a socket with UDP_GRO receives coalesced runs.
func (r *Reader) Seg(i int) int {
	h := &r.hdrs[i].Hdr
	if h.Controllen < unix.SizeofCmsghdr {
		return 0
	}
	c := r.ctrl[i*controlSize : i*controlSize+int(h.Controllen)]
	for len(c) >= unix.SizeofCmsghdr {
		m := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
		l := int(m.Len)
		if l < unix.SizeofCmsghdr || l > len(c) {
			return 0
		}
		if m.Level == unix.SOL_UDP && m.Type == unix.UDP_GRO && l >= unix.SizeofCmsghdr+4 {
			return int(*(*int32)(unsafe.Pointer(&c[unix.SizeofCmsghdr])))
		}
		l = (l + 7) &^ 7
		if l >= len(c) {
			break
		}
		c = c[l:]
	}
	return 0
}

// EnableGRO asks the kernel to deliver runs of same-sized datagrams from
// one source (a UDP GSO send, or packets a NIC's GRO merged) as one
// datagram with their size in a control message (UDP_GRO, Linux 5.0), so
// that one recvmmsg entry carries many. Every Reader of c must then have
// buffers of MaxCoalesced bytes, and nothing else may read c.
func EnableGRO(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("udpbatch: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1) }); err != nil {
		return fmt.Errorf("udpbatch: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("%w: UDP_GRO: %v", ErrUnsupported, serr)
	}
	return nil
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

// Writer sends a batch of datagrams per sendmmsg(2) call from a buffer it
// owns. With SetGSO, consecutive datagrams of one size to one destination
// go out as one UDP GSO message (UDP_SEGMENT, Linux 4.18): the kernel
// builds one packet for the run and splits it into the datagrams at the
// device, or on loopback at the receiving socket, so the run costs one
// traversal of the stack instead of one per datagram. It is not safe for
// concurrent use.
type Writer struct {
	rc    syscall.RawConn
	v6    bool
	gso   bool
	size  int
	mem   []byte // the datagrams, back to back
	used  int    // bytes of mem queued
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	ctrl  []byte           // controlSize bytes per message: UDP_SEGMENT
	tos   []netip.AddrPort // each message's destination
	segs  []int32          // each message's datagram size (its first's)
	cnts  []int32          // datagrams in each message
	open  []bool           // whether a datagram may still join the message
	n     int              // messages queued
	dgs   int              // datagrams queued
	off   int
	sent  int
	err   error
	fn    func(fd uintptr) bool
	one   [1]unix.Mmsghdr // for sending a refused GSO message's datagrams one by one
	oneIv unix.Iovec
}

// GSO limits: at most maxSegs datagrams, maxGSOBytes bytes and datagrams
// of at most maxSegSize bytes (under the IPv6 minimum MTU, so that no
// path's MTU refuses a run) join one message.
const (
	maxSegs     = 64
	maxGSOBytes = 60000
	maxSegSize  = 1232
)

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
	w := &Writer{rc: rc, v6: la != nil && la.IP.To4() == nil, size: size, mem: make([]byte, batch*size),
		hdrs: make([]unix.Mmsghdr, batch), iovs: make([]unix.Iovec, batch), names: make([]unix.RawSockaddrInet6, batch),
		ctrl: make([]byte, batch*controlSize), tos: make([]netip.AddrPort, batch), segs: make([]int32, batch),
		cnts: make([]int32, batch), open: make([]bool, batch)}
	for i := range w.hdrs {
		w.hdrs[i].Hdr.Iov = &w.iovs[i]
		w.hdrs[i].Hdr.SetIovlen(1)
		w.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&w.names[i]))
		m := (*unix.Cmsghdr)(unsafe.Pointer(&w.ctrl[i*controlSize]))
		m.Level, m.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		m.SetLen(unix.CmsgLen(2))
	}
	w.one[0].Hdr.Iov = &w.oneIv
	w.one[0].Hdr.SetIovlen(1)
	w.fn = w.write
	return w, nil
}

// SetGSO turns the coalescing of runs into UDP GSO messages on or off and
// reports whether it is on: on asks the kernel whether it has UDP_SEGMENT
// (by setting the socket's default segment size to 0, which means none).
// A GSO message the kernel refuses (a device without checksum offload,
// EIO) turns it off for good, and its datagrams are sent one by one.
func (w *Writer) SetGSO(on bool) bool {
	w.gso = false
	if !on {
		return false
	}
	var serr error
	if err := w.rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT, 0) }); err != nil || serr != nil {
		return false
	}
	w.gso = true
	return true
}

// GSO reports whether the Writer coalesces runs (SetGSO).
func (w *Writer) GSO() bool { return w.gso }

// Len returns the number of datagrams waiting for Flush.
func (w *Writer) Len() int { return w.dgs }

// Messages returns the number of messages waiting for Flush: Len when
// nothing was coalesced, fewer when runs became GSO messages.
func (w *Writer) Messages() int { return w.n }

// Next returns the next free buffer (length 0, capacity the Writer's
// size) to build a datagram in, or nil when the batch is full: Flush
// first.
func (w *Writer) Next() []byte {
	if w.n == len(w.hdrs) || len(w.mem)-w.used < w.size {
		return nil
	}
	return w.mem[w.used : w.used : w.used+w.size]
}

// Commit queues b, which must have been built in the buffer Next returned
// (a b that outgrew it is dropped), for sending to to.
func (w *Writer) Commit(b []byte, to netip.AddrPort) {
	if len(b) == 0 || w.n == len(w.hdrs) || len(w.mem)-w.used < len(b) || &b[0] != &w.mem[w.used] {
		return
	}
	if w.gso && w.n > 0 {
		i := w.n - 1
		seg, l := int(w.segs[i]), len(b)
		total := seg*int(w.cnts[i]) + l
		if w.open[i] && w.tos[i] == to && l <= seg && w.cnts[i] < maxSegs && total <= maxGSOBytes {
			// A run: one more datagram of the message, right after
			// the last in mem. One shorter than the first ends it
			// (the kernel's last segment may be shorter).
			if w.cnts[i] == 1 {
				w.hdrs[i].Hdr.Control = &w.ctrl[i*controlSize]
				w.hdrs[i].Hdr.SetControllen(int(unix.CmsgSpace(2)))
				*(*uint16)(unsafe.Pointer(&w.ctrl[i*controlSize+unix.SizeofCmsghdr])) = uint16(seg)
			}
			w.cnts[i]++
			w.iovs[i].SetLen(total)
			w.open[i] = l == seg
			w.used += l
			w.dgs++
			return
		}
	}
	i := w.n
	w.iovs[i].Base = &b[0]
	w.iovs[i].SetLen(len(b))
	w.hdrs[i].Hdr.Control = nil
	w.hdrs[i].Hdr.SetControllen(0)
	w.tos[i], w.segs[i], w.cnts[i], w.open[i] = to, int32(len(b)), 1, len(b) <= maxSegSize
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
	w.used += len(b)
	w.n++
	w.dgs++
}

func (w *Writer) write(fd uintptr) bool {
	for w.off < w.n {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.hdrs[w.off])), uintptr(w.n-w.off), 0, 0, 0)
		switch e {
		case 0:
			for _, c := range w.cnts[w.off : w.off+int(n)] {
				w.sent += int(c)
			}
			w.off += int(n)
			continue
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		if w.cnts[w.off] > 1 && (e == unix.EIO || e == unix.EINVAL || e == unix.EMSGSIZE || e == unix.ENOPROTOOPT || e == unix.EOPNOTSUPP) {
			// The kernel refused the GSO message: no more of them,
			// and this one's datagrams one by one.
			w.gso = false
			if !w.split(fd) {
				return false
			}
			continue
		}
		// A datagram the kernel refuses (no route, a full socket
		// buffer as ENOBUFS) is skipped: the client retransmits.
		w.err = e
		w.off++
	}
	return true
}

// split sends the datagrams of the GSO message at w.off one by one, and
// goes on to the next message; false means the socket's buffer is full
// (EAGAIN) with the message's datagrams from segs[w.off] on still to send.
func (w *Writer) split(fd uintptr) bool {
	i := w.off
	h := &w.one[0].Hdr
	h.Name, h.Namelen = w.hdrs[i].Hdr.Name, w.hdrs[i].Hdr.Namelen
	seg := int(w.segs[i])
	for w.cnts[i] > 0 {
		// The datagram at the front of what is left of the message.
		w.oneIv.Base = w.iovs[i].Base
		first := min(seg, int(w.iovs[i].Len))
		w.oneIv.SetLen(first)
		_, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.one[0])), 1, 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			w.shrink(i, first)
			return false
		case 0:
			w.sent++
		default:
			w.err = e
		}
		w.shrink(i, first)
	}
	w.off++
	return true
}

// shrink takes the first l bytes (one datagram) off message i.
func (w *Writer) shrink(i, l int) {
	w.iovs[i].Base = (*byte)(unsafe.Add(unsafe.Pointer(w.iovs[i].Base), l))
	w.iovs[i].SetLen(int(w.iovs[i].Len) - l)
	w.cnts[i]--
	if w.cnts[i] <= 1 {
		w.hdrs[i].Hdr.Control = nil
		w.hdrs[i].Hdr.SetControllen(0)
	}
}

// Flush sends the queued datagrams and empties the batch. It returns how
// many datagrams were sent and the last per-datagram error, if any.
func (w *Writer) Flush() (int, error) {
	if w.n == 0 {
		return 0, nil
	}
	w.off, w.sent, w.err = 0, 0, nil
	err := w.rc.Write(w.fn)
	sent := w.sent
	w.n, w.dgs, w.used = 0, 0, 0
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
