package dial

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
)

func TestBadInput(t *testing.T) {
	var d Dialer
	ctx := context.Background()
	for _, tc := range []struct{ network, address, want string }{
		{"tcp", "127.0.0.1", `dial: address "127.0.0.1"`},      // no port
		{"tcp", "127.0.0.1:http-nope", `bad port "http-nope"`}, // unknown service
		{"tcp", "bad!host:80", `dial: address "bad!host:80"`},  // not an address, and not a valid name (rejected without a DNS query)
		{"sctp", "127.0.0.1:80", `unknown network "sctp"`},
		{"tcp4", "[::1]:80", `::1 is not a tcp4 address`},
		{"udp6", "127.0.0.1:53", `127.0.0.1 is not a udp6 address`},
	} {
		_, err := d.DialContext(ctx, tc.network, tc.address)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Dial(%q, %q) = %v, want an error containing %q", tc.network, tc.address, err, tc.want)
		}
	}
	d3 := &Dialer{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1"), {}}}
	if _, err := d3.Dial("udp", "127.0.0.1:53"); err == nil || !strings.Contains(err.Error(), "Sources[1] is the zero netip.Addr") {
		t.Errorf("zero source address: %v", err)
	}
	d2 := &Dialer{Sources: []netip.Addr{netip.MustParseAddr("::1")}}
	if _, err := d2.Dial("tcp", "127.0.0.1:80"); err == nil || !strings.Contains(err.Error(), "no source address of the destination's family") {
		t.Errorf("IPv4 destination with only an IPv6 source: %v", err)
	}
}

// TestSourceNotLocal checks that a source the host does not have is named
// in the error, for every strategy, with the errno still wrapped.
func TestSourceNotLocal(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	port := tcpSink(t, false)
	dst := netip.AddrPortFrom(v4dst(1), port).String()
	bad := netip.MustParseAddr("192.0.2.9") // TEST-NET-1, not configured in this namespace
	for _, tc := range []struct {
		network string
		s       Strategy
		ports   string
	}{
		{"tcp", Kernel, ""}, {"tcp", Kernel, "40000-40009"}, {"tcp", Search, "20000-20009"},
		{"udp", Search, "20000-20009"}, {"udp", Kernel, ""},
	} {
		d := &Dialer{Sources: []netip.Addr{bad}, Strategy: tc.s}
		if tc.ports != "" {
			d.Ports = tuple.MustParsePortSet(tc.ports)
		}
		_, err := d.Dial(tc.network, dst)
		if err == nil || !strings.Contains(err.Error(), "dial: source 192.0.2.9 is not an address of this host") || !errors.Is(err, syscall.EADDRNOTAVAIL) {
			t.Errorf("%s %v: %v", tc.network, tc.s, err)
		}
		if errors.Is(err, ErrExhausted) {
			t.Errorf("%s %v: a bad source reported as exhaustion: %v", tc.network, tc.s, err)
		}
	}
}

