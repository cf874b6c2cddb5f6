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

// MaxCoalesced is the buffer size for a socket with UDP_GRO.
const MaxCoalesced = 1 << 16

// EnableGRO returns ErrUnsupported on this system.
func EnableGRO(c *net.UDPConn) error { return ErrUnsupported }

// Seg returns 0 on this system.
func (r *Reader) Seg(i int) int { return 0 }

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

// SetGSO reports false on this system.
func (w *Writer) SetGSO(on bool) bool { return false }

// GSO reports false on this system.
func (w *Writer) GSO() bool { return false }

// Messages returns 0 on this system.
func (w *Writer) Messages() int { return 0 }
