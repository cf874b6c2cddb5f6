package dial

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"

	"golang.org/x/net/proxy"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
)

// The Dialer drops into x/net/proxy and http.Transport.
var (
	_ proxy.ContextDialer = (*Dialer)(nil)
	_ proxy.Dialer        = (*Dialer)(nil)
)

// TestHTTPTransport runs real HTTP requests over loopback through a Dialer
// plugged into http.Transport.DialContext, and checks on the server side that
// the requests came from the Dialer's source and port set.
func TestHTTPTransport(t *testing.T) {
	src := netip.MustParseAddr("127.0.0.1")
	ports := tuple.MustParsePortSet("61000-61999") // outside the default ephemeral range: Search
	seen := make(chan netip.AddrPort, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- netip.MustParseAddrPort(r.RemoteAddr)
		io.WriteString(w, "hello")
	}))
	defer srv.Close()
	for _, strat := range []Strategy{Auto, Search} {
		d := &Dialer{Sources: []netip.Addr{src}, Ports: ports, Strategy: strat}
		var pd proxy.ContextDialer = d
		tr := &http.Transport{DialContext: pd.DialContext, DisableKeepAlives: true}
		cl := &http.Client{Transport: tr}
		for range 3 {
			resp, err := cl.Get(srv.URL)
			if err != nil {
				t.Fatalf("%v: GET: %v", strat, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "hello" {
				t.Fatalf("%v: body %q", strat, body)
			}
			from := <-seen
			if from.Addr() != src || !ports.Contains(from.Port()) {
				t.Fatalf("%v: request came from %v, want %v with a port in %v", strat, from, src, ports)
			}
		}
		tr.CloseIdleConnections()
	}
}

// TestPlainLoopbackKernel dials with a zero Dialer (the kernel chooses
// everything), as net.Dialer would, and gets a plain *net.TCPConn. It needs
// no root.
func TestPlainLoopbackKernel(t *testing.T) {
	dst := holdListener(t, "tcp4", "127.0.0.1:0")
	var d Dialer
	c, err := d.DialContext(context.Background(), "tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*net.TCPConn); !ok {
		t.Fatalf("conn is %T, want *net.TCPConn", c)
	}
}

// TestResolveName checks that names resolve as with net.Dialer. It runs in
// its own namespace: "localhost" comes from /etc/hosts, and should a host
// lack that entry, the DNS query cannot leave a namespace with only lo.
func TestResolveName(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	dst := holdListener(t, "tcp4", "127.0.0.1:0")
	var d Dialer
	c, err := d.Dial("tcp4", net.JoinHostPort("localhost", strconv.Itoa(int(dst.Port()))))
	if err != nil {
		t.Fatalf("dial localhost: %v", err)
	}
	defer c.Close()
	if got := fourTuple(c)[1]; got != dst {
		t.Fatalf("localhost dialed %v", got)
	}
}

// TestSearchWithoutSources dials with a port set but no source: TCP binds
// the wildcard address, UDP asks the kernel for the route's source.
func TestSearchWithoutSources(t *testing.T) {
	ports := tuple.MustParsePortSet("61010-61019")
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	sink, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	d := &Dialer{Ports: ports, Strategy: Search}
	for _, tc := range []struct{ network, addr string }{{"tcp", ln.Addr().String()}, {"udp", sink.LocalAddr().String()}} {
		c, err := d.Dial(tc.network, tc.addr)
		if err != nil {
			t.Fatalf("%s: %v", tc.network, err)
		}
		ft := fourTuple(c)
		c.Close()
		if !ft[0].Addr().IsLoopback() || !ports.Contains(ft[0].Port()) {
			t.Fatalf("%s: local end %v, want loopback with a port in %v", tc.network, ft[0], ports)
		}
	}
}
