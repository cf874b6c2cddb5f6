package steer

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/tuple"
)

// manySlices returns n held 64-port slices of 192.0.2.10 from port 1024 up,
// spread round robin over hosts 10.0.1.3.. (hosts of them), except the
// last, which host 10.0.1.2 holds: in the ip form its rules come last, the
// worst case for a rule walk.
func manySlices(n, hosts int) []lease.Lease {
	ls := make([]lease.Lease, n)
	for i := range ls {
		lo := uint16(1024 + 64*i)
		host := netip.AddrFrom4([4]byte{10, 0, byte(1 + (i%hosts)/250), byte(3 + (i%hosts)%250)})
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
