package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// countingOrigin is an HTTP origin that records, per request, the path,
// the connection it came on (the proxy's source address) and the header;
// and counts the connections it accepted.
type countingOrigin struct {
	addr netip.AddrPort
	mu   sync.Mutex
	reqs []seenRequest
	news int
}

type seenRequest struct {
	path, from string
	header     http.Header
	body       string
}

func startCountingOrigin(t *testing.T, ip string) *countingOrigin {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	o := &countingOrigin{addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			o.mu.Lock()
			o.reqs = append(o.reqs, seenRequest{path: r.URL.Path, from: r.RemoteAddr, header: r.Header.Clone(), body: string(b)})
			o.mu.Unlock()
			fmt.Fprintf(w, "%s %s %s\n", o.addr, r.URL.Path, b)
		}),
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				o.mu.Lock()
				o.news++
				o.mu.Unlock()
			}
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return o
}

func (o *countingOrigin) seen() ([]seenRequest, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]seenRequest(nil), o.reqs...), o.news
}

// TestCurlHTTPReuse: curl fetching four URLs in one invocation keeps one
// connection to the proxy, and the proxy keeps the origin connection of a
// request for the next request to the same origin: /a and /b share one
// connection to the first origin; /c goes to the second origin, whose
// connection replaces the idle one (one idle origin connection per client
// connection), so /d opens a second connection to the first origin.
func TestCurlHTTPReuse(t *testing.T) {
	o1 := startCountingOrigin(t, "127.0.0.10")
	o2 := startCountingOrigin(t, "127.0.0.11")
	p := startProxy(t, "", nil)
	u := func(o *countingOrigin, path string) string { return fmt.Sprintf("http://%s%s", o.addr, path) }
	out, code := curl(t, "-x", "http://"+p.addr.String(), "-w", "connects=%{num_connects}\n",
		u(o1, "/a"), u(o1, "/b"), u(o2, "/c"), u(o1, "/d"))
	if code != 0 {
		t.Fatalf("curl: exit %d: %s", code, out)
	}
	want := fmt.Sprintf("%s /a \nconnects=1\n%s /b \nconnects=0\n%s /c \nconnects=0\n%s /d \nconnects=0\n", o1.addr, o1.addr, o2.addr, o1.addr)
	if out != want {
		t.Fatalf("curl printed\n%s\nwant (one proxy connection for all four)\n%s", out, want)
	}
	r1, news1 := o1.seen()
	r2, news2 := o2.seen()
	if len(r1) != 3 || len(r2) != 1 {
		t.Fatalf("origins saw %d and %d requests, want 3 and 1", len(r1), len(r2))
	}
	if r1[0].from != r1[1].from {
		t.Errorf("/a came from %s and /b from %s: the origin connection was not reused", r1[0].from, r1[1].from)
	}
	if r1[2].from == r1[0].from {
		t.Errorf("/d came on the connection of /a although /c took the idle slot")
	}
	if news1 != 2 || news2 != 1 {
		t.Errorf("origins accepted %d and %d connections, want 2 and 1", news1, news2)
	}
	for _, r := range append(r1, r2...) {
		for _, f := range []string{"Proxy-Connection", "Connection", "Keep-Alive", "User-Agent"} {
			if f == "User-Agent" {
				if v := r.header.Get(f); !strings.HasPrefix(v, "curl/") {
					t.Errorf("%s: User-Agent %q, want curl's", r.path, v)
				}
				continue
			}
			if v := r.header.Get(f); v != "" {
				t.Errorf("%s: the origin got hop-by-hop %s: %q", r.path, f, v)
			}
		}
	}
	p.waitCount("http", resultOK, 4)
}

// exchange writes a raw request on c and reads the final response (and
// any interim ones first).
func exchange(t *testing.T, c net.Conn, br *bufio.Reader, req string) (*http.Response, string, []int) {
	t.Helper()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	var interim []int
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("after %q: %v", firstLine(req), err)
		}
		if resp.StatusCode/100 == 1 {
			interim = append(interim, resp.StatusCode)
			continue
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(b), interim
	}
}

func dialProxy(t *testing.T, p *testProxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, bufio.NewReader(c)
}

// TestHTTPForwardHopByHopPersistent: on one client connection carrying
// two requests over one origin connection, each request loses the fixed
// hop-by-hop fields and the fields its own Connection field lists (RFC
// 9110 section 7.6.1), and nothing else: a field the first request listed
// reaches the origin when the second does not list it.
func TestHTTPForwardHopByHopPersistent(t *testing.T) {
	o := startCountingOrigin(t, "127.0.0.10")
	p := startProxy(t, "", nil)
	c, br := dialProxy(t, p)
	host := o.addr.String()
	exchange(t, c, br, "GET http://"+host+"/1 HTTP/1.1\r\nHost: "+host+"\r\nConnection: X-A, keep-alive\r\nX-A: 1\r\n"+
		"Proxy-Connection: keep-alive\r\nKeep-Alive: 300\r\nUpgrade: h2c\r\nTE: trailers\r\nTrailer: X-T\r\nX-E2E: one\r\n\r\n")
	exchange(t, c, br, "GET http://"+host+"/2 HTTP/1.1\r\nHost: "+host+"\r\nConnection: X-B\r\nX-A: kept\r\nX-B: 2\r\n\r\n")
	reqs, news := o.seen()
	if len(reqs) != 2 || news != 1 || reqs[0].from != reqs[1].from {
		t.Fatalf("origin saw %d requests on %d connections (%v), want 2 on one", len(reqs), news, reqs)
	}
	h1, h2 := reqs[0].header, reqs[1].header
	for _, f := range []string{"Connection", "X-A", "Proxy-Connection", "Keep-Alive", "Upgrade", "Te", "Trailer", "User-Agent"} {
		if v, ok := h1[f]; ok {
			t.Errorf("request 1: the origin got %s: %q", f, v)
		}
	}
	if h1.Get("X-E2E") != "one" {
		t.Errorf("request 1: end-to-end X-E2E lost: %v", h1)
	}
	if h2.Get("X-A") != "kept" || h2.Get("X-B") != "" || h2.Get("Connection") != "" {
		t.Errorf("request 2: header %v, want X-A kept and X-B, Connection removed", h2)
	}
}

