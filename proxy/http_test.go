package proxy

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawHTTP sends raw bytes to the proxy and returns everything it answers
// before closing.
func rawHTTP(t *testing.T, p *testProxy, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", p.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, req)
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("%q: %v", req, err)
	}
	return string(b)
}

// TestHTTPBadInput: malformed requests, an origin-form target, other
// schemes, bad CONNECT authorities and an oversized header each get their
// status, and are counted.
func TestHTTPBadInput(t *testing.T) {
	p := startProxy(t, "max-header-bytes: 1024\ntimeouts: {handshake: 500ms}", nil)
	cases := []struct{ name, in, status string }{
		{"garbage", "HELLO\r\n\r\n", "400"},
		{"origin-form", "GET /x HTTP/1.1\r\nHost: 127.0.0.10\r\n\r\n", "400"},
		{"https scheme", "GET https://127.0.0.10/ HTTP/1.1\r\nHost: 127.0.0.10\r\n\r\n", "501"},
		{"connect without port", "CONNECT 127.0.0.10 HTTP/1.1\r\nHost: 127.0.0.10\r\n\r\n", "400"},
		{"connect port 0", "CONNECT 127.0.0.10:0 HTTP/1.1\r\nHost: 127.0.0.10:0\r\n\r\n", "400"},
		{"connect bad port", "CONNECT 127.0.0.10:99999 HTTP/1.1\r\n\r\n", "400"},
		{"oversized header", "GET http://127.0.0.10/ HTTP/1.1\r\nX: " + strings.Repeat("a", 2000) + "\r\n\r\n", "431"},
		{"connect to the guard", "CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n", "403"},
	}
	for _, c := range cases {
		out := rawHTTP(t, p, c.in)
		if !strings.HasPrefix(out, "HTTP/1.1 "+c.status+" ") {
			t.Errorf("%s: got %q, want status %s", c.name, firstLine(out), c.status)
		}
	}
	// A truncated request is closed within the handshake timeout.
	start := time.Now()
	out := rawHTTP(t, p, "GET http://127.0.0.10/ HTTP/1.1\r\nHost: a")
	if time.Since(start) > 3*time.Second || !strings.HasPrefix(out, "HTTP/1.1 408") {
		t.Errorf("truncated request: %q after %v", firstLine(out), time.Since(start))
	}
	p.waitCount("http", resultBad, 6)
	p.waitCount("http", resultTimeout, 1)
	p.waitCount("http", resultUnsupported, 1)
	p.waitCount("http", resultRefused, 1)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\r\n")
	return l
}

// TestHTTPForwardKeepAlive: two requests on one client connection are both
// forwarded, and the response's own hop-by-hop fields are removed.
func TestHTTPForwardKeepAlive(t *testing.T) {
	// A raw origin, so that the response carries exactly these fields.
	ln, _ := net.Listen("tcp", "127.0.0.10:0")
	defer ln.Close()
	go func() {
		for {
			oc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer oc.Close()
				req, err := http.ReadRequest(newBufReader(oc))
				if err != nil {
					return
				}
				body := "body " + req.URL.Path
				io.WriteString(oc, "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-End: kept\r\nContent-Length: "+itoa(uint16(len(body)))+"\r\n\r\n"+body)
			}()
		}
	}()
	p := startProxy(t, "", nil)
	c, err := net.Dial("tcp", p.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := newBufReader(c)
	for _, path := range []string{"/a", "/b"} {
		io.WriteString(c, "GET http://"+ln.Addr().String()+path+" HTTP/1.1\r\nHost: "+ln.Addr().String()+"\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "body "+path {
			t.Errorf("%s: body %q", path, b)
		}
		if resp.Header.Get("X-Hop") != "" || resp.Header.Get("Keep-Alive") != "" || resp.Header.Get("X-End") != "kept" {
			t.Errorf("%s: response header %v: want X-Hop removed and X-End kept", path, resp.Header)
		}
	}
}
