package netsys

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLockStepsNoAlloc checks that the UDP lock's system calls (SO_COOKIE,
// SO_REUSEADDR, bind, the OFD lock and unlock) work and allocate nothing:
// a cookie is non-zero and stable, SO_REUSEADDR reads back as set, bind
// lands on the address asked for (IPv4 and IPv6), and a second lock file
// sees the port locked until the unlock.
func TestLockStepsNoAlloc(t *testing.T) {
	for _, ap := range []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("[::1]:0")} {
		fd, err := UDPSocket(ap.Addr().Is6())
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		c1, err := Cookie(fd)
		if err != nil || c1 == 0 {
			t.Fatalf("Cookie = %#x, %v", c1, err)
		}
		var c2 uint64
		var rerr error
		if n := testing.AllocsPerRun(100, func() {
			c2, err = Cookie(fd)
			rerr = SetReuseAddr(fd, true)
		}); n != 0 {
			t.Errorf("Cookie and SetReuseAddr: %v allocations, want 0", n)
		}
		if err != nil || rerr != nil || c2 != c1 {
			t.Fatalf("Cookie again = %#x, %v (first %#x); SetReuseAddr: %v", c2, err, c1, rerr)
		}
		if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR); v != 1 || err != nil {
			t.Fatalf("SO_REUSEADDR after SetReuseAddr(true) = %d, %v", v, err)
		}
		if err := SetReuseAddr(fd, false); err != nil {
			t.Fatal(err)
		}
		if v, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR); v != 0 {
			t.Fatalf("SO_REUSEADDR after SetReuseAddr(false) = %d", v)
		}
		// Bind fresh sockets (AllocsPerRun runs the function once more
		// than asked) to the address with port 0.
		fds := []int{fd}
		for range 2 {
			f, err := UDPSocket(ap.Addr().Is6())
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(f)
			fds = append(fds, f)
		}
		i := 0
		var berr error
		if n := testing.AllocsPerRun(2, func() {
			if berr == nil {
				berr = Bind(fds[i], ap)
			}
			i++
		}); n != 0 {
			t.Errorf("Bind: %v allocations, want 0", n)
		}
		if berr != nil {
			t.Fatal(berr)
		}
		for _, f := range fds {
			if got, err := localAddr(f); err != nil || got.Addr() != ap.Addr() || got.Port() == 0 {
				t.Fatalf("bound to %v, %v; want %v with a port", got, err, ap.Addr())
			}
		}
	}
	dir := t.TempDir()
	a := netip.MustParseAddr("127.0.0.1")
	l1, err := OpenPortLockFile(dir, "ns", "udp", a)
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	l2, err := OpenPortLockFile(dir, "ns", "udp", a)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	var ok1, ok2 bool
	var e1, e2 error
	if n := testing.AllocsPerRun(100, func() {
		ok1, e1 = l1.TryLock(20000)
		ok2, e2 = l2.TryLock(20000)
		e1 = l1.Unlock(20000)
	}); n != 0 {
		t.Errorf("TryLock and Unlock: %v allocations, want 0", n)
	}
	if !ok1 || ok2 || e1 != nil || e2 != nil {
		t.Fatalf("TryLock: first %v, second %v (want true, false); errors %v, %v", ok1, ok2, e1, e2)
	}
	if ok, err := l2.TryLock(20000); !ok || err != nil {
		t.Fatalf("TryLock after Unlock = %v, %v; want true", ok, err)
	}
}
