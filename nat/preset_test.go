package nat

import (
	"net/netip"
	"testing"
	"time"
)

// classify probes an engine the way RFC 5780 §4.3/§4.4 probes a NAT: one
// internal endpoint sends to three remote endpoints (same address other
// port, other address) to find the mapping behaviour, and a fresh engine
// receives from them to find the filtering behaviour.
func classify(t *testing.T, cfg Config) (Mapping, Filtering) {
	t.Helper()
	e := newEngine(t, cfg)
	x1 := mapUDP(t, e, hostA, srv1, t0)
	x1b := mapUDP(t, e, hostA, srv1b, t0)
	x2 := mapUDP(t, e, hostA, srv2, t0)
	m := MappingAPDM
	switch {
	case x1 == x1b && x1 == x2:
		m = MappingEIM
	case x1 == x1b:
		m = MappingADM
	}
	e = newEngine(t, cfg)
	x := mapUDP(t, e, hostA, srv1, t0)
	f := FilterAPDF
	if v, _ := in(e, udpPkt(t, srv2, x), t0); v.Action == Forward {
		f = FilterEIF
	} else if v, _ := in(e, udpPkt(t, srv1b, x), t0); v.Action == Forward {
		f = FilterADF
	}
	return m, f
}

// TestPresetClassification: every preset behaves as its documented
// classification says.
func TestPresetClassification(t *testing.T) {
	for _, info := range Presets() {
		t.Run(info.Name, func(t *testing.T) {
			cfg, err := Preset(info.Name)
			if err != nil {
				t.Fatal(err)
			}
			cfg.External = []netip.Addr{extA, extB}
			cfg.Internal = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}
			m, f := classify(t, cfg)
			if m != info.Mapping || f != info.Filtering {
				t.Fatalf("classified %v/%v, documented %v/%v", m, f, info.Mapping, info.Filtering)
			}
		})
	}
}

// TestRFCRecommendedPreset checks the settings behind "rfc-recommended"
// against the MUSTs and RECOMMENDEDs of RFC 4787/5382/5508/7857.
func TestRFCRecommendedPreset(t *testing.T) {
	cfg, _ := Preset("rfc-recommended")
	cfg.External = []netip.Addr{extA}
	cfg.Internal = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	e := newEngine(t, cfg)
	c := e.Config()
	checks := map[string]bool{
		"U1 EIM":                c.Mapping == MappingEIM,
		"U2 paired pooling":     c.Pooling == PoolingPaired,
		"U3 no overloading":     !c.Overloading,
		"U3a keep port class":   !c.MixClasses,
		"U4 parity":             c.Parity,
		"U5 UDP >= 5 min":       c.UDPTimeout >= 5*time.Minute,
		"U6 outbound refresh":   !c.NoOutboundRefresh,
		"U8 EIF":                c.Filtering == FilterEIF && c.TCPFiltering == FilterEIF,
		"U9 hairpinning":        !c.NoHairpinning,
		"T4 SYN hold 6 s":       c.SYNHold >= 6*time.Second && !c.SilentSYNDrop,
		"T5 established >= 2h4": c.TCPEstablished >= 2*time.Hour+4*time.Minute,
		"T5 transitory >= 4m":   c.TCPTransitory >= 4*time.Minute && c.TCPClosing >= 4*time.Minute,
		"I2 ICMP >= 60 s":       c.ICMPTimeout >= 60*time.Second,
		"I8 ICMP replies":       !c.NoICMPReplies,
	}
	for name, ok := range checks {
		if !ok {
			t.Errorf("%s: not met", name)
		}
	}
}

// TestLinuxMasqueradeCollision: like Linux, the masquerade preset keeps the
// port while the reply tuple is free, and otherwise picks another port for
// that destination only, so its mapping depends on the destination.
func TestLinuxMasqueradeCollision(t *testing.T) {
	cfg, _ := Preset("linux-masquerade")
	cfg.External = []netip.Addr{extA}
	cfg.Internal = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	e := newEngine(t, cfg)
	a := netip.MustParseAddrPort("10.0.0.1:40000")
	b := netip.MustParseAddrPort("10.0.0.2:40000")
	if x := mapUDP(t, e, a, srv1, t0); x.Port() != 40000 {
		t.Fatalf("A not preserved: %v", x)
	}
	xb1 := mapUDP(t, e, b, srv1, t0)
	xb2 := mapUDP(t, e, b, srv2, t0)
	if xb1.Port() == 40000 || xb2.Port() != 40000 {
		t.Fatalf("B got %v towards srv1 and %v towards srv2", xb1, xb2)
	}
}
