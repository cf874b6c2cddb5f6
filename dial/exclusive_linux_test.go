package dial

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
)

// holderSock is a raw UDP socket that another program could hold on the
// port: its family, options, bind address and optional peer.
type holderSock struct {
	v6, dualStack     bool // AF_INET6; IPV6_V6ONLY=0
	reuseAddr, reuseP bool // SO_REUSEADDR, SO_REUSEPORT
	device            string
	bind, peer        netip.AddrPort
}

// open creates, binds and (with a peer) connects the socket, closed when
// the test ends.
func (h holderSock) open(t *testing.T) {
	t.Helper()
	family := unix.AF_INET
	if h.v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	set := func(level, opt int, on bool) {
		v := 0
		if on {
			v = 1
		}
		if err := unix.SetsockoptInt(fd, level, opt, v); err != nil {
			t.Fatal(err)
		}
	}
	if h.v6 {
		set(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, !h.dualStack)
	}
	set(unix.SOL_SOCKET, unix.SO_REUSEADDR, h.reuseAddr)
	set(unix.SOL_SOCKET, unix.SO_REUSEPORT, h.reuseP)
	if h.device != "" {
		if err := unix.BindToDevice(fd, h.device); err != nil {
			t.Fatal(err)
		}
	}
	sa := func(ap netip.AddrPort) unix.Sockaddr {
		if h.v6 {
			return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
		}
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	if err := unix.Bind(fd, sa(h.bind)); err != nil {
		t.Fatalf("holder bind %v: %v", h.bind, err)
	}
	if h.peer.IsValid() {
		if err := unix.Connect(fd, sa(h.peer)); err != nil {
			t.Fatalf("holder connect %v: %v", h.peer, err)
		}
	}
}

// TestUDPExclusiveBindHolders checks the exclusive bind's proof against
// every kind of socket that can hold an IPv4 (source, port) in Linux's UDP
// table: bound to the wildcard address, an IPv6 dual-stack socket on [::]
// or on the source's v4-mapped address, a SO_REUSEPORT socket; with SO_REUSEADDR or without, connected or not. For
// each the Dialer must not bind exclusively (the bind fails with
// EADDRINUSE), must refuse a 4-tuple the holder has connected, and must
// still share a port that the holder shares (SO_REUSEADDR). A v6-only
// socket on [::] does not hold the IPv4 port: there the exclusive bind is
// used (the control that shows the count of exclusive binds can move).
// Each case runs with few sockets on the port and again with more than 10
// others on it (IPv6 ones, on [::1]), where the kernel checks the bind in its
// second, (address, port) hash instead of scanning the port's chain.
func TestUDPExclusiveBindHolders(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	src := v4src(1)
	mapped := func(a netip.Addr) netip.Addr { return netip.AddrFrom16(a.As16()) }
	any4, any6 := netip.IPv4Unspecified(), netip.IPv6Unspecified()
	dst1 := netip.AddrPortFrom(v4dst(1), racePort)
	dst2 := netip.AddrPortFrom(v4dst(2), racePort)
	type want int
	const (
		exclusive   want = iota // the port is free for IPv4: bound exclusively
		shared                  // the holder shares the port: the cooperative lock, dst2 ok
		busy                    // the holder does not share the port: ErrExhausted
		tupleTaken              // the holder connected dst1 and shares: dst1 refused, dst2 ok
		tupleTakenB             // the holder connected dst1 and does not share: both refused
	)
	cases := []struct {
		name string
		h    func(port uint16) holderSock
		want want
	}{
		{"wildcard4-reuseaddr", func(p uint16) holderSock {
			return holderSock{reuseAddr: true, bind: netip.AddrPortFrom(any4, p)}
		}, shared},
		{"wildcard4", func(p uint16) holderSock { return holderSock{bind: netip.AddrPortFrom(any4, p)} }, busy},
		{"dualstack-reuseaddr", func(p uint16) holderSock {
			return holderSock{v6: true, dualStack: true, reuseAddr: true, bind: netip.AddrPortFrom(any6, p)}
		}, shared},
		{"dualstack", func(p uint16) holderSock {
			return holderSock{v6: true, dualStack: true, bind: netip.AddrPortFrom(any6, p)}
		}, busy},
		{"v6only", func(p uint16) holderSock {
			return holderSock{v6: true, bind: netip.AddrPortFrom(any6, p)}
		}, exclusive},
		{"v6only-reuseaddr", func(p uint16) holderSock {
			return holderSock{v6: true, reuseAddr: true, bind: netip.AddrPortFrom(any6, p)}
		}, exclusive},
		{"mapped-reuseaddr-connected", func(p uint16) holderSock {
			return holderSock{v6: true, dualStack: true, reuseAddr: true, bind: netip.AddrPortFrom(mapped(src), p),
				peer: netip.AddrPortFrom(mapped(dst1.Addr()), dst1.Port())}
		}, tupleTaken},
		{"reuseport", func(p uint16) holderSock {
			return holderSock{reuseP: true, bind: netip.AddrPortFrom(src, p)}
		}, busy},
		{"reuseport-reuseaddr-connected", func(p uint16) holderSock {
			return holderSock{reuseP: true, reuseAddr: true, bind: netip.AddrPortFrom(src, p), peer: dst1}
		}, tupleTaken},
		{"connected", func(p uint16) holderSock {
			return holderSock{bind: netip.AddrPortFrom(src, p), peer: dst1}
		}, tupleTakenB},
	}
	port := uint16(21000)
	for _, crowd := range []int{0, 12} {
		for _, lock := range []UDPLock{UDPLockFile, UDPLockDump} {
			for _, tc := range cases {
				port++
				if crowd > 0 && (tc.name == "dualstack" || tc.name == "v6only") {
					// An IPv6 wildcard socket that does not share the port
					// conflicts with the crowd: no crowd for it.
					continue
				}
				t.Run(fmt.Sprintf("%s/crowd%d/%v", tc.name, crowd, lock), func(t *testing.T) {
					// crowd IPv6-only sockets on [::1] share the port's
					// chain (one for both families) but not its addresses.
					for range crowd {
						holderSock{v6: true, reuseAddr: true, bind: netip.AddrPortFrom(netip.IPv6Loopback(), port)}.open(t)
					}
					tc.h(port).open(t)
					d := &Dialer{Sources: []netip.Addr{src}, Ports: tuple.PortSetOf(tuple.SinglePort(port)), Strategy: Search,
						UDPLock: lock, LockDir: t.TempDir()}
					dial := func(dst netip.AddrPort) error {
						c, err := d.Dial("udp", dst.String())
						if err == nil {
							defer c.Close()
							if got := fourTuple(c); got != [2]netip.AddrPort{netip.AddrPortFrom(src, port), dst} {
								t.Errorf("conn %v, want %v -> %v", got, netip.AddrPortFrom(src, port), dst)
							}
						} else if !errors.Is(err, ErrExhausted) {
							t.Fatalf("dial %v: %v", dst, err)
						}
						return err
					}
					e1 := dial(dst1)
					e2 := dial(dst2)
					ex := d.st.exclusive.Load()
					ok1, ok2 := e1 == nil, e2 == nil
					var good bool
					switch tc.want {
					case exclusive:
						good = ok1 && ok2 && ex == 2
					case shared:
						good = ok1 && ok2 && ex == 0
					case busy:
						good = !ok1 && !ok2 && ex == 0
					case tupleTaken:
						good = !ok1 && ok2 && ex == 0
					case tupleTakenB:
						good = !ok1 && !ok2 && ex == 0
					}
					if !good {
						t.Fatalf("dst1: %v; dst2: %v; %d exclusive binds; want case %d", e1, e2, ex, tc.want)
					}
				})
			}
		}
	}
}

// TestUDPUseCountsConcurrentClose dials and closes from many goroutines at
// once on a few ports, so that conns of one port close while others of it
// are dialled; the ports are shared meanwhile (more conns open at once
// than ports); afterwards every per-port count of the Dialer's sockets is
// back to zero and a dial on each port binds exclusively again (a count
// left above zero, or below it, would keep the fast path off for good).
func TestUDPUseCountsConcurrentClose(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	const ports = 4
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("22000-22003"), Strategy: Search,
		UDPLock: UDPLockFile, LockDir: t.TempDir()}
	conns := make(chan net.Conn, 64)
	var dialers, closers sync.WaitGroup
	var open, maxOpen atomic.Int32 // conns open at once, and the most
	for g := range 6 {
		dialers.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 300 {
				dst := netip.AddrPortFrom(v4dst(1+r.IntN(8)), racePort)
				c, err := d.Dial("udp", dst.String())
				if err != nil {
					if !errors.Is(err, ErrExhausted) {
						t.Error(err)
						return
					}
					continue
				}
				if n := open.Add(1); n > maxOpen.Load() {
					maxOpen.Store(n) // racy maximum: a lower bound is enough
				}
				conns <- c
			}
		})
	}
	for range 3 {
		closers.Go(func() {
			for c := range conns {
				open.Add(-1)
				c.Close()
			}
		})
	}
	dialers.Wait()
	close(conns)
	closers.Wait()
	if t.Failed() {
		return
	}
	if d.st.exclusive.Load() == 0 {
		t.Fatal("no dial bound exclusively")
	}
	// With 4 ports and 8 destinations, up to 32 conns: ports were shared
	// through the cooperative lock.
	if m := maxOpen.Load(); m <= 2*ports {
		t.Fatalf("at most %d conns open at once on %d ports; want more than %d (ports shared)", m, ports, 2*ports)
	}
	for _, u := range *d.st.uses.Load() {
		for i := range u.n {
			if n := u.n[i].n.Load(); n != 0 {
				t.Errorf("source %v port index %d: count %d with every conn closed, want 0", u.src, i, n)
			}
		}
	}
	before := d.st.exclusive.Load()
	var held []net.Conn
	defer func() { closeAll(held) }()
	for i := range ports {
		c, err := d.Dial("udp", netip.AddrPortFrom(v4dst(1), racePort).String())
		if err != nil {
			t.Fatalf("dial %d after all closed: %v", i, err)
		}
		held = append(held, c)
	}
	if got := d.st.exclusive.Load() - before; got != ports {
		t.Fatalf("%d of %d dials on free ports bound exclusively, want all", got, ports)
	}
}

