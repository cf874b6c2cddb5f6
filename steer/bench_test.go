package steer

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/tuple"
)

// manySlices returns n held 64-port slices of 192.0.2.10 from port 1024 up,
// spread round robin over hosts 10.0.0.3.. (hosts of them), except the
// last, which host 10.0.1.2 holds: it sorts after the others, so it has the
// last table, and in the ip form its slice's rules come last and in the nft
// form its fwmark rule does: the worst case for both rule walks.
func manySlices(n, hosts int) []lease.Lease {
	if hosts > 250 {
		panic("manySlices: at most 250 hosts")
	}
	ls := make([]lease.Lease, n)
	for i := range ls {
		lo := uint16(1024 + 64*i)
		host := netip.AddrFrom4([4]byte{10, 0, 0, byte(3 + i%hosts)})
		if i == n-1 {
			host = netip.MustParseAddr("10.0.1.2")
		}
		ls[i] = lease.Lease{ID: fmt.Sprintf("de/192.0.2.10/%d", i), Pool: "de", Addr: netip.MustParseAddr("192.0.2.10"),
			Ports: tuple.PortSetOf(tuple.PortRangeFrom(lo, lo+63)), Holder: host.String(), Host: host,
			Token: 1, Expires: t0.Add(1e12), State: lease.Held}
	}
	return ls
}

// BenchmarkRender1000 builds the plan of 1,000 slices held by 100 hosts
// and renders it in each format; the target is under 1 s (docs/steer.md).
func BenchmarkRender1000(b *testing.B) {
	ls := manySlices(1000, 100)
	for _, f := range []struct {
		name string
		f    Format
	}{{"ip", FormatIP}, {"nft", FormatNFT}} {
		b.Run(f.name, func(b *testing.B) {
			for b.Loop() {
				p, err := NewPlan(ls, t0, Options{}, nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := Render(p, f.f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
