// Package udpbatch reads and writes batches of UDP datagrams on a
// *net.UDPConn with Linux's recvmmsg(2) and sendmmsg(2), without allocating
// per datagram: the headers, buffers and socket addresses are made once, and
// addresses come out as netip.AddrPort values. It serves the STUN server's
// hot path. On other systems New* return an error wrapping ErrUnsupported,
// and callers fall back to one datagram per system call.
package udpbatch

import "errors"

// ErrUnsupported is wrapped by NewReader and NewWriter where batched
// system calls do not exist.
var ErrUnsupported = errors.New("udpbatch: batched UDP I/O is not supported on this system")
