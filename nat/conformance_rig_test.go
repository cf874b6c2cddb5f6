package nat_test

// The test rig of the conformance suite: an Engine, a fake clock, and
// helpers that send packets built by conformance_packets_test.go through
// it and check what comes out byte for byte against a packet built from
// scratch with the expected addresses.

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
)

// Addresses: inside 192.168.1.0/24, external 203.0.113.0/24 (TEST-NET-3),
// remote hosts in 198.51.100.0/24 (TEST-NET-2). All inert data.
var (
	confT0  = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	extIP   = netip.MustParseAddr("203.0.113.1")
	extIP2  = netip.MustParseAddr("203.0.113.2")
	lan     = netip.MustParsePrefix("192.168.1.0/24")
	hostX   = netip.MustParseAddrPort("192.168.1.10:40000")
	hostX2  = netip.MustParseAddrPort("192.168.1.10:40001") // same host, other port
	hostY   = netip.MustParseAddrPort("192.168.1.20:40002")
	srvA    = netip.MustParseAddrPort("198.51.100.7:3478")
	srvAb   = netip.MustParseAddrPort("198.51.100.7:3479") // same address as srvA, other port
	srvB    = netip.MustParseAddrPort("198.51.100.8:3478") // other address
	routerR = netip.MustParseAddr("198.51.100.254")        // an on-path router nobody sent to
)

// rig is one engine and its fake clock.
type rig struct {
	t   *testing.T
	e   *nat.Engine
	now time.Time
}

// newRig builds an engine from cfg, filling in External (extIP), Internal
// (lan) and a fixed Seed when they are unset.
func newRig(t *testing.T, cfg nat.Config) *rig {
	t.Helper()
	if cfg.External == nil {
		cfg.External = []netip.Addr{extIP}
	}
	if cfg.Internal == nil {
		cfg.Internal = []netip.Prefix{lan}
	}
	if cfg.Seed == 0 {
		cfg.Seed = 7
	}
	e, err := nat.New(cfg)
	if err != nil {
		t.Fatalf("nat.New: %v", err)
	}
	return &rig{t: t, e: e, now: confT0}
}

// presetRig builds an engine from a named preset, changed by mut if set.
func presetRig(t *testing.T, name string, mut func(*nat.Config)) *rig {
	t.Helper()
	cfg, err := nat.Preset(name)
	if err != nil {
		t.Fatal(err)
	}
	if mut != nil {
		mut(&cfg)
	}
	return newRig(t, cfg)
}

// at moves the clock to confT0+d and runs Expire there, as a datapath's
// once-a-second timer would.
func (r *rig) at(d time.Duration) {
	r.t.Helper()
	now := confT0.Add(d)
	if now.Before(r.now) {
		r.t.Fatalf("clock going backwards: %v -> %v", r.now.Sub(confT0), d)
	}
	r.now = now
	r.e.Expire(now)
}

// mk builds a packet of one kind between two endpoints.
type mk func(src, dst netip.AddrPort) []byte

func udpMk(payload string) mk {
	return func(s, d netip.AddrPort) []byte { return udpPkt(s, d, payload) }
}

func tcpMk(flags uint8, seq, ack uint32) mk {
	return func(s, d netip.AddrPort) []byte { return tcpPkt(s, d, flags, seq, ack) }
}

// result is what came out of the engine for one packet.
type result struct {
	v   nat.Verdict
	out []byte // the packet as the engine left it (Forward, Hairpin)
	pv  view   // parsed out (Forward, Hairpin) or Verdict.Reply (Reply)
}

func (r *rig) run(outbound bool, b []byte) result {
	r.t.Helper()
	var v nat.Verdict
	if outbound {
		v = r.e.Outbound(b, r.now)
	} else {
		v = r.e.Inbound(b, r.now)
	}
	res := result{v: v, out: b}
	switch v.Action {
	case nat.Forward, nat.Hairpin:
		res.pv = mustParse(r.t, b)
	case nat.Reply:
		res.pv = mustParse(r.t, v.Reply)
	}
	return res
}

