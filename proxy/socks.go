package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// RFC 1928 constants.
const (
	socksVersion = 0x05
	authVersion  = 0x01 // RFC 1929 section 2 sub-negotiation version

	methodNone     = 0x00
	methodUserPass = 0x02
	methodNoAccept = 0xff

	cmdConnect = 0x01
	cmdBind    = 0x02
	cmdUDP     = 0x03

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04
)

// SOCKS5 reply codes, RFC 1928 section 6.
const (
	RepSucceeded        = 0x00
	RepGeneralFailure   = 0x01
	RepNotAllowed       = 0x02
	RepNetUnreachable   = 0x03
	RepHostUnreachable  = 0x04
	RepRefused          = 0x05
	RepTTLExpired       = 0x06
	RepCmdNotSupported  = 0x07
	RepAddrNotSupported = 0x08
)

// socksRequest is an RFC 1928 section 4 request.
type socksRequest struct {
	cmd byte
	dst target
}

// socksError is a request that must be answered with rep and closed.
type socksError struct {
	rep byte
	msg string
}

func (e *socksError) Error() string { return "proxy: socks5: " + e.msg }

// readGreeting reads the RFC 1928 section 3 method selection message after
// its version byte and returns the offered methods.
func readGreeting(r io.Reader, buf *[255]byte) ([]byte, error) {
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, fmt.Errorf("proxy: socks5 greeting: %w", err)
	}
	if n[0] == 0 {
		return nil, errors.New("proxy: socks5 greeting offers no method")
	}
	m := buf[:n[0]]
	if _, err := io.ReadFull(r, m); err != nil {
		return nil, fmt.Errorf("proxy: socks5 greeting: %w", err)
	}
	return m, nil
}

// readUserPass reads an RFC 1929 section 2 username/password request.
func readUserPass(r io.Reader) (user, pass string, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", "", fmt.Errorf("proxy: socks5 auth: %w", err)
	}
	if hdr[0] != authVersion {
		return "", "", fmt.Errorf("proxy: socks5 auth: version %d, want 1 (RFC 1929)", hdr[0])
	}
	var b [255]byte
	u := b[:hdr[1]]
	if _, err := io.ReadFull(r, u); err != nil {
		return "", "", fmt.Errorf("proxy: socks5 auth: %w", err)
	}
	user = string(u)
	var pl [1]byte
	if _, err := io.ReadFull(r, pl[:]); err != nil {
		return "", "", fmt.Errorf("proxy: socks5 auth: %w", err)
	}
	p := b[:pl[0]]
	if _, err := io.ReadFull(r, p); err != nil {
		return "", "", fmt.Errorf("proxy: socks5 auth: %w", err)
	}
	return user, string(p), nil
}

// readSOCKSRequest reads an RFC 1928 section 4 request. A request that
// must be refused returns a *socksError with its reply code; a truncated
// one returns the read error.
func readSOCKSRequest(r io.Reader) (socksRequest, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return socksRequest{}, fmt.Errorf("proxy: socks5 request: %w", err)
	}
	if hdr[0] != socksVersion {
		return socksRequest{}, &socksError{RepGeneralFailure, fmt.Sprintf("request version %d, want 5", hdr[0])}
	}
	req := socksRequest{cmd: hdr[1]}
	t, err := readAddr(r, hdr[3])
	if err != nil {
		return req, err
	}
	req.dst = t
	switch req.cmd {
	case cmdConnect, cmdUDP:
	case cmdBind:
		return req, &socksError{RepCmdNotSupported, "BIND is not supported"}
	default:
		return req, &socksError{RepCmdNotSupported, fmt.Sprintf("unknown command %d", req.cmd)}
	}
	return req, nil
}

// readAddr reads ATYP's DST.ADDR and DST.PORT (RFC 1928 section 5).
func readAddr(r io.Reader, atyp byte) (target, error) {
	var t target
	// One array per case: each escapes to the heap (io.ReadFull), so an
	// address allocates only the bytes its type needs.
	switch atyp {
	case atypIPv4:
		var b [6]byte
		if _, err := io.ReadFull(r, b[:6]); err != nil {
			return t, fmt.Errorf("proxy: socks5 address: %w", err)
		}
		t.addr = netip.AddrFrom4([4]byte(b[:4]))
		t.port = binary.BigEndian.Uint16(b[4:6])
	case atypIPv6:
		var b [18]byte
		if _, err := io.ReadFull(r, b[:18]); err != nil {
			return t, fmt.Errorf("proxy: socks5 address: %w", err)
		}
		t.addr = netip.AddrFrom16([16]byte(b[:16])).Unmap()
		t.port = binary.BigEndian.Uint16(b[16:18])
	case atypDomain:
		var b [256 + 2]byte
		if _, err := io.ReadFull(r, b[:1]); err != nil {
			return t, fmt.Errorf("proxy: socks5 address: %w", err)
		}
		n := int(b[0])
		if _, err := io.ReadFull(r, b[1:n+3]); err != nil {
			return t, fmt.Errorf("proxy: socks5 address: %w", err)
		}
		t.host = string(b[1 : n+1])
		t.port = binary.BigEndian.Uint16(b[n+1 : n+3])
		// A literal sent as a name is used as the literal.
		if a, err := netip.ParseAddr(t.host); err == nil {
			t.addr, t.host = a.Unmap(), ""
		}
	default:
		return t, &socksError{RepAddrNotSupported, fmt.Sprintf("address type %d", atyp)}
	}
	return t, nil
}

