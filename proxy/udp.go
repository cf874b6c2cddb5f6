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

	"github.com/prometheus/client_golang/prometheus"
)

// udpHeader is a parsed RFC 1928 section 7 datagram header.
type udpHeader struct {
	frag byte
	addr netip.Addr // DST.ADDR of ATYP IPv4 or IPv6
	name []byte     // DST.ADDR of ATYP domain name, inside the datagram
	port uint16
	n    int // header length
}

var errUDPShort = errors.New("proxy: socks5 udp: short datagram")

// parseUDPHeader parses RSV(2) FRAG ATYP DST.ADDR DST.PORT at the start of
// b (RFC 1928 section 7). It allocates nothing: a domain name stays a
// slice of b.
func parseUDPHeader(b []byte) (udpHeader, error) {
	var h udpHeader
	if len(b) < 4 {
		return h, errUDPShort
	}
	if b[0] != 0 || b[1] != 0 {
		return h, errUDPRSV
	}
	h.frag = b[2]
	switch b[3] {
	case atypIPv4:
		if len(b) < 10 {
			return h, errUDPShort
		}
		h.addr = netip.AddrFrom4([4]byte(b[4:8]))
		h.port = binary.BigEndian.Uint16(b[8:10])
		h.n = 10
	case atypIPv6:
		if len(b) < 22 {
			return h, errUDPShort
		}
		h.addr = netip.AddrFrom16([16]byte(b[4:20])).Unmap()
		h.port = binary.BigEndian.Uint16(b[20:22])
		h.n = 22
	case atypDomain:
		if len(b) < 5 {
			return h, errUDPShort
		}
		l := int(b[4])
		if len(b) < 5+l+2 || l == 0 {
			return h, errUDPShort
		}
		h.name = b[5 : 5+l]
		h.port = binary.BigEndian.Uint16(b[5+l : 7+l])
		h.n = 7 + l
	default:
		return h, errUDPAtyp
	}
	return h, nil
}

var (
	errUDPRSV  = errors.New("proxy: socks5 udp: RSV is not zero")
	errUDPAtyp = errors.New("proxy: socks5 udp: unknown address type")
)

// target returns the header's destination as a dial target: a name that
// is an IP literal is that address.
func (h udpHeader) target() target {
	if h.addr.IsValid() {
		return target{addr: h.addr, port: h.port}
	}
	t := target{host: string(h.name), port: h.port}
	if a, err := netip.ParseAddr(t.host); err == nil {
		t.addr, t.host = a.Unmap(), ""
	}
	return t
}

// association is one UDP ASSOCIATE relay. Per datagram it allocates
// nothing (TestUDPRelayAllocs): counters are looked up once, and a
// destination named by a domain is resolved once per association and then
// found by the header's bytes.
type association struct {
	s      *Server
	rt     *runtimeConfig
	id     identity
	pc     *net.UDPConn
	client netip.Addr     // the TCP connection's client address
	fixed  netip.AddrPort // the client's UDP address once known
	l      *connLog
	idle   time.Duration

	up   udpCounters
	down struct{ relayed, client prometheus.Counter }

	mu    sync.Mutex
	peers map[netip.AddrPort]net.Conn
	named map[string]net.Conn // by ATYP, name and port as the header has them
	done  chan struct{}
	wg    sync.WaitGroup
}

// udpCounters are the client-to-destination datagram counters by result.
type udpCounters struct {
	relayed, source, malformed, fragment, guard, dial, peers prometheus.Counter
}

func newAssociation(s *Server, rt *runtimeConfig, id identity, pc *net.UDPConn, client netip.Addr, l *connLog) *association {
	a := &association{s: s, rt: rt, id: id, pc: pc, client: client, l: l, idle: rt.cfg.idleTimeout(),
		peers: map[netip.AddrPort]net.Conn{}, named: map[string]net.Conn{}, done: make(chan struct{})}
	up := func(r string) prometheus.Counter { return s.metrics.UDPDatagrams.WithLabelValues("up", r) }
	a.up = udpCounters{relayed: up("relayed"), source: up("dropped_source"), malformed: up("dropped_malformed"),
		fragment: up("dropped_fragment"), guard: up("dropped_guard"), dial: up("dropped_dial"), peers: up("dropped_peers")}
	a.down.relayed = s.metrics.UDPDatagrams.WithLabelValues("down", "relayed")
	a.down.client = s.metrics.UDPDatagrams.WithLabelValues("down", "dropped_client")
	return a
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
	a := newAssociation(s, rt, id, pc, l.client.Addr(), l)
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

// readClient relays datagrams from the client until the association ends.
func (a *association) readClient() {
	buf := make([]byte, 64<<10)
	for a.relayUp(buf) == nil {
	}
}

// relayUp reads one datagram from the client into buf and relays it; it
// returns the read's error, which ends the association.
func (a *association) relayUp(buf []byte) error {
	_ = a.pc.SetReadDeadline(a.s.now().Add(a.idle))
	n, from, err := a.pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		return err
	}
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if a.fixed.IsValid() {
		if from != a.fixed {
			a.up.source.Inc()
			return nil
		}
	} else if from.Addr() != a.client {
		a.up.source.Inc()
		return nil
	} else {
		a.fixed = from
	}
	h, err := parseUDPHeader(buf[:n])
	if err != nil {
		a.up.malformed.Inc()
		return nil
	}
	if h.frag != 0 { // RFC 1928 section 7: no fragmentation support
		a.up.fragment.Inc()
		return nil
	}
	p, drop := a.peer(&h, buf[3:h.n])
	if p == nil {
		drop.Inc()
		return nil
	}
	if _, err := p.Write(buf[h.n:n]); err != nil {
		a.up.dial.Inc()
		return nil
	}
	a.s.metrics.countUp(n - h.n)
	a.l.up += int64(n - h.n)
	a.up.relayed.Inc()
	return nil
}

