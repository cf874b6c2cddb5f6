package stun

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portspace/portspace/internal/udpbatch"
)

// Defaults of Options' zero values.
const (
	// DefaultRate is the requests per second a client address may send
	// (over UDP and TCP together) before the server stops answering it.
	DefaultRate = 50
	// DefaultBurst is the number of requests a client may send at once.
	DefaultBurst = 100
	// DefaultBatch is the datagrams read or written per system call.
	DefaultBatch = 64
	// DefaultMaxTCPConns bounds the server's open TCP connections.
	DefaultMaxTCPConns = 1024
	// DefaultTCPIdle closes a TCP connection after this long without a
	// request (RFC 8489 section 6.2.2 leaves it to the server).
	DefaultTCPIdle = 30 * time.Second
	// MaxWorkers bounds Options.Workers' default (each worker holds a
	// descriptor of every UDP socket).
	MaxWorkers = 8
	// readBuffer is the receive buffer asked for on each UDP socket.
	readBuffer = 4 << 20
	// maxDatagram is the largest request the server reads; a longer one
	// is dropped.
	maxDatagram = 2048
	// maxTCPPerClient bounds one client address's TCP connections.
	maxTCPPerClient = 16
)

// Options configures a Server. The zero value of every field but Primary is
// a documented default.
type Options struct {
	// Primary is the primary transport address (RFC 5780 section 6).
	// Required: a specific address and a port.
	Primary netip.AddrPort
	// Alternate is the alternate address and port. Zero makes the server
	// single-homed: one socket, no OTHER-ADDRESS, and CHANGE-REQUEST is
	// refused with 420 (RFC 5780 section 6).
	Alternate netip.AddrPort
	// TCP also serves STUN over TCP on the same transport addresses (RFC
	// 8489 section 6.2.2).
	TCP bool
	// Rate is the requests per second one client address may send;
	// 0 means DefaultRate. Burst is its bucket; 0 means DefaultBurst.
	Rate  float64
	Burst int
	// Unlimited turns the per-client rate limit off (for benchmarks on
	// loopback; never on a public address).
	Unlimited bool
	// Software, when not empty, is sent as SOFTWARE in RFC 8489
	// responses (RFC 8489 section 14.14).
	Software string
	// Batch is the datagrams per recvmmsg/sendmmsg call; 0 means
	// DefaultBatch, 1 forces one datagram per system call (the portable
	// path, also taken where batching is unsupported).
	Batch int
	// MaxTCPConns bounds the open TCP connections; 0 means
	// DefaultMaxTCPConns. TCPIdle closes idle ones; 0 means
	// DefaultTCPIdle.
	MaxTCPConns int
	TCPIdle     time.Duration
	// Workers is the goroutines that read each UDP socket, each with
	// descriptors of its own (dup(2) of the same sockets, so the kernel
	// queue is shared and no other process can join it as with
	// SO_REUSEPORT), so that one busy transport address, the primary in
	// practice, is served by more than one core; 0 means GOMAXPROCS, at
	// most MaxWorkers.
	Workers int
	// NoOffload turns off the UDP offloads the batched path uses where
	// the kernel has them (Linux): UDP_GRO on the sockets, so that a run
	// of requests a client sent as one GSO message (or a NIC merged) is
	// read as one, and UDP GSO (UDP_SEGMENT) on the answers, so that
	// consecutive answers of one size from one socket to one client go
	// out as one message that the kernel splits into the datagrams. The
	// datagrams on the wire are the same either way; the offloads only
	// save work when clients send bursts.
	NoOffload bool
	// Logger receives start-up and error messages; nil discards them.
	Logger *slog.Logger
	// Now is the clock the rate limit reads; nil means time.Now.
	Now func() time.Time
}

// Stats counts what a Server did since it started.
type Stats struct {
	Requests  uint64 // requests read (UDP and TCP)
	Responses uint64 // success responses sent
	Errors    uint64 // error responses (400, 420) sent
	Dropped   uint64 // messages dropped: not STUN, malformed, not a request
	Limited   uint64 // requests dropped by the per-client rate limit
	Reads     uint64 // UDP read system calls (Requests/Reads is the mean batch)
	// Sends counts the UDP messages handed to the kernel for the
	// batched path's answers: with UDP GSO one message carries a run of
	// answers, so (Responses+Errors)/Sends is the mean run.
	Sends uint64
}

type counters struct {
	requests, responses, errors, dropped, limited, reads, sends atomic.Uint64
}

