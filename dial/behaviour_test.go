package dial

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
)

// TestReleaseReuse checks that closing a Search-strategy TCP conn gives its
// port back: with one port and one destination, a second dial is exhausted
// until the first conn closes, then gets the same 4-tuple.
func TestReleaseReuse(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dst := netip.AddrPortFrom(v4dst(1), uint16(ln.Addr().(*net.TCPAddr).Port)).String()
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search}
	c1, err := d.Dial("tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c1.(*TCPConn); !ok {
		t.Fatalf("Search conn is %T, want *TCPConn", c1)
	}
	if _, err := d.Dial("tcp", dst); !errors.Is(err, ErrExhausted) {
		t.Fatalf("second dial: %v, want ErrExhausted", err)
	}
	// The server closes first, so TIME_WAIT stays on its side; the client
	// reads EOF, then closes.
	s1 := <-accepted
	s1.Close()
	if _, err := io.Copy(io.Discard, c1); err != nil {
		t.Fatal(err)
	}
	want := fourTuple(c1)
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	c2, err := d.Dial("tcp", dst)
	if err != nil {
		t.Fatalf("dial after close: %v", err)
	}
	defer c2.Close()
	if got := fourTuple(c2); got != want {
		t.Fatalf("after close got %v, want %v", got, want)
	}
	if n := d.st.sel.holding(holdKey{proto: tuple.TCP, src: v4src(1), dst: netip.MustParseAddrPort(dst)}); n != 1 {
		t.Fatalf("dialer holds %d ports toward %s, want 1", n, dst)
	}
	c2.Close()
	c2.Close() // a second Close releases nothing more
	if len(d.st.sel.held) != 0 {
		t.Fatalf("hold sets left after every conn closed: %d", len(d.st.sel.held))
	}
}

// TestConcurrentExhaustion dials from many goroutines at once (Search, TCP
// and UDP; one Dialer, and two Dialers sharing the ports as two processes
// would): exactly 10 ports × 20 destinations = 200 dials succeed, with
// distinct 4-tuples, and the rest fail with ErrExhausted. Several rounds,
// since a lost race shows up only sometimes. Under UDPLockOwner two
// Dialers do not share a port (each port belongs to one of them at a
// time), so with two Dialers the test asks only for distinct 4-tuples,
// every dial accounted for, and at least half of the 200.
func TestConcurrentExhaustion(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	const ndst, workers, per, rounds = 20, 8, 30, 5 // 240 dials for 200 4-tuples
	ports := tuple.MustParsePortSet("20000-20009")
	for _, tc := range []struct {
		network string
		lock    UDPLock
	}{{"tcp", UDPLockAuto}, {"udp", UDPLockFile}, {"udp", UDPLockRegistry}, {"udp", UDPLockOwner}} {
		network := tc.network
		lockDir := t.TempDir() // shared by the Dialers, as by processes
		var port uint16
		if network == "tcp" {
			port = tcpSink(t, false)
		} else {
			port = uint16(udpSink(t, false).LocalAddr().(*net.UDPAddr).Port)
		}
		for _, ndialers := range []int{1, 2} {
			for round := range rounds {
				var dialers []*Dialer
				for range ndialers {
					dialers = append(dialers, &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: ports, Strategy: Search, UDPLock: tc.lock, LockDir: lockDir})
				}
				var mu sync.Mutex
				seen := map[[2]netip.AddrPort]bool{}
				var conns []net.Conn
				exhausted := 0
				var wg sync.WaitGroup
				for w := range workers {
					d := dialers[w%ndialers]
					wg.Go(func() {
						for i := range per {
							dst := netip.AddrPortFrom(v4dst(1+(w*per+i)%ndst), port)
							c, err := d.Dial(network, dst.String())
							mu.Lock()
							switch {
							case err == nil:
								ft := fourTuple(c)
								if seen[ft] {
									t.Errorf("%s: duplicate 4-tuple %v", network, ft)
								}
								seen[ft] = true
								conns = append(conns, c)
							case errors.Is(err, ErrExhausted):
								exhausted++
							default:
								t.Errorf("%s: %v", network, err)
							}
							mu.Unlock()
						}
					})
				}
				wg.Wait()
				for _, c := range conns {
					closeRST(c) // no TIME_WAIT to block the next round's 4-tuples
				}
				if want := ports.Len() * ndst; tc.lock == UDPLockOwner && ndialers > 1 {
					if len(conns)+exhausted != workers*per || len(conns) < want/2 {
						t.Fatalf("%s %v, %d dialers, round %d: %d conns and %d exhausted, want %d dials in all and at least %d conns", network, tc.lock, ndialers, round, len(conns), exhausted, workers*per, want/2)
					}
				} else if len(conns) != want || exhausted != workers*per-want {
					t.Fatalf("%s %v, %d dialer(s), round %d: %d conns and %d exhausted, want %d and %d", network, tc.lock, ndialers, round, len(conns), exhausted, want, workers*per-want)
				}
			}
		}
	}
}

