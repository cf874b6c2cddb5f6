package natprobe

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

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