// Server is a behaviour-discovery STUN server (RFC 5780 section 6) on up to
// four UDP sockets (and as many TCP listeners) that also answers RFC 3489
// clients.
type Server struct {
	h      *Handler
	opts   Options
	log    *slog.Logger
	now    func() time.Time
	lim    *limiter
	udp    []*net.UDPConn
	wudp   [][]*net.UDPConn // per worker: descriptors of udp's sockets; wudp[0] is udp
	gro    []bool           // per socket: UDP_GRO is on
	bio    [][]*udpIO       // per worker and socket: the batched path's buffers; nil: one datagram per call
	tcp    []*net.TCPListener
	st     counters
	tcpSem chan struct{}
	tcpMu  sync.Mutex
	tcpPer map[netip.Addr]int
	conns  map[net.Conn]struct{}

	closeOnce sync.Once
	done      chan struct{}
	wg        sync.WaitGroup
}

// Listen opens the server's sockets (four UDP sockets when Alternate is
// set, one otherwise, plus TCP listeners with TCP) without serving yet.
func Listen(o Options) (*Server, error) {
	h, err := NewHandler(o.Primary, o.Alternate, o.Software)
	if err != nil {
		return nil, err
	}
	if o.Rate < 0 || o.Burst < 0 || o.Batch < 0 || o.MaxTCPConns < 0 || o.TCPIdle < 0 || o.Workers < 0 {
		return nil, fmt.Errorf("%w: Rate, Burst, Batch, MaxTCPConns, TCPIdle and Workers must not be negative", ErrBadConfig)
	}
	s := &Server{h: h, opts: o, log: o.Logger, now: o.Now, done: make(chan struct{}),
		tcpPer: map[netip.Addr]int{}, conns: map[net.Conn]struct{}{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.opts.Batch == 0 {
		s.opts.Batch = DefaultBatch
	}
	if s.opts.MaxTCPConns == 0 {
		s.opts.MaxTCPConns = DefaultMaxTCPConns
	}
	if s.opts.TCPIdle == 0 {
		s.opts.TCPIdle = DefaultTCPIdle
	}
	if s.opts.Workers == 0 {
		s.opts.Workers = min(runtime.GOMAXPROCS(0), MaxWorkers)
	}
	if !o.Unlimited {
		rate, burst := o.Rate, o.Burst
		if rate == 0 {
			rate = DefaultRate
		}
		if burst == 0 {
			burst = DefaultBurst
		}
		var seed [8]byte
		_, _ = rand.Read(seed[:])
		s.lim = newLimiter(rate, burst, binary.LittleEndian.Uint64(seed[:]))
	}
	s.tcpSem = make(chan struct{}, s.opts.MaxTCPConns)
	for _, ap := range h.Sockets() {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		if err != nil {
			s.closeSockets()
			return nil, fmt.Errorf("stun: %w", err) // "listen udp ADDR: bind: ..."
		}
		// Room for bursts from many clients at once (the kernel caps it
		// at net.core.rmem_max); a full queue drops requests.
		_ = c.SetReadBuffer(readBuffer)
		s.udp = append(s.udp, c)
		if o.TCP {
			l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
			if err != nil {
				s.closeSockets()
				return nil, fmt.Errorf("stun: %w", err)
			}
			s.tcp = append(s.tcp, l)
		}
	}
	s.gro = make([]bool, len(s.udp))
	for i, c := range s.udp {
		// Only the batched path can read coalesced runs.
		s.gro[i] = s.opts.Batch > 1 && !o.NoOffload && udpbatch.EnableGRO(c) == nil
	}
	s.wudp = append(s.wudp, s.udp)
	for w := 1; w < s.opts.Workers; w++ {
		cs := make([]*net.UDPConn, len(s.udp))
		s.wudp = append(s.wudp, cs)
		for i, c := range s.udp {
			if cs[i], err = dupUDP(c); err != nil {
				s.closeSockets()
				return nil, fmt.Errorf("stun: worker %d: %w", w, err)
			}
		}
	}
	// The batched path's buffers, made here rather than in the serving
	// goroutines, so that none is made while the server answers.
	s.bio = make([][]*udpIO, len(s.wudp))
	for w, conns := range s.wudp {
		s.bio[w] = make([]*udpIO, len(conns))
		if s.opts.Batch == 1 {
			continue
		}
		for i := range conns {
			b, err := s.newUDPIO(conns, Socket(i))
			if errors.Is(err, udpbatch.ErrUnsupported) {
				continue // one datagram per call
			}
			if err != nil {
				s.closeSockets()
				return nil, fmt.Errorf("stun: worker %d: %w", w, err)
			}
			s.bio[w][i] = b
		}
	}
	return s, nil
}

// udpIO is one serving goroutine's batched reader of its socket and
// writers on every socket.
type udpIO struct {
	r       *udpbatch.Reader
	ws      []*udpbatch.Writer
	scratch []byte // where Handle builds an answer
}

func (s *Server) newUDPIO(conns []*net.UDPConn, at Socket) (*udpIO, error) {
	size := maxDatagram
	if s.gro[at] {
		size = udpbatch.MaxCoalesced
	}
	r, err := udpbatch.NewReader(conns[at], s.opts.Batch, size)
	if err != nil {
		return nil, err
	}
	b := &udpIO{r: r, ws: make([]*udpbatch.Writer, len(conns)), scratch: make([]byte, 0, maxDatagram+256)}
	for i, c := range conns {
		if b.ws[i], err = udpbatch.NewWriter(c, s.opts.Batch, maxDatagram+256); err != nil {
			return nil, err
		}
		b.ws[i].SetGSO(!s.opts.NoOffload)
	}
	return b, nil
}

// dupUDP returns a second *net.UDPConn on c's socket (its own descriptor,
// registered with the runtime's poller on its own), so that two goroutines
// can read and write the socket without sharing a descriptor's locks.
func dupUDP(c *net.UDPConn) (*net.UDPConn, error) {
	f, err := c.File()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, err
	}
	u, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("dup of %v is a %T", c.LocalAddr(), pc)
	}
	return u, nil
}

