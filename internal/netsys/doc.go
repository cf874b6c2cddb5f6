// Package netsys is portspace's single syscall and netlink boundary: socket
// options (SO_REUSEADDR, IP_BIND_ADDRESS_NO_PORT, IP_LOCAL_PORT_RANGE),
// SO_COOKIE, the exact sock_diag lookup of one UDP 4-tuple, raw socket
// creation for sequences net.Dialer cannot express, kernel capability probes
// (run once) and the sysctls that bound port selection.
//
// Only this package (and other packages under internal/) imports
// golang.org/x/sys/unix. On Linux the functions do what they say; elsewhere
// every one returns an error that matches ErrUnsupported.
package netsys

import "errors"

// CCNameMax is TCP_CA_NAME_MAX (linux/tcp.h): a TCP congestion control's
// name is shorter.
const CCNameMax = 16

// ErrUnsupported is returned (wrapped) by every function on platforms other
// than Linux, and by probes that find a feature missing.
var ErrUnsupported = errors.New("netsys: not supported on this platform")

// Caps lists the kernel features the dialer can use. Probe fills it once per
// process.
type Caps struct {
	// LocalPortRange: the IP_LOCAL_PORT_RANGE socket option (Linux 6.3)
	// confines automatic port selection to a per-socket range.
	LocalPortRange bool
	// BindAddressNoPort: IP_BIND_ADDRESS_NO_PORT (Linux 4.2) defers port
	// choice from bind to connect, so a bound source address does not lock
	// a port per connection.
	BindAddressNoPort bool
	// UDPDiag: the exact (non-dump) sock_diag lookup of a UDP 4-tuple and
	// SO_COOKIE both work, so the cooperative UDP lock can run.
	UDPDiag bool
}

// PortRange is an inclusive range of ports, as read from a sysctl.
type PortRange struct {
	Lo, Hi uint16
}
