package proxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// hopByHop are the connection-specific header fields a proxy removes (RFC
// 9110 section 7.6.1), besides those the Connection field names.
var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// removeHopByHop deletes RFC 9110 section 7.6.1 connection-specific fields
// from h: the ones listed in Connection, then the fixed list.
func removeHopByHop(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, f := range hopByHop {
		h.Del(f)
	}
}

// viaName is the pseudonym this proxy gives itself in Via fields.
const viaName = "portspace"

// addVia appends this proxy to h's Via field (RFC 9110 section 7.6.3): the
// protocol version the message was received with ("1.1": the name HTTP is
// left out) and viaName, after the intermediaries already listed, in one
// field line.
func addVia(h http.Header, major, minor int) {
	v := strconv.Itoa(major) + "." + strconv.Itoa(minor) + " " + viaName
	if old := h.Values("Via"); len(old) > 0 {
		v = strings.Join(old, ", ") + ", " + v
	}
	h["Via"] = []string{v}
}

// httpError writes a minimal HTTP/1.1 error response.
func httpError(w io.Writer, code int, extra http.Header, msg string) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", code, http.StatusText(code))
	for k, vs := range extra {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	body := msg + "\n"
	fmt.Fprintf(&b, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	w.Write(b.Bytes())
}

func statusFor(f failure) int {
	switch f {
	case failGuard, failNoEgress:
		return http.StatusForbidden
	case failExhausted:
		return http.StatusServiceUnavailable
	case failTimeout:
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// proxyCredentials returns the Basic credentials of a Proxy-Authorization
// field (RFC 9110 section 11.7.2, RFC 7617).
func proxyCredentials(h http.Header) (user, pass string, ok bool) {
	v := h.Get("Proxy-Authorization")
	scheme, cred, found := strings.Cut(v, " ")
	if !found || !strings.EqualFold(scheme, "Basic") {
		return "", "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", "", false
	}
	user, pass, ok = strings.Cut(string(raw), ":")
	return user, pass, ok
}

// readHTTPRequest reads one request with its header section bounded by
// lr's remaining count; it reports errHeaderTooLarge when the bound cut it.
func readHTTPRequest(br *bufio.Reader, lr *io.LimitedReader) (*http.Request, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		if lr.N <= 0 {
			return nil, errHeaderTooLarge
		}
		return nil, err
	}
	return req, nil
}

var errHeaderTooLarge = errors.New("proxy: http: request header section too large")

// hostTarget parses "host:port" (port defaulting to def) into a target.
func hostTarget(hostport string, def uint16) (target, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		if def == 0 || strings.Contains(err.Error(), "too many colons") && !strings.HasPrefix(hostport, "[") {
			return target{}, fmt.Errorf("proxy: http: authority %q: %w", hostport, err)
		}
		host, portStr = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), strconv.Itoa(int(def))
	}
	p, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || p == 0 {
		return target{}, fmt.Errorf("proxy: http: authority %q: bad port %q", hostport, portStr)
	}
	if host == "" {
		return target{}, fmt.Errorf("proxy: http: authority %q: empty host", hostport)
	}
	t := target{host: host, port: uint16(p)}
	if a, err := netip.ParseAddr(host); err == nil {
		t.addr, t.host = a.Unmap(), ""
	}
	return t, nil
}

