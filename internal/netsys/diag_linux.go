package netsys

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The sock_diag wire format (linux/inet_diag.h); x/sys/unix has only the
// constants.
const (
	nlmsgHdrLen     = 16
	inetDiagReqLen  = 56 // struct inet_diag_req_v2
	inetDiagMsgLen  = 72 // struct inet_diag_msg
	sockidIfOff     = 36 // idiag_if within struct inet_diag_sockid
	sockidCookieOff = 40 // idiag_cookie within struct inet_diag_sockid
	msgSockidOff    = 4  // id within struct inet_diag_msg
	allStates       = 0xffffffff
	noCookie        = 0xffffffff // INET_DIAG_NOCOOKIE, each 32-bit half
)

var diagSeq atomic.Uint32

// LookupUDP asks the kernel which UDP socket would receive a datagram from
// remote to local, with an exact SOCK_DIAG_BY_FAMILY request (NLM_F_REQUEST
// without NLM_F_DUMP). The kernel then answers through udp_dump_one, which
// runs the packet-delivery lookup (__udp4_lib_lookup/__udp6_lib_lookup), so
// a connected socket with that exact 4-tuple wins over sockets only bound to
// local. As the kernel expects, the id fields are swapped: sport/src hold
// the remote end, dport/dst the local end. It returns the socket's cookie,
// or found == false when no socket would receive the datagram (ENOENT).
// It needs no privileges.
func LookupUDP(local, remote netip.AddrPort) (cookie uint64, found bool, err error) {
	d, err := OpenDiag()
	if err != nil {
		return 0, false, err
	}
	defer d.Close()
	return d.LookupUDP(local, remote)
}

// Diag is an open NETLINK_SOCK_DIAG socket for repeated lookups. It is not
// safe for concurrent use.
type Diag struct {
	fd  int
	buf [1024]byte // the exact lookup's reply
}

// OpenDiag opens a sock_diag netlink socket.
func OpenDiag() (*Diag, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, os.NewSyscallError("socket AF_NETLINK", err)
	}
	return &Diag{fd: fd}, nil
}

// Close closes the netlink socket.
func (d *Diag) Close() error { return os.NewSyscallError("close", unix.Close(d.fd)) }

// LookupUDP is the package-level LookupUDP on an open socket.
func (d *Diag) LookupUDP(local, remote netip.AddrPort) (cookie uint64, found bool, err error) {
	o, found, err := d.LookupUDPOn(local, remote, 0)
	return o.Cookie, found, err
}

