package udpbatch

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// datagram is the i-th test datagram of n bytes: its index in the first
// byte, then a filler that differs per index.
func datagram(i, n int) []byte {
	b := bytes.Repeat([]byte{byte(i*3 + 1)}, n)
	b[0] = byte(i)
	return b
}

// readAll reads until want datagrams came from r's socket, splitting
// coalesced runs by Seg, and returns them with their sources and the
// number of recvmmsg entries they came in.
func readAll(t *testing.T, c *net.UDPConn, r *Reader, want int) (got [][]byte, from []netip.AddrPort, entries int) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	for len(got) < want {
		n, err := r.Read()
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(got), want, err)
		}
		for i := 0; i < n; i++ {
			p, src := r.Msg(i)
			entries++
			seg := r.Seg(i)
			if seg == 0 {
				seg = len(p)
			}
			for len(p) > 0 {
				k := min(seg, len(p))
				got = append(got, append([]byte(nil), p[:k]...))
				from = append(from, src)
				p = p[k:]
			}
		}
	}
	return got, from, entries
}

func localAddr(c *net.UDPConn) netip.AddrPort {
	a := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// TestGSOMixedRuns queues datagrams of mixed sizes to two destinations and
// checks that only runs of one size to one destination became GSO
// messages (a shorter datagram ends a run, a longer one or another
// destination starts a new message, a datagram over maxSegSize is alone),
// and that every datagram arrives whole, in order, at its destination,
// whether the receiver coalesces (UDP_GRO) or not, over IPv4 and IPv6.
func TestGSOMixedRuns(t *testing.T) {
	for _, c := range []struct{ network, ip string }{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
		t.Run(c.network, func(t *testing.T) { testGSOMixedRuns(t, c.network, c.ip) })
	}
}

func testGSOMixedRuns(t *testing.T, network, ip string) {
	a, b := pair(t, network, ip)
	c, err := net.ListenUDP(network, &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := EnableGRO(c); err != nil {
		t.Skip(err)
	}
	w, _ := NewWriter(a, 32, 1500)
	if !w.SetGSO(true) {
		t.Skip("no UDP_SEGMENT")
	}
	tb, tc := localAddr(b), localAddr(c)
	type q struct {
		to   netip.AddrPort
		size int
	}
	var plan []q
	for i := 0; i < 5; i++ {
		plan = append(plan, q{tb, 30}) // message 1: 5 × 30 ...
	}
	plan = append(plan, q{tb, 10})   // ... and a shorter last one
	plan = append(plan, q{tb, 30})   // message 2: the run ended
	plan = append(plan, q{tb, 40})   // message 3: longer
	plan = append(plan, q{tc, 40})   // message 4: another destination
	plan = append(plan, q{tc, 40})   // ... its run
	plan = append(plan, q{tc, 40})   //
	plan = append(plan, q{tc, 1300}) // message 5: too big for a run
	plan = append(plan, q{tc, 1300}) // message 6
	plan = append(plan, q{tb, 30})   // message 7
	for i, p := range plan {
		w.Commit(append(w.Next(), datagram(i, p.size)...), p.to)
	}
	if w.Len() != len(plan) || w.Messages() != 7 {
		t.Fatalf("Len %d, Messages %d; want %d, 7", w.Len(), w.Messages(), len(plan))
	}
	if n, err := w.Flush(); err != nil || n != len(plan) {
		t.Fatalf("Flush = %d, %v", n, err)
	}
	rb, _ := NewReader(b, 16, 2048)
	rc, _ := NewReader(c, 16, MaxCoalesced)
	var wantB, wantC [][]byte
	for i, p := range plan {
		if p.to == tb {
			wantB = append(wantB, datagram(i, p.size))
		} else {
			wantC = append(wantC, datagram(i, p.size))
		}
	}
	src := localAddr(a)
	for _, r := range []struct {
		name    string
		c       *net.UDPConn
		r       *Reader
		want    [][]byte
		entries int
	}{{"plain", b, rb, wantB, len(wantB)}, {"gro", c, rc, wantC, 3}} {
		got, from, entries := readAll(t, r.c, r.r, len(r.want))
		for i := range r.want {
			if !bytes.Equal(got[i], r.want[i]) || from[i] != src {
				t.Errorf("%s: datagram %d: %d bytes (index %d) from %v, want %d bytes (index %d) from %v",
					r.name, i, len(got[i]), got[i][0], from[i], len(r.want[i]), r.want[i][0], src)
			}
		}
		if entries != r.entries {
			t.Errorf("%s: %d datagrams in %d recvmmsg entries, want %d", r.name, len(got), entries, r.entries)
		}
	}
}

// TestGSOOff: without SetGSO every datagram is a message of its own.
func TestGSOOff(t *testing.T) {
	a, b := pair(t, "udp4", "127.0.0.1")
	w, _ := NewWriter(a, 8, 64)
	for i := 0; i < 8; i++ {
		w.Commit(append(w.Next(), datagram(i, 20)...), localAddr(b))
	}
	if w.Messages() != 8 {
		t.Fatalf("%d messages for 8 datagrams without GSO", w.Messages())
	}
	if n, err := w.Flush(); n != 8 || err != nil {
		t.Fatalf("Flush = %d, %v", n, err)
	}
}

// TestGSORefused: a socket with SO_NO_CHECK makes the kernel refuse GSO
// messages (EINVAL); the Writer sends their datagrams one by one and
// coalesces no more.
func TestGSORefused(t *testing.T) {
	a, b := pair(t, "udp4", "127.0.0.1")
	w, _ := NewWriter(a, 16, 64)
	if !w.SetGSO(true) {
		t.Skip("no UDP_SEGMENT")
	}
	rc, _ := a.SyscallConn()
	_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1) })
	for i := 0; i < 6; i++ {
		w.Commit(append(w.Next(), datagram(i, 20)...), localAddr(b))
	}
	w.Commit(append(w.Next(), datagram(6, 10)...), localAddr(b))
	if w.Messages() != 1 {
		t.Fatalf("%d messages, want 1 GSO message", w.Messages())
	}
	if n, err := w.Flush(); n != 7 || err != nil {
		t.Fatalf("Flush = %d, %v; want 7 datagrams sent one by one", n, err)
	}
	if w.GSO() {
		t.Error("GSO still on after the kernel refused it")
	}
	r, _ := NewReader(b, 16, 64)
	got, _, _ := readAll(t, b, r, 7)
	for i := range got {
		n := 20
		if i == 6 {
			n = 10
		}
		if !bytes.Equal(got[i], datagram(i, n)) {
			t.Errorf("datagram %d: % x", i, got[i])
		}
	}
	for i := 0; i < 3; i++ {
		w.Commit(append(w.Next(), datagram(i, 20)...), localAddr(b))
	}
	if w.Messages() != 3 {
		t.Errorf("%d messages for 3 datagrams after GSO was refused", w.Messages())
	}
	w.Flush()
}

