package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/portspace/portspace/internal/netsys"
	"golang.org/x/crypto/bcrypt"
)

// Resolver looks up the addresses of a host name, as net.Resolver does.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Server serves SOCKS5 and HTTP proxy clients on its listeners and dials
// through its Egress. Create it with NewServer; Reload swaps users, traits,
// limits and the guard without touching open connections.
type Server struct {
	egress   Egress
	resolver Resolver
	log      *slog.Logger
	metrics  *Metrics
	now      func() time.Time
	hop      shortHop // Options.ShortHopCC

	rt atomic.Pointer[runtimeConfig]

	dialCtx atomic.Pointer[sharedDeadline] // see dialContext

	// testHookResponded, if set, is called after an HTTP request was
	// answered and before its cleanup runs (tests stop there).
	testHookResponded atomic.Pointer[func()]

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[net.Conn]struct{}
	origins   map[*originLink]struct{} // forwarded HTTP requests' origin connections
	wg        sync.WaitGroup
	closing   atomic.Bool
	ready     atomic.Int32

	userMu     sync.Mutex
	userActive map[string]*atomic.Int64

	authMu    sync.Mutex
	authCache map[[32]byte]bool

	// work hands accepted connections to idle handler goroutines (see
	// worker); quit, closed by Shutdown, ends the idle ones.
	work        chan net.Conn
	idleWorkers atomic.Int32
	workersRun  atomic.Int64 // worker goroutines started
	quit        chan struct{}
	quitOnce    sync.Once
}

// maxIdleWorkers bounds the handler goroutines that wait for the next
// connection; each keeps the stack the handshake and dial grew.
const maxIdleWorkers = 64

// Options are NewServer's optional parts; the zero value is usable.
type Options struct {
	// Resolver resolves SOCKS domain names and HTTP hosts at the proxy;
	// nil: net.DefaultResolver.
	Resolver Resolver
	// Logger receives the proxy's logs; nil discards them.
	Logger *slog.Logger
	// Metrics, nil: NewMetrics().
	Metrics *Metrics
	// Now is the clock for idle timers and sessions; nil: time.Now.
	Now func() time.Time
	// ShortHopCC is the TCP congestion control that a tunnel direction
	// moving bulk data (a splice of 256 KiB or more) over a hop with a
	// round trip under 1 ms (loopback, a LAN) switches its sending socket
	// to, if that socket uses BBR; the direction's receiving socket, if
	// its own round trip is that short, also caps its SO_RCVBUF at 2 MiB
	// (whatever the sending socket runs). BBR paces inside TCP, a timer
	// per burst, when the qdisc does not, and on such hops that cost a
	// relayed tunnel a fifth to a third more CPU per GiB (docs/proxy.md,
	// "Pacing on a short hop"). When both of the direction's sockets are
	// on such hops, it also stops splicing and copies through a pooled
	// 1 MiB buffer (at most 16 directions at once), which kept the
	// endpoints' CPU per byte at what a direct connection costs them
	// ("Stop 18: copying on a short hop"). "": reno
	// (net.ipv4.tcp_allowed_congestion_control lets every user set it);
	// "off": no switch, no cap and no copying. Hops with longer round
	// trips keep the system's choice.
	ShortHopCC string
}

// runtimeConfig is a Config compiled for serving.
type runtimeConfig struct {
	cfg    *Config
	users  map[string]*User
	guard  Guard
	geo    *GeoIP
	access *slog.Logger
	closer io.Closer
}

