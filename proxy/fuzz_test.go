package proxy

import (
	"bufio"
	"bytes"
	"io"
	"testing"
)

// FuzzSOCKSHandshake feeds arbitrary bytes to the SOCKS5 parsers in the
// order a server reads them: greeting, RFC 1929 sub-negotiation, request.
// They must return an error or a value, never panic; a request that is
// refused must carry an RFC 1928 reply code.
func FuzzSOCKSHandshake(f *testing.F) {
	f.Add([]byte{1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80})
	f.Add([]byte{1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 1, 'x', 5, 1, 0, 3, 4, 'h', 'o', 's', 't', 0, 80})
	f.Add([]byte{1, 0, 5, 3, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0})
	f.Add([]byte{1, 0, 5, 2, 0, 9})
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		var buf [255]byte
		if _, err := readGreeting(r, &buf); err != nil {
			return
		}
		readUserPass(bytes.NewReader(b))
		req, err := readSOCKSRequest(r)
		if se, ok := err.(*socksError); ok && (se.rep == 0 || se.rep > RepAddrNotSupported) {
			t.Fatalf("refusal with reply code %d", se.rep)
		}
		if err == nil && req.cmd != cmdConnect && req.cmd != cmdUDP {
			t.Fatalf("command %d accepted", req.cmd)
		}
	})
}

// FuzzUDPHeader parses RFC 1928 section 7 headers; a parsed header never
// claims more bytes than the datagram has.
func FuzzUDPHeader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 127, 0, 0, 1, 0, 53, 'x'})
	f.Add([]byte{0, 0, 0, 3, 1, '0', 0, 0})
	f.Add([]byte{0, 0, 1, 4})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseUDPHeader(b)
		if err == nil && (h.n > len(b) || h.n < 7) {
			t.Fatalf("header length %d of a %d-byte datagram", h.n, len(b))
		}
	})
}

// FuzzHTTPRequest reads arbitrary bytes as a proxy request with the header
// bound, then parses its authority the way the proxy does.
func FuzzHTTPRequest(f *testing.F) {
	f.Add([]byte("CONNECT 127.0.0.10:443 HTTP/1.1\r\nHost: 127.0.0.10:443\r\n\r\n"))
	f.Add([]byte("GET http://[::1]:8080/x HTTP/1.1\r\nConnection: a, b\r\na: 1\r\n\r\n"))
	f.Add([]byte("GET http://h/ HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		lr := &io.LimitedReader{R: bytes.NewReader(b), N: 512}
		req, err := readHTTPRequest(bufio.NewReaderSize(lr, 4096), lr)
		if err != nil {
			return
		}
		proxyCredentials(req.Header)
		removeHopByHop(req.Header)
		if req.Header.Get("Connection") != "" {
			t.Fatal("Connection survived removeHopByHop")
		}
		if tg, err := hostTarget(req.Host, 80); err == nil && tg.port == 0 {
			t.Fatalf("port 0 from %q", req.Host)
		}
	})
}

// FuzzParseUsername: a parsed username's traits all pass checkTraits.
func FuzzParseUsername(f *testing.F) {
	f.Add("alice,geo=de,session=s1")
	f.Add("a,=,b")
	f.Fuzz(func(t *testing.T, s string) {
		_, tr, _, err := ParseUsername(s)
		if err == nil && checkTraits(tr) != nil {
			t.Fatalf("%q: traits %v", s, tr)
		}
	})
}

// FuzzParseConfig: any input is a configuration or an ErrConfig error.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("listen: [127.0.0.1:1080]\nusers: [{name: a, password: b, traits: {geo: de}}]\n"))
	f.Add([]byte("clients:\n  - {cidr: 10.0.0.0/8}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig("f.yaml", b)
		if err == nil && c == nil {
			t.Fatal("nil configuration without an error")
		}
	})
}
