package nat_test

// Each preset against its documented classification (nat.Presets): the
// mapping and filtering behaviour found by RFC 5780-style probes over UDP
// and TCP, and the claims of its summary that a probe can check.

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/tuple"
)

// probeMapping classifies the mapping behaviour of a fresh engine.
func probeMapping(t *testing.T, preset string, m mk) nat.Mapping {
	r := presetRig(t, preset, nil)
	e1 := r.out(m, hostX, srvA)
	e2 := r.out(m, hostX, srvAb)
	e3 := r.out(m, hostX, srvB)
	switch {
	case e1 == e2 && e1 == e3:
		return nat.MappingEIM
	case e1 == e2 && e1 != e3:
		return nat.MappingADM
	case e1 != e2 && e1 != e3 && e2 != e3:
		return nat.MappingAPDM
	}
	t.Fatalf("%s: mapping probe gave %v, %v, %v: no RFC 4787 behaviour", preset, e1, e2, e3)
	return 0
}

// probeFiltering classifies the filtering behaviour: after X sends to srvA,
// is a packet from srvAb (same address) and from srvB (other address)
// admitted? Each probe uses a fresh engine.
func probeFiltering(t *testing.T, preset string, out, in mk) nat.Filtering {
	admitted := func(from netip.AddrPort) bool {
		r := presetRig(t, preset, nil)
		ext := r.out(out, hostX, srvA)
		return r.send(false, in, from, ext).v.Action == nat.Forward
	}
	sameAddr, otherAddr := admitted(srvAb), admitted(srvB)
	switch {
	case sameAddr && otherAddr:
		return nat.FilterEIF
	case sameAddr:
		return nat.FilterADF
	case !otherAddr:
		return nat.FilterAPDF
	}
	t.Fatalf("%s: admits another address but not another port of the same address", preset)
	return 0
}

func TestConformance_PresetClassification(t *testing.T) {
	// Claims in a summary beyond mapping and filtering, each with a probe.
	preserved := func(t *testing.T, name string) {
		r := presetRig(t, name, nil)
		if ext := r.out(ping, hostX, srvA); ext.Port() != hostX.Port() {
			t.Errorf("%s claims port preservation; %v mapped to %v", name, hostX, ext)
		}
	}
	claims := map[string]func(t *testing.T, name string){
		"port preservation": preserved,
		"port preserved":    preserved,
		"hairpinning": func(t *testing.T, name string) {
			r := presetRig(t, name, nil)
			ext := r.out(ping, hostX, srvA)
			if res := r.send(true, ping, hostY, ext); res.v.Action != nat.Hairpin {
				t.Errorf("%s claims hairpinning: %v (%s)", name, res.v.Action, res.v.Reason)
			}
		},
		"30 s timers": func(t *testing.T, name string) {
			r := presetRig(t, name, nil)
			ext := r.out(ping, hostX, srvA)
			r.at(29 * time.Second)
			r.inTo(pong, srvA, ext, hostX)
			r.at(32 * time.Second)
			r.blocked(pong, srvA, ext)
		},
		"ports overlap": func(t *testing.T, name string) {
			r := presetRig(t, name, nil)
			if eX, eY := r.out(ping, hostX, srvA), r.out(ping, netip.AddrPortFrom(hostY.Addr(), hostX.Port()), srvB); eX != eY {
				t.Errorf("%s claims overlapping; X and Y (same port, other destinations) got %v and %v", name, eX, eY)
			}
		},
		"sequential ports": func(t *testing.T, name string) {
			r := presetRig(t, name, nil)
			a, b := r.out(ping, hostX, srvA), r.out(ping, hostY, srvA)
			if b.Port() != a.Port()+1 {
				t.Errorf("%s claims sequential ports; got %d then %d", name, a.Port(), b.Port())
			}
		},
		"120 s port quarantine": func(t *testing.T, name string) {
			if q := presetRig(t, name, nil).e.Config().Quarantine; q < 120*time.Second {
				t.Errorf("%s: quarantine %v", name, q)
			}
		},
		"512-port blocks": func(t *testing.T, name string) {
			var blocks []nat.Event
			r := presetRig(t, name, func(c *nat.Config) {
				c.Events = nat.EventFunc(func(e nat.Event) {
					if e.Kind == nat.BlockAllocated {
						blocks = append(blocks, e)
					}
				})
			})
			r.out(ping, hostX, srvA)
			if len(blocks) != 1 || blocks[0].Block.Len() != 512 {
				t.Errorf("%s: block events %+v", name, blocks)
			}
		},
	}
	seen := map[string]bool{}
	for _, p := range nat.Presets() {
		seen[p.Name] = true
		t.Run(p.Name, func(t *testing.T) {
			if got := probeMapping(t, p.Name, ping); got != p.Mapping {
				t.Errorf("UDP mapping is %v, documented %v", got, p.Mapping)
			}
			if got := probeMapping(t, p.Name, tcpMk(tcpSYN, 1, 0)); got != p.Mapping {
				t.Errorf("TCP mapping is %v, documented %v", got, p.Mapping)
			}
			if got := probeFiltering(t, p.Name, ping, pong); got != p.Filtering {
				t.Errorf("UDP filtering is %v, documented %v", got, p.Filtering)
			}
			if got := probeFiltering(t, p.Name, tcpMk(tcpSYN, 1, 0), tcpMk(tcpSYN, 9, 0)); got != p.Filtering {
				t.Errorf("TCP filtering is %v, documented %v", got, p.Filtering)
			}
			for claim, check := range claims {
				if strings.Contains(p.Summary, claim) {
					check(t, p.Name)
				}
			}
		})
	}
	for _, want := range []string{"full-cone", "restricted-cone", "port-restricted-cone", "symmetric", "address-dependent",
		"rfc-recommended", "linux-masquerade", "cgn", "deterministic", "pion-vnet"} {
		if !seen[want] {
			t.Errorf("preset %q is not listed by nat.Presets", want)
		}
	}
}

