package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/dial"
	"github.com/portspace/portspace/tuple"
	xproxy "golang.org/x/net/proxy"
)

// TestXNetProxyClient dials through the proxy with golang.org/x/net/proxy
// (IPv4, a name, and IPv6) and echoes data, including a half-close.
func TestXNetProxyClient(t *testing.T) {
	p := startProxy(t, "users: [{name: alice, password: secret}]", nil)
	echo := echoServer(t, "127.0.0.10")
	d, err := xproxy.SOCKS5("tcp", p.addr.String(), &xproxy.Auth{User: "alice", Password: "secret"}, xproxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	targets := []string{echo.String(), fmt.Sprintf("origin.test:%d", echo.Port())}
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close()
		targets = append(targets, echoServer(t, "::1").String())
	}
	for _, dst := range targets {
		c, err := d.Dial("tcp", dst)
		if err != nil {
			t.Fatalf("dial %s: %v", dst, err)
		}
		msg := strings.Repeat("x", 100000)
		go func() {
			io.WriteString(c, msg)
			c.(*net.TCPConn).CloseWrite()
		}()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c) // ends only if the proxy passed both FINs on
		if err != nil || string(got) != msg {
			t.Fatalf("%s: echo got %d bytes, err %v", dst, len(got), err)
		}
		c.Close()
	}
}

// TestSOCKSReplyCodes checks the RFC 1928 section 6 reply for each failure
// and the counters that record them.
func TestSOCKSReplyCodes(t *testing.T) {
	echo := echoServer(t, "127.0.0.10")
	closed, _ := net.Listen("tcp", "127.0.0.11:0")
	refusedAddr := closed.Addr().(*net.TCPAddr).AddrPort()
	closed.Close()
	p := startProxy(t, "", &DialerEgress{Dialer: &dial.Dialer{}, Traits: map[string]string{"geo": "de"}})
	cases := []struct {
		name string
		cmd  byte
		dst  []byte
		rep  byte
	}{
		{"connect ok", cmdConnect, addrBytes(echo), RepSucceeded},
		{"connect by name", cmdConnect, domainBytes("origin.test", echo.Port()), RepSucceeded},
		{"bind", cmdBind, addrBytes(echo), RepCmdNotSupported},
		{"unknown command", 0x09, addrBytes(echo), RepCmdNotSupported},
		{"guard: loopback", cmdConnect, addrBytes(netip.MustParseAddrPort("127.0.0.1:80")), RepNotAllowed},
		{"guard: private", cmdConnect, addrBytes(netip.MustParseAddrPort("192.168.1.1:80")), RepNotAllowed},
		{"guard: name resolving to private", cmdConnect, domainBytes("private.test", 80), RepNotAllowed},
		{"guard: v4-mapped loopback", cmdConnect, addrBytes(netip.MustParseAddrPort("[::ffff:127.0.0.1]:80")), RepNotAllowed},
		{"refused", cmdConnect, addrBytes(refusedAddr), RepRefused},
		{"unknown name", cmdConnect, domainBytes("nx.test", 80), RepHostUnreachable},
	}
	for _, c := range cases {
		conn, rep, bnd, err := socksDial(t, p.addr, "", "", c.cmd, c.dst)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if rep != c.rep {
			t.Errorf("%s: reply %d, want %d", c.name, rep, c.rep)
		}
		if conn != nil {
			if !bnd.Addr().IsLoopback() || bnd.Port() == 0 {
				t.Errorf("%s: BND %v, want the egress loopback address and port", c.name, bnd)
			}
			conn.Close()
		}
	}
	// An unknown address type cannot be parsed past, so it is answered at
	// once with X'08'.
	conn, rep, _, err := socksDial(t, p.addr, "", "", cmdConnect, []byte{0x05, 1, 2, 3, 4, 0, 80})
	if err != nil || rep != RepAddrNotSupported || conn != nil {
		t.Errorf("atyp 5: reply %d err %v, want %d", rep, err, RepAddrNotSupported)
	}
	p.waitCount("socks5", resultUnsupported, 3)
	p.waitCount("socks5", resultRefused, 4)
	p.waitCount("socks5", resultOK, 2)
}

// TestSOCKSExhaustion: a one-port egress carries one connection to a
// destination; the next gets X'01' and is counted as exhausted, and the
// HTTP path answers 503.
func TestSOCKSExhaustion(t *testing.T) {
	echo := echoServer(t, "127.0.0.10")
	d := &dial.Dialer{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ports: tuple.PortSetOf(tuple.SinglePort(21311)), Strategy: dial.Search}
	p := startProxy(t, "", &DialerEgress{Dialer: d})
	c1, rep, bnd, err := socksDial(t, p.addr, "", "", cmdConnect, addrBytes(echo))
	if err != nil || rep != 0 {
		t.Fatalf("first: rep %d err %v", rep, err)
	}
	defer c1.Close()
	if bnd.Port() != 21311 {
		t.Errorf("BND %v, want port 21311 (the egress port)", bnd)
	}
	_, rep, _, err = socksDial(t, p.addr, "", "", cmdConnect, addrBytes(echo))
	if err != nil || rep != RepGeneralFailure {
		t.Fatalf("second: rep %d err %v, want X'01'", rep, err)
	}
	out, _ := curl(t, "-x", "http://"+p.addr.String(), "-o", "/dev/null", "-w", "%{http_code}", "http://"+echo.String()+"/")
	if out != "503" {
		t.Errorf("HTTP while exhausted: %q, want 503", out)
	}
	p.waitCount("socks5", resultExhausted, 1)
	p.waitCount("http", resultExhausted, 1)
}

