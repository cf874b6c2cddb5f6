package natbench

import (
	"net/netip"
	"testing"
)

func TestRatiosDirection(t *testing.T) {
	rs := []Result{
		{Mode: ModeMasquerade, TCP1: 10, UDP1Recv: 100000},
		{Mode: ModeGateway, TCP1: 5, UDP1Recv: 80000},
		{Mode: ModePassthrough, TCP1: 4, UDP1Recv: 100000},
	}
	r := ratios(rs)
	if got := r["gateway/nft-masquerade"]["tcp_1_stream"]; got != 0.5 {
		t.Errorf("gateway/masquerade tcp = %v, want 0.5", got)
	}
	if got := r["gateway/gateway-passthrough"]["udp_1_flow_received"]; got != 0.8 {
		t.Errorf("gateway/passthrough udp = %v, want 0.8", got)
	}
	if _, ok := r["gateway/nft-masquerade"]["tcp_8_streams"]; ok {
		t.Errorf("a ratio over a zero figure was reported")
	}
}

func TestFlowDest(t *testing.T) {
	seen := map[netip.AddrPort]bool{}
	for k := 0; k < 100000; k++ {
		d := FlowDest(k)
		if seen[d] {
			t.Fatalf("flow %d repeats destination %v", k, d)
		}
		seen[d] = true
	}
	if FlowDest(0) != netip.MustParseAddrPort("192.0.2.10:10000") || FlowDest(99999) != netip.MustParseAddrPort("192.0.2.11:59999") {
		t.Fatalf("flow destinations %v .. %v", FlowDest(0), FlowDest(99999))
	}
}

func TestMedian(t *testing.T) {
	m := median([]Result{{TCP1: 3, UDP1Recv: 10}, {TCP1: 1, UDP1Recv: 30}, {TCP1: 2, UDP1Recv: 20}})
	if m.TCP1 != 2 || m.UDP1Recv != 20 {
		t.Fatalf("median %+v", m)
	}
}

// TestDatagramsOf: the server's counter counts skbs; a coalesced train of
// n datagrams is one skb of 28+18n bytes, and the count of datagrams
// recovers n.
func TestDatagramsOf(t *testing.T) {
	single := uint64(28 + Payload)
	if got := datagramsOf(5*single, 5); got != 5 {
		t.Fatalf("5 single datagrams counted as %d", got)
	}
	// 3 singles and one super-packet of 64 datagrams.
	if got := datagramsOf(3*single+28+64*Payload, 4); got != 67 {
		t.Fatalf("3 + 64 coalesced datagrams counted as %d", got)
	}
	if got := datagramsOf(10, 1); got != 0 {
		t.Fatalf("a short count gave %d", got)
	}
}
