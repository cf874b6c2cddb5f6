package proxy

import (
	"net"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// udpRelayRig is one association built as udpAssociate builds it, with
// a client socket, the relay socket and a sink destination, so that the
// relay functions can be driven one datagram at a time.
type udpRelayRig struct {
	a                  *association
	client, sink, pc   *net.UDPConn
	sinkAddr, pcAddr   netip.AddrPort
	ipDgram, nameDgram []byte
}

func newUDPRelayRig(tb testing.TB) *udpRelayRig {
	tb.Helper()
	listen := func(ap string) *net.UDPConn {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(ap)))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { c.Close() })
		return c
	}
	r := &udpRelayRig{client: listen("127.0.0.1:0"), sink: listen("127.0.0.10:0"), pc: listen("127.0.0.1:0")}
	r.sinkAddr = r.sink.LocalAddr().(*net.UDPAddr).AddrPort()
	r.pcAddr = r.pc.LocalAddr().(*net.UDPAddr).AddrPort()
	cfg, err := ParseConfig("udp.yaml", []byte(baseConfig))
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := NewServer(cfg, &DialerEgress{Dialer: testDialer()}, Options{Resolver: testResolver})
	if err != nil {
		tb.Fatal(err)
	}
	r.a = newAssociation(srv, srv.rt.Load(), identity{traits: map[string]string{}}, r.pc, lo1, &connLog{})
	tb.Cleanup(func() { r.a.close(); r.a.wg.Wait() })
	payload := []byte("a datagram of some bytes")
	r.ipDgram = append(append([]byte{0, 0, 0}, addrBytes(r.sinkAddr)...), payload...)
	r.nameDgram = append(append([]byte{0, 0, 0}, domainBytes("origin.test", r.sinkAddr.Port())...), payload...)
	return r
}

// up sends d from the client and relays it with relayUp.
func (r *udpRelayRig) up(tb testing.TB, d, buf []byte) {
	if _, err := r.client.WriteToUDPAddrPort(d, r.pcAddr); err != nil {
		tb.Fatal(err)
	}
	if err := r.a.relayUp(buf); err != nil {
		tb.Fatal(err)
	}
}

// TestUDPRelayAllocs pins that the UDP ASSOCIATE datagram path allocates
// nothing per datagram in steady state: a datagram from the client to an
// IP destination and to a domain destination (resolved once per
// association), and a datagram back from the destination to the client.
func TestUDPRelayAllocs(t *testing.T) {
	r := newUDPRelayRig(t)
	buf := make([]byte, 64<<10)
	relayed := r.a.up.relayed
	for _, c := range []struct {
		name string
		d    []byte
	}{{"ip", r.ipDgram}, {"domain", r.nameDgram}} {
		r.up(t, c.d, buf) // the first datagram dials the peer
		before := testutil.ToFloat64(relayed)
		if n := testing.AllocsPerRun(200, func() { r.up(t, c.d, buf) }); n != 0 {
			t.Errorf("client to %s destination: %v allocations per datagram, want 0", c.name, n)
		}
		if got := testutil.ToFloat64(relayed) - before; got != 201 {
			t.Errorf("client to %s destination: %v datagrams relayed, want 201", c.name, got)
		}
	}
	if n := len(r.a.peers); n != 1 {
		t.Errorf("%d peer sockets, want 1 (the name resolves to the IP destination's address)", n)
	}

	// The way back: from a connected socket toward the sink (the peer
	// sockets themselves have their readPeer goroutines) to the client.
	q, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.sinkAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	qAddr := q.LocalAddr().(*net.UDPAddr).AddrPort()
	hdr := appendAddr([]byte{0, 0, 0}, r.sinkAddr)
	down := make([]byte, 64<<10)
	copy(down, hdr)
	reply := []byte("the answer")
	back := func() {
		if _, err := r.sink.WriteToUDPAddrPort(reply, qAddr); err != nil {
			t.Fatal(err)
		}
		if err := r.a.relayDown(q, down, len(hdr)); err != nil {
			t.Fatal(err)
		}
		// Drain the client so that its buffer never drops a datagram.
		n, _, err := r.client.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[len(hdr):n]) != string(reply) {
			t.Fatalf("client got %q, %v", buf[:n], err)
		}
	}
	back()
	if n := testing.AllocsPerRun(200, back); n != 0 {
		t.Errorf("destination to client: %v allocations per datagram, want 0", n)
	}
}

// BenchmarkUDPRelayUp relays client datagrams to an IP destination, one
// datagram per iteration.
func BenchmarkUDPRelayUp(b *testing.B) {
	r := newUDPRelayRig(b)
	buf := make([]byte, 64<<10)
	r.up(b, r.ipDgram, buf)
	b.ReportAllocs()
	b.SetBytes(int64(len(r.ipDgram)))
	for b.Loop() {
		r.up(b, r.ipDgram, buf)
	}
}
