package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCurlHTTPLongTransfer: a forwarded request whose body and answer take
// longer than the handshake timeout, and whose transfer outlasts the idle
// timeout while bytes keep flowing, is relayed whole. The handshake timeout
// bounds the request's header section, and the idle timeout a silence, not
// a transfer.
func TestCurlHTTPLongTransfer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.10:0")
	if err != nil {
		t.Fatal(err)
	}
	const chunks, gap = 10, 250 * time.Millisecond // 2.5 s in all
	chunk := bytes.Repeat([]byte("x"), 1000)
	stalled := make(chan struct{})
	t.Cleanup(func() { close(stalled) })
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stall" {
			w.Header().Set("Content-Length", "2000")
			w.Write(chunk)
			w.(http.Flusher).Flush()
			<-stalled
			return
		}
		up, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Uploaded", strconv.FormatInt(up, 10))
		w.Header().Set("Content-Length", strconv.Itoa(chunks*len(chunk)))
		for range chunks {
			w.Write(chunk)
			w.(http.Flusher).Flush()
			time.Sleep(gap)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	p := startProxy(t, "timeouts: {handshake: 1s, idle: 2s}\n", nil)
	px := "http://" + p.addr.String()
	url := "http://" + ln.Addr().String() + "/"
	// An upload paced by curl at 2,000 bytes/s: 4,000 bytes take 2 s,
	// past the handshake timeout.
	body := bytes.Repeat([]byte("u"), 4000)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"download", nil, "200 10000 0"},
		{"upload", []string{"--limit-rate", "2000", "--data-binary", "@-"}, "200 10000 4000"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"-x", px, "-o", "/dev/null", "-w", "%{http_code} %{size_download} %header{x-uploaded}"}, c.args...)
			out, code := curlIn(t, body, append(args, url)...)
			if out != c.want {
				t.Errorf("curl exit %d, %q; want %q", code, out, c.want)
			}
		})
	}
	// A silent origin is still cut, by the proxy after the idle timeout
	// (curl's exit 18: the transfer closed early), not by curl's own
	// --max-time (exit 28).
	t.Run("stall", func(t *testing.T) {
		t.Parallel()
		out, code := curl(t, "-x", px, "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url+"stall")
		if code != 18 || !strings.HasSuffix(out, "200 1000") {
			t.Errorf("curl exit %d, %q; want exit 18 after 1000 bytes", code, out)
		}
	})
}

// TestHTTPClientGoneMidBody: when the client goes away in the middle of a
// forwarded answer, the proxy closes the origin connection instead of
// reading the rest of the body (Response.Body.Close drains it), which for
// an origin that keeps sending would never end while bytes flow.
func TestHTTPClientGoneMidBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.10:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := make(chan error, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(1<<40))
		b := make([]byte, 32<<10)
		for {
			if _, err := w.Write(b); err != nil {
				gone <- err
				return
			}
		}
	})}
	go srv.Serve(ln)
	p := startProxy(t, "", nil)
	// Registered after the proxy's, so run before its Shutdown: a proxy
	// that drains would otherwise hold that Shutdown for as long as the
	// origin sends.
	t.Cleanup(func() { srv.Close() })
	c, err := net.Dial("tcp", p.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET http://"+ln.Addr().String()+"/ HTTP/1.1\r\nHost: "+ln.Addr().String()+"\r\n\r\n")
	if _, err := io.ReadFull(c, make([]byte, 100<<10)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the origin is still sending 10 s after the client closed: the proxy drains the body")
	}
}

// TestShutdownSilentOrigin: Shutdown whose context ends closes the origin
// connections of forwarded HTTP requests too, so a handler waiting for an
// origin that never answers does not hold it until the idle timeout.
func TestShutdownSilentOrigin(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.10:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			got <- c // read nothing, answer nothing
		}
	}()
	cfg, err := ParseConfig("test.yaml", []byte(baseConfig+"timeouts: {idle: 10m}\n"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg, &DialerEgress{Dialer: testDialer()}, Options{Resolver: testResolver})
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(pl)
	c, err := net.Dial("tcp", pl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET http://"+ln.Addr().String()+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case oc := <-got:
		defer oc.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the origin")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want the context's deadline", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown still waits 10 s after its context ended: the handler waits for the silent origin")
	}
}
