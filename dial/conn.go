package dial

import (
	"net"
	"runtime"
	"sync/atomic"
)

// releaser gives a held port back to the Dialer, once.
type releaser struct {
	sel  *selector
	key  holdKey
	idx  uint32
	done atomic.Bool
}

func (r *releaser) release() {
	if r.done.CompareAndSwap(false, true) {
		r.sel.release(r.key, r.idx)
	}
}

func newReleaser[T any](owner *T, sel *selector, k holdKey, idx uint32) *releaser {
	r := &releaser{sel: sel, key: k, idx: idx}
	// If the wrapper is dropped without Close, give the port back to the
	// selector anyway: its bookkeeping only steers the search; the kernel
	// (TCP) and the sock_diag lookup (UDP) still refuse a taken 4-tuple.
	runtime.AddCleanup(owner, func(r *releaser) { r.release() }, r)
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

func newUDPConn(c *net.UDPConn, sel *selector, k holdKey, idx uint32) *UDPConn {
	uc := &UDPConn{UDPConn: c}
	uc.rel = newReleaser(uc, sel, k, idx)
	return uc
}

// Close closes the socket and releases its port to the Dialer.
func (c *UDPConn) Close() error {
	err := c.UDPConn.Close()
	c.rel.release()
	return err
}

// NetConn returns the underlying *net.UDPConn.
func (c *UDPConn) NetConn() net.Conn { return c.UDPConn }