// NewServer checks cfg (see Reload) and returns a Server that dials
// through egress.
func NewServer(cfg *Config, egress Egress, opts Options) (*Server, error) {
	if egress == nil {
		return nil, fmt.Errorf("%w: no egress", ErrConfig)
	}
	s := &Server{egress: egress, resolver: opts.Resolver, log: opts.Logger, metrics: opts.Metrics, now: opts.Now,
		conns: map[net.Conn]struct{}{}, origins: map[*originLink]struct{}{}, userActive: map[string]*atomic.Int64{}, authCache: map[[32]byte]bool{},
		work: make(chan net.Conn), quit: make(chan struct{})}
	if s.resolver == nil {
		s.resolver = net.DefaultResolver
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.metrics == nil {
		s.metrics = NewMetrics()
	}
	if s.now == nil {
		s.now = time.Now
	}
	switch cc := opts.ShortHopCC; {
	case cc == "":
		s.hop.cc = "reno"
	case cc == "off":
	case len(cc) >= netsys.CCNameMax || strings.Trim(cc, "abcdefghijklmnopqrstuvwxyz0123456789_") != "":
		return nil, fmt.Errorf("%w: Options.ShortHopCC %q is not a congestion control name", ErrConfig, cc)
	default:
		s.hop.cc = cc
	}
	s.hop.switched = s.metrics.ShortHopSwitched.Inc
	rt, err := s.compile(cfg)
	if err != nil {
		return nil, err
	}
	s.rt.Store(rt)
	return s, nil
}

// Metrics returns the server's metrics.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Config returns the configuration in use.
func (s *Server) Config() *Config { return s.rt.Load().cfg }

// Reload checks cfg and, if it is good, makes it the configuration for new
// connections and requests: users, traits, limits, timeouts and the guard.
// Open connections keep going. Listeners, the store and the holder are not
// changed by a reload. A bad cfg leaves the running configuration in place.
func (s *Server) Reload(cfg *Config) error {
	rt, err := s.compile(cfg)
	if err != nil {
		s.metrics.Reloads.WithLabelValues("error").Inc()
		return err
	}
	old := s.rt.Swap(rt)
	if old != nil && old.closer != nil {
		old.closer.Close()
	}
	s.authMu.Lock()
	clear(s.authCache)
	s.authMu.Unlock()
	s.metrics.Reloads.WithLabelValues("ok").Inc()
	return nil
}

func (s *Server) compile(cfg *Config) (*runtimeConfig, error) {
	if err := cfg.CheckOpen(); err != nil {
		return nil, err
	}
	if err := cfg.CheckTraits(s.egress.Offered()); err != nil {
		return nil, err
	}
	rt := &runtimeConfig{cfg: cfg, users: map[string]*User{}}
	for i := range cfg.Users {
		rt.users[cfg.Users[i].Name] = &cfg.Users[i]
	}
	rt.guard = Guard{Allow: cfg.Destinations.Allow, Deny: cfg.Destinations.Deny, Own: ownAddrs(cfg.Listeners())}
	if cfg.GeoIP != "" {
		g, err := OpenGeoIP(cfg.GeoIP)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: geoip %s: %w", ErrConfig, cfg.file, cfg.GeoIP, err)
		}
		rt.geo = g
	}
	switch cfg.AccessLog {
	case "":
	case "-":
		rt.access = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	default:
		f, err := os.OpenFile(cfg.AccessLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			if rt.geo != nil {
				rt.geo.Close()
			}
			return nil, fmt.Errorf("%w: %s: access-log: %w", ErrConfig, cfg.file, err)
		}
		rt.access = slog.New(slog.NewJSONHandler(f, nil))
		rt.closer = f
	}
	if rt.geo != nil {
		prev := rt.closer
		rt.closer = closerFunc(func() error {
			rt.geo.Close()
			if prev != nil {
				return prev.Close()
			}
			return nil
		})
	}
	return rt, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// ownAddrs returns the proxy's own addresses: every interface address of the
// host, plus the listeners' addresses.
func ownAddrs(listeners []netip.AddrPort) []netip.Addr {
	var out []netip.Addr
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				out = append(out, p.Addr().Unmap())
			}
		}
	}
	for _, l := range listeners {
		if !l.Addr().IsUnspecified() {
			out = append(out, l.Addr().Unmap())
		}
	}
	return out
}