// TestControlHook checks that the user's Control runs for every strategy
// with the destination, that its error aborts the dial, and that
// ControlContext gets the dial's context and takes precedence.
func TestControlHook(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	tport := tcpSink(t, false)
	uport := uint16(udpSink(t, false).LocalAddr().(*net.UDPAddr).Port)
	boom := errors.New("boom")
	for _, tc := range []struct {
		network string
		s       Strategy
		ports   string
	}{{"tcp", Kernel, "40000-40009"}, {"tcp", Search, "20000-20009"}, {"udp", Search, "20000-20009"}, {"udp", Kernel, "40000-40009"}} {
		port := tport
		if tc.network == "udp" {
			port = uport
		}
		dst := netip.AddrPortFrom(v4dst(1), port).String()
		var calls int
		var gotAddr string
		d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet(tc.ports), Strategy: tc.s,
			Control: func(network, address string, c syscall.RawConn) error {
				calls++
				gotAddr = address
				return c.Control(func(uintptr) {})
			}}
		c, err := d.Dial(tc.network, dst)
		if err != nil {
			t.Fatalf("%s %v: %v", tc.network, tc.s, err)
		}
		c.Close()
		if calls != 1 || gotAddr != dst {
			t.Errorf("%s %v: Control called %d times with %q", tc.network, tc.s, calls, gotAddr)
		}
		d = &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet(tc.ports), Strategy: tc.s,
			Control: func(string, string, syscall.RawConn) error { return boom }}
		if _, err := d.Dial(tc.network, dst); !errors.Is(err, boom) || errors.Is(err, ErrExhausted) {
			t.Errorf("%s %v: Control error gave %v", tc.network, tc.s, err)
		}
		// ControlContext gets the dial's context, and Control is then
		// ignored.
		var gotVal any
		d = &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet(tc.ports), Strategy: tc.s,
			Control: func(string, string, syscall.RawConn) error { return boom },
			ControlContext: func(ctx context.Context, _, _ string, _ syscall.RawConn) error {
				gotVal = ctx.Value(ctxKey{})
				return nil
			}}
		c, err = d.DialContext(context.WithValue(context.Background(), ctxKey{}, "v"), tc.network, dst)
		if err != nil {
			t.Fatalf("%s %v with ControlContext: %v", tc.network, tc.s, err)
		}
		c.Close()
		if gotVal != "v" {
			t.Errorf("%s %v: ControlContext saw context value %v, want the dial's", tc.network, tc.s, gotVal)
		}
	}
}

type ctxKey struct{}

// TestContextCanceled checks that a canceled context stops the dial with
// the context's error.
func TestContextCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, s := range []Strategy{Kernel, Search} {
		d := &Dialer{Strategy: s, Ports: tuple.MustParsePortSet("61000-61009")}
		if s == Kernel {
			d.Ports = tuple.PortSet{}
		}
		if _, err := d.DialContext(ctx, "tcp", "127.0.0.1:9"); !errors.Is(err, context.Canceled) {
			t.Errorf("%v: %v, want context.Canceled", s, err)
		}
	}
}

