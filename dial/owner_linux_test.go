package dial

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
)

// bindErr binds a new raw UDP socket with the given options to at and
// closes it; it returns bind's error (nil when another program could join
// the port).
func bindErr(t *testing.T, at netip.AddrPort, reuseAddr, reusePort bool) error {
	t.Helper()
	family := unix.AF_INET
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(at.Port()), Addr: at.Addr().As4()}
	if at.Addr().Is6() {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(at.Port()), Addr: at.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if reuseAddr {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			t.Fatal(err)
		}
	}
	if reusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			t.Fatal(err)
		}
	}
	return unix.Bind(fd, sa)
}

// wantPortOwned checks that no other socket can bind local: not a plain
// one, not one with SO_REUSEADDR (a program of the published protocol, or
// one without any), not one with SO_REUSEPORT under our uid.
func wantPortOwned(t *testing.T, local netip.AddrPort, when string) {
	t.Helper()
	for _, o := range []struct {
		name       string
		addr, port bool
	}{{"plain", false, false}, {"SO_REUSEADDR", true, false}, {"SO_REUSEPORT", false, true}, {"SO_REUSEADDR+SO_REUSEPORT", true, true}} {
		if err := bindErr(t, local, o.addr, o.port); !errors.Is(err, unix.EADDRINUSE) {
			t.Fatalf("%s: a %s bind of the owned %v: %v, want EADDRINUSE", when, o.name, local, err)
		}
	}
}

// TestUDPOwnerInterop checks UDPLockOwner against other programs: while
// the Dialer holds a conn on the port (the exclusive bind, then a second
// conn through the SO_REUSEPORT window, then after the first conn, the
// first socket on the port, is closed), no other socket can bind the port,
// and a UDPLockFile Dialer (the published protocol) finds it busy; the
// owner cannot take a port that a SO_REUSEADDR socket or a UDPLockFile
// Dialer holds; once the owner closes its last conn the port is free.
func TestUDPOwnerInterop(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	sink := udpSink(t, false)
	port := uint16(sink.LocalAddr().(*net.UDPAddr).Port)
	dst := func(i int) string { return netip.AddrPortFrom(v4dst(i), port).String() }
	const p = 24000
	local := netip.AddrPortFrom(v4src(1), p)
	one := tuple.PortSetOf(tuple.SinglePort(p))
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: one, Strategy: Search, UDPLock: UDPLockOwner}
	c1, err := d.Dial("udp", dst(1))
	if err != nil {
		t.Fatal(err)
	}
	wantPortOwned(t, local, "after the exclusive bind")
	c2, err := d.Dial("udp", dst(2))
	if err != nil {
		t.Fatal(err)
	}
	if fourTuple(c2)[0] != local || d.st.exclusive.Load() != 1 {
		t.Fatalf("second conn from %v, %d exclusive binds; want %v, 1", fourTuple(c2)[0], d.st.exclusive.Load(), local)
	}
	wantPortOwned(t, local, "after a shared dial")
	file := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: one, Strategy: Search, UDPLock: UDPLockFile, LockDir: t.TempDir()}
	if c, err := file.Dial("udp", dst(3)); !errors.Is(err, ErrExhausted) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("a UDPLockFile dial from the owned port: %v, want ErrExhausted", err)
	}
	// The first socket of the port closes: the other keeps the port.
	c1.Close()
	wantPortOwned(t, local, "after the first socket of the port closed")
	c3, err := d.Dial("udp", dst(3))
	if err != nil {
		t.Fatalf("a dial beside the remaining socket: %v", err)
	}
	wantPortOwned(t, local, "after a third dial")
	c2.Close()
	wantPortOwned(t, local, "after the second socket closed")
	c3.Close()
	if err := bindErr(t, local, true, false); err != nil {
		t.Fatalf("with every conn closed the port is still held: %v", err)
	}

	// The other way: ports other programs hold are busy for the owner.
	const q, r = 24001, 24002
	holderSock{reuseAddr: true, bind: netip.AddrPortFrom(v4src(1), q), peer: netip.MustParseAddrPort(dst(1))}.open(t)
	dq := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.PortSetOf(tuple.SinglePort(q)), Strategy: Search, UDPLock: UDPLockOwner}
	if c, err := dq.Dial("udp", dst(2)); !errors.Is(err, ErrExhausted) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("an owner dial from a port a SO_REUSEADDR socket holds: %v, want ErrExhausted", err)
	}
	fr := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.PortSetOf(tuple.SinglePort(r)), Strategy: Search, UDPLock: UDPLockFile, LockDir: t.TempDir()}
	fc, err := fr.Dial("udp", dst(1))
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	dr := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.PortSetOf(tuple.SinglePort(r)), Strategy: Search, UDPLock: UDPLockOwner}
	if c, err := dr.Dial("udp", dst(2)); !errors.Is(err, ErrExhausted) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("an owner dial from a port a UDPLockFile Dialer holds: %v, want ErrExhausted", err)
	}
}

