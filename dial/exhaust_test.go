package dial

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
)

// exhaustCase is one (protocol, family, strategy) row of the exhaustion
// matrix: 10 ports × 20 destinations from one source must give exactly 200
// connections with distinct 4-tuples, and the 201st dial fails with
// ErrExhausted.
type exhaustCase struct {
	name     string
	udp, v6  bool
	strategy Strategy
	lock     UDPLock
	ports    string // a range inside the namespace's ephemeral range steers Auto to Kernel (TCP)
}

var exhaustCases = []exhaustCase{
	{name: "tcp4-kernel", strategy: Kernel, ports: "40000-40009"},
	{name: "tcp4-search", strategy: Search, ports: "40000-40009"},
	{name: "tcp4-auto-outside-ephemeral", strategy: Auto, ports: "20000-20009"},
	{name: "tcp4-search-split", strategy: Search, ports: "20000-20004,20100-20104"},
	{name: "tcp6-kernel", v6: true, strategy: Kernel, ports: "40000-40009"},
	{name: "tcp6-search", v6: true, strategy: Search, ports: "20000-20009"},
	{name: "udp4-search", udp: true, strategy: Search, ports: "40000-40009"},
	{name: "udp4-auto", udp: true, strategy: Auto, ports: "20000-20004,20100-20104"},
	{name: "udp6-search", udp: true, v6: true, strategy: Search, ports: "20000-20009"},
	{name: "udp4-registry", udp: true, strategy: Search, lock: UDPLockRegistry, ports: "20000-20009"},
	{name: "udp6-registry", udp: true, v6: true, strategy: Search, lock: UDPLockRegistry, ports: "20000-20009"},
}

func TestExhaustionExact(t *testing.T) {
	for _, tc := range exhaustCases {
		t.Run(tc.name, func(t *testing.T) {
			var setup [][]string
			if tc.v6 {
				setup = v6Setup(20, 1)
			}
			if !netnstest.InNetNS(t, setup...) {
				return
			}
			const ndst = 20
			src, dstOf := v4src(1), v4dst
			if tc.v6 {
				src, dstOf = v6src(1), v6dst
			}
			network := "tcp"
			var port uint16
			if tc.udp {
				network = "udp"
				port = uint16(udpSink(t, tc.v6).LocalAddr().(*net.UDPAddr).Port)
			} else {
				port = tcpSink(t, tc.v6)
			}
			ports := tuple.MustParsePortSet(tc.ports)
			d := &Dialer{Sources: []netip.Addr{src}, Ports: ports, Strategy: tc.strategy, UDPLock: tc.lock, LockDir: t.TempDir(), Logger: testLogger(t)}
			ctx := context.Background()
			seen := map[[2]netip.AddrPort]bool{}
			var conns []net.Conn
			defer func() { closeAll(conns) }()
			for round := range ports.Len() {
				for i := 1; i <= ndst; i++ {
					dst := netip.AddrPortFrom(dstOf(i), port)
					c, err := d.DialContext(ctx, network, dst.String())
					if err != nil {
						t.Fatalf("round %d, dial %v: %v", round, dst, err)
					}
					conns = append(conns, c)
					ft := fourTuple(c)
					if seen[ft] {
						t.Fatalf("duplicate 4-tuple %v", ft)
					}
					seen[ft] = true
					if ft[0].Addr() != src || !ports.Contains(ft[0].Port()) {
						t.Fatalf("local end %v is outside source %v, ports %v", ft[0], src, ports)
					}
				}
			}
			if len(conns) != ports.Len()*ndst {
				t.Fatalf("got %d connections, want %d", len(conns), ports.Len()*ndst)
			}
			for i := 1; i <= ndst; i++ {
				dst := netip.AddrPortFrom(dstOf(i), port)
				c, err := d.DialContext(ctx, network, dst.String())
				if err == nil {
					conns = append(conns, c)
					t.Fatalf("dial %d to %v succeeded with every port in use: %v", len(conns), dst, fourTuple(c))
				}
				if !errors.Is(err, ErrExhausted) {
					t.Fatalf("dial to %v: %v, want ErrExhausted", dst, err)
				}
				if i == 1 {
					t.Logf("dial %d: %v", len(conns)+1, err)
				}
			}
			// Closing one connection frees exactly its 4-tuple.
			victim := conns[7]
			ft := fourTuple(victim)
			victim.Close()
			conns = append(conns[:7], conns[8:]...)
			if !tc.udp {
				// The actively closed TCP connection sits in TIME_WAIT;
				// reuse after close is TestReleaseReuse's subject.
				return
			}
			c, err := d.DialContext(ctx, network, ft[1].String())
			if err != nil {
				t.Fatalf("dial after closing %v: %v", ft, err)
			}
			conns = append(conns, c)
			if got := fourTuple(c); got != ft {
				t.Fatalf("after closing %v the dial got %v", ft, got)
			}
		})
	}
}