// TestUDPDeviceBoundHolder: another program's socket bound to a device
// (SO_BINDTODEVICE lo), with SO_REUSEADDR, connected to dst, on the
// Dialer's only port. The exclusive bind is refused, as it must be; the
// cooperative lock's lookup, asked once per interface, finds the
// device-bound socket (a lookup without an interface, as before, skips it
// and the Dialer connected a second socket on the 4-tuple, which then took
// the holder's datagrams), so the dial is exhausted. Toward another
// destination the port is still shared.
func TestUDPDeviceBoundHolder(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	for i, lock := range []UDPLock{UDPLockFile, UDPLockDump} {
		port := uint16(23000 + i)
		dst := netip.AddrPortFrom(v4dst(1), racePort)
		dst2 := netip.AddrPortFrom(v4dst(2), racePort)
		holderSock{reuseAddr: true, device: "lo", bind: netip.AddrPortFrom(v4src(1), port), peer: dst}.open(t)
		d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.PortSetOf(tuple.SinglePort(port)), Strategy: Search,
			UDPLock: lock, LockDir: t.TempDir()}
		c, err := d.Dial("udp", dst.String())
		if err == nil {
			c.Close()
			t.Errorf("UDPLock %v: dial onto a device-bound socket's 4-tuple gave %v, want ErrExhausted", lock, fourTuple(c))
		} else if !errors.Is(err, ErrExhausted) {
			t.Errorf("UDPLock %v: %v", lock, err)
		}
		if n := d.st.exclusive.Load(); n != 0 {
			t.Errorf("UDPLock %v: %d exclusive binds beside a device-bound socket", lock, n)
		}
		c, err = d.Dial("udp", dst2.String())
		if err != nil {
			t.Errorf("UDPLock %v: toward another destination beside the device-bound socket: %v", lock, err)
		} else {
			c.Close()
		}

		// An unconnected device-bound socket on another port outscores
		// ours in the lookup on lo: it may be another program's socket in
		// its own lock window, so the port is taken (a capacity cost that
		// the cookie comparison accepts; docs/dial.md).
		port2 := uint16(23010 + i)
		holderSock{reuseAddr: true, device: "lo", bind: netip.AddrPortFrom(v4src(1), port2)}.open(t)
		d2 := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.PortSetOf(tuple.SinglePort(port2)), Strategy: Search,
			UDPLock: lock, LockDir: t.TempDir()}
		if c, err := d2.Dial("udp", dst.String()); !errors.Is(err, ErrExhausted) {
			if err == nil {
				c.Close()
			}
			t.Errorf("UDPLock %v: beside an unconnected device-bound socket: %v, want ErrExhausted", lock, err)
		}
	}
}

