//go:build !linux

package netsys

// SockRelay is only supported on Linux.
type SockRelay struct{}

// NewSockRelay is only supported on Linux.
func NewSockRelay() (*SockRelay, error) { return nil, unsupported("sockmap relay") }

// SharedSockRelay is only supported on Linux.
func SharedSockRelay() (*SockRelay, error) { return nil, unsupported("sockmap relay") }

// Close is only supported on Linux.
func (r *SockRelay) Close() error { return unsupported("sockmap relay") }

// Join is only supported on Linux.
func (r *SockRelay) Join(a uintptr, ca uint64, b uintptr, cb uint64) error {
	return unsupported("sockmap relay")
}

// Leave is only supported on Linux.
func (r *SockRelay) Leave(ca, cb uint64) error { return unsupported("sockmap relay") }

// TCPCounters are a TCP socket's lifetime byte counters (Linux only).
type TCPCounters struct {
	Received, Acked uint64
	InQ, OutQ       int
}

// Written returns the payload written to the socket so far.
func (c TCPCounters) Written() uint64 { return c.Acked + uint64(c.OutQ) }

// ReadTCPCounters is only supported on Linux.
func ReadTCPCounters(fd uintptr) (TCPCounters, error) { return TCPCounters{}, unsupported("tcp_info") }
