package punch

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Defaults for the zero values of Server's fields.
const (
	DefaultWaitTimeout      = 30 * time.Second
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultMaxRelayBytes    = 64 << 20
	DefaultMaxRelays        = 2
	DefaultMaxConnsPerAddr  = 32
)

// Server is the rendezvous: it answers TCP mapping probes, pairs peers that
// asked for each other, and relays their bytes when punching fails. Its
// zero value is ready to use; call Serve for each listener and Close to stop.
type Server struct {
	// Endpoints are the rendezvous's own endpoints as clients reach them,
	// advertised for the mapping probe (RFC 5780 section 4.3 needs a second
	// address and a second port). Empty: the listeners' addresses, when
	// they are not unspecified.
	Endpoints []netip.AddrPort
	// WaitTimeout bounds how long a registration waits for its peer;
	// zero means DefaultWaitTimeout.
	WaitTimeout time.Duration
	// HandshakeTimeout bounds how long a new connection may take to send
	// its first message; zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MaxRelayBytes bounds the bytes one relay carries, both directions
	// together; zero means DefaultMaxRelayBytes. A relay over it is closed.
	MaxRelayBytes int64
	// MaxRelays bounds the relays one peer ID has open at once; zero
	// means DefaultMaxRelays.
	MaxRelays int
	// MaxConnsPerAddr bounds the connections open at once from one source
	// address; zero means DefaultMaxConnsPerAddr.
	MaxConnsPerAddr int
	// Logger receives the server's events; nil discards them.
	Logger *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]bool
	conns     map[net.Conn]bool
	perAddr   map[netip.Addr]int
	peers     map[string]*registration
	relays    map[string]int
	closed    bool
	wg        sync.WaitGroup
}

// registration is a peer waiting on its control connection.
type registration struct {
	msg     Message // the register message
	conn    net.Conn
	wmu     sync.Mutex // serialises writes on conn
	session string     // set when paired
	peer    *registration
	pending *relayEnd     // set while this side waits for its peer's relay request
	gone    chan struct{} // closed when the registration ends
}

// relayEnd is one side of a relay: its connection and the reader that may
// hold bytes already read from it.
type relayEnd struct {
	conn net.Conn
	r    *bufio.Reader
	done chan struct{}
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func orDefault[T int | int64 | time.Duration](v, d T) T {
	if v == 0 {
		return d
	}
	return v
}

// Serve accepts connections on ln until ln fails or the server is closed.
// It returns nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	if s.listeners == nil {
		s.listeners, s.conns = map[net.Listener]bool{}, map[net.Conn]bool{}
		s.perAddr, s.peers, s.relays = map[netip.Addr]int{}, map[string]*registration{}, map[string]int{}
	}
	s.listeners[ln] = true
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("punch: rendezvous: %w", err)
		}
		if !s.track(c) {
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.handle(c)
		}()
	}
}

// Close stops every listener and connection and waits for the handlers.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) track(c net.Conn) bool {
	a := remoteAddrPort(c).Addr()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.perAddr[a] >= orDefault(s.MaxConnsPerAddr, DefaultMaxConnsPerAddr) {
		return false
	}
	s.perAddr[a]++
	s.conns[c] = true
	return true
}

func (s *Server) untrack(c net.Conn) {
	a := remoteAddrPort(c).Addr()
	c.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	if s.perAddr[a]--; s.perAddr[a] <= 0 {
		delete(s.perAddr, a)
	}
}

