package portalloc_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/portspace/portspace/portalloc"
	"github.com/portspace/portspace/tuple"
)

// A CGN's deterministic mapping (RFC 7422) and its reverse, as `nat whois`
// uses it.
func ExampleDeterministic_Reverse() {
	d, err := portalloc.NewDeterministic(
		[]netip.Prefix{netip.MustParsePrefix("100.64.0.0/22")},
		[]netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")},
		tuple.PortRangeFrom(1024, 65535))
	if err != nil {
		panic(err)
	}
	out, block, _ := d.Forward(netip.MustParseAddr("100.64.2.5"))
	fmt.Println(d.Ratio(), d.BlockSize(), out, block)
	in, _ := d.Reverse(netip.AddrPortFrom(out, block.First()+7))
	fmt.Println(in)
	// Output:
	// 512 126 192.0.2.2 1654-1779
	// 100.64.2.5
}

// Port preservation with parity, falling back to RFC 6056 Algorithm 3.
func ExampleAllocator_Get() {
	a, err := portalloc.New(portalloc.Config{
		Addrs:    []netip.Addr{netip.MustParseAddr("192.0.2.1")},
		Preserve: true,
		Parity:   true,
	})
	if err != nil {
		panic(err)
	}
	now := time.Now()
	sub := netip.MustParseAddr("10.0.0.7")
	remote := netip.MustParseAddrPort("198.51.100.1:443")
	l1, _ := a.Get(sub, 40000, remote, now)
	l2, _ := a.Get(sub, 40000, remote, now) // 40000 is taken: another even port
	fmt.Println(l1.Ext, l2.Ext.Port()%2 == 0, l2.Ext.Port() >= 1024)
	// Output: 192.0.2.1:40000 true true
}
