package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portspace/portspace/dial"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// mapResolver resolves names from a fixed table, so that tests never ask
// the system resolver (the brief forbids DNS off the machine).
type mapResolver map[string][]netip.Addr

func (m mapResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := m[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

var testResolver = mapResolver{
	"origin.test":  {netip.MustParseAddr("127.0.0.10")},
	"private.test": {netip.MustParseAddr("10.1.2.3")},
	"rebind.test":  {netip.MustParseAddr("127.0.0.1")},
}

// baseConfig is prefixed to every test configuration: loopback origins in
// 127.0.0.10/31 are allowed, the rest of loopback is not.
const baseConfig = `
destinations:
  allow: [127.0.0.10/31, "::1"]
`

type testProxy struct {
	t    *testing.T
	srv  *Server
	addr netip.AddrPort
}

func startProxy(t *testing.T, yaml string, egress Egress) *testProxy {
	t.Helper()
	cfg, err := ParseConfig("test.yaml", []byte(baseConfig+yaml))
	if err != nil {
		t.Fatal(err)
	}
	if egress == nil {
		egress = &DialerEgress{Dialer: &dial.Dialer{}}
	}
	srv, err := NewServer(cfg, egress, Options{Resolver: testResolver})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return &testProxy{t: t, srv: srv, addr: ln.Addr().(*net.TCPAddr).AddrPort()}
}

func (p *testProxy) count(proto, result string) float64 {
	return testutil.ToFloat64(p.srv.metrics.Connections.WithLabelValues(proto, result))
}

// waitCount waits (bounded) for a connection counter to reach want: the
// server counts a connection when its goroutine finishes, just after the
// client saw the reply.
func (p *testProxy) waitCount(proto, result string, want float64) {
	p.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.count(proto, result) < want {
		if time.Now().After(deadline) {
			p.t.Fatalf("connections_total{protocol=%s,result=%s} = %v, want %v", proto, result, p.count(proto, result), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// origin is an HTTP server on a loopback address that answers with the
// client's address and records the headers it got.
type origin struct {
	addr netip.AddrPort
	mu   sync.Mutex
	last http.Header
	srv  *http.Server
}

func startOrigin(t *testing.T, ip string) *origin {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	o := &origin{addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	o.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		o.last = r.Header.Clone()
		o.mu.Unlock()
		fmt.Fprintf(w, "hello from %s to %s path %s", o.addr, r.RemoteAddr, r.URL.Path)
	})}
	go o.srv.Serve(ln)
	t.Cleanup(func() { o.srv.Close() })
	return o
}

func (o *origin) lastHeader() http.Header {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.last
}

// echoServer is a TCP echo server; it half-closes when the client does.
func echoServer(t *testing.T, ip string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// A plain buffer loop: io.Copy would splice through a pipe
				// and add descriptors that the descriptor count would see.
				b := make([]byte, 32<<10)
				for {
					n, err := c.Read(b)
					if n > 0 {
						c.Write(b[:n])
					}
					if err != nil {
						break
					}
				}
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// socksDial runs a raw SOCKS5 handshake and returns the reply code and
// bound address; the connection is left open on success.
func socksDial(t *testing.T, proxy netip.AddrPort, user, pass string, cmd byte, dst []byte) (net.Conn, byte, netip.AddrPort, error) {
	t.Helper()
	c, err := net.Dial("tcp", proxy.String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	if user != "" {
		c.Write([]byte{5, 1, 2})
	} else {
		c.Write([]byte{5, 1, 0})
	}
	var sel [2]byte
	if _, err := io.ReadFull(br, sel[:]); err != nil {
		c.Close()
		return nil, 0, netip.AddrPort{}, err
	}
	if sel[1] == 0xff {
		c.Close()
		return nil, 0xff, netip.AddrPort{}, errors.New("no acceptable method")
	}
	if sel[1] == 2 {
		m := []byte{1, byte(len(user))}
		m = append(m, user...)
		m = append(m, byte(len(pass)))
		m = append(m, pass...)
		c.Write(m)
		var st [2]byte
		if _, err := io.ReadFull(br, st[:]); err != nil {
			c.Close()
			return nil, 0, netip.AddrPort{}, err
		}
		if st[1] != 0 {
			c.Close()
			return nil, 0xfe, netip.AddrPort{}, errors.New("auth failed")
		}
	}
	c.Write(append([]byte{5, cmd, 0}, dst...))
	var hdr [4]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		c.Close()
		return nil, 0, netip.AddrPort{}, err
	}
	t2, err := readAddr(br, hdr[3])
	if err != nil {
		c.Close()
		return nil, 0, netip.AddrPort{}, err
	}
	if hdr[1] != 0 {
		c.Close()
		return nil, hdr[1], netip.AddrPort{}, nil
	}
	c.SetDeadline(time.Time{})
	return c, 0, netip.AddrPortFrom(t2.addr, t2.port), nil
}

func addrBytes(ap netip.AddrPort) []byte {
	return appendAddr(nil, ap)
}

func domainBytes(host string, port uint16) []byte {
	b := []byte{atypDomain, byte(len(host))}
	b = append(b, host...)
	return append(b, byte(port>>8), byte(port))
}

func mustContain(t *testing.T, got, want string) {
	t.Helper()
	if !strings.Contains(got, want) {
		t.Fatalf("got %q, want it to contain %q", got, want)
	}
}

func newBufReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func testDialer() *dial.Dialer { return &dial.Dialer{} }

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
