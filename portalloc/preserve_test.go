package portalloc

import (
	"net/netip"
	"testing"

	"github.com/portspace/portspace/tuple"
)

// TestPreserveNeverHandsOutAPortInUse: with port preservation a request for
// a port that is already leased (to another subscriber or to the same one)
// gets another port, in the plain, the port-block and the deterministic
// allocator (RFC 4787 §4.2.1 preserves a port only when it is free).
func TestPreserveNeverHandsOutAPortInUse(t *testing.T) {
	det, err := NewDeterministic([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/30")}, []netip.Addr{ext1},
		tuple.PortRangeFrom(1024, 1024+4*512-1))
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]Config{
		"plain":         {Preserve: true},
		"plain-parity":  {Preserve: true, Parity: true},
		"arbitrary":     {Preserve: true, Pooling: Arbitrary, Addrs: []netip.Addr{ext1, ext2}},
		"blocks":        {Preserve: true, BlockSize: 512},
		"deterministic": {Preserve: true, Deterministic: det},
	} {
		t.Run(name, func(t *testing.T) {
			a := mustNew(t, cfg)
			inUse := map[netip.AddrPort]bool{}
			for i, sub := range []netip.Addr{sub1, sub2, sub1, sub2, sub1} {
				l, err := a.Get(sub, 2000, netip.AddrPortFrom(remote.Addr(), uint16(1000+i)), t0)
				if err != nil {
					t.Fatal(err)
				}
				if inUse[l.Ext] {
					t.Fatalf("lease %d (%v) gets %v, which is in use", i, sub, l.Ext)
				}
				inUse[l.Ext] = true
			}
		})
	}
}

// TestPortClassBoundary: port 1024 is the first port of the high class and
// 1023 the last of the low class (RFC 4787 REQ-3a keeps the class), so a
// request for 1024 never gets a port below 1024 and one for 1023 never gets
// one above 1023.
func TestPortClassBoundary(t *testing.T) {
	a := mustNew(t, Config{})
	for i := range 200 {
		r := netip.AddrPortFrom(remote.Addr(), uint16(i+1))
		if l, err := a.Get(sub1, 1024, r, t0); err != nil || l.Ext.Port() < 1024 {
			t.Fatalf("request for 1024: %v %v", l, err)
		}
		if l, err := a.Get(sub1, 1023, r, t0); err != nil || l.Ext.Port() > 1023 || l.Ext.Port() == 0 {
			t.Fatalf("request for 1023: %v %v", l, err)
		}
	}
}
