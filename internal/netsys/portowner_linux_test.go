package netsys

import (
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestProbePortOwner checks that this kernel behaves as the port owner
// lock needs (the probe's own steps).
func TestProbePortOwner(t *testing.T) {
	if err := ProbePortOwner(); err != nil {
		t.Fatal(err)
	}
}

// TestReusePortFirstMatch pins the kernel behaviour that makes the port
// owner lock clear SO_REUSEPORT on every socket of the port, not on one
// blocker: udp_lib_lport_inuse decides on the first socket of the chain
// that matches, so a SO_REUSEPORT bind beside a blocker at 0 and a
// sibling left at 1 succeeds or fails by the chain's order (here: IPv4
// succeeds, the newest socket heads the chain; IPv6 fails), and fails in
// both families once every socket of the port is at 0.
func TestReusePortFirstMatch(t *testing.T) {
	for _, tc := range []struct {
		at          netip.AddrPort
		siblingWins bool
	}{{netip.MustParseAddrPort("127.0.0.1:0"), true}, {netip.MustParseAddrPort("[::1]:0"), false}} {
		var fds []int
		sock := func(reusePort bool) int {
			family := unix.AF_INET
			if tc.at.Addr().Is6() {
				family = unix.AF_INET6
			}
			fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, fd)
			if err := SetReusePortFlag(fd, reusePort); err != nil {
				t.Fatal(err)
			}
			return fd
		}
		blocker := sock(false)
		if err := Bind(blocker, tc.at); err != nil {
			if tc.at.Addr().Is6() {
				t.Skipf("no IPv6 loopback: %v", err)
			}
			t.Fatal(err)
		}
		local, err := localAddr(blocker)
		if err != nil {
			t.Fatal(err)
		}
		sibling := sock(true)
		if err := SetReusePortFlag(blocker, true); err != nil {
			t.Fatal(err)
		}
		if err := Bind(sibling, local); err != nil {
			t.Fatalf("%v: a SO_REUSEPORT bind beside a blocker at 1: %v", local, err)
		}
		if err := SetReusePortFlag(blocker, false); err != nil {
			t.Fatal(err)
		}
		third := sock(true)
		err = Bind(third, local)
		if got := err == nil; got != tc.siblingWins {
			t.Fatalf("%v: a SO_REUSEPORT bind beside a blocker at 0 and a sibling at 1: %v; want success %v", local, err, tc.siblingWins)
		}
		for _, fd := range []int{sibling, third} {
			if err := SetReusePortFlag(fd, false); err != nil {
				t.Fatal(err)
			}
		}
		if err := Bind(sock(true), local); !errors.Is(err, unix.EADDRINUSE) {
			t.Fatalf("%v: a SO_REUSEPORT bind with every socket of the port at 0: %v, want EADDRINUSE", local, err)
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
}
