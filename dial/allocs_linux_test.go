package dial

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/tuple"
)

// fdRawConn is a syscall.RawConn over a plain file descriptor.
type fdRawConn struct{ fd int }

func (r *fdRawConn) Control(f func(fd uintptr)) error  { f(uintptr(r.fd)); return nil }
func (r *fdRawConn) Read(func(fd uintptr) bool) error  { return nil }
func (r *fdRawConn) Write(func(fd uintptr) bool) error { return nil }

func needLocalPortRange(t *testing.T) {
	t.Helper()
	if !netsys.Probe().LocalPortRange {
		t.Skip("IP_LOCAL_PORT_RANGE is not supported here")
	}
}

// TestKernelControlAllocs pins that the TCP Kernel strategy's Control sets
// its options without an allocation (the kernelCtl pool).
func TestKernelControlAllocs(t *testing.T) {
	needLocalPortRange(t)
	ps, err := tuple.ParsePortSet("40000-40999")
	if err != nil {
		t.Fatal(err)
	}
	d := &Dialer{}
	nd := d.newKernelDialer(&plan{strategy: Kernel, ports: ps}, netip.MustParseAddr("127.0.0.1"))
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	var rc syscall.RawConn = &fdRawConn{fd: fd}
	ctx := context.Background()
	n := testing.AllocsPerRun(1000, func() {
		if err := nd.ControlContext(ctx, "tcp4", "", rc); err != nil {
			t.Fatalf("Control: %v", err)
		}
	})
	if n != 0 {
		t.Errorf("%v allocations per Kernel Control, want 0", n)
	}
}

// TestKernelDialAllocs pins how many allocations a TCP Kernel dial adds to
// a plain net.Dialer's from the same source: net's own for any Control (the
// destination's string, the raw conn) and DialTCP's addresses, 5 in all (8
// before stop 18's second pass: the Control closure and a copy of the plan).
func TestKernelDialAllocs(t *testing.T) {
	needLocalPortRange(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Nothing accepts: the kernel completes the handshakes (the backlog
	// holds them), and no other goroutine allocates while counting.
	defer ln.Close()
	addr := ln.Addr().String()
	ps, err := tuple.ParsePortSet("40000-40999")
	if err != nil {
		t.Fatal(err)
	}
	d := &Dialer{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ports: ps, Timeout: 5 * time.Second, Strategy: Kernel}
	plain := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}
	count := func(dial func(context.Context, string, string) (net.Conn, error)) float64 {
		return testing.AllocsPerRun(200, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			c, err := dial(ctx, "tcp4", addr)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
		})
	}
	ours, base := count(d.DialContext), count(plain.DialContext)
	t.Logf("allocations per dial: Kernel %v, net.Dialer %v", ours, base)
	if ours > base+5 {
		t.Errorf("a Kernel dial allocates %v times, net.Dialer %v: want at most 5 more", ours, base)
	}
}