// serveHTTP serves HTTP proxy requests on c, whose first byte was already
// read. Absolute-form requests may follow one another on c (persistent
// connections, RFC 9112 section 9.3); the origin connection of the last
// one is kept for the next request to the same origin (httpConn).
func (s *Server) serveHTTP(c net.Conn, br *bufio.Reader, lr *io.LimitedReader, rt *runtimeConfig, cl *cleanup) {
	hc := &httpConn{client: idleConn{Conn: c, now: s.now}}
	lr.R = &hc.client // the header section reads through it unarmed
	defer hc.closeIdle()
	for n := 0; ; n++ {
		l := &connLog{proto: "http", client: remoteAddr(c), start: s.now()}
		rc := &cleanup{}
		keep := s.httpRequest(c, rt, br, lr, l, n, rc, hc)
		hc.client.disarm()
		if rc.detached {
			// A CONNECT tunnel: its relay finishes the request and then
			// the connection.
			reqFns := rc.fns
			rc.fns = append([]func(){func() { cl.relayed = true; cl.run() }, func() { s.finish(rt, l) }}, reqFns...)
			cl.detached = true
			close(rc.wait)
			return
		}
		if h := s.testHookResponded.Load(); h != nil {
			(*h)()
		}
		rc.run()
		if l.result != "" {
			s.finish(rt, l)
		}
		if !keep {
			return
		}
		rt = s.rt.Load()
		lr.N = int64(rt.cfg.maxHeaderBytes())
		_ = c.SetDeadline(s.now().Add(rt.cfg.idleTimeout()))
	}
}

// httpConn is the state of one client connection across its requests: at
// most one idle origin connection, so that the connection keeps to the
// budget of two descriptors.
type httpConn struct {
	idle   *originConn
	client idleConn // the client connection, armed while a request is forwarded
}

// idleConn bounds a silence, not a transfer: while armed, each Read and
// Write first moves the connection's deadline to idle from now. It does so
// at most every idle/16, so a connection is cut after a silence of between
// 15/16 of idle and idle. Unarmed, it leaves the deadline to its user (the
// handshake timeout of a request's header section, the idle wait between
// requests, the poll of an idle origin connection).
type idleConn struct {
	net.Conn
	now  func() time.Time
	idle time.Duration
	on   bool
	next time.Time
}

func (c *idleConn) arm(idle time.Duration) { c.idle, c.on, c.next = idle, true, time.Time{} }
func (c *idleConn) disarm()                { c.on = false }

func (c *idleConn) touch() {
	if !c.on {
		return
	}
	if t := c.now(); !t.Before(c.next) {
		_ = c.Conn.SetDeadline(t.Add(c.idle))
		c.next = t.Add(c.idle / 16)
	}
}

func (c *idleConn) Read(p []byte) (int, error) {
	c.touch()
	return c.Conn.Read(p)
}

func (c *idleConn) Write(p []byte) (int, error) {
	c.touch()
	return c.Conn.Write(p)
}

// originConn is an origin connection that may carry another request.
type originConn struct {
	c   net.Conn
	ic  idleConn      // c, armed while a request is forwarded
	br  *bufio.Reader // reads ic
	key originKey
}

// originKey says which requests may reuse an origin connection: the same
// configuration (guard, users), destination as the client named it, and
// the same user and egress request.
type originKey struct {
	rt      *runtimeConfig
	dst     string
	user    string
	egress  string
	session string
}

// take returns the idle origin connection if it matches key and the origin
// has not closed it (nor sent anything unasked) meanwhile; it closes an
// idle connection that does not.
func (h *httpConn) take(key originKey, now time.Time) *originConn {
	oc := h.idle
	h.idle = nil
	if oc == nil {
		return nil
	}
	if oc.key != key || !oc.quiet(now) {
		oc.c.Close()
		return nil
	}
	return oc
}

func (h *httpConn) closeIdle() {
	if h.idle != nil {
		h.idle.c.Close()
		h.idle = nil
	}
}

// quiet polls the connection: true when a read would block (nothing
// received, no FIN), false after EOF, an error or unexpected bytes.
func (oc *originConn) quiet(now time.Time) bool {
	if oc.br.Buffered() > 0 {
		return false
	}
	_ = oc.c.SetReadDeadline(now) // already passed: the read only polls
	_, err := oc.br.Peek(1)
	return isTimeout(err)
}

