//go:build !linux

package netsys

import "syscall"

// Pipe is only supported on Linux.
type Pipe struct{}

// NewPipe is only supported on Linux.
func NewPipe(size int) (*Pipe, error) { return nil, unsupported("splice pipe") }

// Buffered is only supported on Linux.
func (p *Pipe) Buffered() int { return 0 }

// Close is only supported on Linux.
func (p *Pipe) Close() error { return unsupported("splice pipe") }

// SpliceFrom is only supported on Linux.
func (p *Pipe) SpliceFrom(fd uintptr, max int) (int, syscall.Errno) { return 0, syscall.EOPNOTSUPP }

// SpliceTo is only supported on Linux.
func (p *Pipe) SpliceTo(fd uintptr) (int, syscall.Errno) { return 0, syscall.EOPNOTSUPP }

// ReadFD is only supported on Linux.
func ReadFD(fd uintptr, b []byte) (int, syscall.Errno) { return 0, syscall.EOPNOTSUPP }

// SendFD is only supported on Linux.
func SendFD(fd uintptr, b []byte) (int, syscall.Errno) { return 0, syscall.EOPNOTSUPP }

// ShortPath is only supported on Linux.
func ShortPath(fd uintptr, maxRTTus int) bool { return false }

// UnpaceShortPath is only supported on Linux.
func UnpaceShortPath(fd uintptr, maxRTTus int, cc string) (bool, syscall.Errno) {
	return false, syscall.EOPNOTSUPP
}

// CongestionControl is only supported on Linux.
func CongestionControl(fd uintptr) (string, error) { return "", unsupported("TCP_CONGESTION") }

// RmemMax is only known on Linux: 0.
func RmemMax() int { return 0 }

// CapShortPathRcvbuf is only supported on Linux.
func CapShortPathRcvbuf(fd uintptr, maxRTTus, size int) (bool, syscall.Errno) {
	return false, syscall.EOPNOTSUPP
}