// TestPlanChoice checks what Auto picks, that the reason for the user-space
// path is logged, and that a forced strategy that cannot work says so.
func TestPlanChoice(t *testing.T) {
	if !netnstest.InNetNS(t, netnstest.SetupCmd("sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40999")) {
		return
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d := &Dialer{Ports: tuple.MustParsePortSet("30000-30099"), Logger: log}
	st := d.init()
	if st.tcp.strategy != Search || st.tcp.err != nil {
		t.Fatalf("tcp plan %+v, want search", st.tcp)
	}
	if !strings.Contains(buf.String(), "outside the namespace's ephemeral range 40000-40999") {
		t.Fatalf("debug log does not explain the user-space path:\n%s", buf.String())
	}
	d = &Dialer{Ports: tuple.MustParsePortSet("40100-40199")}
	ts, terr := d.StrategyFor("tcp6")
	us, uerr := d.StrategyFor("udp")
	if ts != Kernel || us != Search || terr != nil || uerr != nil {
		t.Fatalf("inside the ephemeral range: tcp %v (%v) udp %v (%v), want kernel and search", ts, terr, us, uerr)
	}
	d = &Dialer{Ports: tuple.MustParsePortSet("40100-40199,40300-40399"), Strategy: Kernel}
	if _, err := d.Dial("tcp", "127.0.0.1:1"); !errors.Is(err, ErrStrategy) || !strings.Contains(err.Error(), "not one range") {
		t.Fatalf("forced kernel with two ranges: %v", err)
	}
	d = &Dialer{Ports: tuple.MustParsePortSet("30000-30099"), Strategy: Kernel}
	if _, err := d.Dial("udp", "127.0.0.1:1"); !errors.Is(err, ErrStrategy) || !strings.Contains(err.Error(), "outside the namespace's ephemeral range") {
		t.Fatalf("forced kernel outside the ephemeral range: %v", err)
	}
	// With no port set, Search uses the ephemeral range.
	d = &Dialer{Strategy: Search}
	if st := d.init(); st.tcp.ports != tuple.MustParsePortSet("40000-40999") {
		t.Fatalf("search without ports uses %v", st.tcp.ports)
	}
}

// TestMultiSource checks that dials rotate over the sources, that a source
// with no free port toward the destination is skipped, and that exhaustion
// comes only when every source is full.
func TestMultiSource(t *testing.T) {
	for _, tc := range []struct {
		name    string
		network string
		s       Strategy
		ports   string
		v6      bool
	}{
		{"tcp4-kernel", "tcp", Kernel, "40000-40004", false},
		{"tcp4-search", "tcp", Search, "20000-20004", false},
		{"udp4-search", "udp", Search, "20000-20004", false},
		{"tcp6-search", "tcp", Search, "20000-20004", true},
		{"udp6-search", "udp", Search, "20000-20004", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var setup [][]string
			if tc.v6 {
				setup = v6Setup(1, 2)
			}
			if !netnstest.InNetNS(t, setup...) {
				return
			}
			srcs := []netip.Addr{v4src(1), v4src(2)}
			dstAddr := v4dst(1)
			if tc.v6 {
				srcs, dstAddr = []netip.Addr{v6src(1), v6src(2)}, v6dst(1)
			}
			// An IPv6 source among IPv4 ones (or the reverse) is skipped.
			other := netip.MustParseAddr("::1")
			if tc.v6 {
				other = netip.MustParseAddr("127.0.0.1")
			}
			var port uint16
			if tc.network == "udp" {
				port = uint16(udpSink(t, tc.v6).LocalAddr().(*net.UDPAddr).Port)
			} else {
				port = tcpSink(t, tc.v6)
			}
			dst := netip.AddrPortFrom(dstAddr, port).String()
			ports := tuple.MustParsePortSet(tc.ports)
			d := &Dialer{Sources: []netip.Addr{srcs[0], other, srcs[1]}, Ports: ports, Strategy: tc.s}
			var conns []net.Conn
			defer func() { closeAll(conns) }()
			per := map[netip.Addr]int{}
			for i := range 2 * ports.Len() {
				c, err := d.Dial(tc.network, dst)
				if err != nil {
					t.Fatalf("dial %d: %v", i, err)
				}
				conns = append(conns, c)
				per[fourTuple(c)[0].Addr()]++
				// While both sources have room, the first dials alternate.
				if i == 1 && per[srcs[0]] != 1 {
					t.Fatalf("first two dials used %v, want one per source", per)
				}
			}
			if per[srcs[0]] != ports.Len() || per[srcs[1]] != ports.Len() {
				t.Fatalf("connections per source %v, want %d each", per, ports.Len())
			}
			if _, err := d.Dial(tc.network, dst); !errors.Is(err, ErrExhausted) {
				t.Fatalf("dial with both sources full: %v, want ErrExhausted", err)
			}
		})
	}
}