// appendAddr appends ATYP, ADDR and PORT for ap (RFC 1928 section 5).
func appendAddr(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr().Unmap()
	switch {
	case a.Is4():
		b = append(b, atypIPv4)
		v := a.As4()
		b = append(b, v[:]...)
	case a.Is6():
		b = append(b, atypIPv6)
		v := a.As16()
		b = append(b, v[:]...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

func writeReply(w io.Writer, rep byte, bnd netip.AddrPort) error {
	var buf [32]byte
	b := append(buf[:0], socksVersion, rep, 0)
	b = appendAddr(b, bnd)
	_, err := w.Write(b)
	return err
}

func repFor(f failure) byte {
	switch f {
	case failNone:
		return RepSucceeded
	case failGuard, failNoEgress:
		return RepNotAllowed
	case failNetUnreach:
		return RepNetUnreachable
	case failHostUnreach, failResolve:
		return RepHostUnreachable
	case failRefused:
		return RepRefused
	case failTimeout:
		return RepTTLExpired
	}
	return RepGeneralFailure // failExhausted and failGeneral
}

// serveSOCKS serves one SOCKS5 connection after its version byte.
// It writes the method selection unless sniff did (hs.sn.replied).
func (s *Server) serveSOCKS(c net.Conn, br *bufio.Reader, hs *handshake, rt *runtimeConfig, cl *cleanup) {
	l := &connLog{proto: "socks5", client: remoteAddr(c), start: s.now()}
	cl.add(func() { s.finish(rt, l) })
	fail := func(result, reason string) { l.result, l.reason = result, reason }
	methods, err := readGreeting(br, &hs.mbuf)
	if err != nil {
		fail(resultBad, err.Error())
		return
	}
	want := byte(methodNone)
	if len(rt.users) > 0 {
		want = methodUserPass
	}
	offered := false
	for _, m := range methods {
		offered = offered || m == want
	}
	if !offered {
		c.Write([]byte{socksVersion, methodNoAccept})
		fail(resultAuth, fmt.Sprintf("client offers methods %v, the proxy needs %d", methods, want))
		return
	}
	if hs.sn.replied {
		err = hs.sn.werr
	} else {
		_, err = c.Write([]byte{socksVersion, want})
	}
	if err != nil {
		fail(resultBad, err.Error())
		return
	}
	var user, pass string
	if want == methodUserPass {
		if user, pass, err = readUserPass(br); err != nil {
			c.Write([]byte{authVersion, 0x01})
			fail(resultBad, err.Error())
			return
		}
	}
	id, err := s.identify(rt, l.client.Addr(), user, pass, want == methodUserPass)
	l.user = user
	if want == methodUserPass {
		if errors.Is(err, errAuth) {
			c.Write([]byte{authVersion, 0x01})
			fail(resultAuth, err.Error())
			return
		}
		if _, err := c.Write([]byte{authVersion, 0x00}); err != nil {
			fail(resultBad, err.Error())
			return
		}
	}
	req, rerr := readSOCKSRequest(br)
	l.dst = req.dst
	if rerr != nil {
		var se *socksError
		if errors.As(rerr, &se) {
			writeReply(c, se.rep, netip.AddrPort{})
			if se.rep == RepCmdNotSupported || se.rep == RepAddrNotSupported {
				fail(resultUnsupported, se.msg)
			} else {
				fail(resultBad, se.msg)
			}
			return
		}
		fail(resultBad, rerr.Error())
		return
	}
	if err != nil { // a trait conflict: refused by the rule set
		writeReply(c, RepNotAllowed, netip.AddrPort{})
		fail(resultRefused, err.Error())
		return
	}
	release, ok := s.acquire(id)
	if !ok {
		writeReply(c, RepNotAllowed, netip.AddrPort{})
		fail(resultLimit, fmt.Sprintf("user %s is at max-connections %d", id.user.Name, id.user.MaxConnections))
		return
	}
	cl.add(release)
	s.metrics.activeSOCKS.Inc()
	cl.add(s.metrics.activeSOCKS.Dec)
	if req.cmd == cmdUDP {
		s.udpAssociate(c, rt, id, req, l)
		return
	}
	dst, f, why := s.connect(s.dialContext(rt.cfg.dialTimeout()), rt, id, req.dst)
	if f != failNone {
		_ = c.SetWriteDeadline(s.now().Add(time.Second))
		writeReply(c, repFor(f), netip.AddrPort{})
		fail(f.result(), why)
		return
	}
	cl.add(func() { dst.Close() })
	l.egress = localAddr(dst)
	if err := writeReply(c, RepSucceeded, l.egress); err != nil {
		fail(resultBad, err.Error())
		return
	}
	if rt.cfg.idleTimeout() <= 0 {
		_ = c.SetReadDeadline(time.Time{})
	} // else the relay sets the idle deadline before its first read
	if k := br.Buffered(); k > 0 { // data the client sent before the reply
		b, _ := br.Peek(k)
		if _, err := dst.Write(b); err != nil {
			fail(resultDialFailed, err.Error())
			return
		}
		l.up += int64(k)
	}
	cl.detached = true
	relayAsync(c, dst, rt.cfg.idleTimeout(), s.now, s.metrics.upFn, s.metrics.downFn, s.hop, func(up, down int64, _ error) {
		l.up, l.down, l.result = l.up+up, down, resultOK
		cl.relayed = true
		cl.run()
	})
}
