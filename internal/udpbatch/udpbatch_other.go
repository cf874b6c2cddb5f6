//go:build !linux

package udpbatch

import (
	"net"
	"net/netip"
)

// Reader reads batches of datagrams (unsupported on this system).
type Reader struct{}

// NewReader returns ErrUnsupported on this system.
func NewReader(c *net.UDPConn, batch, size int) (*Reader, error) { return nil, ErrUnsupported }

// Read returns ErrUnsupported on this system.
func (r *Reader) Read() (int, error) { return 0, ErrUnsupported }

// Msg returns nothing on this system.
func (r *Reader) Msg(i int) ([]byte, netip.AddrPort) { return nil, netip.AddrPort{} }

// Writer writes batches of datagrams (unsupported on this system).
type Writer struct{}

// NewWriter returns ErrUnsupported on this system.
func NewWriter(c *net.UDPConn, batch, size int) (*Writer, error) { return nil, ErrUnsupported }

// Next returns nil on this system.
func (w *Writer) Next() []byte { return nil }

// Commit does nothing on this system.
func (w *Writer) Commit(b []byte, to netip.AddrPort) {}

// Len returns 0 on this system.
func (w *Writer) Len() int { return 0 }

// Flush returns ErrUnsupported on this system.
func (w *Writer) Flush() (int, error) { return 0, ErrUnsupported }