// TestConformance_PresetMUSTs runs the crisp MUST-level checks against
// every preset and compares the ones a preset fails with its documented
// deviations, so a preset that starts (or stops) violating a requirement
// fails the test. docs/nat-conformance.md has the same matrix.
func TestConformance_PresetMUSTs(t *testing.T) {
	checks := []struct {
		id   string
		pass func(t *testing.T, preset string) bool
	}{
		{"U1", func(t *testing.T, p string) bool { return probeMapping(t, p, ping) == nat.MappingEIM }},
		{"T1", func(t *testing.T, p string) bool { return probeMapping(t, p, tcpMk(tcpSYN, 1, 0)) == nat.MappingEIM }},
		{"U3", func(t *testing.T, p string) bool { // a 4-port pool: no external endpoint shared towards one destination
			r := presetRig(t, p, func(c *nat.Config) {
				c.Ports = tuple.MustParsePortSet("50000-50003")
				c.Deterministic, c.BlockSize, c.MaxBlocksPerSubscriber = false, 0, 0
			})
			seen := map[netip.AddrPort]bool{}
			refused := false
			for i := range 10 {
				in := netip.AddrPortFrom(subscriber(i), 40000+2*uint16(i))
				res := r.send(true, ping, in, srvA)
				if res.v.Action != nat.Forward {
					refused = true
					continue
				}
				if seen[res.pv.From()] {
					return false
				}
				seen[res.pv.From()] = true
			}
			return refused && len(seen) <= 4
		}},
		{"U5", func(t *testing.T, p string) bool {
			r := presetRig(t, p, nil)
			ext := r.out(ping, hostX, srvA)
			r.at(2*time.Minute - time.Millisecond)
			return r.send(false, pong, srvA, ext).v.Action == nat.Forward
		}},
		{"U6", func(t *testing.T, p string) bool {
			r := presetRig(t, p, nil)
			ext := r.out(ping, hostX, srvA)
			timer := r.e.Config().UDPTimeout
			r.at(timer / 2)
			r.out(ping, hostX, srvA)
			r.at(timer/2 + timer - time.Second)
			return r.send(false, pong, srvA, ext).v.Action == nat.Forward
		}},
		{"T2a", func(t *testing.T, p string) bool {
			r := presetRig(t, p, nil)
			peer := netip.MustParseAddrPort("198.51.100.9:5555")
			ext := r.out(tcpMk(tcpSYN, 1000, 0), hostX, peer)
			return r.send(false, tcpMk(tcpSYN, 7000, 0), peer, ext).v.Action == nat.Forward
		}},
		{"T4", func(t *testing.T, p string) bool { // no response to an unsolicited SYN within 6 s
			r := presetRig(t, p, nil)
			res := r.run(false, tcpPkt(srvB, netip.AddrPortFrom(extIP, 50123), tcpSYN, 1, 0))
			if res.v.Action == nat.Reply || res.v.Action == nat.Forward {
				return false
			}
			for ms := 100; ms < 6000; ms += 100 {
				r.at(time.Duration(ms) * time.Millisecond)
				if len(r.e.Replies()) > 0 {
					return false
				}
			}
			return true
		}},
		{"T5", func(t *testing.T, p string) bool {
			r := presetRig(t, p, nil)
			ext := r.tcpOpen(hostX, web)
			syn := r.out(tcpMk(tcpSYN, 1, 0), hostX2, web)
			r.at(4*time.Minute - time.Millisecond)
			if r.send(false, tcpMk(tcpSYN|tcpACK, 9, 2), web, syn).v.Action != nat.Forward {
				return false
			}
			r.at(2*time.Hour + 4*time.Minute - time.Millisecond)
			return r.send(false, tcpMk(tcpACK, 5001, 1001), web, ext).v.Action == nat.Forward
		}},
		{"I2", func(t *testing.T, p string) bool {
			r := presetRig(t, p, nil)
			ext := r.echoOut(hostX.Addr(), 1, srvA.Addr(), 1)
			r.at(60*time.Second - time.Millisecond)
			return r.echoReplyIn(srvA.Addr(), ext, hostX.Addr(), 1, 1)
		}},
	}
	// Documented deviations: the requirements each preset fails.
	deviations := map[string][]string{
		"symmetric":         {"U1", "T1"},
		"address-dependent": {"U1", "T1"},
		"linux-masquerade":  {"T5", "I2"}, // conntrack's 120 s transitory and 30 s ICMP timers
		"pion-vnet":         {"U5", "T5", "I2"},
	}
	for _, p := range nat.Presets() {
		t.Run(p.Name, func(t *testing.T) {
			var failed []string
			for _, c := range checks {
				if !c.pass(t, p.Name) {
					failed = append(failed, c.id)
				}
			}
			if strings.Join(failed, ",") != strings.Join(deviations[p.Name], ",") {
				t.Errorf("fails %v, documented deviations %v", failed, deviations[p.Name])
			}
		})
	}
}
