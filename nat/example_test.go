package nat_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/portspace/portspace/nat"
)

// An RFC-recommended NAT: build it from the preset, then hand it packets.
func ExampleNew() {
	cfg, err := nat.Preset("rfc-recommended")
	if err != nil {
		panic(err)
	}
	cfg.External = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	cfg.Internal = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	e, err := nat.New(cfg)
	if err != nil {
		panic(err)
	}
	v := e.Outbound([]byte{0x45}, time.Now()) // a truncated packet
	fmt.Println(v.Action, v.Reason.String())
	fmt.Println(e.Config().Mapping, e.Config().Filtering, e.Config().UDPTimeout)
	// Output:
	// drop truncated
	// endpoint-independent endpoint-independent 5m0s
}