// Addrs returns the server's transport addresses, indexed by Socket.
func (s *Server) Addrs() []netip.AddrPort { return s.h.Sockets() }

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{Requests: s.st.requests.Load(), Responses: s.st.responses.Load(),
		Errors: s.st.errors.Load(), Dropped: s.st.dropped.Load(), Limited: s.st.limited.Load(), Reads: s.st.reads.Load(),
		Sends: s.st.sends.Load()}
}

// Serve answers requests until ctx is done or Close is called, then closes
// the sockets and returns nil (or the first socket error that stopped a
// reader).
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, len(s.wudp)*len(s.udp)+len(s.tcp))
	for w, conns := range s.wudp {
		for i := range conns {
			s.wg.Add(1)
			go func(i int) {
				defer s.wg.Done()
				errc <- s.serveUDP(w, Socket(i))
			}(i)
		}
	}
	for i := range s.tcp {
		s.wg.Add(1)
		go func(i int) {
			defer s.wg.Done()
			errc <- s.serveTCP(Socket(i))
		}(i)
	}
	s.log.Info("stun: serving", "sockets", s.h.Sockets(), "tcp", s.opts.TCP, "batch", s.opts.Batch, "workers", len(s.wudp))
	var first error
	select {
	case <-ctx.Done():
	case <-s.done:
	case first = <-errc:
	}
	s.Close()
	s.wg.Wait()
	return first
}

// Close stops the server and closes its sockets.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.closeSockets()
	})
	return nil
}