// httpRequest serves one request; it reports whether the connection may
// carry another.
func (s *Server) httpRequest(c net.Conn, rt *runtimeConfig, br *bufio.Reader, lr *io.LimitedReader, l *connLog, n int, rc *cleanup, hc *httpConn) bool {
	release := func() {} // the user's connection slot, once taken
	fail := func(code int, extra http.Header, result, reason string) bool {
		release() // before the client can see the answer end
		_ = c.SetWriteDeadline(s.now().Add(time.Second))
		httpError(c, code, extra, reason)
		l.result, l.reason = result, reason
		return false
	}
	req, err := readHTTPRequest(br, lr)
	if err != nil {
		if errors.Is(err, errHeaderTooLarge) {
			return fail(http.StatusRequestHeaderFieldsTooLarge, nil, resultBad, err.Error())
		}
		if n > 0 && (errors.Is(err, io.EOF) || isTimeout(err)) {
			return false // the client is done with a persistent connection
		}
		if isTimeout(err) {
			return fail(http.StatusRequestTimeout, nil, resultTimeout, "request not received within the handshake timeout")
		}
		return fail(http.StatusBadRequest, nil, resultBad, "malformed request: "+err.Error())
	}
	lr.N = math.MaxInt64 // bodies are not bounded by the header limit
	user, pass, have := proxyCredentials(req.Header)
	id, err := s.identify(rt, l.client.Addr(), user, pass, have)
	l.user = user
	if errors.Is(err, errAuth) {
		return fail(http.StatusProxyAuthRequired, http.Header{"Proxy-Authenticate": {`Basic realm="portspace"`}}, resultAuth, "proxy authentication required")
	}
	if err != nil {
		return fail(http.StatusForbidden, nil, resultRefused, err.Error())
	}
	var t target
	if req.Method == http.MethodConnect {
		if t, err = hostTarget(req.Host, 0); err != nil {
			return fail(http.StatusBadRequest, nil, resultBad, err.Error())
		}
	} else {
		if req.URL.Scheme != "http" || req.URL.Host == "" {
			if req.URL.Scheme == "" {
				return fail(http.StatusBadRequest, nil, resultBad, "a proxy request needs an absolute-form http:// target (RFC 9112 section 3.2.2)")
			}
			return fail(http.StatusNotImplemented, nil, resultUnsupported, "scheme "+req.URL.Scheme+" is not proxied; use CONNECT")
		}
		if t, err = hostTarget(req.URL.Host, 80); err != nil {
			return fail(http.StatusBadRequest, nil, resultBad, err.Error())
		}
	}
	l.dst = t
	rel, ok := s.acquire(id)
	if !ok {
		return fail(http.StatusTooManyRequests, nil, resultLimit, fmt.Sprintf("user %s is at max-connections %d", id.user.Name, id.user.MaxConnections))
	}
	if id.user != nil && id.user.MaxConnections > 0 {
		release = sync.OnceFunc(rel)
	}
	rc.add(release)
	s.metrics.activeHTTP.Inc()
	rc.add(s.metrics.activeHTTP.Dec)
	if req.Method != http.MethodConnect {
		return s.forwardRequest(c, rt, req, id, t, hc, l, fail, release)
	}
	hc.closeIdle() // the tunnel is all the connection carries from now on
	dst, f, why := s.connect(s.dialContext(rt.cfg.dialTimeout()), rt, id, t)
	if f != failNone {
		return fail(statusFor(f), nil, f.result(), why)
	}
	rc.add(func() { dst.Close() })
	l.egress = localAddr(dst)
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		l.result, l.reason = resultBad, err.Error()
		return false
	}
	_ = c.SetDeadline(time.Time{})
	if k := br.Buffered(); k > 0 {
		b, _ := br.Peek(k)
		if _, err := dst.Write(b); err != nil {
			l.result, l.reason = resultDialFailed, err.Error()
			return false
		}
		l.up += int64(k)
		s.metrics.countUp(k)
	}
	rc.detached = true
	rc.wait = make(chan struct{})
	relayAsync(c, dst, rt.cfg.idleTimeout(), s.now, s.metrics.upFn, s.metrics.downFn, s.hop, func(up, down int64, _ error) {
		<-rc.wait // serveHTTP has added the connection's cleanups
		l.up, l.down, l.result = l.up+up, down, resultOK
		rc.run()
	})
	return false
}

