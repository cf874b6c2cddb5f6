package dial

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/tuple"
)

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestNoLeaks drives every strategy through its success and failure paths
// (exhaustion, a 4-tuple taken by a foreign UDP socket, a port owned by a
// non-sharing socket, a source the host lacks), closes every conn, and
// checks that no file descriptor and no goroutine is left behind.
func TestNoLeaks(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	// The first network socket starts the runtime's poller (an epoll fd
	// and an eventfd, kept for the life of the process): start it first.
	if ln, err := net.Listen("tcp4", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	leakOpts := goleak.IgnoreCurrent()
	before := openFDs(t)
	// The listeners and the foreign sockets live in the subtest, so that
	// its cleanup closes them (and the accepted conns) before the count.
	t.Run("dials", dialEveryPath)
	if after := openFDs(t); after != before {
		t.Errorf("%d file descriptors open before the dials, %d after every conn closed", before, after)
	}
	goleak.VerifyNone(t, leakOpts)
}

func dialEveryPath(t *testing.T) {
	tport := tcpSink(t, false)
	uport := uint16(udpSink(t, false).LocalAddr().(*net.UDPAddr).Port)
	// A foreign socket connected with SO_REUSEADDR alone holds
	// 127.0.2.1:20001 -> 127.0.1.1:uport (the lookup must refuse it), and a
	// socket bound without SO_REUSEADDR owns 127.0.2.1:20002 (bind fails).
	foreign, err := netsys.UDPSocket(false)
	if err != nil {
		t.Fatal(err)
	}
	defer netsys.Close(foreign)
	if err := netsys.SetReuseAddr(foreign, true); err != nil {
		t.Fatal(err)
	}
	if err := netsys.Bind(foreign, netip.AddrPortFrom(v4src(1), 20001)); err != nil {
		t.Fatal(err)
	}
	if err := netsys.Connect(foreign, netip.AddrPortFrom(v4dst(1), uport)); err != nil {
		t.Fatal(err)
	}
	owner, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(v4src(1), 20002)))
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	tln, err := net.Listen("tcp4", netip.AddrPortFrom(v4src(1), 20002).String())
	if err != nil {
		t.Fatal(err)
	}
	defer tln.Close()

	ports := tuple.MustParsePortSet("20000-20003")
	for _, tc := range []struct {
		network string
		s       Strategy
		lock    UDPLock
		ports   tuple.PortSet
		port    uint16
	}{
		{"tcp", Search, UDPLockAuto, ports, tport},
		{"tcp", Kernel, UDPLockAuto, tuple.MustParsePortSet("40000-40003"), tport},
		{"udp", Search, UDPLockAuto, ports, uport},
		{"udp", Search, UDPLockRegistry, ports, uport},
		{"udp", Search, UDPLockOwner, ports, uport},
		{"udp", Kernel, UDPLockAuto, tuple.MustParsePortSet("40000-40003"), uport},
	} {
		for _, src := range []netip.Addr{v4src(1), netip.MustParseAddr("192.0.2.9")} {
			d := &Dialer{Sources: []netip.Addr{src}, Ports: tc.ports, Strategy: tc.s, UDPLock: tc.lock}
			dst := netip.AddrPortFrom(v4dst(1), tc.port).String()
			var conns []net.Conn
			var err error
			for range tc.ports.Len() + 1 {
				var c net.Conn
				if c, err = d.Dial(tc.network, dst); err != nil {
					break
				}
				conns = append(conns, c)
			}
			if src == v4src(1) && !errors.Is(err, ErrExhausted) {
				t.Errorf("%s %v: the last dial gave %v, want ErrExhausted", tc.network, tc.s, err)
			}
			if src != v4src(1) && (err == nil || errors.Is(err, ErrExhausted)) {
				t.Errorf("%s %v from a foreign source: %v, want a source error", tc.network, tc.s, err)
			}
			for _, c := range conns {
				closeRST(c)
			}
			if d.st != nil {
				d.st.diags.closeAll()
				d.st.lockFiles.closeAll()
				d.st.registries.closeAll()
			}
		}
	}
}