// Listen opens the configured listeners (Config.Listeners) and serves them
// in the background; it fails, closing what it opened, if one cannot be
// opened.
func (s *Server) Listen() error {
	var lns []net.Listener
	for _, a := range s.Config().Listeners() {
		// No TCP keep-alive on client connections: the idle timeout
		// ends dead ones, and each accept saves the keep-alive options.
		lc := net.ListenConfig{KeepAlive: -1}
		ln, err := lc.Listen(context.Background(), "tcp", a.String())
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("proxy: listen %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	s.mu.Lock()
	s.listeners = append(s.listeners, lns...)
	s.mu.Unlock()
	for _, ln := range lns {
		go s.serve(ln)
	}
	return nil
}

// Addrs returns the addresses the server listens on.
func (s *Server) Addrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.AddrPort
	for _, l := range s.listeners {
		out = append(out, l.Addr().(*net.TCPAddr).AddrPort())
	}
	return out
}

// Ready reports whether every listener passed to Serve is accepting.
func (s *Server) Ready() bool {
	s.mu.Lock()
	n := len(s.listeners)
	s.mu.Unlock()
	return n > 0 && int(s.ready.Load()) == n && !s.closing.Load()
}

// Serve accepts connections on ln until ln is closed or Shutdown is called.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return net.ErrClosed
	}
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	return s.serve(ln)
}

func (s *Server) serve(ln net.Listener) error {
	s.ready.Add(1)
	defer s.ready.Add(-1)
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				return net.ErrClosed
			}
			// EMFILE and the like: back off and keep serving.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff < time.Second {
				backoff *= 2
			}
			s.log.Warn("proxy: accept", "listener", ln.Addr().String(), "err", err)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.track(c) {
			c.Close()
			continue
		}
		select {
		case s.work <- c: // an idle worker takes it
		default:
			s.workersRun.Add(1)
			go s.worker(c)
		}
	}
}