// TestUDPExclusiveWindowOtherDialer runs a second Dialer (its own counts,
// locks and lock file, as another portspace process has) inside the first
// one's window, between the exclusive bind's connect and SO_REUSEADDR=1:
// its exclusive bind fails, its cooperative bind fails too, so toward the
// same destination and toward another one it finds the port busy rather
// than sharing it; after the window it shares the port toward another
// destination and its lookup refuses the first one's 4-tuple.
func TestUDPExclusiveWindowOtherDialer(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	for i, lock := range []UDPLock{UDPLockFile, UDPLockDump} {
		port := uint16(23100 + i)
		dst1 := netip.AddrPortFrom(v4dst(1), racePort)
		dst2 := netip.AddrPortFrom(v4dst(2), racePort)
		dir := t.TempDir()
		mk := func() *Dialer {
			return &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.PortSetOf(tuple.SinglePort(port)), Strategy: Search,
				UDPLock: lock, LockDir: dir}
		}
		a, b := mk(), mk()
		inWindow := 0
		testHookConnected = func(_ netip.AddrPort, exclusive bool) {
			if !exclusive || inWindow > 0 {
				return
			}
			inWindow++
			for _, dst := range []netip.AddrPort{dst1, dst2} {
				c, err := b.Dial("udp", dst.String())
				if err == nil {
					c.Close()
					t.Errorf("UDPLock %v: in the window, the other Dialer shared the port toward %v", lock, dst)
				} else if !errors.Is(err, ErrExhausted) || !errors.Is(err, errPortBusy) {
					t.Errorf("UDPLock %v: in the window, toward %v: %v, want ErrExhausted (port busy)", lock, dst, err)
				}
			}
		}
		ca, err := a.Dial("udp", dst1.String())
		testHookConnected = nil
		if err != nil {
			t.Fatal(err)
		}
		if inWindow != 1 || a.st.exclusive.Load() != 1 {
			t.Fatalf("UDPLock %v: the first dial bound exclusively %d times (window %d), want once", lock, a.st.exclusive.Load(), inWindow)
		}
		if c, err := b.Dial("udp", dst1.String()); !errors.Is(err, ErrExhausted) {
			if c != nil {
				c.Close()
			}
			t.Errorf("UDPLock %v: after the window, the other Dialer toward the taken 4-tuple: %v, want ErrExhausted", lock, err)
		}
		cb, err := b.Dial("udp", dst2.String())
		if err != nil {
			t.Errorf("UDPLock %v: after the window, the other Dialer toward another destination: %v", lock, err)
		} else {
			cb.Close()
		}
		ca.Close()
		if n := b.st.exclusive.Load(); n != 0 {
			t.Errorf("UDPLock %v: the other Dialer bound exclusively %d times beside the first one's socket", lock, n)
		}
	}
}

