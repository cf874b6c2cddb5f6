package netsys

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func smPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func smFD(t testing.TB, c *net.TCPConn) uintptr {
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd uintptr
	if err := rc.Control(func(f uintptr) { fd = f }); err != nil {
		t.Fatal(err)
	}
	return fd
}

// smJoin joins src and dst (src's bytes go out of dst and dst's out of src).
func smJoin(t *testing.T, src, dst *net.TCPConn) (fs, fd uintptr) {
	r, err := SharedSockRelay()
	if err != nil {
		t.Skipf("no sockmap relay (needs root and CONFIG_BPF_STREAM_PARSER): %v", err)
	}
	fs, fd = smFD(t, src), smFD(t, dst)
	cs, err := Cookie(int(fs))
	if err != nil {
		t.Fatal(err)
	}
	cd, err := Cookie(int(fd))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Join(fs, cs, fd, cd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Leave(cs, cd) })
	return fs, fd
}

func readWithin(t *testing.T, c *net.TCPConn, d time.Duration) (string, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	b := make([]byte, 100)
	n, err := c.Read(b)
	return string(b[:n]), err
}

// TestSockRelayJoin: once joined, what either side sends reaches the other
// without the relay reading it; the FIN is not relayed but wakes the
// relay's socket, where a read returns EOF; bytes_received counts the
// payload and the FIN.
func TestSockRelayJoin(t *testing.T) {
	in, src := smPair(t)
	dst, out := smPair(t)
	fs, _ := smJoin(t, src, dst)
	in.Write([]byte("hello"))
	if got, err := readWithin(t, out, 2*time.Second); got != "hello" || err != nil {
		t.Fatalf("client to origin: %q, %v", got, err)
	}
	out.Write([]byte("back"))
	if got, err := readWithin(t, in, 2*time.Second); got != "back" || err != nil {
		t.Fatalf("origin to client: %q, %v", got, err)
	}
	in.CloseWrite()
	if got, err := readWithin(t, src, 2*time.Second); got != "" || err != io.EOF {
		t.Fatalf("relay's socket after the FIN: %q, %v; want EOF", got, err)
	}
	if _, err := readWithin(t, out, 100*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the FIN reached the origin's side by itself (%v): the relay must pass it on", err)
	}
	c, err := ReadTCPCounters(fs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Received != 6 {
		t.Fatalf("bytes_received %d, want 5 bytes and the FIN", c.Received)
	}
}

// TestSockRelayQueuedBeforeJoin: bytes queued on a socket before its join
// stay there until something runs its data_ready (the verdict sees only
// arrivals); setting SO_RCVLOWAT does.
func TestSockRelayQueuedBeforeJoin(t *testing.T) {
	in, src := smPair(t)
	dst, out := smPair(t)
	in.Write([]byte("early"))
	time.Sleep(20 * time.Millisecond)
	fs, _ := smJoin(t, src, dst)
	if got, err := readWithin(t, out, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("queued bytes moved without a kick: %q, %v", got, err)
	}
	if err := unix.SetsockoptInt(int(fs), unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1); err != nil {
		t.Fatal(err)
	}
	if got, err := readWithin(t, out, 2*time.Second); got != "early" || err != nil {
		t.Fatalf("after SO_RCVLOWAT: %q, %v", got, err)
	}
}
