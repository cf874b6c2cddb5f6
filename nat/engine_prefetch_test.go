package nat

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

// TestPrefetchKeys checks that the key Prefetch computes for a packet is
// the key the look-up uses (the owner is found by it), outbound and
// inbound, for UDP, TCP and ICMP echo, under EIM, APDM and port
// overlapping; and that Prefetch changes neither the packets nor the
// engine and allocates nothing.
func TestPrefetchKeys(t *testing.T) {
	for _, cfg := range []Config{
		testConfig(nil),
		testConfig(func(c *Config) { c.Mapping, c.Filtering = MappingAPDM, FilterAPDF }),
		testConfig(func(c *Config) { c.Mapping, c.Filtering, c.Overlapping = MappingEIM, FilterAPDF, true }),
	} {
		e := newEngine(t, cfg)
		out := [][]byte{udpPkt(t, hostA, srv1), tcpPkt(t, hostB, srv2, "S"), icmpPkt(t, hostA.Addr(), srv1.Addr(), 8, 77)}
		var in [][]byte
		for _, p := range out {
			q := append([]byte(nil), p...)
			if v := e.Outbound(q, t0); v.Action != Forward {
				t.Fatalf("%+v: outbound %v", cfg.Mapping, v)
			}
			// The reply: swap the translated packet's endpoints.
			r := append([]byte(nil), q...)
			copy(r[12:16], q[16:20])
			copy(r[16:20], q[12:16])
			if r[9] == 1 {
				r[20] = 0 // echo reply
			} else {
				copy(r[20:22], q[22:24])
				copy(r[22:24], q[20:22])
			}
			in = append(in, r)
		}
		for i, p := range append(append([][]byte{}, out...), in...) {
			inbound := i >= len(out)
			k, ok := e.prefetchKey(p, inbound)
			if !ok || e.t.find(k) == 0 {
				t.Errorf("mapping %v overlapping %v packet %d (inbound %v): prefetch key not found", cfg.Mapping, cfg.Overlapping, i, inbound)
			}
		}
		all := append(append([][]byte{}, out...), in...)
		dirs := []bool{false, false, false, true, true, true}
		before := make([][]byte, len(all))
		for i, p := range all {
			before[i] = append([]byte(nil), p...)
		}
		st := e.Stats()
		if a := testing.AllocsPerRun(100, func() { e.Prefetch(all, dirs) }); a != 0 {
			t.Errorf("Prefetch allocates %v", a)
		}
		e.Prefetch([][]byte{{0x45}, nil, make([]byte, 40)}, []bool{false, true, false})
		for i := range all {
			if !bytes.Equal(all[i], before[i]) {
				t.Fatalf("Prefetch changed packet %d", i)
			}
		}
		if e.Stats() != st {
			t.Fatal("Prefetch changed the engine's counters")
		}
	}
}

// icmpPkt is an ICMP echo request (type 8) with identifier id.
func icmpPkt(tb testing.TB, src, dst netip.Addr, typ uint8, id uint16) []byte {
	tb.Helper()
	p := udpPkt(tb, netip.AddrPortFrom(src, 1), netip.AddrPortFrom(dst, 1))
	p[9] = 1
	p[20], p[21] = typ, 0
	p[24], p[25] = byte(id>>8), byte(id)
	p[22], p[23] = 0, 0
	var s uint32
	for i := 20; i+1 < len(p); i += 2 {
		s += uint32(p[i])<<8 | uint32(p[i+1])
	}
	if len(p)%2 == 1 {
		s += uint32(p[len(p)-1]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	c := ^uint16(s)
	p[22], p[23] = byte(c>>8), byte(c)
	// IP header checksum.
	p[10], p[11] = 0, 0
	s = 0
	for i := 0; i < 20; i += 2 {
		s += uint32(p[i])<<8 | uint32(p[i+1])
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	c = ^uint16(s)
	p[10], p[11] = byte(c>>8), byte(c)
	return p
}

// TestPortsUsed checks the per-protocol port counts follow mappings.
func TestPortsUsed(t *testing.T) {
	e := newEngine(t, testConfig(nil))
	for _, p := range [][]byte{udpPkt(t, hostA, srv1), udpPkt(t, hostB, srv1), tcpPkt(t, hostA, srv2, "S")} {
		if v := e.Outbound(p, t0); v.Action != Forward {
			t.Fatal(v)
		}
	}
	if tcp, udp, icmp := e.PortsUsed(extA); tcp != 1 || udp != 2 || icmp != 0 {
		t.Fatalf("PortsUsed = %d, %d, %d; want 1, 2, 0", tcp, udp, icmp)
	}
	if tcp, udp, _ := e.PortsUsed(extB); tcp+udp != 0 {
		t.Fatal("ports counted on an address not in the pool")
	}
}

// TestReload checks a timer change applies to an existing session from its
// next packet, and that a non-reloadable change is refused by name with
// the engine unchanged.
func TestReload(t *testing.T) {
	cfg := testConfig(nil)
	e := newEngine(t, cfg)
	if v := e.Outbound(udpPkt(t, hostA, srv1), t0); v.Action != Forward {
		t.Fatal(v)
	}
	next := cfg
	next.UDPTimeout = 30 * 60e9 // 30 min
	if err := e.Reload(next); err != nil {
		t.Fatal(err)
	}
	if v := e.Outbound(udpPkt(t, hostA, srv1), t0); v.Action != Forward {
		t.Fatal(v)
	}
	for s := range e.Sessions() {
		if d := s.Expires.Sub(t0); d < 29*60e9 {
			t.Fatalf("session expires %v after the packet, want the reloaded 30 min", d)
		}
	}
	bad := next
	bad.Mapping = MappingAPDM
	err := e.Reload(bad)
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "Mapping" || ce.YAML != "mapping" {
		t.Fatalf("Reload of Mapping: %v", err)
	}
	if e.Config().Mapping != MappingEIM {
		t.Fatal("a refused Reload changed the engine")
	}
	bad = next
	bad.UDPTimeout = -1
	if err := e.Reload(bad); err == nil && e.Config().UDPTimeout < 0 {
		t.Fatal("Reload accepted a negative UDP timeout")
	}
}