// forwardRequest forwards an absolute-form request in origin form with the
// hop-by-hop fields removed (RFC 9110 section 7.6.1), over the client
// connection's idle origin connection when it leads to the same origin for
// the same user and egress, else over a new one. A request that can be
// replayed (an idempotent method, RFC 9110 section 9.2.2, without a body)
// and fails on a reused connection before any response byte is sent again
// on a new connection: the origin may close an idle connection at any
// time (RFC 9112 section 9.3.1).
func (s *Server) forwardRequest(c net.Conn, rt *runtimeConfig, req *http.Request, id identity, t target, hc *httpConn, l *connLog, fail func(int, http.Header, string, string) bool, release func()) bool {
	clientClose := req.Close
	expect := prepareForward(req)
	key := originKey{rt: rt, dst: t.String(), egress: TraitsString(id.traits), session: id.session}
	if id.user != nil {
		key.user = id.user.Name
	}
	oc := hc.take(key, s.now())
	for {
		reused := oc != nil
		if oc == nil {
			dst, f, why := s.connect(s.dialContext(rt.cfg.dialTimeout()), rt, id, t)
			if f != failNone {
				return fail(statusFor(f), nil, f.result(), why)
			}
			dst = s.trackOrigin(dst)
			oc = &originConn{c: dst, ic: idleConn{Conn: dst, now: s.now}, key: key}
			oc.br = bufio.NewReader(&oc.ic)
		}
		l.egress = localAddr(oc.c)
		// The request's body and its answer may take as long as they
		// flow: both connections are cut only after an idle timeout's
		// silence (the handshake timeout bounded the header section).
		idle := rt.cfg.idleTimeout()
		hc.client.arm(idle)
		oc.ic.arm(idle)
		r := s.forward(&hc.client, rt, req, oc, reused, clientClose, expect, l, release)
		oc.ic.disarm()
		expect = false // said once
		if r.retry {
			oc.c.Close()
			oc = nil
			continue
		}
		if r.origin {
			hc.idle = oc
		} else {
			oc.c.Close()
		}
		return r.client
	}
}

// prepareForward turns a proxy request into the request to the origin:
// origin form, no hop-by-hop fields, this proxy in Via, persistent, and no
// User-Agent of Go's own when the client sent none. It reports whether the client waits
// for 100 Continue before it sends the body.
func prepareForward(req *http.Request) (expect bool) {
	removeHopByHop(req.Header)
	addVia(req.Header, req.ProtoMajor, req.ProtoMinor)
	req.RequestURI = ""
	req.Close = false
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = []string{""} // Request.Write then writes none
	}
	if req.Body != http.NoBody && strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		// The body follows the header section at once (Request.Write does
		// not wait), so the client hears 100 Continue from the proxy
		// (RFC 9110 section 10.1.1) and the origin no expectation.
		req.Header.Del("Expect")
		return true
	}
	return false
}

// replayable reports whether req may be sent again after a failure on a
// reused connection: an idempotent method (RFC 9110 section 9.2.2) and no
// body.
func replayable(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return req.Body == nil || req.Body == http.NoBody
	}
	return false
}

// forwarded is what one exchange with the origin leaves: whether the
// client and the origin connection may carry another request, and whether
// the request should be sent again on a new origin connection.
type forwarded struct{ client, origin, retry bool }