// TestUDPKernelNoSharing checks the forced Kernel strategy for UDP: each
// socket gets its own port from the set, so the set bounds the total.
func TestUDPKernelNoSharing(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "udp4", true: "udp6"}[v6], func(t *testing.T) {
			var setup [][]string
			if v6 {
				setup = v6Setup(11, 1)
			}
			if !netnstest.InNetNS(t, setup...) {
				return
			}
			src, dstOf := v4src(1), v4dst
			if v6 {
				src, dstOf = v6src(1), v6dst
			}
			port := uint16(udpSink(t, v6).LocalAddr().(*net.UDPAddr).Port)
			ports := tuple.MustParsePortSet("40000-40009")
			d := &Dialer{Sources: []netip.Addr{src}, Ports: ports, Strategy: Kernel}
			var conns []net.Conn
			defer func() { closeAll(conns) }()
			used := map[uint16]bool{}
			for i := 1; i <= ports.Len(); i++ {
				c, err := d.Dial("udp", netip.AddrPortFrom(dstOf(i), port).String())
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
				lp := fourTuple(c)[0].Port()
				if used[lp] || !ports.Contains(lp) {
					t.Fatalf("port %d reused or outside %v", lp, ports)
				}
				used[lp] = true
			}
			if _, err := d.Dial("udp", netip.AddrPortFrom(dstOf(11), port).String()); !errors.Is(err, ErrExhausted) {
				t.Fatalf("11th socket: %v, want ErrExhausted", err)
			}
		})
	}
}

// TestUDPTraffic sends datagrams on Search-strategy UDP conns that share one
// source port toward three destinations, and checks that each destination
// sees the shared source and that each reply reaches only its own socket.
func TestUDPTraffic(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	const port = 7000
	var sinks []*net.UDPConn
	for i := 1; i <= 3; i++ {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(v4dst(i), port)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sinks = append(sinks, c)
	}
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search}
	var conns []net.Conn
	defer func() { closeAll(conns) }()
	for i := 1; i <= 3; i++ {
		c, err := d.Dial("udp", netip.AddrPortFrom(v4dst(i), port).String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	buf := make([]byte, 64)
	for i, c := range conns {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		n, from, err := sinks[i].ReadFromUDPAddrPort(buf)
		if err != nil || n != 1 || buf[0] != byte(i) {
			t.Fatalf("sink %d read %v %v", i, buf[:n], err)
		}
		if from != netip.AddrPortFrom(v4src(1), 20000) {
			t.Fatalf("datagram from %v, want %v:20000", from, v4src(1))
		}
		if _, err := sinks[i].WriteToUDPAddrPort([]byte{0xA0 + byte(i)}, from); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second)) // a missing reply fails instead of hanging
		n, err := c.Read(buf)
		if err != nil || n != 1 || buf[0] != 0xA0+byte(i) {
			t.Fatalf("conn %d read %x %v, want its own reply %x", i, buf[:n], err, 0xA0+i)
		}
	}
}

func FuzzSplitAddress(f *testing.F) {
	f.Add("127.0.0.1:80")         // IPv4 literal
	f.Add("[fd00::1:1]:443")      // IPv6 literal
	f.Add("[::ffff:10.0.0.1]:53") // IPv4-mapped, unmapped to IPv4
	f.Add("[fe80::1%eth0]:22")    // zone
	f.Add(":8080")                // empty host: loopback
	f.Add("example.net:https")    // name and service name
	f.Add("127.0.0.1")            // missing port
	f.Add("127.0.0.1:70000")      // port out of range
	f.Add("[::1]:")               // empty port
	f.Fuzz(func(t *testing.T, address string) {
		host, lit, port, name, err := splitAddress(address, famAny)
		if err != nil {
			return
		}
		if name != "" && port != 0 {
			t.Fatalf("%q: both a port %d and a service name %q", address, port, name)
		}
		if lit.IsValid() && name == "" {
			back := netip.AddrPortFrom(lit, port).String()
			if got, err := netip.ParseAddrPort(back); err != nil || got.Addr() != lit || got.Port() != port {
				t.Fatalf("%q -> %v port %d does not round-trip (%q)", address, lit, port, back)
			}
		}
		if !lit.IsValid() && host == "" {
			t.Fatalf("%q: empty host without a loopback literal", address)
		}
	})
}