// endpoints returns what the server advertises for the mapping probe.
func (s *Server) endpoints() []netip.AddrPort {
	if len(s.Endpoints) > 0 {
		return s.Endpoints
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.AddrPort
	for ln := range s.listeners {
		if ap, err := netip.ParseAddrPort(ln.Addr().String()); err == nil && !ap.Addr().IsUnspecified() {
			out = append(out, ap)
		}
	}
	return out
}

func remoteAddrPort(c net.Conn) netip.AddrPort { return addrPortOf(c.RemoteAddr()) }

// handle serves one connection: a probe, or a control connection that
// pings, registers and may become a relay.
func (s *Server) handle(c net.Conn) {
	br := bufio.NewReaderSize(c, MaxMessage)
	observed := remoteAddrPort(c)
	var reg *registration
	defer func() {
		if reg != nil {
			s.unregister(reg)
		}
	}()
	hs := orDefault(s.HandshakeTimeout, DefaultHandshakeTimeout)
	for {
		if reg == nil {
			c.SetReadDeadline(time.Now().Add(hs))
		} else {
			c.SetReadDeadline(time.Time{})
		}
		m, err := readMessage(br)
		if err != nil {
			if errors.Is(err, ErrBadMessage) {
				s.log().Info("punch: rendezvous: bad message", "from", observed, "err", err)
				writeMessage(c, Message{Op: OpError, Reason: err.Error()})
			}
			return
		}
		switch m.Op {
		case OpProbe:
			writeMessage(c, Message{Op: OpObserved, Observed: observed})
			return
		case OpPing:
			if err := s.send(reg, c, Message{Op: OpPong, Seq: m.Seq, Observed: observed, Endpoints: s.endpoints()}); err != nil {
				return
			}
		case OpRegister:
			if reg != nil {
				writeMessage(c, Message{Op: OpError, Reason: "already registered on this connection"})
				return
			}
			r, why := s.register(m, c)
			if r == nil {
				writeMessage(c, Message{Op: OpError, Reason: why})
				return
			}
			reg = r
			if err := s.send(reg, c, Message{Op: OpRegistered, Observed: observed}); err != nil {
				return
			}
			s.pair(reg)
			go s.expire(reg)
		case OpRelay:
			if reg == nil || reg.session == "" || m.Session != reg.session {
				writeMessage(c, Message{Op: OpError, Reason: "relay: not paired in that session"})
				return
			}
			s.relay(reg, br)
			return
		default:
			writeMessage(c, Message{Op: OpError, Reason: fmt.Sprintf("unexpected %s", m.Op)})
			return
		}
	}
}

// send writes m on c, serialised with the pairing's writes when c belongs
// to a registration.
func (s *Server) send(reg *registration, c net.Conn, m Message) error {
	if reg != nil {
		reg.wmu.Lock()
		defer reg.wmu.Unlock()
	}
	c.SetWriteDeadline(time.Now().Add(orDefault(s.HandshakeTimeout, DefaultHandshakeTimeout)))
	return writeMessage(c, m)
}

// register records m's ID, refusing an ID held under another secret; the
// same secret replaces the old registration (a reconnecting peer).
func (s *Server) register(m Message, c net.Conn) (*registration, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.peers[m.ID]; ok {
		if subtle.ConstantTimeCompare([]byte(old.msg.Secret), []byte(m.Secret)) != 1 {
			return nil, fmt.Sprintf("id %q is registered with another secret", m.ID)
		}
		old.conn.Close()
		s.dropLocked(old)
	}
	r := &registration{msg: m, conn: c, gone: make(chan struct{})}
	s.peers[m.ID] = r
	s.log().Info("punch: rendezvous: registered", "id", m.ID, "peer", m.Peer, "from", remoteAddrPort(c))
	return r, ""
}

func (s *Server) dropLocked(r *registration) {
	if s.peers[r.msg.ID] == r {
		delete(s.peers, r.msg.ID)
		close(r.gone)
	}
}

func (s *Server) unregister(r *registration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropLocked(r)
}

// expire ends a registration whose peer has not come within WaitTimeout.
func (s *Server) expire(r *registration) {
	t := time.NewTimer(orDefault(s.WaitTimeout, DefaultWaitTimeout))
	defer t.Stop()
	select {
	case <-r.gone:
	case <-t.C:
		s.mu.Lock()
		paired := r.session != ""
		s.mu.Unlock()
		if !paired {
			s.send(r, r.conn, Message{Op: OpError, Reason: fmt.Sprintf("peer %q did not register within %v", r.msg.Peer, orDefault(s.WaitTimeout, DefaultWaitTimeout))})
			r.conn.Close()
		}
	}
}

// pair hands r and its peer each other's candidates once both have asked
// for each other, with start delays that make their SYNs leave together:
// the rendezvous writes to both at once, a message reaches each side after
// half its round trip, so the nearer side waits half the difference.
func (s *Server) pair(r *registration) {
	s.mu.Lock()
	p, ok := s.peers[r.msg.Peer]
	if !ok || p.msg.Peer != r.msg.ID || p.session != "" {
		s.mu.Unlock()
		return
	}
	var b [12]byte
	rand.Read(b[:])
	session := hex.EncodeToString(b[:])
	r.session, p.session = session, session
	r.peer, p.peer = p, r
	s.mu.Unlock()
	longest := max(r.msg.RTT, p.msg.RTT)
	for _, x := range []struct{ to, from *registration }{{r, p}, {p, r}} {
		m := Message{Op: OpPeer, ID: x.from.msg.ID, Session: session, Local: x.from.msg.Local,
			Reflexive: remoteAddrPort(x.from.conn), Predicted: x.from.msg.Predicted, NAT: x.from.msg.NAT,
			RTT: x.from.msg.RTT, Delay: (longest - x.to.msg.RTT) / 2}
		go s.send(x.to, x.to.conn, m)
	}
	s.log().Info("punch: rendezvous: paired", "a", r.msg.ID, "b", p.msg.ID, "session", session)
}

// relay joins r's connection to its peer's once both asked for the relay,
// within the per-ID limits, and copies bytes both ways, passing each
// half-close on, until both directions end or the byte limit is reached.
// The handler that asks second runs the relay; the first waits for it.
func (s *Server) relay(r *registration, br *bufio.Reader) {
	me := &relayEnd{conn: r.conn, r: br, done: make(chan struct{})}
	limit := orDefault(s.MaxRelays, DefaultMaxRelays)
	s.mu.Lock()
	p := r.peer
	if s.relays[r.msg.ID] >= limit || s.relays[p.msg.ID] >= limit {
		s.mu.Unlock()
		s.send(r, r.conn, Message{Op: OpError, Reason: "relay: too many relays for this peer"})
		return
	}
	other := p.pending
	if other == nil {
		r.pending = me
		s.mu.Unlock()
		t := time.NewTimer(orDefault(s.WaitTimeout, DefaultWaitTimeout))
		defer t.Stop()
		why := ""
		select {
		case <-me.done:
			return
		case <-p.gone:
			why = "relay: the peer left"
		case <-t.C:
			why = "relay: the peer did not ask for the relay"
		}
		s.mu.Lock()
		taken := r.pending != me
		r.pending = nil
		s.mu.Unlock()
		if taken {
			<-me.done
			return
		}
		s.send(r, r.conn, Message{Op: OpError, Reason: why})
		return
	}
	p.pending = nil
	s.relays[r.msg.ID]++
	s.relays[p.msg.ID]++
	s.mu.Unlock()
	defer close(other.done)
	defer func() {
		s.mu.Lock()
		s.relays[r.msg.ID]--
		s.relays[p.msg.ID]--
		s.mu.Unlock()
	}()
	for _, e := range []*relayEnd{me, other} {
		e.conn.SetDeadline(time.Time{})
		if err := writeMessage(e.conn, Message{Op: OpRelayed}); err != nil {
			me.conn.Close()
			other.conn.Close()
			return
		}
	}
	s.log().Info("punch: rendezvous: relaying", "a", r.msg.ID, "b", p.msg.ID)
	budget := &relayBudget{left: orDefault(s.MaxRelayBytes, DefaultMaxRelayBytes)}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pipe(other.conn, me.r, budget, me.conn) }()
	go func() { defer wg.Done(); pipe(me.conn, other.r, budget, other.conn) }()
	wg.Wait()
	me.conn.Close()
	other.conn.Close()
}

// relayBudget is the bytes a relay may still carry.
type relayBudget struct {
	mu   sync.Mutex
	left int64
}

func (b *relayBudget) take(n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.left -= int64(n)
	return b.left >= 0
}

// pipe copies src (which reads from srcConn) to dst until EOF, then
// half-closes dst; past the budget it closes both.
func pipe(dst net.Conn, src io.Reader, budget *relayBudget, srcConn net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !budget.take(n) {
				dst.Close()
				srcConn.Close()
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				srcConn.Close()
				return
			}
		}
		if err != nil {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == io.EOF {
				cw.CloseWrite()
			} else {
				dst.Close()
			}
			return
		}
	}
}

// ListenAndServe listens on each address and serves them until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context, addrs []string) error {
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("punch: rendezvous: listen %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errc <- s.Serve(ln) }()
	}
	select {
	case <-ctx.Done():
		s.Close()
		return nil
	case err := <-errc:
		s.Close()
		return err
	}
}
