package dial

import (
	"net"
	"runtime"
	"sync/atomic"
	"syscall"
)

// releaser gives a held port back to the Dialer, once, and under
// UDPLockRegistry unlocks the 4-tuple's registry byte.
type releaser struct {
	sel  *selector
	key  holdKey
	idx  uint32
	done atomic.Bool
	// UDPLockRegistry only: the registry, the 4-tuple's byte, and the
	// socket, which a conn dropped without Close closes before unlocking.
	reg  *registry
	off  int64
	sock *net.UDPConn
	// UDP Search with the cooperative lock: the Dialer's count of its
	// sockets on the port.
	use *atomic.Int32
	// UDPLockOwner only: the port's slot, whose socket set holds rc (the
	// socket's RawConn); the socket is closed and removed under the slot's
	// mutex.
	slot *portSlot
	rc   syscall.RawConn
	// cleanup is the conn's dropped-without-Close cleanup, stopped by Close.
	cleanup runtime.Cleanup
}

// release runs once; callers close the socket before it, so that the
// registry byte is never free while the socket still holds the 4-tuple.
func (r *releaser) release() error {
	if !r.done.CompareAndSwap(false, true) {
		return nil
	}
	// A cleanup left armed costs the runtime more work at the conn's
	// collection (BenchmarkConnCleanup: 0.7-1.1 µs per conn stopped,
	// 2.0-2.8 µs armed); from the cleanup itself Stop does nothing.
	r.cleanup.Stop()
	r.sel.release(r.key, r.idx)
	if r.use != nil {
		r.use.Add(-1)
	}
	if r.reg != nil {
		return r.reg.release(r.off)
	}
	return nil
}

// dropped is the cleanup of a conn garbage collected without Close: a
// registered socket is closed first (it would otherwise live on until the
// net package's finalizer, after the unlock), then the port is released.
func (r *releaser) dropped() {
	switch {
	case r.done.Load():
	case r.slot != nil:
		closeOwned(r.slot, r.rc, r.sock)
	case r.sock != nil:
		r.sock.Close()
	}
	r.release()
}

func newReleaser[T any](owner *T, sel *selector, k holdKey, idx uint32) *releaser {
	r := &releaser{sel: sel, key: k, idx: idx}
	// If the wrapper is dropped without Close, give the port back to the
	// selector anyway: its bookkeeping only steers the search; the kernel
	// (TCP) and the sock_diag lookup (UDP) still refuse a taken 4-tuple.
	// A registered UDP socket is closed first (releaser.dropped).
	r.cleanup = runtime.AddCleanup(owner, (*releaser).dropped, r)
	return r
}

// TCPConn is a TCP connection from the Search strategy. It embeds the
// *net.TCPConn (all its methods work) and, on Close, tells the Dialer that
// the port is free again toward that destination.
type TCPConn struct {
	*net.TCPConn
	rel *releaser
}

func newTCPConn(c *net.TCPConn, sel *selector, k holdKey, idx uint32) *TCPConn {
	tc := &TCPConn{TCPConn: c}
	tc.rel = newReleaser(tc, sel, k, idx)
	return tc
}

// Close closes the connection and releases its port to the Dialer.
func (c *TCPConn) Close() error {
	err := c.TCPConn.Close()
	c.rel.release()
	return err
}

// NetConn returns the underlying *net.TCPConn.
func (c *TCPConn) NetConn() net.Conn { return c.TCPConn }

// UDPConn is a connected UDP socket from the Search strategy. It embeds the
// *net.UDPConn and, on Close, tells the Dialer the port is free again toward
// that destination.
type UDPConn struct {
	*net.UDPConn
	rel *releaser
}

func newUDPConn(c *net.UDPConn, sel *selector, k holdKey, idx uint32, reg *registry, off int64) *UDPConn {
	uc := &UDPConn{UDPConn: c}
	uc.rel = newReleaser(uc, sel, k, idx)
	if reg != nil {
		uc.rel.reg, uc.rel.off, uc.rel.sock = reg, off, c
	}
	return uc
}

// Close closes the socket and releases its port to the Dialer; under
// UDPLockRegistry it then unlocks the 4-tuple's registry byte (after the
// socket is closed, so the 4-tuple is never registered free while the
// socket holds it).
func (c *UDPConn) Close() error {
	var err error
	if c.rel.slot != nil {
		err = closeOwned(c.rel.slot, c.rel.rc, c.UDPConn)
	} else {
		err = c.UDPConn.Close()
	}
	if rerr := c.rel.release(); err == nil {
		err = rerr
	}
	return err
}

// NetConn returns the underlying *net.UDPConn. Keep the UDPConn reachable
// while using it: under UDPLockRegistry a UDPConn garbage collected without
// Close closes the socket before it unlocks the 4-tuple's registry byte.
func (c *UDPConn) NetConn() net.Conn { return c.UDPConn }
