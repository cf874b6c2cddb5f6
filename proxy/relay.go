package proxy

import (
	"errors"
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

var relayBufs = sync.Pool{New: func() any { return new([relayBufSize]byte) }}

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
	n        int64
	count    func(int) // adds bytes to a metric; may be nil
	deadline time.Time
}

func newDirection(t *tunnel, src, dst net.Conn, count func(int)) *direction {
	d := &direction{t: t, src: src, dst: dst, count: count}
	if sc, ok := src.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			d.rc = rc
			d.wait = d.readable
		}
	}
	return d
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
	if err := d.waitReadable(); err != nil {
		return 0, err
	}
	bp := relayBufs.Get().(*[relayBufSize]byte)
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
	relayBufs.Put(bp)
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
			closeWrite(d.dst)
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

// relay copies a to b and b to a until both directions end, propagating a
// half-close (FIN) from either side; an error or the idle timeout in
// either direction closes both. It returns the bytes relayed each way.
func relay(a, b net.Conn, idle time.Duration, now func() time.Time, up, down func(int)) (aToB, bToA int64, err error) {
	t := &tunnel{idle: idle, now: now}
	t.touch()
	ab := newDirection(t, a, b, up)
	ba := newDirection(t, b, a, down)
	var first error
	var once sync.Once
	fail := func(err error) {
		once.Do(func() {
			first = err
			a.Close()
			b.Close()
		})
	}
	done := make(chan struct{})
	go func() {
		if err := ba.run(); err != nil {
			fail(err)
		}
		close(done)
	}()
	if err := ab.run(); err != nil {
		fail(err)
	}
	<-done
	return ab.n, ba.n, first
}