// worker serves c, then, instead of exiting, waits for the next connection
// the accept loop hands over (up to maxIdleWorkers wait at a time): a new
// goroutine per connection would grow its stack again through the
// handshake and the dial, which costs more than the hand-over. A tunnel's
// relay runs in goroutines of its own, so the worker is free once the
// tunnel is set up.
func (s *Server) worker(c net.Conn) {
	hs := &handshake{br: bufio.NewReaderSize(nil, handshakeBufSize)}
	for {
		s.handle(c, hs)
		hs.br.Reset(nil) // keep the buffer, not the connection
		hs.lr = io.LimitedReader{}
		hs.pr, hs.sn = prefixReader{}, sniffState{}
		if s.idleWorkers.Add(1) > maxIdleWorkers {
			s.idleWorkers.Add(-1)
			return
		}
		select {
		case c = <-s.work:
			s.idleWorkers.Add(-1)
		case <-s.quit:
			s.idleWorkers.Add(-1)
			return
		}
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

// originLink is the origin connection of forwarded HTTP requests, known
// to Shutdown: a handler waiting for an origin's answer does not notice its
// client's close, so Shutdown, once its context ends, closes the origins
// with the clients.
type originLink struct {
	net.Conn
	s *Server
}

func (s *Server) trackOrigin(c net.Conn) net.Conn {
	o := &originLink{Conn: c, s: s}
	s.mu.Lock()
	s.origins[o] = struct{}{}
	s.mu.Unlock()
	return o
}

// Close closes the connection and forgets it.
func (o *originLink) Close() error {
	o.s.mu.Lock()
	delete(o.s.origins, o)
	o.s.mu.Unlock()
	return o.Conn.Close()
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Shutdown stops accepting, waits for open connections to finish until ctx
// is done, then closes the remaining ones. It returns ctx's error if it had
// to close connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for _, l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()
	s.quitOnce.Do(func() {
		if s.quit != nil {
			close(s.quit)
		}
	})
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		for o := range s.origins {
			o.Conn.Close() // its handler's Close untracks it
		}
		s.mu.Unlock()
		<-done
	}
	if rt := s.rt.Load(); rt.closer != nil {
		rt.closer.Close()
	}
	return err
}

// handshakeBufSize is the size of the handshake's buffered reader.
const handshakeBufSize = 2048

// handshake is a worker's reader for the handshakes of the connections it
// serves, one after the other: a tunnel reads nothing through it once it
// is handed to its relay, and an HTTP connection holds its worker until
// it ends, so each connection resets it instead of allocating its own.
type handshake struct {
	lr   io.LimitedReader
	br   *bufio.Reader
	pr   prefixReader
	mbuf [255]byte              // a SOCKS5 greeting's methods
	pre  [handshakeBufSize]byte // what sniff read
	sel  [2]byte                // the method selection sniff writes
	sn   sniffState
	// sniffFn is sniffStep, bound once.
	sniffFn func(fd uintptr) bool
}

// prefixReader returns the bytes sniff read (and then the error it met, if
// any), then reads the connection: the handshake's bufio.Reader reads
// through it.
type prefixReader struct {
	b   []byte
	err error
	c   net.Conn
}

func (p *prefixReader) Read(b []byte) (int, error) {
	if len(p.b) > 0 {
		n := copy(b, p.b)
		p.b = p.b[n:]
		return n, nil
	}
	if p.err != nil {
		return 0, p.err
	}
	return p.c.Read(b)
}

// canSniff: sniff's non-blocking read (internal/netsys.ReadFD) exists on
// Linux only; elsewhere the handshake reads through net.Conn.Read alone.
const canSniff = runtime.GOOS == "linux"

// sniff reads c's first bytes inside one RawRead and, for a SOCKS5
// greeting that offers X'00' when noAuth (no users configured), writes the
// method selection X'05 00' there too and goes on reading until the
// request's header and address are in (or the buffer is full); anything
// else (HTTP, authentication, a malformed greeting, an error) ends it at
// once, and the usual parsers take over from the bytes read, which the
// caller feeds them first (prefixReader). hs.sn says what it read into
// hs.pre and whether it wrote X'05 00'.
//
// What it saves: after writing the method selection it does not try a read
// that would find nothing (the client sends its request only once it has
// the selection), it waits for readability at once. That is safe only
// inside the RawRead that made the last read: the runtime poller's ready
// flag is cleared when a RawRead (or Read) starts, and the socket,
// registered edge-triggered at accept, marks it again for every byte that
// arrives after that; so when the last read of this RawRead came back
// short (the queue was empty then), any byte since, a pipelined request
// included, wakes the wait. A new RawRead or Read always reads first.
func (hs *handshake) sniff(c net.Conn, noAuth bool) {
	hs.sn = sniffState{}
	if !canSniff {
		return
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	hs.sn.c, hs.sn.noAuth = c, noAuth
	if hs.sniffFn == nil {
		hs.sniffFn = hs.sniffStep // bound once per worker
	}
	// An error of the RawRead itself (the handshake deadline, a close) is
	// met again by the usual path's next read.
	_ = rc.Read(hs.sniffFn)
	hs.sn.c = nil
}

// sniffState is what sniff found; it lives in the worker's handshake, so
// that the RawRead callback (a method value bound once) allocates nothing.
type sniffState struct {
	c        net.Conn
	noAuth   bool
	n        int   // bytes read into handshake.pre
	rerr     error // the read's error: io.EOF at end of stream
	replied  bool  // X'05 00' was written...
	werr     error // ...with this error
	drained  bool  // the last read in this RawRead was short
	greeting int   // the greeting's length, once the selection was written
}

// sniffStep is sniff's RawRead callback.
func (hs *handshake) sniffStep(fd uintptr) bool {
	st, buf := &hs.sn, hs.pre[:]
	for {
		switch n := st.n; {
		case n == 0:
		case buf[0] != socksVersion:
			return true // HTTP, or not a proxy protocol
		case st.greeting > 0:
			if socksRequestIn(buf[st.greeting:n]) {
				return true
			}
		case n < 2:
		case buf[1] == 0 || !st.noAuth:
			return true // the usual path answers these
		case n < 2+int(buf[1]):
		default:
			st.greeting = 2 + int(buf[1])
			if !slices.Contains(buf[2:st.greeting], methodNone) {
				return true
			}
			st.replied = true
			hs.sel = [2]byte{socksVersion, methodNone}
			if _, st.werr = st.c.Write(hs.sel[:]); st.werr != nil {
				return true
			}
			if socksRequestIn(buf[st.greeting:n]) {
				return true
			}
			if st.drained {
				return false // the client answers the selection: wait
			}
		}
		if st.n == len(buf) {
			return true
		}
		k, e := netsys.ReadFD(fd, buf[st.n:])
		switch {
		case e == syscall.EAGAIN:
			st.drained = true
			return false
		case e != 0:
			st.rerr = os.NewSyscallError("read", e)
			return true
		case k == 0:
			st.rerr = io.EOF
			return true
		}
		st.drained = k < len(buf)-st.n
		st.n += k
	}
}

// socksRequestIn reports whether b starts with a whole RFC 1928 request
// header and address (or with enough of one for readSOCKSRequest to refuse
// it).
func socksRequestIn(b []byte) bool {
	if len(b) < 5 {
		return false
	}
	switch b[3] {
	case atypIPv4:
		return len(b) >= 4+4+2
	case atypIPv6:
		return len(b) >= 4+16+2
	case atypDomain:
		return len(b) >= 4+1+int(b[4])+2
	}
	return true // an address type that is refused
}

// handle tells SOCKS5 from HTTP by the first byte and serves the
// connection.
func (s *Server) handle(c net.Conn, hs *handshake) {
	cl := &cleanup{}
	cl.fns = cl.arr[:0]
	cl.add(func() {
		if cl.relayed {
			c.Close() // both directions ended: nothing left to read
		} else {
			lingerClose(c, s.now)
		}
		s.untrack(c)
	})
	defer func() {
		if !cl.detached {
			cl.run()
		}
	}()
	rt := s.rt.Load()
	// The handshake's deadline: a read deadline (a SOCKS5 handshake's
	// writes are a few bytes into an empty socket buffer, which never
	// wait); serveHTTP adds the write deadline its answers need.
	handshakeEnd := s.now().Add(rt.cfg.handshakeTimeout())
	_ = c.SetReadDeadline(handshakeEnd)
	// One buffered reader for the handshake: a client's greeting, request
	// (or HTTP header section) each arrive in one read. lr bounds what an
	// HTTP header section may take.
	// sniff reads the first bytes (for a SOCKS5 client without
	// authentication, through to its request), and they go through lr.
	hs.sniff(c, len(rt.users) == 0)
	hs.pr = prefixReader{b: hs.pre[:hs.sn.n], err: hs.sn.rerr, c: c}
	hs.lr = io.LimitedReader{R: &hs.pr, N: int64(rt.cfg.maxHeaderBytes())}
	lr, br := &hs.lr, hs.br
	br.Reset(lr)
	first, err := br.Peek(1)
	if err != nil {
		s.finish(rt, &connLog{proto: "unknown", client: remoteAddr(c), result: resultBad, reason: "no first byte: " + errString(err)})
		return
	}
	if first[0] == socksVersion {
		lr.N = math.MaxInt64
		br.Discard(1)
		s.serveSOCKS(c, br, hs, rt, cl)
		return
	}
	_ = c.SetWriteDeadline(handshakeEnd)
	s.serveHTTP(c, br, lr, rt, cl)
}

// cleanup is the work left when a connection ends: run by the handler
// goroutine, or, once a tunnel is handed to its relay goroutines
// (detached), by the relay when both directions end, so that the
// handler's stack is gone while the tunnel idles.
type cleanup struct {
	fns      []func()
	arr      [6]func() // fns's first array: a tunnel adds about five
	detached bool
	wait     chan struct{} // closed when fns is complete (HTTP CONNECT)
	relayed  bool          // the connection was a tunnel that ended
}

func (c *cleanup) add(f func()) { c.fns = append(c.fns, f) }

// run calls the functions in reverse order, as defers would.
func (c *cleanup) run() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
	c.fns = nil
}

// lingerClose half-closes c and discards what the client still sends for a
// moment, so that an error reply is not lost to the RST that closing a
// socket with unread data sends.
func lingerClose(c net.Conn, now func() time.Time) {
	if tc, ok := c.(*net.TCPConn); ok {
		if tc.CloseWrite() == nil {
			_ = tc.SetReadDeadline(now().Add(250 * time.Millisecond))
			_, _ = io.CopyN(io.Discard, tc, 64<<10)
		}
	}
	c.Close()
}

// Results of a connection, the metrics' result label.
const (
	resultOK          = "ok"
	resultAuth        = "auth_failed"
	resultRefused     = "refused"
	resultBad         = "bad_request"
	resultExhausted   = "exhausted"
	resultDialFailed  = "dial_failed"
	resultTimeout     = "timeout"
	resultUnsupported = "unsupported"
	resultNoEgress    = "no_egress"
	resultLimit       = "limit"
)

// connLog is what the access log and metrics record per connection.
type connLog struct {
	proto    string
	client   netip.AddrPort
	user     string
	dst      target // formatted only when logged
	egress   netip.AddrPort
	result   string
	reason   string
	up, down int64
	start    time.Time
}

func (s *Server) finish(rt *runtimeConfig, l *connLog) {
	s.metrics.conn(l.proto, l.result).Inc()
	if l.result != resultOK {
		s.log.Debug("proxy: connection failed", "proto", l.proto, "client", l.client.String(), "user", l.user, "dst", l.dst.String(), "result", l.result, "reason", l.reason)
	}
	if rt.access != nil {
		var dur time.Duration
		if !l.start.IsZero() {
			dur = s.now().Sub(l.start)
		}
		rt.access.Info("conn", "proto", l.proto, "client", l.client.String(), "user", l.user, "dst", l.dst.String(),
			"egress", l.egress.String(), "result", l.result, "reason", l.reason, "up", l.up, "down", l.down, "duration", dur.String())
	}
}

func remoteAddr(c net.Conn) netip.AddrPort {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

func localAddr(c net.Conn) netip.AddrPort {
	switch a := c.LocalAddr().(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// identity is who a connection is and what it needs from its egress.
type identity struct {
	user    *User
	traits  map[string]string
	session string
}

// errAuth and errTraitConflict are identity failures.
var (
	errAuth          = errors.New("proxy: wrong user name or password")
	errTraitConflict = errors.New("proxy: requested trait contradicts the configured one")
)

// identify authenticates (when users are configured) and collects the
// connection's traits: client rules, GeoIP, the user's, the username's.
func (s *Server) identify(rt *runtimeConfig, client netip.Addr, username, password string, haveCreds bool) (identity, error) {
	// traits stays nil (no allocation) for a connection that has none.
	var id identity
	set := func(k, v string) {
		if id.traits == nil {
			id.traits = map[string]string{}
		}
		id.traits[k] = v
	}
	for _, r := range rt.cfg.Clients {
		if r.CIDR.Contains(client) {
			for k, v := range r.Traits {
				if _, ok := id.traits[k]; !ok {
					set(k, v)
				}
			}
		}
	}
	if rt.geo != nil {
		if _, ok := id.traits["geo"]; !ok {
			if cc := rt.geo.Country(client); cc != "" {
				set("geo", cc)
			}
		}
	}
	if len(rt.users) == 0 {
		return id, nil
	}
	if !haveCreds {
		return id, errAuth
	}
	name, req, session, err := ParseUsername(username)
	if err != nil {
		return id, fmt.Errorf("%w: %w", errAuth, err)
	}
	u := rt.users[name]
	if u == nil || !s.checkPassword(u, password) {
		return id, errAuth
	}
	id.user = u
	for k, v := range u.Traits {
		set(k, v)
	}
	for k, v := range req {
		if have, ok := id.traits[k]; ok && have != v {
			if _, cfgd := u.Traits[k]; cfgd {
				return id, fmt.Errorf("%w: %s=%s asked, %s=%s configured", errTraitConflict, k, v, k, have)
			}
		}
		set(k, v)
	}
	if session != "" {
		id.session = name + "/" + session
	}
	return id, nil
}

func (s *Server) checkPassword(u *User, password string) bool {
	if u.PasswordHash == "" {
		return subtle.ConstantTimeCompare([]byte(u.Password), []byte(password)) == 1
	}
	key := sha256.Sum256([]byte(u.Name + "\x00" + u.PasswordHash + "\x00" + password))
	s.authMu.Lock()
	ok, cached := s.authCache[key]
	s.authMu.Unlock()
	if cached {
		return ok
	}
	ok = bcrypt.CompareHashAndPassword([]byte(u.PasswordHash), []byte(password)) == nil
	s.authMu.Lock()
	if len(s.authCache) > 4096 {
		clear(s.authCache)
	}
	s.authCache[key] = ok
	s.authMu.Unlock()
	return ok
}

// ParseUsername splits a client's username NAME[,KEY=VALUE]... into the
// user name, the requested traits and the sticky session (key session).
func ParseUsername(s string) (name string, traits map[string]string, session string, err error) {
	parts := strings.Split(s, ",")
	name = parts[0]
	if name == "" {
		return "", nil, "", errors.New("proxy: username: empty user name")
	}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" || v == "" {
			return "", nil, "", fmt.Errorf("proxy: username %q: %q is not KEY=VALUE", s, p)
		}
		if k == "session" {
			session = v
			continue
		}
		if traits == nil {
			traits = map[string]string{}
		}
		if _, dup := traits[k]; dup {
			return "", nil, "", fmt.Errorf("proxy: username %q: trait %s given twice", s, k)
		}
		if err := checkTraits(map[string]string{k: v}); err != nil {
			return "", nil, "", fmt.Errorf("proxy: username %q: %w", s, err)
		}
		traits[k] = v
	}
	return name, traits, session, nil
}

// acquire counts a connection against the user's limit; release undoes it.
func (s *Server) acquire(id identity) (release func(), ok bool) {
	if id.user == nil || id.user.MaxConnections == 0 {
		return func() {}, true
	}
	s.userMu.Lock()
	n := s.userActive[id.user.Name]
	if n == nil {
		n = new(atomic.Int64)
		s.userActive[id.user.Name] = n
	}
	s.userMu.Unlock()
	if n.Add(1) > int64(id.user.MaxConnections) {
		n.Add(-1)
		return nil, false
	}
	return func() { n.Add(-1) }, true
}

// failure classifies why a destination could not be reached.
type failure uint8

const (
	failNone failure = iota
	failGeneral
	failGuard
	failNoEgress
	failExhausted
	failNetUnreach
	failHostUnreach
	failRefused
	failTimeout
	failResolve
)

func (f failure) result() string {
	switch f {
	case failNone:
		return resultOK
	case failGuard:
		return resultRefused
	case failNoEgress:
		return resultNoEgress
	case failExhausted:
		return resultExhausted
	case failTimeout:
		return resultTimeout
	}
	return resultDialFailed
}

func classify(err error) failure {
	if err == nil {
		return failNone
	}
	var ne net.Error
	switch {
	case errors.Is(err, ErrExhausted):
		return failExhausted
	case errors.Is(err, ErrNoEgress):
		return failNoEgress
	case errors.Is(err, syscall.ECONNREFUSED):
		return failRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return failNetUnreach
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return failHostUnreach
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return failTimeout
	}
	return failGeneral
}

// target is a destination as the client gave it: an address, or a name.
type target struct {
	addr netip.Addr // valid for an IP literal
	host string     // a name to resolve at the proxy
	port uint16
}

func (t target) String() string {
	if t == (target{}) {
		return "" // none yet (a handshake that ended before its request)
	}
	if t.addr.IsValid() {
		return netip.AddrPortFrom(t.addr, t.port).String()
	}
	return net.JoinHostPort(t.host, fmt.Sprint(t.port))
}

// resolveGuarded returns the destination's addresses that the guard allows,
// resolving a name at the proxy; the proxy dials exactly these.
func (s *Server) resolveGuarded(ctx context.Context, rt *runtimeConfig, t target) ([]netip.Addr, failure, string) {
	var addrs []netip.Addr
	if t.addr.IsValid() {
		addrs = []netip.Addr{t.addr.Unmap()}
	} else {
		if t.host == "" {
			return nil, failResolve, "empty host name"
		}
		res, err := s.resolver.LookupNetIP(ctx, "ip", t.host)
		if err != nil || len(res) == 0 {
			if classify(err) == failTimeout {
				return nil, failTimeout, "resolve " + t.host + ": " + errString(err)
			}
			return nil, failResolve, "resolve " + t.host + ": " + errString(err)
		}
		addrs = res
	}
	var ok []netip.Addr
	var why Reason
	for _, a := range addrs {
		a = a.Unmap()
		if r := rt.guard.Check(a); r != None {
			why = r
			continue
		}
		ok = append(ok, a)
	}
	if len(ok) == 0 {
		return nil, failGuard, fmt.Sprintf("destination %s refused by the guard: %s", t, why)
	}
	return ok, failNone, ""
}

// dialCtxSlack is how much later than its timeout a dial may time out:
// dials that start within dialCtxSlack of one another share one context.
const dialCtxSlack = 10 * time.Millisecond

// sharedDeadline is a context that dials share (dialContext).
type sharedDeadline struct {
	ctx      context.Context
	cancel   context.CancelFunc // never called: the context ends at its deadline
	deadline time.Time
	timeout  time.Duration
}

// dialContext returns a context for a dial that may take timeout: it ends
// no earlier than timeout from now and at most dialCtxSlack later. The
// dials of a busy proxy share these contexts, one made every dialCtxSlack,
// instead of making a context and a timer each (context.WithTimeout).
// Nothing cancels it early, so a dial that returns leaves it to the others.
func (s *Server) dialContext(timeout time.Duration) context.Context {
	now := time.Now() // contexts run on the real clock, whatever s.now is
	if d := s.dialCtx.Load(); d != nil && d.timeout == timeout && !d.deadline.Before(now.Add(timeout)) {
		return d.ctx
	}
	dl := now.Add(timeout + dialCtxSlack)
	ctx, cancel := context.WithDeadline(context.Background(), dl)
	s.dialCtx.Store(&sharedDeadline{ctx: ctx, cancel: cancel, deadline: dl, timeout: timeout})
	return ctx
}

// connect resolves, guards and dials t for id over TCP.
func (s *Server) connect(ctx context.Context, rt *runtimeConfig, id identity, t target) (net.Conn, failure, string) {
	addrs, f, why := s.resolveGuarded(ctx, rt, t)
	if f != failNone {
		return nil, f, why
	}
	var firstF failure
	var firstWhy string
	for _, a := range addrs {
		dst := netip.AddrPortFrom(a, t.port)
		start := s.now()
		c, err := s.egress.Dial(ctx, "tcp", dst, EgressRequest{Traits: id.traits, Session: id.session})
		f := classify(err)
		s.metrics.dial("tcp", f.result()).Observe(s.now().Sub(start).Seconds())
		if err == nil {
			return c, failNone, ""
		}
		if f == failExhausted {
			s.metrics.Exhausted.WithLabelValues(TraitsString(id.traits)).Inc()
		}
		if firstF == failNone {
			firstF, firstWhy = f, err.Error()
		}
		if ctx.Err() != nil || f == failNoEgress {
			break
		}
	}
	return nil, firstF, firstWhy
}