// TestResolverAndDeadline checks that names go through the Dialer's
// Resolver (here one whose DNS transport fails at once, so nothing leaves
// the host) and that a past Deadline fails the dial as a timeout.
func TestResolverAndDeadline(t *testing.T) {
	boom := errors.New("no DNS in tests")
	var calls atomic.Int32 // the resolver looks up A and AAAA at once
	d := &Dialer{Resolver: &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		calls.Add(1)
		return nil, boom
	}}}
	_, err := d.Dial("tcp", "portspace-test.invalid:80")
	if err == nil || !strings.Contains(err.Error(), `dial: address "portspace-test.invalid:80"`) || calls.Load() == 0 {
		t.Errorf("dial through the failing resolver: %v after %d resolver dials", err, calls.Load())
	}
	d = &Dialer{Deadline: time.Now().Add(-time.Second)}
	_, err = d.Dial("tcp", "127.0.0.1:9")
	var ne net.Error
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("dial after the deadline: %v, want a timeout", err)
	}
}

// TestTimeoutUnderCallerDeadline checks that the Dialer's Timeout and
// Deadline still bound a dial whose context has a later deadline of its
// own, or none (the Dialer then makes a context of its own), and that a caller's
// earlier deadline bounds it when the Dialer's is later (no context of its
// own).
func TestTimeoutUnderCallerDeadline(t *testing.T) {
	late, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	for _, d := range []*Dialer{{Timeout: time.Nanosecond}, {Deadline: time.Now().Add(-time.Second)}, {Timeout: time.Hour, Deadline: time.Now().Add(-time.Second)}} {
		if _, err := d.DialContext(late, "udp4", "127.0.0.1:9"); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Timeout %v, Deadline %v under a caller's deadline an hour away: %v, want a timeout", d.Timeout, d.Deadline, err)
		}
	}
	// A caller's context without a deadline: the Dialer's bounds the dial.
	for _, d := range []*Dialer{{Timeout: time.Nanosecond}, {Deadline: time.Now().Add(-time.Second)}} {
		if _, err := d.DialContext(context.Background(), "udp4", "127.0.0.1:9"); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Timeout %v, Deadline %v under a caller's context without a deadline: %v, want a timeout", d.Timeout, d.Deadline, err)
		}
	}
	early, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	d := &Dialer{Timeout: time.Hour}
	if _, err := d.DialContext(early, "udp4", "127.0.0.1:9"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Timeout an hour under a caller's past deadline: %v, want a timeout", err)
	}
	if dl, ok := (&Dialer{}).deadline(time.Now()); ok {
		t.Errorf("deadline of a Dialer with neither Timeout nor Deadline: %v, want none", dl)
	}
}

// TestResolveLiteralAllocs pins that an IP-literal destination with a
// numeric port is resolved without an allocation (BenchmarkDialTCP).
func TestResolveLiteralAllocs(t *testing.T) {
	d := &Dialer{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	st := d.init()
	ctx := context.Background()
	var buf [1]netip.AddrPort
	n := testing.AllocsPerRun(1000, func() {
		dsts, err := d.resolve(ctx, st, "tcp4", fam4, "127.0.0.2:443", &buf)
		if err != nil || len(dsts) != 1 || dsts[0] != netip.MustParseAddrPort("127.0.0.2:443") {
			t.Fatalf("resolve: %v, %v", dsts, err)
		}
	})
	if n != 0 {
		t.Errorf("%v allocations per literal resolve, want 0", n)
	}
}
