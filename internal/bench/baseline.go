package bench

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/portspace/portspace/tuple"
)

// Baseline is the reference dialer: a plain net.Dialer bound to a source
// address with port 0, the sources taken round robin. bind(addr, 0) makes
// the kernel lock one ephemeral port per connection, so its ports are not
// shared across destinations (see docs/bench-dial.md).
type Baseline struct {
	ds   []net.Dialer
	next atomic.Uint64
}

// NewBaseline returns a Baseline for proto over sources (nil: 127.0.0.1).
func NewBaseline(proto tuple.Proto, sources []netip.Addr) *Baseline {
	if len(sources) == 0 {
		sources = []netip.Addr{netip.MustParseAddr(DefaultSource)}
	}
	b := &Baseline{ds: make([]net.Dialer, len(sources))}
	for i, a := range sources {
		ap := netip.AddrPortFrom(a, 0)
		if proto == tuple.UDP {
			b.ds[i].LocalAddr = net.UDPAddrFromAddrPort(ap)
		} else {
			b.ds[i].LocalAddr = net.TCPAddrFromAddrPort(ap)
		}
	}
	return b
}

// DialContext dials address from the next source with port 0.
func (b *Baseline) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	i := b.next.Add(1) - 1
	return b.ds[i%uint64(len(b.ds))].DialContext(ctx, network, address)
}