// TestUDPOwnerDroppedConn checks that a conn garbage collected without
// Close leaves the port's socket set: the port is free once every conn on
// it is gone, and a conn kept meanwhile still owns it.
func TestUDPOwnerDroppedConn(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	sink := udpSink(t, false)
	port := uint16(sink.LocalAddr().(*net.UDPAddr).Port)
	const p = 24010
	local := netip.AddrPortFrom(v4src(1), p)
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.PortSetOf(tuple.SinglePort(p)), Strategy: Search, UDPLock: UDPLockOwner}
	keep, err := d.Dial("udp", netip.AddrPortFrom(v4dst(1), port).String())
	if err != nil {
		t.Fatal(err)
	}
	func() {
		if _, err := d.Dial("udp", netip.AddrPortFrom(v4dst(2), port).String()); err != nil {
			t.Fatal(err)
		}
	}()
	slot := &d.st.portUses(v4src(1), 1)[0]
	socks := func() int {
		slot.mu.Lock()
		defer slot.mu.Unlock()
		return len(slot.socks)
	}
	for i := 0; socks() != 1; i++ {
		if i == 200 {
			t.Fatalf("the dropped conn's socket is still in the port's set (%d sockets)", socks())
		}
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	wantPortOwned(t, local, "after the dropped conn was collected")
	keep.Close()
	if err := bindErr(t, local, false, false); err != nil {
		t.Fatalf("with every conn gone the port is still held: %v", err)
	}
}

// TestUDPOwnerDelivery checks that replies reach the socket connected to
// their sender: several destinations, one shared port (IPv4 and IPv6), each
// destination answers every conn's datagram and also sends unasked
// datagrams; each conn receives only its own destination's.
func TestUDPOwnerDelivery(t *testing.T) {
	if !netnstest.InNetNS(t, v6Setup(4, 1)...) {
		return
	}
	const n = 4
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			src, dstAddr := v4src(1), v4dst
			p := uint16(24020)
			if v6 {
				src, dstAddr, p = v6src(1), v6dst, 24021
			}
			sink := udpSink(t, v6)
			port := uint16(sink.LocalAddr().(*net.UDPAddr).Port)
			d := &Dialer{Sources: []netip.Addr{src}, Ports: tuple.PortSetOf(tuple.SinglePort(p)), Strategy: Search, UDPLock: UDPLockOwner}
			var conns []net.Conn
			defer func() { closeAll(conns) }()
			for i := 1; i <= n; i++ {
				c, err := d.Dial("udp", netip.AddrPortFrom(dstAddr(i), port).String())
				if err != nil {
					t.Fatal(err)
				}
				if fourTuple(c)[0].Port() != p {
					t.Fatalf("conn %d from %v, want port %d", i, fourTuple(c)[0], p)
				}
				conns = append(conns, c)
			}
			// Each destination sends 3 datagrams naming itself to the
			// shared port, from its own address (the sink's port).
			from := func(i int) *net.UDPConn {
				network := "udp4"
				if v6 {
					network = "udp6"
				}
				s, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dstAddr(i), port)))
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			sink.Close() // the destinations' senders take the sink's port
			to := netip.AddrPortFrom(src, p)
			for i := 1; i <= n; i++ {
				s := from(i)
				for k := range 3 {
					if _, err := s.WriteToUDPAddrPort(fmt.Appendf(nil, "from %d #%d", i, k), to); err != nil {
						t.Fatal(err)
					}
				}
				s.Close()
			}
			buf := make([]byte, 64)
			for i, c := range conns {
				for k := range 3 {
					c.SetReadDeadline(time.Now().Add(2 * time.Second))
					m, err := c.Read(buf)
					if err != nil {
						t.Fatalf("conn to destination %d, datagram %d: %v", i+1, k, err)
					}
					if want := fmt.Sprintf("from %d #%d", i+1, k); string(buf[:m]) != want {
						t.Fatalf("conn to destination %d got %q, want %q", i+1, buf[:m], want)
					}
				}
				c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				if m, err := c.Read(buf); err == nil {
					t.Fatalf("conn to destination %d got a fourth datagram %q", i+1, buf[:m])
				}
			}
		})
	}
}
