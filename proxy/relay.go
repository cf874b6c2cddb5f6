package proxy

import (
	"errors"
	"github.com/portspace/portspace/internal/netsys"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// relayBufSize is the size of the pooled buffers a relay copies through.
const relayBufSize = 64 << 10

// relayBufs is a bounded free list of copy buffers (a channel rather than
// a sync.Pool, whose items the race detector drops at random, so that the
// allocation test holds in both builds).
var relayBufs = make(chan *[relayBufSize]byte, 256)

// bufsOut counts the copy buffers taken and not yet given back: an idle
// tunnel holds none (TestIdleTunnelDescriptors).
var bufsOut atomic.Int64

func getBuf() *[relayBufSize]byte {
	bufsOut.Add(1)
	select {
	case b := <-relayBufs:
		return b
	default:
		return new([relayBufSize]byte)
	}
}

func putBuf(b *[relayBufSize]byte) {
	bufsOut.Add(-1)
	select {
	case relayBufs <- b:
	default: // the list is full: let the collector have it
	}
}

// tunnel is one relayed connection pair: two directions that share an idle
// clock.
type tunnel struct {
	idle     time.Duration
	now      func() time.Time
	lastNano atomic.Int64
}

func (t *tunnel) touch() { t.lastNano.Store(t.now().UnixNano()) }

// direction copies src to dst, one chunk per readable event.
type direction struct {
	t        *tunnel
	src, dst net.Conn
	rc       syscall.RawConn // nil: src offers no RawConn; Read blocks holding a buffer
	wait     func(fd uintptr) bool
	peek     [1]byte
	avail    int32 // bytes queued on src, as the readability check found
	srcTCP   *net.TCPConn
	dstTCP   *net.TCPConn
	lr       io.LimitedReader // reused: splices exactly avail bytes
	n        int64
	ended    atomic.Bool // run returned
	other    *direction  // the opposite direction, if known
	count    func(int)   // adds bytes to a metric; may be nil
	deadline time.Time
}

func newDirection(t *tunnel, src, dst net.Conn, count func(int)) *direction {
	d := &direction{t: t, src: src, dst: dst, count: count, srcTCP: tcpOf(src), dstTCP: tcpOf(dst)}
	if d.srcTCP != nil {
		src = d.srcTCP
	}
	if sc, ok := src.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			d.rc = rc
			d.wait = d.readable
		}
	}
	return d
}

// tcpOf returns the *net.TCPConn under c's NetConn wrappers, or nil.
func tcpOf(c net.Conn) *net.TCPConn {
	for range 4 {
		if tc, ok := c.(*net.TCPConn); ok {
			return tc
		}
		w, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = w.NetConn()
	}
	return nil
}

// errIdle ends a tunnel that saw no byte in either direction for its idle
// timeout.
var errIdle = errors.New("proxy: tunnel idle")

// waitReadable blocks until src has data, EOF or an error, without holding a
// buffer; it extends the read deadline while the other direction is active.
func (d *direction) waitReadable() error {
	for {
		if d.t.idle > 0 {
			dl := time.Unix(0, d.t.lastNano.Load()).Add(d.t.idle)
			if !dl.Equal(d.deadline) {
				if !d.t.now().Before(dl) {
					return errIdle
				}
				d.deadline = dl
				if err := d.src.SetReadDeadline(dl); err != nil {
					return err
				}
			}
		}
		if d.rc == nil {
			return nil
		}
		err := d.rc.Read(d.wait)
		if err == nil {
			return nil
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The other direction may have moved in the meantime: loop
			// to recompute the deadline from the shared clock.
			dl := time.Unix(0, d.t.lastNano.Load()).Add(d.t.idle)
			if !d.t.now().Before(dl) {
				return errIdle
			}
			continue
		}
		return err
	}
}

// step relays one chunk: it waits for readability, then reads into a
// pooled buffer and writes it out. It allocates nothing.
func (d *direction) step() (int, error) {
	d.avail = 0
	if err := d.waitReadable(); err != nil {
		return 0, err
	}
	if d.avail > 0 && d.srcTCP != nil && d.dstTCP != nil {
		// Splice exactly the queued bytes through a pooled pipe: the
		// kernel moves them, and the pipe goes back to the pool before the
		// next wait.
		d.lr.R, d.lr.N = d.srcTCP, int64(d.avail)
		n64, err := d.dstTCP.ReadFrom(&d.lr)
		n := int(n64)
		if n > 0 {
			d.t.touch()
			d.n += n64
			if d.count != nil {
				d.count(n)
			}
		}
		return n, err
	}
	bp := getBuf()
	n, err := d.src.Read(bp[:])
	if n > 0 {
		d.t.touch()
		if _, werr := d.dst.Write(bp[:n]); werr != nil && err == nil {
			err = werr
		}
		d.n += int64(n)
		if d.count != nil {
			d.count(n)
		}
	}
	putBuf(bp)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && n == 0 {
		// With no RawConn the deadline fires inside Read.
		dl := time.Unix(0, d.t.lastNano.Load()).Add(d.t.idle)
		if !d.t.now().Before(dl) {
			return 0, errIdle
		}
		return 0, nil
	}
	return n, err
}

// run relays until EOF (then half-closes dst) or an error (then reports it).
func (d *direction) run() error {
	for {
		_, err := d.step()
		if err == io.EOF {
			// Pass the FIN on, unless the other direction has ended too:
			// then both sockets are about to be closed anyway.
			if d.other == nil || !d.other.ended.Load() {
				closeWrite(d.dst)
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// relayAsync copies a to b and b to a, each direction in a new goroutine,
// until both end, propagating a half-close (FIN) from either side; an error
// or the idle timeout in either direction closes both. It then calls done
// with the bytes relayed each way and the first error. The caller's
// goroutine (and its stack) is free at once.
func relayAsync(a, b net.Conn, idle time.Duration, now func() time.Time, up, down func(int), done func(aToB, bToA int64, err error)) {
	t := &tunnel{idle: idle, now: now}
	t.touch()
	r := &relayState{a: a, b: b, done: done}
	r.ab = newDirection(t, a, b, up)
	r.ba = newDirection(t, b, a, down)
	r.ab.other, r.ba.other = r.ba, r.ab
	r.left.Store(2)
	go r.run(r.ab)
	go r.run(r.ba)
}

type relayState struct {
	a, b   net.Conn
	ab, ba *direction
	left   atomic.Int32
	once   sync.Once
	first  error
	done   func(aToB, bToA int64, err error)
}

func (r *relayState) run(d *direction) {
	err := d.run()
	d.ended.Store(true)
	if err != nil {
		r.once.Do(func() {
			r.first = err
			r.a.Close()
			r.b.Close()
		})
	}
	if r.left.Add(-1) == 0 {
		r.once.Do(func() {})
		r.done(r.ab.n, r.ba.n, r.first)
	}
}

// readable reports whether the socket fd has data, EOF or a pending error
// (netsys.Readable: the queued byte count into d.avail, else a one-byte
// peek; outside Linux always true, and the relay then blocks in Read
// holding a pooled buffer); false makes the runtime poller wait for the
// next readiness event.
func (d *direction) readable(fd uintptr) bool { return netsys.Readable(fd, &d.avail, &d.peek[0]) }
