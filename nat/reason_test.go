package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/packet"
)

// TestReasonNames: every Reason but ReasonNone has a distinct name and an
// error text with the package prefix, packet reasons keep their packet
// names, and a Reason wrapped in an error is found with errors.Is.
func TestReasonNames(t *testing.T) {
	seen := map[string]Reason{}
	for r := Reason(1); r < NumReasons; r++ {
		n := r.String()
		if n == "" || n == "unknown" {
			t.Errorf("reason %d has no name", r)
		}
		if o, dup := seen[n]; dup {
			t.Errorf("reasons %d and %d share the name %q", o, r, n)
		}
		seen[n] = r
		if p, ok := r.Packet(); ok {
			if n != p.String() || r.Error() != p.Error() || FromPacket(p) != r {
				t.Errorf("reason %d: %q %q, packet reason %q %q", r, n, r.Error(), p, p.Error())
			}
		} else if !strings.HasPrefix(r.Error(), "nat: ") || len(r.Error()) < 8 {
			t.Errorf("reason %q: error %q", n, r.Error())
		}
		if err := fmt.Errorf("x: %w", r); !errors.Is(err, r) {
			t.Errorf("%q not found in a wrapped error", n)
		}
	}
	for r, want := range map[Reason]string{ReasonNone: "", ReasonPortLimit: "subscriber-port-limit",
		ReasonFragment: "fragment", FromPacket(packet.ReasonTruncated): "truncated", ReasonFragmentFull: "fragment-hold-full"} {
		if r.String() != want {
			t.Errorf("reason %d: %q, want %q", r, r.String(), want)
		}
	}
	if NumReasons.String() != "unknown" || FromPacket(packet.NumReasons) != ReasonNone {
		t.Error("out-of-range reasons")
	}
}

// TestStatsDoNotAllocate: Stats returns its drop counters in an array, so
// reading them (a metrics scrape per second) costs no garbage.
func TestStatsDoNotAllocate(t *testing.T) {
	e := newEngine(t, testConfig(nil))
	out(e, []byte{0x45}, t0)
	mapUDP(t, e, hostA, srv1, t0)
	var s Stats
	if n := testing.AllocsPerRun(100, func() { s = e.Stats() }); n != 0 {
		t.Fatalf("Stats allocates %v times", n)
	}
	if s.Drops[FromPacket(packet.ReasonTruncated)] != 1 || s.Dropped != 1 {
		t.Fatalf("drops %v", s.Drops)
	}
}

// TestOverlapPortCountsReleased: the per-subscriber port counts kept for
// MaxPortsPerSubscriber under overlapping (RFC 6888 REQ-4) are released
// with the mappings, by expiry and by Flush, so they cannot leak.
func TestOverlapPortCountsReleased(t *testing.T) {
	e := newEngine(t, testConfig(func(c *Config) {
		c.Overlapping, c.Filtering, c.MaxPortsPerSubscriber = true, FilterAPDF, 2
	}))
	mapUDP(t, e, hostA, srv1, t0)
	mapUDP(t, e, hostB, srv1, t0)
	mapUDP(t, e, netip.AddrPortFrom(hostA.Addr(), 1234), srv2, t0)
	if len(e.ovSubs) != 2 {
		t.Fatalf("%d subscribers counted, want 2", len(e.ovSubs))
	}
	e.Expire(t0.Add(time.Hour))
	if len(e.ovSubs) != 0 || e.Stats().Mappings != 0 {
		t.Fatalf("after expiry: %d subscribers counted, %d mappings", len(e.ovSubs), e.Stats().Mappings)
	}
	mapUDP(t, e, hostA, srv1, t0.Add(time.Hour))
	e.Flush(t0.Add(time.Hour))
	if len(e.ovSubs) != 0 {
		t.Fatalf("after Flush: %d subscribers counted", len(e.ovSubs))
	}
}