// LookupUDPOn is LookupUDP for a datagram that arrives on the interface
// with index ifindex (idiag_if; 0: none). The kernel's lookup then
// considers the sockets bound to no device and those bound to that device
// (SO_BINDTODEVICE), and prefers the latter; with ifindex 0 it skips every
// device-bound socket. So asking once per interface of the namespace finds
// a device-bound socket connected to remote that LookupUDP misses. It
// returns the socket's cookie and peer, or found == false (ENOENT).
func (d *Diag) LookupUDPOn(local, remote netip.AddrPort, ifindex int) (owner UDPOwner, found bool, err error) {
	if local.Addr().Is4() != remote.Addr().Is4() {
		return owner, false, fmt.Errorf("netsys: sock_diag lookup %v -> %v: mixed address families", local, remote)
	}
	fd := d.fd
	ne := binary.NativeEndian
	// No NLM_F_DUMP: the exact lookup.
	req, seq := udpDiagRequest(!local.Addr().Is4(), unix.NLM_F_REQUEST, allStates)
	id := req[nlmsgHdrLen+8:]
	binary.BigEndian.PutUint16(id[0:], remote.Port()) // idiag_sport: remote
	binary.BigEndian.PutUint16(id[2:], local.Port())  // idiag_dport: local
	putAddr(id[4:20], remote.Addr())                  // idiag_src: remote
	putAddr(id[20:36], local.Addr())                  // idiag_dst: local
	ne.PutUint32(id[sockidIfOff:], uint32(ifindex))   // idiag_if

	// write and read: an unconnected netlink socket sends to the kernel,
	// and neither needs a socket address (no allocation).
	if err := rawSend(fd, req[:]); err != nil {
		return owner, false, os.NewSyscallError("write sock_diag", err)
	}
	buf := &d.buf
	for {
		n, err := rawRecv(fd, buf[:])
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return owner, false, os.NewSyscallError("read sock_diag", err)
		}
		b := buf[:n]
		for len(b) >= nlmsgHdrLen {
			l := int(ne.Uint32(b[0:]))
			typ := ne.Uint16(b[4:])
			if l < nlmsgHdrLen || l > len(b) {
				return owner, false, fmt.Errorf("netsys: sock_diag: malformed reply (length %d of %d)", l, len(b))
			}
			msg := b[nlmsgHdrLen:l]
			if ne.Uint32(b[8:]) != seq { // a stale reply to an earlier request
				if align4(l) >= len(b) {
					break
				}
				b = b[align4(l):]
				continue
			}
			switch typ {
			case unix.NLMSG_ERROR:
				if len(msg) < 4 {
					return owner, false, fmt.Errorf("netsys: sock_diag: short error reply")
				}
				errno := -int32(ne.Uint32(msg))
				if errno == 0 {
					return owner, false, fmt.Errorf("netsys: sock_diag: acknowledgement without an answer")
				}
				if unix.Errno(errno) == unix.ENOENT {
					return owner, false, nil
				}
				return owner, false, os.NewSyscallError("sock_diag", unix.Errno(errno))
			case unix.SOCK_DIAG_BY_FAMILY:
				if len(msg) < inetDiagMsgLen {
					return owner, false, fmt.Errorf("netsys: sock_diag: short reply (%d bytes)", len(msg))
				}
				sid := msg[msgSockidOff:]
				c := sid[sockidCookieOff:]
				owner.Cookie = uint64(ne.Uint32(c[0:])) | uint64(ne.Uint32(c[4:]))<<32
				owner.Peer = sockidPeer(msg[0], sid)
				return owner, true, nil
			}
			if align4(l) >= len(b) {
				break
			}
			b = b[align4(l):]
		}
	}
}

// rawSend sends b on the netlink socket fd without the scheduler's
// bookkeeping (MSG_DONTWAIT: a request to the kernel never waits; if it
// would, the ordinary write does).
func rawSend(fd int, b []byte) error {
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0:
		return nil
	case unix.EAGAIN:
		_, err := unix.Write(fd, b)
		return err
	}
	return e
}

// rawRecv receives into b from the netlink socket fd without the
// scheduler's bookkeeping: the kernel queues the exact lookup's answer
// before the request's send returns. With nothing queued (EAGAIN) it
// falls back to the ordinary, blocking read.
func rawRecv(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0:
		return int(n), nil
	case unix.EAGAIN:
		return unix.Read(fd, b)
	}
	return 0, e
}

// tcpClose is the sk_state of an unconnected UDP socket (TCP_CLOSE).
const tcpClose = 7

