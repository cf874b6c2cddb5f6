package dial

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/portspace/portspace/internal/netnstest"
)

// v4dst and v6dst are the i-th test destination address (1-based). All of
// 127/8 is on lo; the fd00::1:i addresses are added by v6Setup inside a
// test's own namespace.
func v4dst(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 1, byte(i)}) }
func v6dst(i int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00::1:%x", i))
}

// v6Setup adds fd00::1:1..n and the sources fd00::2:1..m to lo (no DAD, so
// they are usable at once).
func v6Setup(n, m int) [][]string {
	var s [][]string
	for i := 1; i <= n; i++ {
		s = append(s, netnstest.SetupCmd("ip", "-6", "addr", "add", v6dst(i).String()+"/128", "dev", "lo", "nodad"))
	}
	for i := 1; i <= m; i++ {
		s = append(s, netnstest.SetupCmd("ip", "-6", "addr", "add", v6src(i).String()+"/128", "dev", "lo", "nodad"))
	}
	return s
}

func v4src(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 2, byte(i)}) }
func v6src(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("fd00::2:%x", i)) }

// tcpSink listens on the wildcard address of the family (one listener serves
// every local destination address) and holds what it accepts until the test
// ends; it returns the port.
func tcpSink(t testing.TB, v6 bool) uint16 {
	t.Helper()
	if v6 {
		return holdListener(t, "tcp6", "[::]:0").Port()
	}
	return holdListener(t, "tcp4", "0.0.0.0:0").Port()
}

// holdListener listens on addr, accepts and holds every connection, and
// closes the listener and the accepted conns when the test ends.
func holdListener(t testing.TB, network, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		closeAll(conns)
		mu.Unlock()
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}

// udpSink binds a UDP socket on the wildcard address of the family.
func udpSink(t testing.TB, v6 bool) *net.UDPConn {
	t.Helper()
	network, addr := "udp4", "0.0.0.0:0"
	if v6 {
		network, addr = "udp6", "[::]:0"
	}
	c, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

// fourTuple returns a conn's (local, remote) pair.
func fourTuple(c net.Conn) [2]netip.AddrPort {
	l := netip.MustParseAddrPort(c.LocalAddr().String())
	r := netip.MustParseAddrPort(c.RemoteAddr().String())
	return [2]netip.AddrPort{netip.AddrPortFrom(l.Addr().Unmap(), l.Port()), netip.AddrPortFrom(r.Addr().Unmap(), r.Port())}
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}
