package proxy

import (
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// fullListener listens on ip with a backlog of 0 and fills its accept queue
// with connections it never accepts, so that the kernel drops later SYNs
// and a connect to it hangs until the dialer gives up.
func fullListener(t *testing.T, ip string) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	a := netip.MustParseAddr(ip).As4()
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: a}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4(a), uint16(sa.(*syscall.SockaddrInet4).Port))
	for range 4 {
		c, err := net.DialTimeout("tcp", ap.String(), 200*time.Millisecond)
		if err != nil {
			break // the queue is full
		}
		t.Cleanup(func() { c.Close() })
	}
	return ap
}

// TestSOCKSDialTimeout: a destination that does not answer the SYN gets
// X'06' (TTL expired, RFC 1928 section 6) after the dial timeout, for two
// dials in a row (the second shares the first's context).
func TestSOCKSDialTimeout(t *testing.T) {
	dst := fullListener(t, "127.0.0.10")
	p := startProxy(t, "timeouts: {dial: 300ms}\n", nil)
	for i := range 2 {
		start := time.Now()
		_, rep, _, err := socksDial(t, p.addr, "", "", cmdConnect, addrBytes(dst))
		el := time.Since(start)
		if err != nil || rep != RepTTLExpired {
			t.Fatalf("dial %d: reply %d err %v after %v, want X'06'", i, rep, err, el)
		}
		if el < 300*time.Millisecond || el > 3*time.Second {
			t.Fatalf("dial %d: timed out after %v, want about 300 ms", i, el)
		}
	}
	p.waitCount("socks5", resultTimeout, 2)
}
