package netsys

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestUnpaceShortPath: a BBR socket on a loopback hop switches to reno; one
// whose round trip is not short enough, or that does not run BBR, keeps its
// congestion control; the call allocates nothing.
func TestUnpaceShortPath(t *testing.T) {
	a, _ := smPair(t)
	fd := smFD(t, a)
	if err := unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, "bbr"); err != nil {
		t.Skipf("no bbr here: %v", err)
	}
	if ok, e := UnpaceShortPath(fd, 0, "reno"); ok || e != 0 {
		t.Fatalf("round trip under 0 µs: switched %v, %v", ok, e)
	}
	if cc, _ := CongestionControl(fd); cc != "bbr" {
		t.Fatalf("cc %q after a refused switch, want bbr", cc)
	}
	if ok, e := UnpaceShortPath(fd, 1000, "reno"); !ok || e != 0 {
		t.Fatalf("loopback under 1 ms: switched %v, %v", ok, e)
	}
	if cc, _ := CongestionControl(fd); cc != "reno" {
		t.Fatalf("cc %q, want reno", cc)
	}
	if ok, _ := UnpaceShortPath(fd, 1000, "cubic"); ok {
		t.Fatal("switched a socket that does not pace")
	}
	b, _ := smPair(t)
	fb := smFD(t, b)
	allocs := testing.AllocsPerRun(100, func() {
		unix.SetsockoptString(int(fb), unix.IPPROTO_TCP, unix.TCP_CONGESTION, "bbr")
		UnpaceShortPath(fb, 1000, "reno")
	})
	// SetsockoptString allocates its C string; UnpaceShortPath nothing.
	base := testing.AllocsPerRun(100, func() {
		unix.SetsockoptString(int(fb), unix.IPPROTO_TCP, unix.TCP_CONGESTION, "bbr")
	})
	if allocs != base {
		t.Fatalf("UnpaceShortPath allocates %v times, want 0", allocs-base)
	}
}

// TestCapShortPathRcvbuf: a loopback socket's receive buffer is set (the
// kernel reports twice the size asked); with a round trip not short enough,
// or a size above net.core.rmem_max (which would clamp it), it is left to
// autotuning.
func TestCapShortPathRcvbuf(t *testing.T) {
	size := min(1<<20, RmemMax()) // a size the kernel does not clamp
	a, _ := smPair(t)
	fd := smFD(t, a)
	before, _ := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	if ok, e := capShortPathRcvbuf(fd, 1000, size, size-1); ok || e != 0 {
		t.Fatalf("size above rmem_max: set %v, %v", ok, e)
	}
	if v, _ := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); v != before {
		t.Fatalf("SO_RCVBUF %d after a size above rmem_max, want %d", v, before)
	}
	if ok, e := CapShortPathRcvbuf(fd, 0, size); ok || e != 0 {
		t.Fatalf("round trip under 0 µs: set %v, %v", ok, e)
	}
	if v, _ := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); v != before {
		t.Fatalf("SO_RCVBUF %d after a refused cap, want %d", v, before)
	}
	if ok, e := CapShortPathRcvbuf(fd, 1000, size); !ok || e != 0 {
		t.Fatalf("loopback under 1 ms: set %v, %v", ok, e)
	}
	if v, _ := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); v != 2*size {
		t.Fatalf("SO_RCVBUF %d, want %d", v, 2*size)
	}
	if a := testing.AllocsPerRun(100, func() { CapShortPathRcvbuf(fd, 1000, size) }); a != 0 {
		t.Fatalf("CapShortPathRcvbuf allocates %v times, want 0", a)
	}
}