// rawOrigin serves each connection with serve (n counts connections).
func rawOrigin(t *testing.T, serve func(c net.Conn, br *bufio.Reader, n int)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.10:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				serve(c, bufio.NewReader(c), n)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func okResponse(c net.Conn, extra, body string) {
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s", extra, len(body), body)
}

// TestHTTPForwardOriginCloses: an origin that drops a kept connection
// when the next request arrives (the race RFC 9112 section 9.3.1 allows)
// costs a GET nothing: it is sent again on a new connection; a POST with a
// body is not replayed (502). An origin that answers Connection: close is
// not reused, and the client connection stays open all the same.
func TestHTTPForwardOriginCloses(t *testing.T) {
	var mu sync.Mutex
	var got []string
	dst := rawOrigin(t, func(c net.Conn, br *bufio.Reader, n int) {
		for i := 0; ; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			b, _ := io.ReadAll(req.Body)
			mu.Lock()
			got = append(got, fmt.Sprintf("%d:%s %s%s", n, req.Method, req.URL.Path, b))
			mu.Unlock()
			switch {
			case i > 0:
				return // drop the kept connection with the request unanswered
			case req.URL.Path == "/close":
				// Says close but keeps reading: a proxy that honours
				// the field never sends on this connection again.
				okResponse(c, "Connection: close\r\n", "closing")
			default:
				okResponse(c, "", "ok "+req.URL.Path)
			}
		}
	})
	p := startProxy(t, "", nil)
	c, br := dialProxy(t, p)
	host := dst.String()
	get := func(path string) (int, string) {
		resp, body, _ := exchange(t, c, br, "GET http://"+host+path+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		if resp.Close {
			t.Errorf("GET %s: the proxy closes the client connection", path)
		}
		return resp.StatusCode, body
	}
	if code, body := get("/1"); code != 200 || body != "ok /1" {
		t.Fatalf("GET /1: %d %q", code, body)
	}
	if code, body := get("/2"); code != 200 || body != "ok /2" {
		t.Fatalf("GET /2 after the origin dropped the kept connection: %d %q, want it sent again", code, body)
	}
	resp, body, _ := exchange(t, c, br, "POST http://"+host+"/p HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 4\r\n\r\nbody")
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("POST on a dropped kept connection: %d %q, want 502 (not replayed)", resp.StatusCode, body)
	}
	c, br = dialProxy(t, p)
	if code, body := get("/close"); code != 200 || body != "closing" {
		t.Fatalf("GET /close: %d %q", code, body)
	}
	if code, body := get("/3"); code != 200 || body != "ok /3" {
		t.Fatalf("GET /3 after Connection: close from the origin: %d %q", code, body)
	}
	mu.Lock()
	defer mu.Unlock()
	want := "0:GET /1 0:GET /2 1:GET /2 1:POST /pbody 2:GET /close 3:GET /3"
	if s := strings.Join(got, " "); s != want {
		t.Errorf("origin saw %q, want %q", s, want)
	}
}

// TestHTTPForwardInterim: a client that sends Expect: 100-continue hears
// 100 Continue from the proxy before it sends the body (the origin gets no
// expectation), and interim responses from the origin (103) are forwarded
// before the final one on a connection that then carries another request.
func TestHTTPForwardInterim(t *testing.T) {
	o := startCountingOrigin(t, "127.0.0.10")
	p := startProxy(t, "", nil)
	c, br := dialProxy(t, p)
	host := o.addr.String()
	io.WriteString(c, "POST http://"+host+"/up HTTP/1.1\r\nHost: "+host+"\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusContinue {
		t.Fatalf("before the body: %v %v, want 100 Continue", resp, err)
	}
	io.WriteString(c, "hello")
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after the body: %v %v", resp, err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != host+" /up hello\n" {
		t.Errorf("body %q", b)
	}
	reqs, _ := o.seen()
	if len(reqs) != 1 || reqs[0].header.Get("Expect") != "" || reqs[0].body != "hello" {
		t.Errorf("origin saw %v, want the body and no Expect", reqs)
	}

	dst := rawOrigin(t, func(c net.Conn, br *bufio.Reader, _ int) {
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
			okResponse(c, "", "final")
		}
	})
	for i := range 2 {
		resp, body, interim := exchange(t, c, br, "GET http://"+dst.String()+"/ HTTP/1.1\r\nHost: "+dst.String()+"\r\n\r\n")
		if resp.StatusCode != 200 || body != "final" || len(interim) != 1 || interim[0] != 103 {
			t.Fatalf("request %d: %d %q after interim %v, want 103 then 200 final", i, resp.StatusCode, body, interim)
		}
	}
}
