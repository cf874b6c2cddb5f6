package dial

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/tuple"
)

// TestUDPInFlightSocketMakesPortBusy checks the lock's in-flight step: a
// socket bound with SO_REUSEADDR to the only port and not connected (another
// process between its bind and its connect) makes the port busy, so the
// Dialer does not connect beside it and reports ErrExhausted; once that
// socket is gone, the same dial succeeds.
func TestUDPInFlightSocketMakesPortBusy(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	local := netip.AddrPortFrom(v4src(1), 20000)
	remote := netip.AddrPortFrom(v4dst(1), racePort)
	fd, err := netsys.UDPSocket(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := netsys.SetReuseAddr(fd, true); err != nil {
		t.Fatal(err)
	}
	if err := netsys.Bind(fd, local); err != nil {
		t.Fatal(err)
	}
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search, UDPLock: UDPLockDump}
	if c, err := d.Dial("udp", remote.String()); !errors.Is(err, ErrExhausted) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial beside an unconnected socket on the only port: %v, want ErrExhausted", err)
	}
	netsys.Close(fd)
	c, err := d.Dial("udp", remote.String())
	if err != nil {
		t.Fatalf("dial after the other socket closed: %v", err)
	}
	c.Close()
}

// TestUDPLockFileMakesPortBusy checks UDPLockFile's lock: while another
// process (here, another open file description of the same lock file)
// holds the lock of (source, port), the Dialer does not bind that port and
// reports ErrExhausted after its busy retries; once it is released, the
// same dial succeeds. The lock file lives in the Dialer's LockDir.
func TestUDPLockFileMakesPortBusy(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	dir := t.TempDir()
	remote := netip.AddrPortFrom(v4dst(1), racePort)
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search, UDPLock: UDPLockFile, LockDir: dir}
	c, err := d.Dial("udp", remote.String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if d.st.udpLock != UDPLockFile {
		t.Fatalf("lock %v, want file", d.st.udpLock)
	}
	other, err := netsys.OpenPortLockFile(dir, d.st.netns, "udp", v4src(1))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if ok, err := other.TryLock(20000); !ok || err != nil {
		t.Fatalf("the other holder could not take the lock: %v %v", ok, err)
	}
	// On a port no socket holds, the exclusive bind needs no lock file: the
	// other holder of the lock has no socket there to race with.
	excl := d.st.exclusive.Load()
	shared, err := d.Dial("udp", netip.AddrPortFrom(v4dst(2), racePort).String())
	if err != nil {
		t.Fatalf("dial on the free port while another process holds its lock: %v", err)
	}
	defer shared.Close()
	if d.st.exclusive.Load() != excl+1 {
		t.Fatal("the dial on the free port did not bind exclusively")
	}
	// Now the port carries a socket: the next dial needs the cooperative
	// lock, and the lock file is held elsewhere.
	if c, err := d.Dial("udp", remote.String()); !errors.Is(err, ErrExhausted) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial while another process holds the port's lock: %v, want ErrExhausted", err)
	}
	if err := other.Unlock(20000); err != nil {
		t.Fatal(err)
	}
	c, err = d.Dial("udp", remote.String())
	if err != nil {
		t.Fatalf("dial after the lock was released: %v", err)
	}
	c.Close()
	if d.st.exclusive.Load() != excl+1 {
		t.Fatal("a dial beside a held socket bound exclusively")
	}
	// Forced UDPLockFile with a directory that cannot exist fails closed.
	bad := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), UDPLock: UDPLockFile, LockDir: "/proc/portspace-no-such-dir"}
	if _, err := bad.Dial("udp", remote.String()); !errors.Is(err, ErrStrategy) {
		t.Fatalf("forced file lock in an unusable directory: %v, want ErrStrategy", err)
	}
	if s, err := (&Dialer{LockDir: "/proc/portspace-no-such-dir"}).StrategyFor("udp"); s != Search || err != nil {
		t.Fatalf("auto with an unusable directory: %v %v, want search with the dump", s, err)
	}
}

