package stun

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/udpbatch"
)

// startServer runs a dual-homed server on 127.0.0.1 and 127.0.0.2 (both on
// Linux's loopback) at random ports, stopped when t ends.
func startServer(t testing.TB, o Options) *Server {
	t.Helper()
	var last error
	for try := 0; try < 20; try++ {
		p := uint16(20000 + rand.IntN(20000))
		o.Primary = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p)
		if !o.Alternate.IsValid() || o.Alternate.Port() != 0 {
			o.Alternate = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), p+1)
		} else {
			o.Alternate = netip.AddrPort{}
		}
		s, err := Listen(o)
		if err != nil {
			last = err
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
		return s
	}
	t.Fatalf("no free ports: %v", last)
	return nil
}

func exchange(t *testing.T, c *net.UDPConn, dst netip.AddrPort, req []byte) (*Message, netip.AddrPort) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(req, dst); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no response from %v: %v", dst, err)
	}
	m := new(Message)
	if err := Parse(buf[:n], m); err != nil {
		t.Fatal(err)
	}
	return m, from
}

// TestServerUDPSources sends every CHANGE-REQUEST to every socket, over the
// batched path and the one-datagram path, with one worker per socket and
// with several (each its own descriptors of the same sockets), and checks the response's real
// source address (RFC 5780 section 6, table 1), not just RESPONSE-ORIGIN.
func TestServerUDPSources(t *testing.T) {
	for _, c := range []struct{ batch, workers int }{{0, 1}, {1, 1}, {0, 3}, {1, 2}} {
		batch := c.batch
		t.Run(fmt.Sprintf("batch=%d/workers=%d", c.batch, c.workers), func(t *testing.T) {
			s := startServer(t, Options{Batch: batch, Workers: c.workers})
			socks := s.Addrs()
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			self := c.LocalAddr().(*net.UDPAddr).AddrPort()
			for at := 0; at < 4; at++ {
				for _, f := range []uint32{0, ChangePort, ChangeIP, ChangeIP | ChangePort} {
					m, from := exchange(t, c, socks[at], request(false, func(b *Builder) { b.AddChangeRequest(f) }))
					want := socks[Socket(at)^Socket(f>>1)]
					if from != want {
						t.Errorf("to %v flags %#x: answered from %v, want %v", socks[at], f, from, want)
					}
					if got := addr(t, m, AttrXORMappedAddress); got != self {
						t.Errorf("mapped %v, want %v", got, self)
					}
				}
			}
			if st := s.Stats(); st.Responses != 16 || st.Requests != 16 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestServerWorkerDescriptors serves every socket with the second worker's
// descriptors alone (Serve would let any worker win each read) and checks
// that each answer still leaves from the socket table 1 names: a worker's
// descriptors are the same sockets, in the same order.
func TestServerWorkerDescriptors(t *testing.T) {
	var s *Server
	var err error
	for try := 0; try < 20; try++ {
		p := uint16(20000 + rand.IntN(20000))
		s, err = Listen(Options{Primary: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p),
			Alternate: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), p+1), Workers: 2})
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(s.wudp) != 2 {
		t.Fatalf("%d workers, want 2", len(s.wudp))
	}
	var wg sync.WaitGroup
	for at := range s.wudp[1] {
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.serveUDP(1, Socket(at)) }()
	}
	defer func() { s.Close(); wg.Wait() }()
	socks := s.Addrs()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for at := 0; at < 4; at++ {
		for _, f := range []uint32{0, ChangePort, ChangeIP, ChangeIP | ChangePort} {
			m, from := exchange(t, c, socks[at], request(false, func(b *Builder) { b.AddChangeRequest(f) }))
			if want := socks[Socket(at)^Socket(f>>1)]; from != want {
				t.Errorf("to %v flags %#x: answered from %v, want %v", socks[at], f, from, want)
			}
			if got := addr(t, m, AttrResponseOrigin); got != from {
				t.Errorf("RESPONSE-ORIGIN %v, sent from %v", got, from)
			}
		}
	}
}

func TestServerResponsePort(t *testing.T) {
	s := startServer(t, Options{})
	x, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	y, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer x.Close()
	defer y.Close()
	px := x.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	req := request(false, func(b *Builder) { b.AddResponsePort(px) })
	if _, err := y.WriteToUDPAddrPort(req, s.Addrs()[0]); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	_ = x.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, _, err := x.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no response on the RESPONSE-PORT socket: %v", err)
	}
	var m Message
	if err := Parse(buf[:n], &m); err != nil || m.ID != testID(false) {
		t.Fatalf("%v %x", err, m.ID)
	}
}