// peer returns the connected egress socket toward the header's
// destination (raw is its ATYP, DST.ADDR and DST.PORT bytes), dialing it
// (guarded, through the Egress's UDP path) the first time; or nil and the
// counter of the reason to drop the datagram.
func (a *association) peer(h *udpHeader, raw []byte) (net.Conn, prometheus.Counter) {
	var dst netip.AddrPort
	if h.addr.IsValid() {
		if a.rt.guard.Check(h.addr) != None {
			return nil, a.up.guard
		}
		dst = netip.AddrPortFrom(h.addr, h.port)
		a.mu.Lock()
		p := a.peers[dst]
		a.mu.Unlock()
		if p != nil {
			return p, nil
		}
	} else {
		a.mu.Lock()
		p := a.named[string(raw)] // no allocation: the map index converts in place
		a.mu.Unlock()
		if p != nil {
			return p, nil
		}
	}
	return a.dialPeer(h.target(), string(raw))
}

// dialPeer resolves and guards t (a name: once per association) and dials
// the destination; name, when t came as a domain, is the key under which
// later datagrams find the socket.
func (a *association) dialPeer(t target, name string) (net.Conn, prometheus.Counter) {
	ctx, cancel := context.WithTimeout(context.Background(), a.rt.cfg.dialTimeout())
	defer cancel()
	addrs, f, _ := a.s.resolveGuarded(ctx, a.rt, t)
	if f != failNone {
		if f == failGuard {
			return nil, a.up.guard
		}
		return nil, a.up.dial
	}
	dst := netip.AddrPortFrom(addrs[0], t.port)
	named := t.host != ""
	a.mu.Lock()
	if p := a.peers[dst]; p != nil {
		if named && len(a.named) < a.rt.cfg.maxUDPPeers() {
			a.named[name] = p
		}
		a.mu.Unlock()
		return p, nil
	}
	if len(a.peers) >= a.rt.cfg.maxUDPPeers() || named && len(a.named) >= a.rt.cfg.maxUDPPeers() {
		a.mu.Unlock()
		return nil, a.up.peers
	}
	a.mu.Unlock()
	start := a.s.now()
	p, err := a.s.egress.Dial(ctx, "udp", dst, EgressRequest{Traits: a.id.traits, Session: a.id.session})
	a.s.metrics.dial("udp", classify(err).result()).Observe(a.s.now().Sub(start).Seconds())
	if err != nil {
		if errors.Is(err, ErrExhausted) {
			a.s.metrics.Exhausted.WithLabelValues(TraitsString(a.id.traits)).Inc()
		}
		return nil, a.up.dial
	}
	a.mu.Lock()
	select {
	case <-a.done:
		a.mu.Unlock()
		p.Close()
		return nil, a.up.dial
	default:
	}
	a.peers[dst] = p
	if named {
		a.named[name] = p
	}
	a.wg.Add(1)
	a.mu.Unlock()
	go a.readPeer(p, dst)
	return p, nil
}

// readPeer relays datagrams from one destination back to the client, each
// with the RFC 1928 section 7 header naming the destination.
func (a *association) readPeer(p net.Conn, dst netip.AddrPort) {
	defer a.wg.Done()
	buf := make([]byte, 64<<10)
	hdr := appendAddr([]byte{0, 0, 0}, dst)
	copy(buf, hdr)
	for a.relayDown(p, buf, len(hdr)) == nil {
	}
}

// relayDown reads one datagram from p into buf after its first hl bytes
// (the header readPeer wrote there) and sends it to the client; it returns
// the read's error, which ends the relay from p.
func (a *association) relayDown(p net.Conn, buf []byte, hl int) error {
	n, err := p.Read(buf[hl:])
	if err != nil {
		return err
	}
	if _, err := a.pc.WriteToUDPAddrPort(buf[:hl+n], a.fixed); err != nil {
		a.down.client.Inc()
		return nil
	}
	a.s.metrics.countDown(n)
	a.down.relayed.Inc()
	return nil
}
