package nat

import (
	"testing"
	"time"
)

// TestTimersExpireAtTheirBound: every session timer keeps a flow alive for
// exactly its configured bound after the last outbound packet (a packet at
// the bound is still translated, so the timer never expires early: RFC 4787
// REQ-5, RFC 5382 REQ-5, RFC 5508 REQ-2, RFC 7857 §2) and not a second
// longer (a 120 s UDP mapping does not forward at 121 s). Each case sets up
// a flow at t0 on a fresh engine and sends one inbound packet at the bound or
// one second after it, after Expire ran at that time.
func TestTimersExpireAtTheirBound(t *testing.T) {
	type flow struct {
		// setup builds the flow on e (last outbound packet at t0) and
		// returns a function sending the inbound probe at now.
		setup func(t *testing.T, e *Engine) func(now time.Time) Verdict
		bound time.Duration
	}
	udp := func(t *testing.T, e *Engine) func(time.Time) Verdict {
		x := mapUDP(t, e, hostA, srv1, t0)
		return func(now time.Time) Verdict { v, _ := in(e, udpPkt(t, srv1, x), now); return v }
	}
	icmp := func(t *testing.T, e *Engine) func(time.Time) Verdict {
		v, b := out(e, echoPkt(t, hostA.Addr(), srv1.Addr(), 8, 77), t0)
		if v.Action != Forward {
			t.Fatalf("echo request: %v %v", v.Action, v.Reason)
		}
		d := decode(t, b)
		return func(now time.Time) Verdict {
			v, _ := in(e, echoPkt(t, srv1.Addr(), d.src.Addr(), 0, d.src.Port()), now)
			return v
		}
	}
	tcp := func(flags ...string) func(t *testing.T, e *Engine) func(time.Time) Verdict {
		return func(t *testing.T, e *Engine) func(time.Time) Verdict {
			_, d := tcpOut(t, e, hostA, srv1, "S", t0)
			if len(flags) > 0 { // open the connection, then close it as flags say
				tcpIn(t, e, srv1, d.src, "SA", t0)
				tcpOut(t, e, hostA, srv1, "A", t0)
				for i, f := range flags {
					if i%2 == 0 {
						tcpOut(t, e, hostA, srv1, f, t0)
					} else {
						tcpIn(t, e, srv1, d.src, f, t0)
					}
				}
			}
			probe := "SA"
			if len(flags) > 0 {
				probe = "A"
			}
			return func(now time.Time) Verdict { return tcpIn(t, e, srv1, d.src, probe, now) }
		}
	}
	for name, c := range map[string]flow{
		"udp":             {udp, 2 * time.Minute},
		"icmp":            {icmp, 60 * time.Second},
		"tcp-transitory":  {tcp(), 90 * time.Second},
		"tcp-established": {tcp("A"), 10 * time.Minute},
		"tcp-closing":     {tcp("F", "FA", "A"), 30 * time.Second},
		"tcp-rst":         {tcp("R"), 30 * time.Second},
	} {
		cfg := testConfig(func(c *Config) {
			c.UDPTimeout, c.ICMPTimeout = 2*time.Minute, 60*time.Second
			c.TCPTransitory, c.TCPEstablished, c.TCPClosing = 90*time.Second, 10*time.Minute, 30*time.Second
		})
		for _, late := range []bool{false, true} {
			e := newEngine(t, cfg)
			probe := c.setup(t, e)
			at := t0.Add(c.bound)
			if late {
				at = at.Add(time.Second)
			}
			e.Expire(at)
			v := probe(at)
			if (v.Action == Forward) == late {
				t.Errorf("%s: inbound %v after the last outbound packet of a %v timer: %v %v", name, at.Sub(t0), c.bound, v.Action, v.Reason)
			}
		}
	}
}
