package udpbatch

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

func pair(t *testing.T, network, ip string) (*net.UDPConn, *net.UDPConn) {
	t.Helper()
	a, err := net.ListenUDP(network, &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Skip(err)
	}
	b, err := net.ListenUDP(network, &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestRoundTrip sends a batch with sendmmsg and reads it with recvmmsg, on
// IPv4 and IPv6, and checks every payload and source address; a datagram
// longer than the buffers is dropped, not delivered cut.
func TestRoundTrip(t *testing.T) {
	for _, c := range []struct{ network, ip string }{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
		t.Run(c.network, func(t *testing.T) {
			a, b := pair(t, c.network, c.ip)
			w, err := NewWriter(a, 8, 64)
			if err != nil {
				t.Fatal(err)
			}
			r, err := NewReader(b, 8, 16)
			if err != nil {
				t.Fatal(err)
			}
			to := b.LocalAddr().(*net.UDPAddr).AddrPort()
			from := a.LocalAddr().(*net.UDPAddr).AddrPort()
			from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			for i := 0; i < 5; i++ {
				w.Commit(append(w.Next(), byte('a'+i), byte(i)), to)
			}
			w.Commit(append(w.Next(), make([]byte, 40)...), to) // longer than the reader's 16 bytes
			if n, err := w.Flush(); err != nil || n != 6 {
				t.Fatalf("Flush = %d, %v", n, err)
			}
			if w.Len() != 0 {
				t.Fatal("Flush left datagrams queued")
			}
			_ = b.SetReadDeadline(time.Now().Add(2 * time.Second))
			got := 0
			for got < 6 {
				n, err := r.Read()
				if err != nil {
					t.Fatal(err)
				}
				for i := 0; i < n; i++ {
					p, src := r.Msg(i)
					k := got + i
					if k == 5 {
						if p != nil || src.IsValid() {
							t.Errorf("truncated datagram delivered: %d bytes from %v", len(p), src)
						}
						continue
					}
					if len(p) != 2 || p[0] != byte('a'+k) || src != from {
						t.Errorf("datagram %d: %q from %v, want from %v", k, p, src, from)
					}
				}
				got += n
			}
		})
	}
}

func TestAllocatesNothing(t *testing.T) {
	a, b := pair(t, "udp4", "127.0.0.1")
	w, _ := NewWriter(a, 16, 64)
	r, _ := NewReader(b, 16, 64)
	to := b.LocalAddr().(*net.UDPAddr).AddrPort()
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n := testing.AllocsPerRun(100, func() {
		for i := 0; i < 16; i++ {
			w.Commit(append(w.Next(), 1, 2, 3), to)
		}
		_, _ = w.Flush()
		for got := 0; got < 16; {
			n, err := r.Read()
			if err != nil {
				return
			}
			for i := 0; i < n; i++ {
				_, _ = r.Msg(i)
			}
			got += n
		}
	}); n != 0 {
		t.Fatalf("%.1f allocations per batch", n)
	}
}

func TestNewRejects(t *testing.T) {
	a, _ := pair(t, "udp4", "127.0.0.1")
	if _, err := NewReader(a, 0, 10); err == nil {
		t.Error("batch 0 accepted")
	}
	if _, err := NewWriter(a, 1, 0); err == nil {
		t.Error("size 0 accepted")
	}
}
