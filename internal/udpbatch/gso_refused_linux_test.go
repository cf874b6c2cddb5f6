package udpbatch

import (
	"bytes"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestGSORefusedDestinations: when the kernel refuses GSO messages
// (SO_NO_CHECK), each refused message's datagrams are sent one by one to
// that message's own destination: two runs to two receivers, split after
// the refusal, arrive whole at their receivers and nowhere else.
func TestGSORefusedDestinations(t *testing.T) {
	a, b := pair(t, "udp4", "127.0.0.1")
	_, c := pair(t, "udp4", "127.0.0.1")
	w, _ := NewWriter(a, 16, 64)
	if !w.SetGSO(true) {
		t.Skip("no UDP_SEGMENT")
	}
	rc, _ := a.SyscallConn()
	_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1) })
	for i := 0; i < 3; i++ {
		w.Commit(append(w.Next(), datagram(i, 20)...), localAddr(b))
	}
	for i := 3; i < 6; i++ {
		w.Commit(append(w.Next(), datagram(i, 30)...), localAddr(c))
	}
	if w.Messages() != 2 {
		t.Fatalf("%d messages, want 2 GSO messages", w.Messages())
	}
	if n, err := w.Flush(); n != 6 || err != nil {
		t.Fatalf("Flush = %d, %v; want 6 datagrams sent one by one", n, err)
	}
	rc2, _ := NewReader(c, 16, 64)
	got, _, _ := readAll(t, c, rc2, 3)
	for i, g := range got {
		if !bytes.Equal(g, datagram(i+3, 30)) {
			t.Errorf("receiver 2, datagram %d: % x", i, g)
		}
	}
	rb, _ := NewReader(b, 16, 64)
	got, _, _ = readAll(t, b, rb, 3)
	for i, g := range got {
		if !bytes.Equal(g, datagram(i, 20)) {
			t.Errorf("receiver 1, datagram %d: % x", i, g)
		}
	}
	_ = b.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := rb.Read(); err == nil && n > 0 {
		t.Errorf("receiver 1 got %d more datagrams", n)
	}
}