// TestGROTruncated: a coalesced run longer than the Reader's buffer keeps
// the whole datagrams that fit.
func TestGROTruncated(t *testing.T) {
	a, b := pair(t, "udp4", "127.0.0.1")
	if err := EnableGRO(b); err != nil {
		t.Skip(err)
	}
	w, _ := NewWriter(a, 16, 64)
	if !w.SetGSO(true) {
		t.Skip("no UDP_SEGMENT")
	}
	for i := 0; i < 10; i++ {
		w.Commit(append(w.Next(), datagram(i, 24)...), localAddr(b))
	}
	w.Flush()
	r, _ := NewReader(b, 4, 100) // 4 datagrams of 24 and part of a fifth
	_ = b.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := r.Read()
	if err != nil || n != 1 {
		t.Fatalf("Read = %d, %v", n, err)
	}
	p, _ := r.Msg(0)
	if r.Seg(0) != 24 || len(p) != 96 {
		t.Fatalf("Seg %d, %d bytes; want 24, 96", r.Seg(0), len(p))
	}
	for i := 0; i < 4; i++ {
		if !bytes.Equal(p[i*24:(i+1)*24], datagram(i, 24)) {
			t.Errorf("datagram %d: % x", i, p[i*24:(i+1)*24])
		}
	}
}