// TestUDPExclusiveBind checks the UDP fast path: on a port no socket holds,
// the Dialer binds without SO_REUSEADDR, so from its bind until the
// protocol's lock is released no other socket can bind the port, whether
// it sets SO_REUSEADDR (a cooperating program) or not; a dial beside a
// socket of the Dialer, or beside another program's socket (connected or
// not), runs the cooperative lock instead, which still refuses a 4-tuple
// another socket has connected. For each lock that uses the fast path.
func TestUDPExclusiveBind(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	for _, lock := range []UDPLock{UDPLockFile, UDPLockDump} {
		t.Run(lock.String(), func(t *testing.T) {
			local := netip.AddrPortFrom(v4src(1), 20000)
			dst := func(i int) string { return netip.AddrPortFrom(v4dst(i), racePort).String() }
			d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search, UDPLock: lock, LockDir: t.TempDir()}
			// In the window, a cooperating socket's bind must fail.
			var windows, refused, exclusives int
			testHookConnected = func(l netip.AddrPort, exclusive bool) {
				windows++
				if exclusive {
					exclusives++
				}
				fd, err := netsys.UDPSocket(false)
				if err != nil {
					t.Error(err)
					return
				}
				defer netsys.Close(fd)
				if err := netsys.SetReuseAddr(fd, true); err != nil {
					t.Error(err)
				}
				if err := netsys.Bind(fd, l); netsys.IsAddrInUse(err) {
					refused++
				}
			}
			defer func() { testHookConnected = nil }()
			c1, err := d.Dial("udp", dst(1))
			if err != nil {
				t.Fatal(err)
			}
			defer c1.Close()
			if windows != 1 || exclusives != 1 || refused != 1 {
				t.Fatalf("first dial on a free port: %d windows, %d exclusive, %d binds refused in the window; want 1, 1, 1", windows, exclusives, refused)
			}
			// After the window the port is shared again: a second conn of
			// the Dialer toward another destination, through the lock.
			c2, err := d.Dial("udp", dst(2))
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			if windows != 2 || exclusives != 1 || refused != 2 {
				t.Fatalf("dial beside the Dialer's socket: %d windows, %d exclusive, %d refused; want 2, 1, 2", windows, exclusives, refused)
			}
			c1.Close()
			c2.Close()
			// Another program's socket connected to dst(3) with
			// SO_REUSEADDR: the exclusive bind fails, the lock's lookup
			// finds the 4-tuple taken.
			fd, err := netsys.UDPSocket(false)
			if err != nil {
				t.Fatal(err)
			}
			defer netsys.Close(fd)
			if err := netsys.SetReuseAddr(fd, true); err != nil {
				t.Fatal(err)
			}
			if err := netsys.Bind(fd, local); err != nil {
				t.Fatal(err)
			}
			if err := netsys.Connect(fd, netip.MustParseAddrPort(dst(3))); err != nil {
				t.Fatal(err)
			}
			if c, err := d.Dial("udp", dst(3)); !errors.Is(err, ErrExhausted) {
				if c != nil {
					c.Close()
				}
				t.Fatalf("dial onto another program's 4-tuple: %v, want ErrExhausted", err)
			}
			c4, err := d.Dial("udp", dst(4))
			if err != nil {
				t.Fatalf("dial beside another program's socket: %v", err)
			}
			c4.Close()
			if exclusives != 1 {
				t.Fatalf("%d exclusive binds beside another program's socket, want none", exclusives-1)
			}
			// With a user Control (which could set SO_REUSEADDR or
			// SO_REUSEPORT) a free port takes the cooperative lock.
			uc := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20001"), Strategy: Search, UDPLock: lock, LockDir: t.TempDir(),
				Control: func(string, string, syscall.RawConn) error { return nil }}
			c5, err := uc.Dial("udp", dst(1))
			if err != nil {
				t.Fatal(err)
			}
			c5.Close()
			if exclusives != 1 || uc.st.exclusive.Load() != 0 {
				t.Fatal("a dial with a user Control bound exclusively")
			}
		})
	}
}