// TestTimeout checks that Timeout bounds a connect that gets no answer (the
// listener's accept queue is full, so its SYNs are dropped) and that the
// error reports Timeout() like net's.
func TestTimeout(t *testing.T) {
	if !netnstest.InNetNS(t, netnstest.SetupCmd("sysctl", "-w", "net.core.somaxconn=1")) {
		return
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0") // backlog 1, never accepted
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := ln.Addr().String()
	var fill []net.Conn
	defer func() { closeAll(fill) }()
	for _, s := range []Strategy{Kernel, Search} {
		d := &Dialer{Sources: []netip.Addr{v4src(1)}, Strategy: s, Timeout: 300 * time.Millisecond, MaxAttempts: 4}
		if s == Search {
			d.Ports = tuple.MustParsePortSet("20000-20099")
		}
		var err error
		for range 8 { // fill the accept queue, then one more dial must hang
			var c net.Conn
			if c, err = d.Dial("tcp", dst); err != nil {
				break
			}
			fill = append(fill, c)
		}
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() || errors.Is(err, ErrExhausted) {
			t.Fatalf("%v: dial to a full accept queue: %v, want a timeout", s, err)
		}
	}
}

// TestPSIDPortSet dials from an RFC 7597 PSID port set (63 ranges of 16
// ports) and checks every local port is in it.
func TestPSIDPortSet(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	set, err := tuple.PSIDPortSet(6, 6, 5)
	if err != nil {
		t.Fatal(err)
	}
	port := tcpSink(t, false)
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: set}
	var conns []net.Conn
	defer func() { closeAll(conns) }()
	for i := range 100 {
		c, err := d.Dial("tcp", netip.AddrPortFrom(v4dst(1+i%3), port).String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if lp := fourTuple(c)[0].Port(); !set.Contains(lp) {
			t.Fatalf("port %d is not in %v", lp, set)
		}
	}
}

// TestFullSourceDeferred checks that a source found full toward a
// destination is tried last by later dials (no wasted connect), and still
// tried before ErrExhausted.
func TestFullSourceDeferred(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	port := tcpSink(t, false)
	dst := netip.AddrPortFrom(v4dst(1), port).String()
	ports := tuple.MustParsePortSet("40000-40003")
	a, b := v4src(1), v4src(2)
	var conns []net.Conn
	defer func() { closeAll(conns) }()
	pre := &Dialer{Sources: []netip.Addr{a}, Ports: ports, Strategy: Kernel}
	for range ports.Len() {
		c, err := pre.Dial("tcp", dst)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	calls := 0
	d := &Dialer{Sources: []netip.Addr{a, b}, Ports: ports, Strategy: Kernel,
		Control: func(string, string, syscall.RawConn) error { calls++; return nil }}
	// Round robin starts at b, then a (full: found and remembered), b, then
	// a again, which is now tried last: one attempt, on b. (A failed
	// attempt on a costs more than one socket: net.Dialer retries a
	// connect from port 0 that fails with EADDRNOTAVAIL.)
	for i := range 4 {
		calls = 0
		c, err := d.Dial("tcp", dst)
		if err != nil {
			t.Fatalf("dial %d: %v", i+1, err)
		}
		conns = append(conns, c)
		if got := fourTuple(c)[0].Addr(); got != b {
			t.Fatalf("dial %d from %v, want %v", i+1, got, b)
		}
		switch {
		case i == 1 && calls < 2:
			t.Fatalf("dial 2 made %d socket attempts; it should have tried the full source first", calls)
		case i != 1 && calls != 1:
			t.Fatalf("dial %d made %d socket attempts, want 1", i+1, calls)
		}
	}
	if _, err := d.Dial("tcp", dst); !errors.Is(err, ErrExhausted) {
		t.Fatalf("dial with both sources full: %v, want ErrExhausted", err)
	}
}
