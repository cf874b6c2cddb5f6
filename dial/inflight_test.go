package dial

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/tuple"
)

// TestUDPInFlightSocketMakesPortBusy checks the lock's in-flight step: a
// socket bound with SO_REUSEADDR to the only port and not connected (another
// process between its bind and its connect) makes the port busy, so the
// Dialer does not connect beside it and reports ErrExhausted; once that
// socket is gone, the same dial succeeds.
func TestUDPInFlightSocketMakesPortBusy(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	local := netip.AddrPortFrom(v4src(1), 20000)
	remote := netip.AddrPortFrom(v4dst(1), racePort)
	fd, err := netsys.UDPSocket(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := netsys.SetReuseAddr(fd, true); err != nil {
		t.Fatal(err)
	}
	if err := netsys.Bind(fd, local); err != nil {
		t.Fatal(err)
	}
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search}
	if c, err := d.Dial("udp", remote.String()); !errors.Is(err, ErrExhausted) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial beside an unconnected socket on the only port: %v, want ErrExhausted", err)
	}
	netsys.Close(fd)
	c, err := d.Dial("udp", remote.String())
	if err != nil {
		t.Fatalf("dial after the other socket closed: %v", err)
	}
	c.Close()
}