func TestServerTCP(t *testing.T) {
	s := startServer(t, Options{TCP: true})
	for at, sa := range s.Addrs() {
		c, err := net.Dial("tcp", sa.String())
		if err != nil {
			t.Fatal(err)
		}
		// Two requests in one write: the server frames the stream.
		two := append(request(false, nil), request(true, nil)...)
		if _, err := c.Write(two); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			hdr := make([]byte, HeaderSize)
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := io.ReadFull(c, hdr); err != nil {
				t.Fatalf("socket %d: %v", at, err)
			}
			l, err := MessageLength(hdr)
			if err != nil {
				t.Fatal(err)
			}
			body := make([]byte, l)
			copy(body, hdr)
			if _, err := io.ReadFull(c, body[HeaderSize:]); err != nil {
				t.Fatal(err)
			}
			var m Message
			if err := Parse(body, &m); err != nil {
				t.Fatal(err)
			}
			local := c.LocalAddr().(*net.TCPAddr).AddrPort()
			at := AttrXORMappedAddress
			if i == 1 {
				at = AttrMappedAddress
			}
			if got, _ := m.Addr(at); got != local {
				t.Errorf("TCP mapped %v, want %v", got, local)
			}
		}
		// A change request over TCP is refused with 400.
		if _, err := c.Write(request(false, func(b *Builder) { b.AddChangeRequest(ChangeIP) })); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 256)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		var m Message
		if Parse(buf[:n], &m) != nil || m.Type != BindingError {
			t.Errorf("CHANGE-REQUEST over TCP: type %#x", m.Type)
		}
		c.Close()
	}
}

// TestServerRateLimit: a client over its budget is no longer answered, on
// the batched path and on the one-datagram-per-call path (Batch 1); the
// clock is fixed, so no token comes back during the test.
func TestServerRateLimit(t *testing.T) {
	for _, batch := range []int{0, 1} {
		t.Run(fmt.Sprintf("batch=%d", batch), func(t *testing.T) {
			now := time.Unix(1e6, 0)
			s := startServer(t, Options{Rate: 1, Burst: 5, Batch: batch, Now: func() time.Time { return now }})
			c, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			defer c.Close()
			req := request(false, nil)
			for i := 0; i < 20; i++ {
				_, _ = c.WriteToUDPAddrPort(req, s.Addrs()[0])
			}
			got := 0
			buf := make([]byte, 2048)
			for {
				_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
					break
				}
				got++
			}
			if got != 5 {
				t.Fatalf("answered %d of 20 requests with a burst of 5", got)
			}
			if st := s.Stats(); st.Limited != 15 {
				t.Fatalf("limited %d, want 15", st.Limited)
			}
		})
	}
}

func TestServerSurvivesGarbage(t *testing.T) {
	s := startServer(t, Options{Unlimited: true})
	c, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer c.Close()
	r := rand.New(rand.NewPCG(1, 2))
	good := request(false, nil)
	for i := 0; i < 2000; i++ {
		p := append([]byte(nil), good...)
		switch i % 4 {
		case 0:
			p = p[:r.IntN(len(p))]
		case 1:
			p[r.IntN(len(p))] ^= byte(1 + r.IntN(255))
		case 2:
			p = make([]byte, r.IntN(3000))
		case 3:
			p = append(p, make([]byte, r.IntN(40))...)
		}
		_, _ = c.WriteToUDPAddrPort(p, s.Addrs()[0])
	}
	m, _ := exchange(t, c, s.Addrs()[0], good)
	if m.Type != BindingSuccess {
		t.Fatal("server stopped answering after garbage")
	}
}

