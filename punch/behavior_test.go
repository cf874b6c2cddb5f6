package punch

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var (
	srvA1 = netip.MustParseAddrPort("192.0.2.1:3478")
	srvA2 = netip.MustParseAddrPort("192.0.2.1:3479")
	srvB1 = netip.MustParseAddrPort("198.51.100.1:3478")
	local = netip.MustParseAddrPort("10.0.0.2:40000")
)

func ext(p uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("203.0.113.7"), p) }

func TestLearn(t *testing.T) {
	for _, tc := range []struct {
		name  string
		obs   []Observation
		want  Behavior
		pred  []uint16
		canGo bool
	}{
		{"no NAT", []Observation{{srvA1, local}, {srvA2, local}}, Behavior{Mapping: MappingNone, Allocation: AllocPreserving}, []uint16{40000}, true},
		{"EIM preserving", []Observation{{srvA1, ext(40000)}, {srvA2, ext(40000)}, {srvB1, ext(40000)}},
			Behavior{Mapping: MappingEI, Allocation: AllocPreserving}, []uint16{40000}, true},
		{"EIM translated", []Observation{{srvA1, ext(5000)}, {srvA2, ext(5000)}, {srvB1, ext(5000)}},
			Behavior{Mapping: MappingEI, Allocation: AllocRandom}, []uint16{5000}, true},
		{"APDM sequential", []Observation{{srvA1, ext(5000)}, {srvA2, ext(5001)}, {srvB1, ext(5002)}},
			Behavior{Mapping: MappingAPD, Allocation: AllocSequential, Delta: 1}, []uint16{5003, 5004, 5005, 5006}, true},
		{"APDM sequential by 2", []Observation{{srvA1, ext(5000)}, {srvA2, ext(5002)}},
			Behavior{Mapping: MappingAPD, Allocation: AllocSequential, Delta: 2}, []uint16{5004, 5006, 5008, 5010}, true},
		{"ADM", []Observation{{srvA1, ext(5000)}, {srvA2, ext(5000)}, {srvB1, ext(7000)}},
			Behavior{Mapping: MappingAD, Allocation: AllocRandom}, nil, false},
		{"APDM random", []Observation{{srvA1, ext(5000)}, {srvA2, ext(31000)}, {srvB1, ext(12000)}},
			Behavior{Mapping: MappingAPD, Allocation: AllocRandom}, nil, false},
		{"ADM preserving, another external address per server address", []Observation{{srvA1, ext(40000)}, {srvA2, ext(40000)}, {srvB1, netip.AddrPortFrom(netip.MustParseAddr("203.0.113.8"), 40000)}},
			Behavior{Mapping: MappingAD, Allocation: AllocPreserving}, []uint16{40000}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Learn(local, tc.obs)
			if err != nil {
				t.Fatal(err)
			}
			got.Last = netip.AddrPort{}
			if got != tc.want {
				t.Fatalf("Learn = %+v, want %+v", got, tc.want)
			}
			got.Last = tc.obs[len(tc.obs)-1].Mapped
			var ports []uint16
			for _, ap := range got.Predict(local, tc.obs[0].Mapped, 0) {
				ports = append(ports, ap.Port())
			}
			if !slices.Equal(ports, tc.pred) {
				t.Errorf("Predict = %v, want %v", ports, tc.pred)
			}
			if got.Predictable() != tc.canGo {
				t.Errorf("Predictable = %v, want %v", got.Predictable(), tc.canGo)
			}
		})
	}
	if _, err := Learn(local, nil); err == nil {
		t.Error("Learn with no observations: no error")
	}
}

func TestFeasible(t *testing.T) {
	cone := Behavior{Mapping: MappingEI, Allocation: AllocPreserving}
	seq := Behavior{Mapping: MappingAPD, Allocation: AllocSequential, Delta: 1}
	random := Behavior{Mapping: MappingAPD, Allocation: AllocRandom}
	for _, tc := range []struct {
		a, b Behavior
		ok   bool
		why  string
	}{
		{cone, cone, true, ""},
		{cone, seq, true, ""},
		{seq, seq, true, ""},
		{cone, random, false, "second NAT maps address-and-port-dependent with random ports"},
		{random, cone, false, "first NAT"},
		{random, random, false, "neither side"},
	} {
		ok, why := Feasible(tc.a, tc.b)
		if ok != tc.ok || !strings.Contains(why, tc.why) {
			t.Errorf("Feasible(%v, %v) = %v %q, want %v %q", tc.a, tc.b, ok, why, tc.ok, tc.why)
		}
	}
}

func TestPredictWindowBounds(t *testing.T) {
	b := Behavior{Mapping: MappingAPD, Allocation: AllocSequential, Delta: 1, Last: ext(65534)}
	if got := b.Predict(local, ext(65530), 10); len(got) != 1 || got[0].Port() != 65535 {
		t.Errorf("near the top: %v, want [65535]", got)
	}
	b.Last = ext(100)
	if got := b.Predict(local, ext(100), 1000); len(got) != maxPredictWindow {
		t.Errorf("window 1000 gave %d ports, want the cap %d", len(got), maxPredictWindow)
	}
}
