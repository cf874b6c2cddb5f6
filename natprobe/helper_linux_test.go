package natprobe

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/portspace/portspace/stun"
)

// helperServe runs our STUN server until killed.
func helperServe(a helperArgs) int {
	o := stun.Options{TCP: a.TCP}
	var err error
	if o.Primary, err = netip.ParseAddrPort(a.Server); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if o.Alternate, err = netip.ParseAddrPort(a.Alternate); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	s, err := stun.Listen(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := s.Serve(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// helperPadding sends one Binding request with a.Padding bytes of PADDING
// (RFC 5780 section 7.6) to a.Server, retransmitting at 0.5 s and 1.5 s,
// and prints the answer's size, PADDING length and XOR-MAPPED-ADDRESS as
// JSON.
func helperPadding(a helperArgs) int {
	server, err := netip.ParseAddrPort(a.Server)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	c, err := net.ListenUDP("udp", nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	var b stun.Builder
	id := newID()
	b.Start(nil, stun.BindingRequest, id)
	b.AddZeros(stun.AttrPadding, a.Padding)
	req := b.Bytes()
	buf := make([]byte, 65536)
	for _, wait := range []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second} {
		if _, err := c.WriteToUDPAddrPort(req, server); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		for {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			var m stun.Message
			if stun.Parse(buf[:n], &m) != nil || m.ID != id {
				continue
			}
			pad, _ := m.Get(stun.AttrPadding)
			x, _ := m.Addr(stun.AttrXORMappedAddress)
			j, _ := json.Marshal(map[string]any{"request": len(req), "size": n, "padding": len(pad), "mapped": x.String()})
			fmt.Println(string(j))
			return 0
		}
	}
	fmt.Fprintf(os.Stderr, "no answer from %v to a %d-byte request\n", server, len(req))
	return 1
}

// helperProbe runs Probe with the default timing and prints its JSON.
func helperProbe(a helperArgs) int {
	server, err := netip.ParseAddrPort(a.Server)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	o := Options{Server: server, TCP: a.TCP, Lifetime: a.Lifetime, LifetimeMax: a.LifetimeMax, LifetimeResolution: a.LifetimeRes}
	if a.AltLocal != "" {
		o.AltLocal = netip.MustParseAddr(a.AltLocal)
	}
	r, err := Probe(context.Background(), o)
	j, _ := json.Marshal(r)
	fmt.Println(string(j))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