// TestUDPExclusiveBindHolders6 is TestUDPExclusiveBindHolders for an IPv6
// source: a dual-stack or v6-only socket on [::] holds the port, an IPv4
// wildcard socket does not (the exclusive bind is used beside it), and a
// connected IPv6 socket that shares the port keeps its 4-tuple.
func TestUDPExclusiveBindHolders6(t *testing.T) {
	if !netnstest.InNetNS(t, v6Setup(2, 1)...) {
		return
	}
	src := v6src(1)
	dst1 := netip.AddrPortFrom(v6dst(1), racePort)
	dst2 := netip.AddrPortFrom(v6dst(2), racePort)
	cases := []struct {
		name      string
		h         func(port uint16) holderSock
		ok1, ok2  bool
		exclusive uint64
	}{
		{"dualstack", func(p uint16) holderSock {
			return holderSock{v6: true, dualStack: true, bind: netip.AddrPortFrom(netip.IPv6Unspecified(), p)}
		}, false, false, 0},
		{"v6only", func(p uint16) holderSock {
			return holderSock{v6: true, bind: netip.AddrPortFrom(netip.IPv6Unspecified(), p)}
		}, false, false, 0},
		{"wildcard4", func(p uint16) holderSock {
			return holderSock{bind: netip.AddrPortFrom(netip.IPv4Unspecified(), p)}
		}, true, true, 2},
		{"reuseaddr-connected", func(p uint16) holderSock {
			return holderSock{v6: true, reuseAddr: true, bind: netip.AddrPortFrom(src, p), peer: dst1}
		}, false, true, 0},
	}
	for i, tc := range cases {
		for j, lock := range []UDPLock{UDPLockFile, UDPLockDump} {
			port := uint16(23200 + 2*i + j)
			t.Run(fmt.Sprintf("%s/%v", tc.name, lock), func(t *testing.T) {
				tc.h(port).open(t)
				d := &Dialer{Sources: []netip.Addr{src}, Ports: tuple.PortSetOf(tuple.SinglePort(port)), Strategy: Search,
					UDPLock: lock, LockDir: t.TempDir()}
				var ok [2]bool
				for k, dst := range []netip.AddrPort{dst1, dst2} {
					c, err := d.Dial("udp", dst.String())
					if err == nil {
						ok[k] = true
						c.Close()
					} else if !errors.Is(err, ErrExhausted) {
						t.Fatalf("dial %v: %v", dst, err)
					}
				}
				if ex := d.st.exclusive.Load(); ok != [2]bool{tc.ok1, tc.ok2} || ex != tc.exclusive {
					t.Fatalf("dials to %v, %v succeeded: %v; %d exclusive binds; want %v, %v and %d", dst1, dst2, ok, ex, tc.ok1, tc.ok2, tc.exclusive)
				}
			})
		}
	}
}
