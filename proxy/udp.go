package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// udpHeader is a parsed RFC 1928 section 7 datagram header.
type udpHeader struct {
	frag byte
	dst  target
	n    int // header length
}

var errUDPShort = errors.New("proxy: socks5 udp: short datagram")

// parseUDPHeader parses RSV(2) FRAG ATYP DST.ADDR DST.PORT at the start of
// b (RFC 1928 section 7).
func parseUDPHeader(b []byte) (udpHeader, error) {
	var h udpHeader
	if len(b) < 4 {
		return h, errUDPShort
	}
	if b[0] != 0 || b[1] != 0 {
		return h, errors.New("proxy: socks5 udp: RSV is not zero")
	}
	h.frag = b[2]
	switch b[3] {
	case atypIPv4:
		if len(b) < 10 {
			return h, errUDPShort
		}
		h.dst.addr = netip.AddrFrom4([4]byte(b[4:8]))
		h.dst.port = binary.BigEndian.Uint16(b[8:10])
		h.n = 10
	case atypIPv6:
		if len(b) < 22 {
			return h, errUDPShort
		}
		h.dst.addr = netip.AddrFrom16([16]byte(b[4:20])).Unmap()
		h.dst.port = binary.BigEndian.Uint16(b[20:22])
		h.n = 22
	case atypDomain:
		if len(b) < 5 {
			return h, errUDPShort
		}
		l := int(b[4])
		if len(b) < 5+l+2 || l == 0 {
			return h, errUDPShort
		}
		h.dst.host = string(b[5 : 5+l])
		h.dst.port = binary.BigEndian.Uint16(b[5+l : 7+l])
		if a, err := netip.ParseAddr(h.dst.host); err == nil {
			h.dst.addr, h.dst.host = a.Unmap(), ""
		}
		h.n = 7 + l
	default:
		return h, fmt.Errorf("proxy: socks5 udp: address type %d", b[3])
	}
	return h, nil
}

// association is one UDP ASSOCIATE relay.
type association struct {
	s      *Server
	rt     *runtimeConfig
	id     identity
	pc     *net.UDPConn
	client netip.Addr     // the TCP connection's client address
	fixed  netip.AddrPort // the client's UDP address once known
	l      *connLog

	mu    sync.Mutex
	peers map[netip.AddrPort]net.Conn
	done  chan struct{}
	wg    sync.WaitGroup
}

// udpAssociate serves RFC 1928 section 7: it binds a relay socket on the
// address the client reached the proxy at, answers with it, relays until
// the TCP connection closes, and then ends the association.
func (s *Server) udpAssociate(c net.Conn, rt *runtimeConfig, id identity, req socksRequest, l *connLog) {
	local := localAddr(c)
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local.Addr(), 0)))
	if err != nil {
		writeReply(c, RepGeneralFailure, netip.AddrPort{})
		l.result, l.reason = resultDialFailed, err.Error()
		return
	}
	a := &association{s: s, rt: rt, id: id, pc: pc, client: l.client.Addr(), l: l, peers: map[netip.AddrPort]net.Conn{}, done: make(chan struct{})}
	// DST.ADDR and DST.PORT are only a hint of the client's UDP source and
	// are never resolved: a full address fixes the source at once; a
	// port alone (or a name such as PySocks's "0") fixes nothing, and the
	// first datagram from the client's address fixes it.
	if h := req.dst; h.addr.IsValid() && !h.addr.IsUnspecified() && h.port != 0 {
		if h.addr != a.client {
			writeReply(c, RepNotAllowed, netip.AddrPort{})
			pc.Close()
			l.result, l.reason = resultRefused, fmt.Sprintf("UDP ASSOCIATE for %s from client %s", netip.AddrPortFrom(h.addr, h.port), a.client)
			return
		}
		a.fixed = netip.AddrPortFrom(h.addr, h.port)
	}
	if err := writeReply(c, RepSucceeded, localAddr(pc)); err != nil {
		pc.Close()
		l.result, l.reason = resultBad, err.Error()
		return
	}
	l.egress = localAddr(pc)
	_ = c.SetDeadline(time.Time{})
	// The association ends when its TCP connection closes (or sends
	// anything: the protocol has nothing more to say on it).
	go func() {
		var b [1]byte
		c.Read(b[:])
		a.close()
	}()
	a.readClient()
	a.close()
	c.Close()
	a.wg.Wait()
	l.result = resultOK
}

