package dial

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
)

// TestPlanAtRangeBounds checks that a port set that starts or ends exactly
// at a bound of the namespace's ephemeral range (40000-40999 here) is
// inside it, so Auto picks Kernel for TCP, while one port beyond either
// bound makes it Search, and forced Kernel refuses it.
func TestPlanAtRangeBounds(t *testing.T) {
	if !netnstest.InNetNS(t, netnstest.SetupCmd("sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40999")) {
		return
	}
	for _, tc := range []struct {
		ports string
		want  Strategy
	}{
		{"40000-40099", Kernel},
		{"40900-40999", Kernel},
		{"40000-40999", Kernel},
		{"40000", Kernel},
		{"40999", Kernel},
		{"39999-40099", Search},
		{"40900-41000", Search},
	} {
		d := &Dialer{Ports: tuple.MustParsePortSet(tc.ports)}
		if s, err := d.StrategyFor("tcp"); s != tc.want || err != nil {
			t.Errorf("ports %s: tcp strategy %v (%v), want %v", tc.ports, s, err, tc.want)
		}
		forced := &Dialer{Ports: tuple.MustParsePortSet(tc.ports), Strategy: Kernel}
		_, err := forced.StrategyFor("tcp")
		if (err == nil) != (tc.want == Kernel) {
			t.Errorf("ports %s: forced kernel: %v", tc.ports, err)
		}
	}
}

// TestReservedPortsHonoured checks that ports in ip_local_reserved_ports
// are never dialed from when the Dialer uses the namespace's range (no
// Ports), for both strategies and both protocols: 20 ports minus 5
// reserved give exactly 15 connections toward one destination, none from a
// reserved port, and the 16th dial is exhausted. An explicit port set that
// overlaps the reserved ports makes Auto choose Search for TCP (the kernel
// would skip them).
func TestReservedPortsHonoured(t *testing.T) {
	if !netnstest.InNetNS(t,
		netnstest.SetupCmd("sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40019"),
		netnstest.SetupCmd("sysctl", "-w", "net.ipv4.ip_local_reserved_ports=40005-40009")) {
		return
	}
	// The sinks listen outside the range, so that they take none of its
	// ports; each case dials from its own source.
	tport := holdListener(t, "tcp4", "127.0.1.1:7000").Port()
	u, err := net.ListenPacket("udp4", "127.0.1.1:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	uport := uint16(7000)
	reserved := tuple.MustParsePortSet("40005-40009")
	for i, tc := range []struct {
		network string
		s       Strategy
		port    uint16
	}{
		{"tcp", Kernel, tport}, {"tcp", Search, tport}, {"udp", Kernel, uport}, {"udp", Search, uport},
	} {
		d := &Dialer{Sources: []netip.Addr{v4src(1 + i)}, Strategy: tc.s}
		dst := netip.AddrPortFrom(v4dst(1), tc.port).String()
		var cs []net.Conn
		var err error
		for range 16 {
			var c net.Conn
			if c, err = d.Dial(tc.network, dst); err != nil {
				break
			}
			cs = append(cs, c)
			if p := fourTuple(c)[0].Port(); reserved.Contains(p) || p < 40000 || p > 40019 {
				t.Errorf("%s %v: dialed from port %d (reserved 40005-40009, range 40000-40019)", tc.network, tc.s, p)
			}
		}
		if len(cs) != 15 || !errors.Is(err, ErrExhausted) {
			t.Errorf("%s %v: %d connections, then %v; want 15, then ErrExhausted", tc.network, tc.s, len(cs), err)
		}
		for _, c := range cs {
			closeRST(c)
		}
	}
	d := &Dialer{Ports: tuple.MustParsePortSet("40000-40019")}
	if s, err := d.StrategyFor("tcp"); s != Search || err != nil {
		t.Errorf("ports overlapping the reserved ones: tcp strategy %v (%v), want search", s, err)
	}
}

// TestPortSetWithZero checks that port 0 in a port set is never a source
// port: with {0, 20000-20004} every conn comes from 20000-20004 (never a
// port the kernel picked), exactly 5 connect toward one destination, and
// a forced Kernel strategy refuses a set starting at 0.
func TestPortSetWithZero(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	set := tuple.MustParsePortSet("0,20000-20004")
	tport := tcpSink(t, false)
	uport := uint16(udpSink(t, false).LocalAddr().(*net.UDPAddr).Port)
	for _, tc := range []struct {
		network string
		port    uint16
	}{{"tcp", tport}, {"udp", uport}} {
		d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: set}
		dst := netip.AddrPortFrom(v4dst(1), tc.port).String()
		var cs []net.Conn
		var err error
		for range 6 {
			var c net.Conn
			if c, err = d.Dial(tc.network, dst); err != nil {
				break
			}
			cs = append(cs, c)
			if p := fourTuple(c)[0].Port(); p < 20000 || p > 20004 {
				t.Errorf("%s: port set %v dialed from port %d", tc.network, set, p)
			}
		}
		if len(cs) != 5 || !errors.Is(err, ErrExhausted) {
			t.Errorf("%s: %d connections, then %v; want 5, then ErrExhausted", tc.network, len(cs), err)
		}
		closeAll(cs)
	}
	only := &Dialer{Ports: tuple.MustParsePortSet("0")}
	if _, err := only.Dial("tcp", netip.AddrPortFrom(v4dst(1), tport).String()); err == nil {
		t.Error("port set {0} dialed")
	}
	forced := &Dialer{Ports: tuple.MustParsePortSet("0-40005"), Strategy: Kernel}
	if _, err := forced.StrategyFor("tcp"); !errors.Is(err, ErrStrategy) {
		t.Errorf("forced kernel with a set from 0: %v, want ErrStrategy", err)
	}
}

// TestMemoLifetimeDocumented pins the taken-port memo's lifetime as
// docs/dial.md states it, in seconds rather than through memoTTL: a port
// found taken is skipped (fresh) for at least 2.5 s and at most 5 s after it
// was last found taken, then only re-probed (at most 4 per first pass).
func TestMemoLifetimeDocumented(t *testing.T) {
	if memoReprobe != 4 {
		t.Errorf("memoReprobe = %d; docs/dial.md says 4", memoReprobe)
	}
	s := newSelector()
	clk := newFakeClock()
	s.now = clk.now
	k := holdKey{proto: tuple.TCP, src: netip.MustParseAddr("127.0.0.1"), dst: netip.MustParseAddrPort("127.0.1.1:80")}
	markTaken(s, k, 1, 10) // at the start of a generation: the longest life
	clk.add(2500*time.Millisecond - time.Millisecond)
	markTaken(s, k, 2, 10) // at the end of that generation: the shortest
	clk.add(time.Millisecond)
	// Now 2.5 s after the first mark, 1 ms after the second.
	if !s.memoised(k, 1) || !s.memoised(k, 2) {
		t.Fatal("a mark is not fresh 2.5 s after it was made")
	}
	clk.add(2500*time.Millisecond - 2*time.Millisecond) // 4.998 s and 2.499 s
	if !s.memoised(k, 1) || !s.memoised(k, 2) {
		t.Fatalf("marks of 4.998 s (%v) and 2.499 s (%v): want both fresh", s.memoised(k, 1), s.memoised(k, 2))
	}
	clk.add(2 * time.Millisecond) // 5.000 s and 2.501 s
	if s.memoised(k, 1) || s.memoised(k, 2) {
		t.Fatalf("marks of 5.0 s (%v) and 2.501 s (%v): want both stale", s.memoised(k, 1), s.memoised(k, 2))
	}
}
