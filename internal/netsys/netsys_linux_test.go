package netsys

import (
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portspace/portspace/internal/netnstest"
)

var lo4 = netip.MustParseAddr("127.0.0.1")

// boundUDP returns a UDP socket with SO_REUSEADDR bound to local.
func boundUDP(t *testing.T, local netip.AddrPort) (int, netip.AddrPort, uint64) {
	t.Helper()
	fd, err := UDPSocket(local.Addr().Is6())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := SetReuseAddr(fd, true); err != nil {
		t.Fatal(err)
	}
	if err := Bind(fd, local); err != nil {
		t.Fatal(err)
	}
	la, err := localAddr(fd)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Cookie(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, la, c
}

// TestLookupUDPExact checks the exact sock_diag lookup against the kernel's
// delivery rules: an unconnected bound socket is found for any remote, a
// socket connected to the remote wins over it, another remote still gets
// the unconnected one, and an unused port finds nothing.
func TestLookupUDPExact(t *testing.T) {
	if !Probe().UDPDiag {
		t.Fatal("the exact sock_diag UDP lookup does not work on this kernel")
	}
	for _, fam := range []struct {
		lo            netip.Addr
		r1, r2, other string
	}{
		{lo4, "127.0.0.2:5000", "127.0.0.3:5000", "127.0.0.9"},
		{netip.IPv6Loopback(), "[::1]:5000", "[::1]:5001", "::2"},
	} {
		_, local, cookieA := boundUDP(t, netip.AddrPortFrom(fam.lo, 0))
		r1 := netip.MustParseAddrPort(fam.r1)
		r2 := netip.MustParseAddrPort(fam.r2)
		if got, found, err := LookupUDP(local, r1); err != nil || !found || got != cookieA {
			t.Fatalf("lookup %v->%v = %#x, %v, %v; want A %#x", r1, local, got, found, err, cookieA)
		}
		fdB, _, cookieB := boundUDP(t, local)
		if cookieA == cookieB {
			t.Fatal("two sockets share a cookie")
		}
		if err := Connect(fdB, r1); err != nil {
			t.Fatal(err)
		}
		if got, found, err := LookupUDP(local, r1); err != nil || !found || got != cookieB {
			t.Fatalf("lookup %v->%v = %#x, %v, %v; want connected B %#x", r1, local, got, found, err, cookieB)
		}
		if got, found, err := LookupUDP(local, r2); err != nil || !found || got != cookieA {
			t.Fatalf("lookup %v->%v = %#x, %v, %v; want unconnected A %#x", r2, local, got, found, err, cookieA)
		}
		unused := netip.AddrPortFrom(netip.MustParseAddr(fam.other), local.Port())
		if _, found, err := LookupUDP(unused, r1); err != nil || found {
			t.Fatalf("lookup of an address nobody bound: found=%v err=%v", found, err)
		}
	}
}

// TestReuseAddrDuplicates documents why the cooperative lock exists: with
// SO_REUSEADDR alone the kernel lets two UDP sockets connect the same
// 4-tuple, and only one of them, the newer, receives the traffic. It also
// checks the fact the lock rests on: the exact lookup names the socket that
// the kernel actually delivers the datagram to.
func TestReuseAddrDuplicates(t *testing.T) {
	sender, r, _ := boundUDP(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), 0))
	_, local, _ := boundUDP(t, netip.AddrPortFrom(lo4, 0))
	fdA, _, cookieA := boundUDP(t, local)
	fdB, _, cookieB := boundUDP(t, local)
	if err := Connect(fdA, r); err != nil {
		t.Fatal(err)
	}
	if err := Connect(fdB, r); err != nil {
		t.Fatalf("the kernel refused a duplicate connected 4-tuple (%v); the lock would be unnecessary", err)
	}
	got, found, err := LookupUDP(local, r)
	if err != nil || !found || (got != cookieA && got != cookieB) {
		t.Fatalf("lookup %v->%v = %#x, %v, %v; want one of the connected sockets %#x, %#x", r, local, got, found, err, cookieA, cookieB)
	}
	if err := unix.Sendto(sender, []byte("x"), 0, sockaddr(local)); err != nil {
		t.Fatal(err)
	}
	fds := []unix.PollFd{{Fd: int32(fdA), Events: unix.POLLIN}, {Fd: int32(fdB), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 5000)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			t.Fatalf("no socket received the datagram: %v", err)
		}
		break
	}
	a, b := fds[0].Revents&unix.POLLIN != 0, fds[1].Revents&unix.POLLIN != 0
	switch {
	case a == b:
		t.Fatalf("datagram readable on A: %v, on B: %v; want exactly one", a, b)
	case b != (got == cookieB):
		t.Fatalf("the datagram went to B: %v, but the lookup named %#x (A %#x, B %#x)", b, got, cookieA, cookieB)
	case !b:
		t.Fatalf("the older socket A received the datagram; docs say the newer one takes the traffic")
	}
}

