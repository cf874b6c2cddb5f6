// Package dial provides a Dialer that shares source ports across
// destinations (4-tuple reuse) and confines connections to a set of source
// addresses and ports, for hosts that own only a slice of a shared egress
// IP's port space.
//
// A connection is identified by its 4-tuple (source address, source port,
// destination address, destination port), so one (source, port) can serve
// any number of destinations. Linux lets TCP do this when the port is chosen
// at connect time; the Dialer makes that the default and falls back to a
// user-space search where the kernel cannot confine ports to the set:
//
//   - Kernel (TCP): IP_BIND_ADDRESS_NO_PORT on a bound source, plus
//     IP_LOCAL_PORT_RANGE (Linux 6.3; value lo | hi<<16) when the port set
//     is one range inside the namespace's net.ipv4.ip_local_port_range.
//     The option only narrows that sysctl; the Dialer never widens it.
//   - Search: the RFC 6056 §3.3.3 keyed hash of (source, destination) picks
//     the first port to try, ports this Dialer already holds toward that
//     destination are skipped without a syscall, and each candidate is
//     tried with SO_REUSEADDR, bind and connect until one works or
//     MaxAttempts ports have failed. A set of at most MaxAttempts ports is
//     covered completely, so exhaustion (ErrExhausted) is exact.
//
// UDP sockets share ports only through a cooperative lock (Cloudflare's
// connectx), run inside a net.Dialer's ControlContext: SO_REUSEADDR=1,
// bind, SO_REUSEADDR=0 (the lock: no cooperating socket can bind the port
// now), an exact sock_diag lookup of the 4-tuple (not a dump: the kernel
// runs its packet-delivery lookup and returns the socket that would receive
// the destination's datagrams; asked once per interface of the namespace,
// so that sockets bound to a device are seen), connect unless that socket
// is connected to the destination, SO_REUSEADDR=1. The published protocol
// leaves a window between a concurrent bind's conflict check and its entry
// into the lookup tables; UDPLock closes it between portspace processes,
// either with an advisory lock per (network namespace, source, port) held
// around the steps in a shared directory (UDPLockFile, the default: no
// table walk), or with a dump of the unconnected UDP sockets before the
// lookup (UDPLockDump: another socket bound to the same local end may be
// mid-protocol, so the port counts as busy; the kernel walks its whole UDP
// table). Two Dialers, in one process or many, never create the same
// connected UDP 4-tuple this way. Within a Dialer a mutex per (source,
// port) keeps concurrent dials out of each other's lock window; a port
// whose lock or bind meets another process's is retried a few times (under
// 1 ms in all) before the dial reports ErrExhausted.
//
// On a port where the Dialer holds no socket (and with no user Control),
// UDPLockFile and UDPLockDump first try an exclusive bind: bind with
// SO_REUSEADDR still 0, connect, then SO_REUSEADDR=1. A socket without
// SO_REUSEADDR conflicts with every socket on the port, and the kernel
// checks and inserts a bind under one lock, so success proves that no
// socket held the port and none can bind it until the socket is connected:
// no lock file, cookie or lookup is needed, and no program can race it.
// EADDRINUSE sends the dial to the cooperative lock.
//
// UDPLockRegistry (forced only; UDPLockAuto never picks it) needs no
// sock_diag: every connected 4-tuple is registered, for the life of its
// conn, as an open file description lock (F_OFD_SETLK) on one byte of a
// registry file in LockDir, at port<<32 | FNV-1a(destination); a 4-tuple
// whose byte another process holds is busy, and the dial is one fcntl plus
// SO_REUSEADDR, bind and connect (Close closes the socket, then unlocks).
// The kernel drops a dead process's locks. It excludes only processes that
// register in the same directory: a socket connected earlier by any other
// program, portspace processes of the other UDPLocks included, is not seen.
//
// UDPLockOwner (forced only) makes the Dialer the kernel's owner of each
// (source, port) it holds a conn on: the first socket binds exclusively
// and keeps SO_REUSEADDR=0 and SO_REUSEPORT=0, as does every later socket
// of the port outside a window of one bind and connect, during which the
// port's sockets of this Dialer set SO_REUSEPORT=1 so that the new socket
// (SO_REUSEPORT=1 too) can bind beside them. No other socket can bind an
// owned port (EADDRINUSE), whatever its options, except one of the same
// uid with SO_REUSEPORT inside that window; a port another socket holds is
// busy. No sock_diag, no lock directory: three or more setsockopt calls over
// a plain dial. A port is shared across destinations by one Dialer at a
// time.
//
// Errors are *net.OpError, as net.Dialer's; LocalAddr, FallbackDelay (RFC
// 6555 Happy Eyeballs for "tcp" to names with addresses of both families),
// Timeout, Deadline, Resolver, KeepAlive and Control work as net.Dialer's.
//
// What the UDP lock cannot protect against: sockets that do not follow the
// protocol. A program that sets SO_REUSEADDR, binds one of the ports and
// connects to the same destination later is not stopped by the kernel and
// silently takes over that 4-tuple's traffic (the newest connected socket
// wins). A socket bound to the port without SO_REUSEADDR makes the port
// unusable for the Dialer (bind fails), which is safe. The protocol needs
// the exact sock_diag UDP lookup (udp_diag) and SO_COOKIE; without them
// Auto uses the Kernel strategy for UDP, which does not share ports.
//
// Sources rotate round robin per dial; a source with no free port toward the
// destination is skipped for the next. Ports chosen by bind (Search) are
// not used by the kernel's own connect-time choice, so mixing the two
// strategies on the same ports lowers the Kernel strategy's capacity.
package dial
