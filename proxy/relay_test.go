package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netsys"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// TestRelayStepAllocs pins the relay's hot path: one chunk waited for and
// moved (spliced through a pooled pipe between two sockets, read into a
// pooled buffer and written, or copied through a pooled bulk buffer)
// costs no allocation.
func TestRelayStepAllocs(t *testing.T) {
	if !canSplice {
		t.Skip("the raw-socket paths are Linux-only")
	}
	for _, mode := range []int{modeSplice, modeRead, modeCopy} {
		in, src := tcpPair(t)
		dst, out := tcpPair(t)
		tun := &tunnel{idle: time.Minute, now: time.Now}
		tun.touch()
		d := newDirection(tun, src, dst, func(int) {})
		if d.mode != modeSplice {
			t.Fatalf("mode %d between two *net.TCPConn, want splice", d.mode)
		}
		switch mode {
		case modeRead:
			d.mode, d.readFn = modeRead, d.readIn
		case modeCopy:
			d.mode, d.readFn, d.writeFn = modeCopy, d.copyIn, d.copyOut
		}
		msg := make([]byte, 1000)
		got := make([]byte, 1000)
		step := func() {
			in.Write(msg)
			n := 0
			for n < len(msg) {
				k, err := d.step()
				if err != nil {
					t.Fatal(err)
				}
				n += k
			}
			io.ReadFull(out, got)
		}
		step()
		if a := testing.AllocsPerRun(200, step); a != 0 {
			t.Errorf("mode %d: relay step allocates %v times per chunk, want 0", mode, a)
		}
	}
}

// fdKinds counts this process's open descriptors: sockets and pipes. It
// collects garbage first, so that descriptors the runtime's own pools
// dropped are closed by their finalizers and not counted.
func fdKinds(t *testing.T) (sockets, pipes int) {
	t.Helper()
	for range 3 {
		runtime.GC()
		runtime.Gosched()
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	for _, e := range ents {
		l, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(l, "socket:"):
			sockets++
		case strings.HasPrefix(l, "pipe:"):
			pipes++
		}
	}
	return
}

// TestIdleTunnelDescriptors opens idle tunnels through the proxy and counts
// descriptors: each tunnel adds exactly four sockets in this process (the
// client's, the origin's accepted one, and the proxy's two) and no pipe.
// io.Copy between two *net.TCPConn would add a splice pipe (two
// descriptors) per waiting direction.
func TestIdleTunnelDescriptors(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the readability wait is Linux-only")
	}
	echo := echoServer(t, "127.0.0.10")
	p := startProxy(t, "", nil)
	// One tunnel first, so the runtime's own descriptors (epoll, the
	// pollers' event fd) are open before the count.
	c0, rep, _, err := socksDial(t, p.addr, "", "", cmdConnect, addrBytes(echo))
	if err != nil || rep != 0 {
		t.Fatal(rep, err)
	}
	c0.Write([]byte("x"))
	io.ReadFull(c0, make([]byte, 1))
	s0, p0 := fdKinds(t)
	b0, q0 := bufsOut.Load(), pipesOut.Load()
	const n = 50
	var conns []net.Conn
	for range n {
		c, rep, _, err := socksDial(t, p.addr, "", "", cmdConnect, addrBytes(echo))
		if err != nil || rep != 0 {
			t.Fatal(rep, err)
		}
		c.Write([]byte("ping"))
		io.ReadFull(c, make([]byte, 4)) // data moved both ways, then idle
		conns = append(conns, c)
	}
	s1, p1 := fdKinds(t)
	// The relay waits for readability before it takes a buffer: idle
	// directions hold none.
	if held, pipes := bufsOut.Load()-b0, pipesOut.Load()-q0; held != 0 || pipes != 0 {
		t.Errorf("%d idle tunnels hold %d copy buffers and %d splice pipes, want none", n, held, pipes)
	}
	// Splice pipes live in a free list shared by all tunnels: it may grow
	// by the few that were in use at once, but no pipe is held per idle
	// tunnel.
	if s1-s0 != 4*n || p1-p0 >= n/5 {
		t.Errorf("%d idle tunnels added %d sockets and %d pipes, want %d sockets and no pipe per tunnel", n, s1-s0, p1-p0, 4*n)
	}
	for _, c := range conns {
		c.Close()
	}
	c0.Close()
}