func (a *association) close() {
	a.mu.Lock()
	select {
	case <-a.done:
		a.mu.Unlock()
		return
	default:
	}
	close(a.done)
	a.pc.Close()
	for _, p := range a.peers {
		p.Close()
	}
	a.mu.Unlock()
}

func (a *association) count(dir, result string) {
	a.s.metrics.UDPDatagrams.WithLabelValues(dir, result).Inc()
}

// readClient relays datagrams from the client until the association ends.
func (a *association) readClient() {
	buf := make([]byte, 64<<10)
	idle := a.rt.cfg.idleTimeout()
	for {
		_ = a.pc.SetReadDeadline(a.s.now().Add(idle))
		n, from, err := a.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if a.fixed.IsValid() {
			if from != a.fixed {
				a.count("up", "dropped_source")
				continue
			}
		} else if from.Addr() != a.client {
			a.count("up", "dropped_source")
			continue
		} else {
			a.fixed = from
		}
		h, err := parseUDPHeader(buf[:n])
		if err != nil {
			a.count("up", "dropped_malformed")
			continue
		}
		if h.frag != 0 { // RFC 1928 section 7: no fragmentation support
			a.count("up", "dropped_fragment")
			continue
		}
		p, result := a.peer(h.dst)
		if p == nil {
			a.count("up", result)
			continue
		}
		if _, err := p.Write(buf[h.n:n]); err != nil {
			a.count("up", "dropped_dial")
			continue
		}
		a.s.metrics.countUp(n - h.n)
		a.l.up += int64(n - h.n)
		a.count("up", "relayed")
	}
}

// peer returns the connected egress socket toward t, dialing it (guarded,
// through the Egress's UDP path) the first time.
func (a *association) peer(t target) (net.Conn, string) {
	var dst netip.AddrPort
	if t.addr.IsValid() {
		if a.rt.guard.Check(t.addr) != None {
			return nil, "dropped_guard"
		}
		dst = netip.AddrPortFrom(t.addr, t.port)
		a.mu.Lock()
		p := a.peers[dst]
		a.mu.Unlock()
		if p != nil {
			return p, ""
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.rt.cfg.dialTimeout())
	defer cancel()
	addrs, f, _ := a.s.resolveGuarded(ctx, a.rt, t)
	if f != failNone {
		if f == failGuard {
			return nil, "dropped_guard"
		}
		return nil, "dropped_dial"
	}
	dst = netip.AddrPortFrom(addrs[0], t.port)
	a.mu.Lock()
	if p := a.peers[dst]; p != nil {
		a.mu.Unlock()
		return p, ""
	}
	if len(a.peers) >= a.rt.cfg.maxUDPPeers() {
		a.mu.Unlock()
		return nil, "dropped_peers"
	}
	a.mu.Unlock()
	start := a.s.now()
	p, err := a.s.egress.Dial(ctx, "udp", dst, EgressRequest{Traits: a.id.traits, Session: a.id.session})
	a.s.metrics.DialSeconds.WithLabelValues("udp", classify(err).result()).Observe(a.s.now().Sub(start).Seconds())
	if err != nil {
		if errors.Is(err, ErrExhausted) {
			a.s.metrics.Exhausted.WithLabelValues(TraitsString(a.id.traits)).Inc()
		}
		return nil, "dropped_dial"
	}
	a.mu.Lock()
	select {
	case <-a.done:
		a.mu.Unlock()
		p.Close()
		return nil, "dropped_dial"
	default:
	}
	a.peers[dst] = p
	a.wg.Add(1)
	a.mu.Unlock()
	go a.readPeer(p, dst)
	return p, ""
}

// readPeer relays datagrams from one destination back to the client, each
// with the RFC 1928 section 7 header naming the destination.
func (a *association) readPeer(p net.Conn, dst netip.AddrPort) {
	defer a.wg.Done()
	buf := make([]byte, 64<<10)
	hdr := appendAddr([]byte{0, 0, 0}, dst)
	copy(buf, hdr)
	for {
		n, err := p.Read(buf[len(hdr):])
		if err != nil {
			return
		}
		if _, err := a.pc.WriteToUDPAddrPort(buf[:len(hdr)+n], a.fixed); err != nil {
			a.count("down", "dropped_client")
			continue
		}
		a.s.metrics.countDown(n)
		a.count("down", "relayed")
	}
}