// OtherUnboundUDP reports whether a UDP socket other than the one with
// cookie own is bound to local and not connected. It dumps the unconnected
// UDP sockets of local's family (SOCK_DIAG_BY_FAMILY with NLM_F_DUMP and
// idiag_states = 1<<TCP_CLOSE, so connected sockets are filtered out in the
// kernel) and compares their local ends.
//
// The cooperative UDP lock needs it: a socket of another process may pass
// bind's conflict check just before our SO_REUSEADDR is cleared, yet enter
// the lookup tables only after our exact lookup. That socket is bound and
// unconnected while its owner runs its own lookup, so one of the two owners
// always sees the other here and backs off.
func (d *Diag) OtherUnboundUDP(local netip.AddrPort, own uint64) (bool, error) {
	ne := binary.NativeEndian
	req, seq := udpDiagRequest(!local.Addr().Is4(), unix.NLM_F_REQUEST|unix.NLM_F_DUMP, 1<<tcpClose)
	if err := unix.Sendto(d.fd, req[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, os.NewSyscallError("sendto sock_diag", err)
	}
	var want [16]byte
	putAddr(want[:], local.Addr())
	wantLen := 16
	if local.Addr().Is4() {
		wantLen = 4
	}
	other := false
	buf := make([]byte, 32<<10)
	for {
		n, _, err := unix.Recvfrom(d.fd, buf, 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return false, os.NewSyscallError("recvfrom sock_diag", err)
		}
		b := buf[:n]
		for len(b) >= nlmsgHdrLen {
			l := int(ne.Uint32(b[0:]))
			if l < nlmsgHdrLen || l > len(b) {
				return false, fmt.Errorf("netsys: sock_diag dump: malformed reply (length %d of %d)", l, len(b))
			}
			typ, msg := ne.Uint16(b[4:]), b[nlmsgHdrLen:l]
			if ne.Uint32(b[8:]) == seq {
				switch typ {
				case unix.NLMSG_DONE:
					return other, nil
				case unix.NLMSG_ERROR:
					if len(msg) >= 4 && ne.Uint32(msg) != 0 {
						return false, os.NewSyscallError("sock_diag dump", unix.Errno(-int32(ne.Uint32(msg))))
					}
				case unix.SOCK_DIAG_BY_FAMILY:
					if len(msg) < inetDiagMsgLen {
						return false, fmt.Errorf("netsys: sock_diag dump: short reply (%d bytes)", len(msg))
					}
					id := msg[msgSockidOff:]
					c := id[sockidCookieOff:]
					cookie := uint64(ne.Uint32(c[0:])) | uint64(ne.Uint32(c[4:]))<<32
					if binary.BigEndian.Uint16(id[0:]) == local.Port() && cookie != own &&
						string(id[4:4+wantLen]) == string(want[:wantLen]) {
						other = true // keep reading to the end of the dump
					}
				}
			}
			if align4(l) >= len(b) {
				break
			}
			b = b[align4(l):]
		}
	}
}

// udpDiagRequest returns a SOCK_DIAG_BY_FAMILY request (netlink header and
// inet_diag_req_v2) for UDP sockets of the IPv4 or IPv6 family in the given
// states, with the given netlink flags, INET_DIAG_NOCOOKIE, and an id the
// caller fills in; and the request's sequence number.
func udpDiagRequest(v6 bool, flags uint16, states uint32) (req [nlmsgHdrLen + inetDiagReqLen]byte, seq uint32) {
	seq = diagSeq.Add(1)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], flags)
	ne.PutUint32(req[8:], seq)
	r := req[nlmsgHdrLen:]
	r[0] = unix.AF_INET
	if v6 {
		r[0] = unix.AF_INET6
	}
	r[1] = unix.IPPROTO_UDP
	ne.PutUint32(r[4:], states)
	ne.PutUint32(r[8+sockidCookieOff:], noCookie)
	ne.PutUint32(r[8+sockidCookieOff+4:], noCookie)
	return req, seq
}

func align4(n int) int { return (n + 3) &^ 3 }

// putAddr writes a in the kernel's __be32[4] form: IPv4 in the first word.
func putAddr(dst []byte, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		copy(dst, v[:])
		return
	}
	v := a.As16()
	copy(dst, v[:])
}

// sockidPeer returns the remote end of an inet_diag_sockid of the given
// family (idiag_dst, idiag_dport), or the zero AddrPort for a socket that
// is not connected (both zero).
func sockidPeer(family byte, sid []byte) netip.AddrPort {
	port := binary.BigEndian.Uint16(sid[2:])
	var a netip.Addr
	if family == unix.AF_INET {
		a = netip.AddrFrom4([4]byte(sid[20:24]))
	} else {
		a = netip.AddrFrom16([16]byte(sid[20:36])).Unmap()
	}
	if port == 0 && a.IsUnspecified() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, port)
}