// TestLockBlocksBind checks the lock itself: once a socket clears
// SO_REUSEADDR, a cooperating socket cannot bind its port.
func TestLockBlocksBind(t *testing.T) {
	fdA, local, _ := boundUDP(t, netip.AddrPortFrom(lo4, 0))
	if err := SetReuseAddr(fdA, false); err != nil {
		t.Fatal(err)
	}
	fd, err := UDPSocket(false)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	SetReuseAddr(fd, true)
	if err := Bind(fd, local); !IsAddrInUse(err) {
		t.Fatalf("bind while locked: %v, want EADDRINUSE", err)
	}
}

func TestLocalPortRangeRoundTrip(t *testing.T) {
	if !Probe().LocalPortRange {
		t.Skip("kernel without IP_LOCAL_PORT_RANGE")
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := SetLocalPortRange(fd, 40000, 40999); err != nil {
		t.Fatal(err)
	}
	got, err := LocalPortRange(fd)
	if err != nil || got != (PortRange{40000, 40999}) {
		t.Fatalf("IP_LOCAL_PORT_RANGE on an IPv6 socket read back %v, %v", got, err)
	}
}

func TestEphemeralRange(t *testing.T) {
	r, err := EphemeralRange()
	if err != nil || r.Lo == 0 || r.Lo > r.Hi {
		t.Fatalf("EphemeralRange() = %v, %v", r, err)
	}
}

func TestRouteSource(t *testing.T) {
	got, err := RouteSource(netip.MustParseAddr("127.0.0.5"))
	if err != nil || !got.IsLoopback() {
		t.Fatalf("RouteSource(127.0.0.5) = %v, %v", got, err)
	}
}

// TestLocalPortRangeOnlyNarrows checks the kernel facts the Kernel strategy
// relies on, in a namespace whose ip_local_port_range is 40000-40999: a
// per-socket range inside it confines connect's port choice (so lo | hi<<16
// is the packing the kernel reads), and a range outside it is ignored, not
// honoured: the option only narrows the sysctl.
func TestLocalPortRangeOnlyNarrows(t *testing.T) {
	if !Probe().LocalPortRange {
		t.Skip("kernel without IP_LOCAL_PORT_RANGE")
	}
	if !netnstest.InNetNS(t, netnstest.SetupCmd("sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40999")) {
		return
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	connectPort := func(lo, hi uint16) uint16 {
		t.Helper()
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		// Close with a reset: no TIME_WAIT holds the 4-tuple afterwards.
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1}); err != nil {
			t.Fatal(err)
		}
		if err := SetLocalPortRange(fd, lo, hi); err != nil {
			t.Fatal(err)
		}
		if err := Connect(fd, dst); err != nil {
			t.Fatal(err)
		}
		la, err := localAddr(fd)
		if err != nil {
			t.Fatal(err)
		}
		return la.Port()
	}
	for range 20 {
		if p := connectPort(40100, 40104); p < 40100 || p > 40104 {
			t.Fatalf("range 40100-40104 inside the sysctl: connect chose port %d", p)
		}
		if p := connectPort(30000, 30009); p < 40000 || p > 40999 {
			t.Fatalf("range 30000-30009 outside the sysctl: connect chose port %d, want one of 40000-40999", p)
		}
	}
}

// TestOtherUnboundUDP checks the in-flight check of the cooperative lock:
// a second socket bound to the same local end and not connected is seen
// (whichever socket asks), a connected one is not, nor is a socket bound to
// another port, or to the same port on another local address, or the asker
// itself.
func TestOtherUnboundUDP(t *testing.T) {
	for _, lo := range []netip.Addr{lo4, netip.IPv6Loopback()} {
		d, err := OpenDiag()
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		_, local, cookieA := boundUDP(t, netip.AddrPortFrom(lo, 0))
		if other, err := d.OtherUnboundUDP(local, cookieA); err != nil || other {
			t.Fatalf("%v alone: other=%v err=%v", local, other, err)
		}
		_, elsewhere, _ := boundUDP(t, netip.AddrPortFrom(lo, 0))
		if elsewhere.Port() == local.Port() {
			t.Fatal("two wildcard binds got the same port")
		}
		if other, err := d.OtherUnboundUDP(local, cookieA); err != nil || other {
			t.Fatalf("socket on another port %v counted: other=%v err=%v", elsewhere, other, err)
		}
		if lo.Is4() {
			// The same port on another local address is another endpoint.
			sameport := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), local.Port())
			boundUDP(t, sameport)
			if other, err := d.OtherUnboundUDP(local, cookieA); err != nil || other {
				t.Fatalf("socket on %v counted as in flight on %v: other=%v err=%v", sameport, local, other, err)
			}
		}
		fdB, _, cookieB := boundUDP(t, local)
		for _, asker := range []uint64{cookieA, cookieB} {
			if other, err := d.OtherUnboundUDP(local, asker); err != nil || !other {
				t.Fatalf("two unconnected sockets on %v, asked by %#x: other=%v err=%v", local, asker, other, err)
			}
		}
		remote := netip.AddrPortFrom(lo, 9)
		if err := Connect(fdB, remote); err != nil {
			t.Fatal(err)
		}
		if other, err := d.OtherUnboundUDP(local, cookieA); err != nil || other {
			t.Fatalf("connected socket counted as unbound: other=%v err=%v", other, err)
		}
	}
}
