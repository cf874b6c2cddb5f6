package dial

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/portspace/portspace/internal/netsys"
)

// udpTryOwner dials (source, port) -> dst under UDPLockOwner, under the
// port slot's mutex (errOwnBusy when another dial of this Dialer holds it
// and wait is false).
//
// The Dialer owns (source, port) while it holds a socket there, and every
// socket it holds there has SO_REUSEADDR=0 and SO_REUSEPORT=0 outside this
// function's window. Linux's UDP bind conflict check (udp_lib_lport_inuse)
// decides on the first socket of the port's hash chain that matches the
// address (or the wildcard) and a compatible device: the bind goes ahead
// only if both sockets set SO_REUSEADDR, or both set SO_REUSEPORT under one
// uid. With all of the port's sockets at 0/0, whichever comes first
// refuses every bind, so no other socket can join the port.
//
//   - No socket of ours on the port: the exclusive bind, SO_REUSEADDR=0
//     and SO_REUSEPORT=0. Success proves that no socket of any program
//     held (source, port); EADDRINUSE makes the port busy (another
//     program's, another process's or another Dialer's socket holds it).
//   - Sockets of ours on the port (the window): SO_REUSEPORT=1 on the new
//     socket and on each of them, then the net package binds (source,
//     port) and connects, then SO_REUSEPORT=0 on each of the others and
//     on the new socket. All of them are set, not one, because which socket
//     heads the kernel's chain depends on the family and on how full the
//     chain is (TestOwnerFirstMatch).
//
// The selector keeps the Dialer's 4-tuples unique. The new socket is added
// to the slot before the mutex is released; UDPConn.Close removes it and
// closes it under the mutex.
func (d *Dialer) udpTryOwner(ctx context.Context, st *state, src netip.Addr, port uint16, dst netip.AddrPort, slot *portSlot, wait bool) (*net.UDPConn, syscall.RawConn, error) {
	mu := &slot.mu
	if wait {
		mu.Lock()
	} else if !mu.TryLock() {
		return nil, nil, errOwnBusy
	}
	defer mu.Unlock()
	local := netip.AddrPortFrom(src, port)
	user := d.ControlContext != nil || d.Control != nil
	shared := len(slot.socks) > 0
	window := false // whether the port's other sockets are at SO_REUSEPORT=1
	defer func() {
		if window && !testHookOwnerKeepWindow {
			setReusePortAll(slot.socks, false)
		}
	}()
	fd := -1
	nd := net.Dialer{ControlContext: func(ctx context.Context, network, address string, c syscall.RawConn) error {
		if user {
			if err := d.userControl(ctx, network, address, c); err != nil {
				return err
			}
		}
		return netsys.Control(c, func(s int) error {
			fd = s
			if user || testHookOwnerReuseAddr {
				// The user's options must not void the ownership.
				if err := netsys.SetReuseAddr(fd, testHookOwnerReuseAddr); err != nil {
					return err
				}
				if err := netsys.SetReusePortFlag(fd, false); err != nil {
					return err
				}
			}
			if !shared {
				return nil
			}
			if err := netsys.SetReusePortFlag(fd, true); err != nil {
				return err
			}
			window = true
			if err := setReusePortAll(slot.socks, true); err != nil {
				return wrapStep(fmt.Errorf("dial: udp owner lock: opening the window: %w", err))
			}
			return nil
		})
	}}
	// net binds local (after the Control) and connects.
	uc, err := nd.DialUDP(ctx, udpNetwork(dst), local, dst)
	if shared && window && !testHookOwnerKeepWindow {
		// Close the window: the other sockets first, then (on success) the
		// new one; nothing but this function holds uc yet, so fd is valid.
		window = false
		werr := setReusePortAll(slot.socks, false)
		if err == nil {
			if werr == nil {
				werr = netsys.SetReusePortFlag(fd, false)
			}
			if werr != nil {
				uc.Close()
				return nil, nil, fmt.Errorf("dial: udp owner lock: closing the window: %w", werr)
			}
		}
	}
	if err != nil {
		if se, ok := errors.AsType[*stepError](err); ok {
			return nil, nil, se.err
		}
		switch sc := syscallOf(err); {
		case sc == "bind" && netsys.IsAddrInUse(err):
			return nil, nil, fmt.Errorf("%w: %w", errPortBusy, err)
		case sc == "bind":
			return nil, nil, sourceError(src, err)
		}
		return nil, nil, err
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, nil, err
	}
	if !shared {
		st.exclusive.Add(1)
	}
	if testHookConnected != nil {
		testHookConnected(local, !shared)
	}
	slot.socks = append(slot.socks, rc)
	slot.n.Add(1)
	return uc, rc, nil
}

// setReusePortAll sets SO_REUSEPORT on every socket of socks. A socket
// closed behind the Dialer's back (through NetConn) is skipped: it left
// the port with its descriptor, and RawConn.Control never reaches a
// descriptor number that was reused since.
func setReusePortAll(socks []syscall.RawConn, on bool) error {
	var first error
	for _, rc := range socks {
		err := netsys.Control(rc, func(fd int) error { return netsys.SetReusePortFlag(fd, on) })
		if err != nil && !errors.Is(err, net.ErrClosed) && first == nil {
			first = err
		}
	}
	return first
}

// closeOwned closes sock, one of the slot's sockets under UDPLockOwner,
// and removes it from the slot, under the slot's mutex: a dial of the port
// never sees the set without the socket while the socket still holds the
// port, and never sets options on a socket that has left the set.
func closeOwned(slot *portSlot, rc syscall.RawConn, sock *net.UDPConn) error {
	slot.mu.Lock()
	defer slot.mu.Unlock()
	for i, x := range slot.socks {
		if x == rc {
			last := len(slot.socks) - 1
			slot.socks[i] = slot.socks[last]
			slot.socks[last] = nil
			slot.socks = slot.socks[:last]
			break
		}
	}
	return sock.Close()
}

// testHookOwnerReuseAddr makes udpTryOwner set SO_REUSEADDR=1 on its
// sockets (a bug the interop tests must catch).
var testHookOwnerReuseAddr bool

// testHookOwnerKeepWindow makes udpTryOwner leave SO_REUSEPORT=1 on the
// port's sockets after the bind (a bug the interop tests must catch).
var testHookOwnerKeepWindow bool
