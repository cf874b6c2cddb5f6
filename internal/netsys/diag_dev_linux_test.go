package netsys

import (
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLookupUDPOnDevice checks the per-interface lookup: a socket bound to
// lo (SO_BINDTODEVICE) and connected to r1 is invisible to the lookup
// without an interface, which names the unconnected socket instead, and
// found, with its peer, by the lookup on lo's index; toward another remote
// the lookup on lo still names the unconnected socket, with no peer.
func TestLookupUDPOnDevice(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skip("no lo:", err)
	}
	for _, fam := range []struct{ lo, r1, r2 string }{
		{"127.0.0.1", "127.0.0.2:5000", "127.0.0.3:5000"},
		{"::1", "[::1]:5000", "[::1]:5001"},
	} {
		_, local, cookieA := boundUDP(t, netip.AddrPortFrom(netip.MustParseAddr(fam.lo), 0))
		r1, r2 := netip.MustParseAddrPort(fam.r1), netip.MustParseAddrPort(fam.r2)
		fdB, err := UDPSocket(local.Addr().Is6())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fdB) })
		if err := SetReuseAddr(fdB, true); err != nil {
			t.Fatal(err)
		}
		if err := unix.BindToDevice(fdB, "lo"); err != nil {
			t.Skip("SO_BINDTODEVICE:", err)
		}
		if err := Bind(fdB, local); err != nil {
			t.Fatal(err)
		}
		if err := Connect(fdB, r1); err != nil {
			t.Fatal(err)
		}
		cookieB, err := Cookie(fdB)
		if err != nil {
			t.Fatal(err)
		}
		d, err := OpenDiag()
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if o, found, err := d.LookupUDPOn(local, r1, 0); err != nil || !found || o.Cookie != cookieA || o.Peer.IsValid() {
			t.Errorf("%v->%v without an interface = %+v, %v, %v; want the unconnected %#x (the device-bound socket skipped)", r1, local, o, found, err, cookieA)
		}
		if o, found, err := d.LookupUDPOn(local, r1, lo.Index); err != nil || !found || o.Cookie != cookieB || o.Peer != r1 {
			t.Errorf("%v->%v on lo = %+v, %v, %v; want the device-bound %#x connected to %v", r1, local, o, found, err, cookieB, r1)
		}
		if o, found, err := d.LookupUDPOn(local, r2, lo.Index); err != nil || !found || o.Cookie != cookieA || o.Peer.IsValid() {
			t.Errorf("%v->%v on lo = %+v, %v, %v; want the unconnected %#x", r2, local, o, found, err, cookieA)
		}
	}
}