// TestRelayIdleTimeout: a tunnel with no byte either way for the idle
// timeout is closed; one that keeps moving in one direction is not.
func TestRelayIdleTimeout(t *testing.T) {
	a, a2 := tcpPair(t)
	b, b2 := tcpPair(t)
	done := make(chan error, 1)
	go func() {
		_, _, err := relay(a2, b, 300*time.Millisecond, time.Now, nil, nil)
		done <- err
	}()
	// Traffic in one direction only for longer than the timeout.
	go io.Copy(io.Discard, b2)
	for range 6 {
		a.Write([]byte("tick"))
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("relay ended while one direction was active: %v", err)
	default:
	}
	select {
	case err := <-done:
		if err != errIdle {
			t.Errorf("relay ended with %v, want errIdle", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("idle tunnel not closed")
	}
}

// testHop is the Server's default short-hop tuning, for the relay tests.
var testHop = shortHop{cc: "reno"}

// relay runs relayAsync and waits for it: the tests' synchronous form.
func relay(a, b net.Conn, idle time.Duration, now func() time.Time, up, down func(int)) (aToB, bToA int64, err error) {
	done := make(chan struct{})
	relayAsync(a, b, idle, now, up, down, testHop, func(x, y int64, e error) {
		aToB, bToA, err = x, y, e
		close(done)
	})
	<-done
	return
}

// TestHandlerWorkers: connections one after another are served by a
// handler goroutine that waits for the next one instead of a new goroutine
// each, and Shutdown ends the waiting ones.
func TestHandlerWorkers(t *testing.T) {
	echo := echoServer(t, "127.0.0.10")
	p := startProxy(t, "", nil)
	const n = 20
	for i := range n {
		c, rep, _, err := socksDial(t, p.addr, "", "", cmdConnect, addrBytes(echo))
		if err != nil || rep != 0 {
			t.Fatal(rep, err)
		}
		c.Close()
		p.waitCount("socks5", resultOK, float64(i+1))
	}
	if started := p.srv.workersRun.Load(); started > n/2 {
		t.Errorf("%d sequential connections started %d handler goroutines, want them reused", n, started)
	}
	if p.srv.idleWorkers.Load() == 0 {
		t.Fatal("no handler goroutine waits for the next connection")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.srv.Shutdown(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for p.srv.idleWorkers.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d handler goroutines still wait after Shutdown", p.srv.idleWorkers.Load())
		}
		runtime.Gosched()
	}
}

// TestRelayWithoutPipes: when no splice pipe can be opened (the descriptor
// limit, say), a direction copies through a buffer instead of failing the
// tunnel.
func TestRelayWithoutPipes(t *testing.T) {
	if !canSplice {
		t.Skip("the splice path is Linux-only")
	}
	for len(relayPipes) > 0 { // no pooled pipe to fall back on
		(<-relayPipes).Close()
	}
	newPipe = func(int) (*netsys.Pipe, error) { return nil, syscall.EMFILE }
	defer func() { newPipe = netsys.NewPipe }()
	a, a2 := tcpPair(t)
	b, b2 := tcpPair(t)
	done := make(chan error, 1)
	go func() {
		_, _, err := relay(a2, b, time.Minute, time.Now, nil, nil)
		done <- err
	}()
	a.Write([]byte("through a buffer"))
	a.CloseWrite()
	got, err := io.ReadAll(b2)
	if err != nil || string(got) != "through a buffer" {
		t.Fatalf("read %q, %v", got, err)
	}
	b2.Close()
	if err := <-done; err != nil {
		t.Errorf("relay ended with %v", err)
	}
}

// TestShortHopCCOption: Options.ShortHopCC's zero value is reno, "off"
// turns the short-hop tuning off, another name is kept, and a string that
// is no congestion control name is refused with ErrConfig.
func TestShortHopCCOption(t *testing.T) {
	cfg, err := ParseConfig("t.yaml", []byte("listen: [127.0.0.1:0]"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ opt, want string }{{"", "reno"}, {"off", ""}, {"cubic", "cubic"}} {
		s, err := NewServer(cfg, &DialerEgress{Dialer: testDialer()}, Options{ShortHopCC: c.opt})
		if err != nil {
			t.Fatalf("ShortHopCC %q: %v", c.opt, err)
		}
		if s.hop.cc != c.want || s.hop.switched == nil {
			t.Errorf("ShortHopCC %q: switches to %q (counted %v), want %q", c.opt, s.hop.cc, s.hop.switched != nil, c.want)
		}
	}
	for _, bad := range []string{"Reno", "bbr cubic", "a_very_long_name_x"} {
		if _, err := NewServer(cfg, &DialerEgress{Dialer: testDialer()}, Options{ShortHopCC: bad}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), bad) {
			t.Errorf("ShortHopCC %q: %v, want ErrConfig naming it", bad, err)
		}
	}
}
