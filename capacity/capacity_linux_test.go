package capacity

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
)

// The kernel tests run in a namespace whose ephemeral range is 16 ports and
// where TIME-WAIT reuse is off (the default, 2, allows it on loopback only),
// so the kernel must reach exactly the limits the model predicts.
var kernelSetup = [][]string{
	{"sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40015"},
	{"sysctl", "-qw", "net.ipv4.tcp_tw_reuse=0"},
}

// kernelPorts reads the namespace's ephemeral range as a port set.
func kernelPorts(t *testing.T) tuple.PortSet {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	set, err := tuple.ParsePortSet(f[0] + "-" + f[1])
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// server listens on a fixed port outside the ephemeral range (a listener on
// port 0 would take one of the 16 ports) and hands accepted connections to
// a channel.
type server struct {
	ln    net.Listener
	conns chan net.Conn
}

func listen(t *testing.T, port uint16) *server {
	t.Helper()
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port).String())
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln, conns: make(chan net.Conn, 64)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(s.conns)
				return
			}
			s.conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range s.conns {
			c.Close()
		}
	})
	return s
}

// fill dials addr until the kernel refuses and returns the connections
// made and the error that stopped it.
func fill(d *net.Dialer, addr string) ([]net.Conn, error) {
	var cs []net.Conn
	for range 1 << 16 {
		c, err := d.Dial("tcp4", addr)
		if err != nil {
			return cs, err
		}
		cs = append(cs, c)
	}
	return cs, errors.New("no limit reached")
}

// TestKernelFourTupleMatchesModel: with connect() choosing ports, Linux
// carries MaxConcurrentPerDestination connections to each destination and
// TotalMaxConcurrent over two, then refuses with EADDRNOTAVAIL; after the
// client closes first, TIME-WAIT keeps every port from reaching that
// destination again, which is what bounds the rate to ports / TIME-WAIT.
func TestKernelFourTupleMatchesModel(t *testing.T) {
	if !netnstest.InNetNS(t, kernelSetup...) {
		return
	}
	res, err := Compute(Input{Ports: kernelPorts(t), Destinations: 2})
	if err != nil {
		t.Fatal(err)
	}
	a, b := listen(t, 30001), listen(t, 30002)
	var d net.Dialer
	var total int64
	var toA []net.Conn
	for _, s := range []*server{a, b} {
		cs, err := fill(&d, s.ln.Addr().String())
		t.Cleanup(func() {
			for _, c := range cs {
				c.Close()
			}
		})
		if !errors.Is(err, syscall.EADDRNOTAVAIL) {
			t.Fatalf("dial %v stopped with %v, want EADDRNOTAVAIL", s.ln.Addr(), err)
		}
		if int64(len(cs)) != res.MaxConcurrentPerDestination {
			t.Errorf("%v: kernel carried %d connections, model says %d", s.ln.Addr(), len(cs), res.MaxConcurrentPerDestination)
		}
		total += int64(len(cs))
		if s == a {
			toA = cs
		}
	}
	if total != res.TotalMaxConcurrent {
		t.Errorf("kernel carried %d connections in total, model says %d", total, res.TotalMaxConcurrent)
	}

	// Active close from the client: FIN, the server closes on EOF, and the
	// client's read returns EOF once the server's FIN has moved the 4-tuple
	// to TIME-WAIT.
	for _, c := range toA {
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}
	for range toA {
		sc := <-a.conns
		if _, err := io.Copy(io.Discard, sc); err != nil {
			t.Fatal(err)
		}
		sc.Close()
	}
	for _, c := range toA {
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if c, err := d.Dial("tcp4", a.ln.Addr().String()); !errors.Is(err, syscall.EADDRNOTAVAIL) {
		if c != nil {
			c.Close()
		}
		t.Errorf("dial %v with every 4-tuple in TIME-WAIT: %v, want EADDRNOTAVAIL", a.ln.Addr(), err)
	}
	// TIME-WAIT holds 4-tuples, not ports: a third destination still gets
	// every port, though each is in TIME-WAIT towards the first and
	// established towards the second.
	c := listen(t, 30003)
	cs, err := fill(&d, c.ln.Addr().String())
	t.Cleanup(func() {
		for _, c := range cs {
			c.Close()
		}
	})
	if !errors.Is(err, syscall.EADDRNOTAVAIL) || int64(len(cs)) != res.MaxConcurrentPerDestination {
		t.Errorf("third destination: %d connections, stopped by %v; model says %d", len(cs), err, res.MaxConcurrentPerDestination)
	}
}

// TestKernelExclusiveMatchesModel: with bind() before connect(), a port
// serves one connection whatever its destination, so two destinations
// together get TotalMaxConcurrent (Exclusive) = the number of ports.
func TestKernelExclusiveMatchesModel(t *testing.T) {
	if !netnstest.InNetNS(t, kernelSetup...) {
		return
	}
	res, err := Compute(Input{Ports: kernelPorts(t), Destinations: 2, Sharing: Exclusive})
	if err != nil {
		t.Fatal(err)
	}
	a, b := listen(t, 30001), listen(t, 30002)
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0))}
	var total int64
	for i, s := range []*server{a, b} {
		cs, err := fill(&d, s.ln.Addr().String())
		t.Cleanup(func() {
			for _, c := range cs {
				c.Close()
			}
		})
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("dial %v stopped with %v, want EADDRINUSE", s.ln.Addr(), err)
		}
		if i == 0 && int64(len(cs)) != res.MaxConcurrentPerDestination {
			t.Errorf("first destination: kernel carried %d, model says %d", len(cs), res.MaxConcurrentPerDestination)
		}
		total += int64(len(cs))
	}
	if total != res.TotalMaxConcurrent {
		t.Errorf("kernel carried %d connections in total, model says %d", total, res.TotalMaxConcurrent)
	}
}
