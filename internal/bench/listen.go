package bench

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/portspace/portspace/tuple"
)

// Listeners are the far ends of a run: one TCP listener per destination
// that accepts and holds every connection, or one UDP socket per
// destination that echoes every datagram back to its sender.
type Listeners struct {
	proto tuple.Proto
	eps   []netip.AddrPort
	tcp   []*net.TCPListener
	udp   []*net.UDPConn
	wg    sync.WaitGroup

	accepted atomic.Int64
	echoed   atomic.Int64

	mu sync.Mutex
	// held maps the accepted connections by their tuple as the listener
	// sees it; tomb holds tuples released before they were accepted.
	held map[tuple.Tuple]net.Conn
	tomb map[tuple.Tuple]bool
}

// Listen starts listeners of proto on every address of dests. With port 0
// the kernel picks the first destination's port and the others reuse it
// where it is free.
func Listen(proto tuple.Proto, dests []netip.Addr, port uint16) (*Listeners, error) {
	l := &Listeners{proto: proto, held: map[tuple.Tuple]net.Conn{}, tomb: map[tuple.Tuple]bool{}}
	want := port
	for i, a := range dests {
		ep, err := l.listenOne(netip.AddrPortFrom(a, want))
		if err != nil && port == 0 && want != 0 && errors.Is(err, errAddrInUse) {
			ep, err = l.listenOne(netip.AddrPortFrom(a, 0))
		}
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("bench: listen on destination %d (%v): %w", i, a, err)
		}
		if want == 0 {
			want = ep.Port()
		}
		l.eps = append(l.eps, ep)
	}
	return l, nil
}

func (l *Listeners) listenOne(ep netip.AddrPort) (netip.AddrPort, error) {
	switch l.proto {
	case tuple.TCP:
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ep))
		if err != nil {
			return ep, err
		}
		l.tcp = append(l.tcp, ln)
		l.wg.Add(1)
		go l.accept(ln)
		return ln.Addr().(*net.TCPAddr).AddrPort(), nil
	case tuple.UDP:
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ep))
		if err != nil {
			return ep, err
		}
		l.udp = append(l.udp, c)
		l.wg.Add(1)
		go l.echo(c)
		return c.LocalAddr().(*net.UDPAddr).AddrPort(), nil
	}
	return ep, fmt.Errorf("bench: proto %v: want tcp or udp", l.proto)
}

// Endpoints returns the listening endpoints, one per destination, in the
// order of the destinations.
func (l *Listeners) Endpoints() []netip.AddrPort { return l.eps }

// Accepted returns the number of TCP connections accepted so far.
func (l *Listeners) Accepted() int { return int(l.accepted.Load()) }

// Held returns the number of accepted TCP connections currently held.
func (l *Listeners) Held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}

func (l *Listeners) accept(ln *net.TCPListener) {
	defer l.wg.Done()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: the dialer will see it as a timeout
			// or reset; keep accepting what we can.
			continue
		}
		t := tuple.From(tuple.TCP, c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort())
		l.mu.Lock()
		released := l.tomb[t]
		if released {
			delete(l.tomb, t)
		} else {
			l.held[t] = c
		}
		l.mu.Unlock()
		if released {
			abort(c)
		}
		// Counted once held or released, so that Accepted == n means
		// Held reflects all n.
		l.accepted.Add(1)
	}
}

func (l *Listeners) echo(c *net.UDPConn) {
	defer l.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if _, err := c.WriteToUDPAddrPort(buf[:n], from); err == nil {
			l.echoed.Add(1)
		}
	}
}

// Release closes the accepted side of the TCP connection whose client side
// has tuple t (as the client sees it), now or when it is accepted.
func (l *Listeners) Release(t tuple.Tuple) {
	if l.proto != tuple.TCP {
		return
	}
	k := t.Reverse()
	l.mu.Lock()
	c, ok := l.held[k]
	if ok {
		delete(l.held, k)
	} else {
		l.tomb[k] = true
	}
	l.mu.Unlock()
	if ok {
		abort(c)
	}
}

// CloseAccepted closes every accepted connection (listeners stay open).
func (l *Listeners) CloseAccepted() {
	l.mu.Lock()
	held := l.held
	l.held = map[tuple.Tuple]net.Conn{}
	l.tomb = map[tuple.Tuple]bool{}
	l.mu.Unlock()
	for _, c := range held {
		abort(c)
	}
}

// Close stops the listeners and closes everything they hold.
func (l *Listeners) Close() {
	for _, ln := range l.tcp {
		ln.Close()
	}
	for _, c := range l.udp {
		c.Close()
	}
	l.wg.Wait()
	l.CloseAccepted()
}

// abort closes c with a reset (SO_LINGER 0) for TCP, so that neither end
// keeps a TIME_WAIT entry that would change the next phase's port space.
func abort(c net.Conn) {
	if tc, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