func (s *Server) closeSockets() {
	for _, conns := range s.wudp[min(1, len(s.wudp)):] {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	for _, c := range s.udp {
		c.Close()
	}
	for _, l := range s.tcp {
		l.Close()
	}
	s.tcpMu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.tcpMu.Unlock()
}

func (s *Server) closing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// allowed applies the per-client rate limit.
func (s *Server) allowed(a netip.Addr, now int64) bool {
	return s.lim == nil || s.lim.allow(a, now)
}

// serveUDP answers the requests that arrive on worker w's descriptor of
// socket at, sending each answer from w's descriptor of the socket it
// names.
func (s *Server) serveUDP(w int, at Socket) error {
	if b := s.bio[w][at]; b != nil {
		return s.serveUDPBatch(b, at)
	}
	return s.serveUDPSingle(s.wudp[w], at)
}

// serveUDPSingle is the portable path: one datagram per system call.
func (s *Server) serveUDPSingle(conns []*net.UDPConn, at Socket) error {
	c := conns[at]
	in := make([]byte, maxDatagram)
	out := make([]byte, 0, maxDatagram+256)
	for {
		n, src, err := c.ReadFromUDPAddrPort(in)
		if err != nil {
			if s.closing() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("stun: read %v: %w", s.h.addrs[at], err)
		}
		s.st.requests.Add(1)
		s.st.reads.Add(1)
		r, ok := s.answer(out, in[:n], src, at, false)
		if !ok {
			continue
		}
		if _, err := conns[r.Via].WriteToUDPAddrPort(r.Data, r.To); err != nil && s.closing() {
			return nil
		}
	}
}

// answer applies the per-client rate limit to one request from src and
// computes its reply, counting it as limited, dropped, a response or an
// error; false means nothing is to be sent.
func (s *Server) answer(out, req []byte, src netip.AddrPort, at Socket, tcp bool) (Reply, bool) {
	if !s.allowed(src.Addr(), s.now().UnixNano()) {
		s.st.limited.Add(1)
		return Reply{}, false
	}
	r, ok := s.h.Handle(out, req, src, at, tcp)
	if !ok {
		s.st.dropped.Add(1)
		return Reply{}, false
	}
	s.count(r)
	return r, true
}

func (s *Server) count(r Reply) {
	if Type(binary.BigEndian.Uint16(r.Data)) == BindingSuccess {
		s.st.responses.Add(1)
	} else {
		s.st.errors.Add(1)
	}
}

// serveUDPBatch reads a batch with recvmmsg, computes every response, and
// sends them with one sendmmsg per outgoing socket. With UDP_GRO an entry
// of the batch may be a run of requests from one client, split here; with
// UDP GSO the Writers send runs of answers to one client as one message.
func (s *Server) serveUDPBatch(b *udpIO, at Socket) error {
	r, ws, scratch := b.r, b.ws, b.scratch
	for {
		n, err := r.Read()
		if err != nil {
			if s.closing() {
				return nil
			}
			return fmt.Errorf("stun: read %v: %w", s.h.addrs[at], err)
		}
		s.st.reads.Add(1)
		now := s.now().UnixNano()
		var requests, limited, dropped, ok, bad uint64
		for k := 0; k < n; k++ {
			data, src := r.Msg(k)
			if !src.IsValid() {
				requests++
				dropped++
				continue
			}
			seg := r.Seg(k)
			for len(data) > 0 {
				var req []byte
				req, data = udpbatch.Next(data, seg)
				requests++
				if len(req) > maxDatagram {
					dropped++ // as the one-datagram reads drop it
					continue
				}
				if !s.allowed(src.Addr(), now) {
					limited++
					continue
				}
				rep, good := s.h.Handle(scratch, req, src, at, false)
				if !good {
					dropped++
					continue
				}
				if Type(binary.BigEndian.Uint16(rep.Data)) == BindingSuccess {
					ok++
				} else {
					bad++
				}
				w := ws[rep.Via]
				next := w.Next()
				if next == nil {
					if err := s.flush(w); err != nil {
						return nil
					}
					next = w.Next()
				}
				w.Commit(append(next, rep.Data...), rep.To)
			}
		}
		s.st.requests.Add(requests)
		if limited > 0 {
			s.st.limited.Add(limited)
		}
		if dropped > 0 {
			s.st.dropped.Add(dropped)
		}
		s.st.responses.Add(ok)
		if bad > 0 {
			s.st.errors.Add(bad)
		}
		for _, w := range ws {
			if w.Len() == 0 {
				continue
			}
			if err := s.flush(w); err != nil {
				return nil
			}
		}
	}
}

// flush sends w's answers; an error means the server is closing.
func (s *Server) flush(w *udpbatch.Writer) error {
	s.st.sends.Add(uint64(w.Messages()))
	if _, err := w.Flush(); err != nil && s.closing() {
		return err
	}
	return nil
}

func (s *Server) serveTCP(at Socket) error {
	l := s.tcp[at]
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if s.closing() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("stun: accept %v: %w", s.h.addrs[at], err)
		}
		src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		select {
		case s.tcpSem <- struct{}{}:
		default:
			c.Close()
			continue
		}
		s.tcpMu.Lock()
		if s.tcpPer[src.Addr()] >= maxTCPPerClient || s.closing() {
			s.tcpMu.Unlock()
			<-s.tcpSem
			c.Close()
			continue
		}
		s.tcpPer[src.Addr()]++
		s.conns[c] = struct{}{}
		s.tcpMu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(c, src, at)
			c.Close()
			s.tcpMu.Lock()
			delete(s.conns, c)
			if s.tcpPer[src.Addr()]--; s.tcpPer[src.Addr()] <= 0 {
				delete(s.tcpPer, src.Addr())
			}
			s.tcpMu.Unlock()
			<-s.tcpSem
		}()
	}
}

// serveConn answers the STUN messages framed on one TCP connection (RFC
// 8489 section 6.2.2) until it closes, idles or misbehaves.
func (s *Server) serveConn(c *net.TCPConn, src netip.AddrPort, at Socket) {
	in := make([]byte, maxDatagram)
	out := make([]byte, 0, maxDatagram+256)
	for {
		_ = c.SetReadDeadline(time.Now().Add(s.opts.TCPIdle))
		if _, err := io.ReadFull(c, in[:HeaderSize]); err != nil {
			return
		}
		l, err := MessageLength(in[:HeaderSize])
		if err != nil || l > len(in) {
			s.st.dropped.Add(1)
			return // not STUN: the stream cannot be re-framed
		}
		if _, err := io.ReadFull(c, in[HeaderSize:l]); err != nil {
			return
		}
		s.st.requests.Add(1)
		r, ok := s.answer(out, in[:l], src, at, true)
		if !ok {
			continue
		}
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(r.Data); err != nil {
			return
		}
	}
}
