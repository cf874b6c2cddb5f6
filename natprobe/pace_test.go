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
// server: no second may see more than 10 new transactions (RFC 5780
// section 5), however the parallel tests interleave.
func TestPace(t *testing.T) {
	rec, server := startRecorder(t)
	if _, err := Probe(context.Background(), Options{Server: server}); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	var at []time.Time
	for _, ts := range rec.first {
		at = append(at, ts)
	}
	rec.mu.Unlock()
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	if len(at) < 7 {
		t.Fatalf("only %d transactions reached the server", len(at))
	}
	for i := 0; i+10 < len(at); i++ {
		// 11 new transactions within one second would break the limit;
		// allow 20 ms of scheduling jitter.
		if d := at[i+10].Sub(at[i]); d < time.Second-20*time.Millisecond {
			t.Fatalf("transactions %d to %d started within %v", i, i+10, d)
		}
	}
	for i := 1; i < len(at); i++ {
		if d := at[i].Sub(at[i-1]); d < DefaultPace-20*time.Millisecond {
			t.Errorf("transactions %d and %d started %v apart, pace is %v", i-1, i, d, DefaultPace)
		}
	}
}