// send passes m(src, dst) through Outbound or Inbound. For Forward and
// Hairpin it checks that the packet out is exactly m(new src, new dst):
// only addresses, ports and checksums changed, and the checksums are
// right (mustParse and the gopacket oracle check them again).
func (r *rig) send(outbound bool, m mk, src, dst netip.AddrPort) result {
	r.t.Helper()
	res := r.run(outbound, m(src, dst))
	if res.v.Action == nat.Forward || res.v.Action == nat.Hairpin {
		if want := m(res.pv.From(), res.pv.To()); !bytes.Equal(res.out, want) {
			r.t.Fatalf("translated %v -> %v to %v -> %v, but other bytes changed:\n got  % x\n want % x",
				src, dst, res.pv.From(), res.pv.To(), res.out, want)
		}
	}
	return res
}

// out sends m from src to dst outbound, requires Forward with the
// destination unchanged, and returns the external source endpoint.
func (r *rig) out(m mk, src, dst netip.AddrPort) netip.AddrPort {
	r.t.Helper()
	res := r.send(true, m, src, dst)
	if res.v.Action != nat.Forward {
		r.t.Fatalf("outbound %v -> %v at %v: %v (%s), want forward", src, dst, r.now.Sub(confT0), res.v.Action, res.v.Reason)
	}
	if res.pv.To() != dst {
		r.t.Fatalf("outbound %v -> %v: destination rewritten to %v", src, dst, res.pv.To())
	}
	if !r.isExternal(res.pv.Src) {
		r.t.Fatalf("outbound %v -> %v: source %v is not an external address", src, dst, res.pv.From())
	}
	return res.pv.From()
}

// in sends m from src to ext inbound, requires Forward with the source
// unchanged, and returns the internal destination.
func (r *rig) in(m mk, src, ext netip.AddrPort) netip.AddrPort {
	r.t.Helper()
	res := r.send(false, m, src, ext)
	if res.v.Action != nat.Forward {
		r.t.Fatalf("inbound %v -> %v at %v: %v (%s), want forward", src, ext, r.now.Sub(confT0), res.v.Action, res.v.Reason)
	}
	if res.pv.From() != src {
		r.t.Fatalf("inbound %v -> %v: source rewritten to %v", src, ext, res.pv.From())
	}
	return res.pv.To()
}

// inTo is in that also requires delivery to want.
func (r *rig) inTo(m mk, src, ext, want netip.AddrPort) {
	r.t.Helper()
	if got := r.in(m, src, ext); got != want {
		r.t.Fatalf("inbound %v -> %v delivered to %v, want %v", src, ext, got, want)
	}
}

// blocked sends m from src to ext inbound and requires that it is not
// forwarded; it returns the verdict.
func (r *rig) blocked(m mk, src, ext netip.AddrPort) nat.Verdict {
	r.t.Helper()
	res := r.send(false, m, src, ext)
	if res.v.Action == nat.Forward || res.v.Action == nat.Hairpin {
		r.t.Fatalf("inbound %v -> %v at %v was forwarded to %v, want it blocked", src, ext, r.now.Sub(confT0), res.pv.To())
	}
	return res.v
}

func (r *rig) isExternal(a netip.Addr) bool {
	for _, x := range r.e.Config().External {
		if x == a {
			return true
		}
	}
	return false
}

// tcpOpen runs a three-way handshake from internal src to remote dst and
// returns the external endpoint.
func (r *rig) tcpOpen(src, dst netip.AddrPort) netip.AddrPort {
	r.t.Helper()
	ext := r.out(tcpMk(tcpSYN, 1000, 0), src, dst)
	r.inTo(tcpMk(tcpSYN|tcpACK, 5000, 1001), dst, ext, src)
	if e2 := r.out(tcpMk(tcpACK, 1001, 5001), src, dst); e2 != ext {
		r.t.Fatalf("ACK of %v left from %v, SYN from %v", src, e2, ext)
	}
	return ext
}
