package natprobe

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/portspace/portspace/stun"
)

// recorder is a behaviour-discovery server (stun.Handler on four sockets)
// that notes when each transaction's first request arrived.
type recorder struct {
	mu    sync.Mutex
	first map[stun.TransactionID]time.Time
	socks []*net.UDPConn
}

func startRecorder(t *testing.T) (*recorder, netip.AddrPort) {
	t.Helper()
	for try := 0; try < 20; try++ {
		p := uint16(20000 + rand.IntN(20000))
		h, err := stun.NewHandler(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p),
			netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), p+1), "")
		if err != nil {
			t.Fatal(err)
		}
		r := &recorder{first: map[stun.TransactionID]time.Time{}}
		ok := true
		for _, ap := range h.Sockets() {
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
			if err != nil {
				ok = false
				break
			}
			r.socks = append(r.socks, c)
		}
		if !ok {
			for _, c := range r.socks {
				c.Close()
			}
			continue
		}
		t.Cleanup(func() {
			for _, c := range r.socks {
				c.Close()
			}
		})
		for i, c := range r.socks {
			go func(at stun.Socket, c *net.UDPConn) {
				buf := make([]byte, 2048)
				for {
					n, from, err := c.ReadFromUDPAddrPort(buf)
					if err != nil {
						return
					}
					var m stun.Message
					if stun.Parse(buf[:n], &m) == nil {
						r.mu.Lock()
						if _, seen := r.first[m.ID]; !seen {
							r.first[m.ID] = time.Now()
						}
						r.mu.Unlock()
					}
					if rep, ok := h.Handle(nil, buf[:n], from, at, false); ok {
						_, _ = r.socks[rep.Via].WriteToUDPAddrPort(rep.Data, rep.To)
					}
				}
			}(stun.Socket(i), c)
		}
		return r, h.Sockets()[0]
	}
	t.Fatal("no free ports")
	return nil, netip.AddrPort{}
}

// TestPace runs a whole probe with the default timing against a recording
// server: every new transaction's first request leaves at least 100 ms
// after the one before (so no second sees more than 10, RFC 5780 section
// 5), however the parallel tests interleave, and each reached the server.
func TestPace(t *testing.T) {
	rec, server := startRecorder(t)
	var mu sync.Mutex
	var sends []time.Time
	o := Options{Server: server, onFirstSend: func(at time.Time) {
		mu.Lock()
		sends = append(sends, at)
		mu.Unlock()
	}}
	if _, err := Probe(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	rec.mu.Lock()
	arrived := len(rec.first)
	rec.mu.Unlock()
	if len(sends) < 7 || arrived != len(sends) {
		t.Fatalf("%d transactions started, %d reached the server", len(sends), arrived)
	}
	for i := 1; i < len(sends); i++ {
		if d := sends[i].Sub(sends[i-1]); d < DefaultPace {
			t.Errorf("transactions %d and %d started %v apart, pace is %v", i-1, i, d, DefaultPace)
		}
	}
	sort.Slice(sends, func(i, j int) bool { return sends[i].Before(sends[j]) })
	for i := 0; i+10 < len(sends); i++ {
		if d := sends[i+10].Sub(sends[i]); d < time.Second {
			t.Fatalf("transactions %d to %d started within %v", i, i+10, d)
		}
	}
}