// TestSOCKSBadInput sends malformed, truncated and oversized handshakes;
// each gets the protocol's reply or a close within the handshake timeout,
// never a hang, and is counted.
func TestSOCKSBadInput(t *testing.T) {
	p := startProxy(t, "timeouts: {handshake: 300ms}\nusers: [{name: alice, password: secret}]", nil)
	cases := []struct {
		name string
		in   []byte
		want []byte // the reply expected before the close
	}{
		{"greeting without methods", []byte{5, 0}, nil},
		{"no acceptable method", []byte{5, 1, 0}, []byte{5, 0xff}},
		{"truncated greeting", []byte{5, 3, 0}, nil},
		{"bad auth version", []byte{5, 1, 2, 9, 1, 'a', 1, 'b'}, []byte{5, 2, 1, 1}},
		// The sub-negotiation times out: RFC 1929's failure status.
		{"truncated auth", []byte{5, 1, 2, 1, 5, 'a'}, []byte{5, 2, 1, 1}},
		{"wrong password", []byte{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 1, 'x'}, []byte{5, 2, 1, 1}},
		{"bad request version", append([]byte{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 6, 's', 'e', 'c', 'r', 'e', 't'}, 4, 1, 0, 1, 1, 2, 3, 4, 0, 80), []byte{5, 2, 1, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"truncated request", append([]byte{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 6, 's', 'e', 'c', 'r', 'e', 't'}, 5, 1, 0, 3, 200, 'a'), []byte{5, 2, 1, 0}},
	}
	for _, c := range cases {
		conn, err := net.Dial("tcp", p.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(c.in)
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		start := time.Now()
		got, err := io.ReadAll(conn)
		if err != nil {
			t.Errorf("%s: not closed by the proxy: %v", c.name, err)
		}
		if string(got) != string(c.want) {
			t.Errorf("%s: got % x, want % x", c.name, got, c.want)
		}
		if time.Since(start) > 2*time.Second {
			t.Errorf("%s: closed after %v, past the 300ms handshake timeout", c.name, time.Since(start))
		}
		conn.Close()
	}
	p.waitCount("socks5", resultBad, 5)
	p.waitCount("socks5", resultAuth, 2)
}

// TestUserLimit: max-connections bounds a user's concurrent connections.
func TestUserLimit(t *testing.T) {
	echo := echoServer(t, "127.0.0.10")
	p := startProxy(t, "users: [{name: alice, password: secret, max-connections: 2}]", nil)
	var open []net.Conn
	for i := range 3 {
		c, rep, _, err := socksDial(t, p.addr, "alice", "secret", cmdConnect, addrBytes(echo))
		if err != nil {
			t.Fatal(err)
		}
		if want := byte(0); i == 2 {
			if rep != RepNotAllowed {
				t.Fatalf("third connection: reply %d, want X'02'", rep)
			}
		} else if rep != want {
			t.Fatalf("connection %d: reply %d", i, rep)
		} else {
			open = append(open, c)
		}
	}
	open[0].Close()
	p.waitCount("socks5", resultOK, 1)
	c, rep, _, _ := socksDial(t, p.addr, "alice", "secret", cmdConnect, addrBytes(echo))
	if rep != 0 {
		t.Fatalf("after a close: reply %d, want success", rep)
	}
	c.Close()
	open[1].Close()
	p.waitCount("socks5", resultLimit, 1)
}

// TestReloadKeepsConnections: a reload that removes the user keeps the
// user's open tunnel and refuses new connections; a bad configuration is
// refused and leaves the old one running.
func TestReloadKeepsConnections(t *testing.T) {
	echo := echoServer(t, "127.0.0.10")
	p := startProxy(t, "users: [{name: alice, password: secret}]", nil)
	c, rep, _, err := socksDial(t, p.addr, "alice", "secret", cmdConnect, addrBytes(echo))
	if err != nil || rep != 0 {
		t.Fatal(rep, err)
	}
	defer c.Close()
	if err := p.srv.Reload(&Config{Users: []User{{Name: "alice", Password: "secret", Traits: map[string]string{"geo": "xx"}}}, file: "bad.yaml"}); err == nil {
		t.Fatal("a configuration with a trait no egress offers was accepted")
	}
	cfg, err := ParseConfig("new.yaml", []byte(baseConfig+"users: [{name: bob, password: pw}]"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("still here"))
	var b [10]byte
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadFull(c, b[:]); err != nil || string(b[:]) != "still here" {
		t.Fatalf("tunnel after reload: %q %v", b, err)
	}
	if _, rep, _, _ := socksDial(t, p.addr, "alice", "secret", cmdConnect, addrBytes(echo)); rep != 0xfe {
		t.Errorf("alice after the reload removed her: %d, want an auth failure", rep)
	}
	c2, rep, _, _ := socksDial(t, p.addr, "bob", "pw", cmdConnect, addrBytes(echo))
	if rep != 0 {
		t.Errorf("bob after the reload: reply %d", rep)
	} else {
		c2.Close()
	}
}

// TestShutdownDrains: Shutdown waits for a tunnel until its context ends,
// then closes it.
func TestShutdownDrains(t *testing.T) {
	echo := echoServer(t, "127.0.0.10")
	p := startProxy(t, "", nil)
	c, rep, _, err := socksDial(t, p.addr, "", "", cmdConnect, addrBytes(echo))
	if err != nil || rep != 0 {
		t.Fatal(rep, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := p.srv.Shutdown(ctx); err == nil {
		t.Error("Shutdown returned nil while a tunnel was open past its deadline")
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("tunnel after Shutdown: %v, want EOF", err)
	}
	if _, err := net.Dial("tcp", p.addr.String()); err == nil {
		t.Error("listener still accepts after Shutdown")
	}
}

// TestSOCKSHandshakePieces: a client without authentication gets its
// tunnel however its greeting and request arrive: pipelined in one write
// (with data after them), back to back without waiting for the method
// selection, or byte by byte. The handshake reads them in one RawRead that
// waits without a read after the selection (sniff); a wait that missed
// bytes already there would end at the handshake timeout instead.
func TestSOCKSHandshakePieces(t *testing.T) {
	echo := echoServer(t, "127.0.0.10")
	p := startProxy(t, "timeouts: {handshake: 3s}", nil)
	greet := []byte{5, 1, 0}
	req := append([]byte{5, 1, 0}, addrBytes(echo)...)
	name := append([]byte{5, 1, 0}, domainBytes("origin.test", echo.Port())...)
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	cases := []struct {
		name   string
		pieces [][]byte // written with a pause between them
		wait   bool     // read the method selection once the greeting is sent
	}{
		{"pipelined with data", [][]byte{cat(greet, req, []byte("ping"))}, false},
		{"pipelined", [][]byte{cat(greet, req)}, false},
		{"back to back", [][]byte{greet, req}, false},
		{"request split", [][]byte{greet, req[:3], req[3:5], req[5:]}, true},
		{"byte by byte", func() (out [][]byte) {
			for _, b := range cat(greet, name) {
				out = append(out, []byte{b})
			}
			return out
		}(), false},
		{"greeting split, then a name", [][]byte{greet[:1], greet[1:], name}, true},
	}
	for _, c := range cases {
		conn, err := net.Dial("tcp", p.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		got := make([]byte, 0, 16)
		var b [16]byte
		sent := 0
		for i, pc := range c.pieces {
			if i > 0 {
				time.Sleep(5 * time.Millisecond)
			}
			conn.Write(pc)
			if sent += len(pc); c.wait && sent == len(greet) {
				if _, err := io.ReadFull(conn, b[:2]); err != nil || b[1] != 0 {
					t.Fatalf("%s: method selection % x: %v", c.name, b[:2], err)
				}
				got = append(got, b[:2]...)
			}
		}
		want := 2 + 10 // the selection and a reply with an IPv4 BND.ADDR
		if _, err := io.ReadFull(conn, b[:want-len(got)]); err != nil {
			t.Fatalf("%s: reply: %v (after %v)", c.name, err, time.Since(start))
		}
		got = append(got, b[:want-len(got)]...)
		if got[0] != 5 || got[1] != 0 || got[2] != 5 || got[3] != RepSucceeded {
			t.Fatalf("%s: got % x, want the selection X'05 00' and success", c.name, got)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("%s: tunnel set up after %v (the handshake timeout is 3s)", c.name, el)
		}
		if !bytes.Contains(c.pieces[0], []byte("ping")) {
			conn.Write([]byte("ping"))
		}
		if _, err := io.ReadFull(conn, b[:4]); err != nil || string(b[:4]) != "ping" {
			t.Errorf("%s: echo %q, %v", c.name, b[:4], err)
		}
		conn.Close()
	}
}

// TestSOCKSNoAcceptableMethod: with no users configured, a greeting that
// does not offer X'00' gets X'05 FF' alone (sniff must not answer it with
// X'05 00' first).
func TestSOCKSNoAcceptableMethod(t *testing.T) {
	p := startProxy(t, "timeouts: {handshake: 3s}", nil)
	conn, err := net.Dial("tcp", p.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	conn.Write([]byte{5, 1, methodUserPass})
	got, _ := io.ReadAll(conn)
	if !bytes.Equal(got, []byte{5, methodNoAccept}) {
		t.Fatalf("answer % x, want 05 ff alone", got)
	}
}