// forward sends req over oc and relays the response (and any 1xx interim
// responses before it) back to the client.
//
// The user's connection slot (release, idempotent) is given back before the
// client can see the response end: before an error response, before a
// response without a body, and for one with a body once its last bytes are
// read from the origin, before they are written (releaseAtEOF). A client
// that sends its next request on a new connection as soon as it has the
// answer so never finds its own slot still taken.
func (s *Server) forward(c net.Conn, rt *runtimeConfig, req *http.Request, oc *originConn, reused, clientClose, expect bool, l *connLog, release func()) forwarded {
	dst := &oc.ic
	canRetry := reused && replayable(req)
	if expect {
		if _, err := io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			l.result, l.reason = resultBad, err.Error()
			return forwarded{}
		}
	}
	cw := &countWriter{w: dst, count: s.metrics.countUp}
	if err := req.Write(cw); err != nil {
		l.up += cw.n
		if canRetry {
			return forwarded{retry: true}
		}
		release()
		httpError(c, http.StatusBadGateway, nil, "writing to the origin: "+err.Error())
		l.result, l.reason = resultDialFailed, err.Error()
		return forwarded{}
	}
	l.up += cw.n
	ccw := &countWriter{w: c, count: s.metrics.countDown}
	var resp *http.Response
	for {
		var err error
		resp, err = http.ReadResponse(oc.br, req)
		if err != nil {
			if canRetry && !isTimeout(err) {
				return forwarded{retry: true}
			}
			code := http.StatusBadGateway
			if isTimeout(err) {
				code = http.StatusGatewayTimeout
			}
			release()
			httpError(c, code, nil, "reading the origin's response: "+err.Error())
			l.result, l.reason = resultDialFailed, err.Error()
			return forwarded{}
		}
		canRetry = false
		if resp.StatusCode/100 != 1 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// An interim response (RFC 9110 section 15.2): forward it and read
		// on for the final one.
		removeHopByHop(resp.Header)
		addVia(resp.Header, resp.ProtoMajor, resp.ProtoMinor)
		if err := resp.Write(ccw); err != nil {
			l.down, l.result, l.reason = ccw.n, resultDialFailed, err.Error()
			return forwarded{}
		}
	}
	defer resp.Body.Close()
	originKeep := !resp.Close && resp.StatusCode != http.StatusSwitchingProtocols
	removeHopByHop(resp.Header)
	addVia(resp.Header, resp.ProtoMajor, resp.ProtoMinor)
	resp.Close = clientClose || resp.ContentLength < 0 && len(resp.TransferEncoding) == 0 && resp.ProtoAtLeast(1, 0) && !bodyless(req, resp)
	if resp.ContentLength < 0 && !resp.Close {
		resp.TransferEncoding = []string{"chunked"}
	}
	resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	if resp.Body == nil || resp.Body == http.NoBody {
		release()
	} else {
		resp.Body = &releaseAtEOF{ReadCloser: resp.Body, release: release, origin: oc.c}
	}
	err := resp.Write(ccw)
	l.down = ccw.n
	if err != nil {
		l.result, l.reason = resultDialFailed, err.Error()
		return forwarded{}
	}
	l.result = resultOK
	return forwarded{client: !resp.Close, origin: originKeep && oc.br.Buffered() == 0}
}

// releaseAtEOF calls release when a read of the body returns its end (or
// an error): Response.Write writes the bytes of that read after it, and
// the end of a chunked body after the last read.
//
// Closed before its end (the client went away, or the origin failed), it
// closes the origin connection first: the body's own Close would read the
// rest of the answer, which an origin that keeps sending never ends.
type releaseAtEOF struct {
	io.ReadCloser
	release func()
	origin  io.Closer
	eof     bool
}

func (r *releaseAtEOF) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != nil {
		r.eof = err == io.EOF
		r.release()
	}
	return n, err
}

func (r *releaseAtEOF) Close() error {
	if !r.eof {
		r.origin.Close()
	}
	return r.ReadCloser.Close()
}

func bodyless(req *http.Request, resp *http.Response) bool {
	return req.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified || resp.StatusCode/100 == 1
}

type countWriter struct {
	w     io.Writer
	n     int64
	count func(int)
}

func (w *countWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.n += int64(n)
	w.count(n)
	return n, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