// loadClient drives the server in the benchmark and the allocation test
// with batched I/O of its own, so that it allocates nothing either.
type loadClient struct {
	c   *net.UDPConn
	w   *udpbatch.Writer
	r   *udpbatch.Reader
	req []byte
}

func newLoadClient(tb testing.TB) *loadClient {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	_ = c.SetReadBuffer(4 << 20)
	tb.Cleanup(func() { c.Close() })
	w, err := udpbatch.NewWriter(c, 64, 256)
	if err != nil {
		tb.Skip(err)
	}
	r, _ := udpbatch.NewReader(c, 64, 256)
	return &loadClient{c: c, w: w, r: r, req: request(false, nil)}
}

// round sends n (at most 64) requests to dst and reads until n responses
// came or a read times out; it returns the responses read.
func (l *loadClient) round(n int, dst netip.AddrPort) int {
	for i := 0; i < n; i++ {
		l.w.Commit(append(l.w.Next(), l.req...), dst)
	}
	if _, err := l.w.Flush(); err != nil {
		return 0
	}
	got := 0
	_ = l.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	for got < n {
		k, err := l.r.Read()
		if err != nil {
			break
		}
		got += k
	}
	return got
}

// TestServerAllocatesNothing pins the hot path: a full round of 64
// requests through the batched server (and the batched client) allocates
// nothing in the process.
func TestServerAllocatesNothing(t *testing.T) {
	s := startServer(t, Options{Unlimited: true})
	l := newLoadClient(t)
	dst := s.Addrs()[0]
	l.round(64, dst) // warm up: goroutines started, buffers made
	lost := 0
	if n := testing.AllocsPerRun(50, func() { lost += 64 - l.round(64, dst) }); n != 0 {
		t.Fatalf("%.1f allocations per round of 64 requests (%d responses lost)", n, lost)
	}
	if lost > 0 {
		t.Logf("%d responses lost", lost)
	}
}

// BenchmarkServerUDP measures binding responses per second on loopback:
// load clients with batched I/O of their own, each sending a batch of 64
// requests and reading the 64 responses, spread over the four sockets of
// one batched server. It reports resp/s (wall clock) and cpu-ns/resp (the
// process's CPU time per response, server and clients together);
// allocations per op count the whole process too.
func BenchmarkServerUDP(b *testing.B) {
	s := startServer(b, Options{Unlimited: true})
	const clients = 8
	ls := make([]*loadClient, clients)
	for i := range ls {
		ls[i] = newLoadClient(b)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	cpu0 := cpuTime()
	var wg sync.WaitGroup
	var total atomic.Int64
	per := (b.N + clients - 1) / clients
	for i, l := range ls {
		wg.Add(1)
		go func(l *loadClient, dst netip.AddrPort) {
			defer wg.Done()
			got := 0
			for got < per {
				got += l.round(min(64, per-got), dst)
			}
			total.Add(int64(got))
		}(l, s.Addrs()[i%len(s.Addrs())])
	}
	wg.Wait()
	el := time.Since(start)
	cpu := cpuTime() - cpu0
	b.ReportMetric(float64(total.Load())/el.Seconds(), "resp/s")
	// On a shared machine the wall-clock rate says as much about the
	// other tenants as about the server; the process's CPU time per
	// response (server and load clients together) does not.
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(total.Load()), "cpu-ns/resp")
	st := s.Stats()
	if st.Reads > 0 {
		b.ReportMetric(float64(st.Requests)/float64(st.Reads), "req/read")
	}
}

// cpuTime returns the process's user plus system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
