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
	claims := map[string]func(t *testing.T, name string){
		"port preservation": func(t *testing.T, name string) {
			r := presetRig(t, name, nil)
			if ext := r.out(ping, hostX, srvA); ext.Port() != hostX.Port() {
				t.Errorf("%s claims port preservation; %v mapped to %v", name, hostX, ext)
			}
		},
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
