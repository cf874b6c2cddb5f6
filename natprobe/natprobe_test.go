package natprobe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/stun"
)

func startStun(t testing.TB, single, tcp bool) *stun.Server {
	t.Helper()
	var last error
	for try := 0; try < 20; try++ {
		port := uint16(20000 + rand.IntN(20000))
		o := stun.Options{Primary: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), TCP: tcp}
		if !single {
			o.Alternate = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port+1)
		}
		s, err := stun.Listen(o)
		if err != nil {
			last = err
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = s.Serve(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		return s
	}
	t.Fatal(last)
	return nil
}

var fast = Options{Pace: 10 * time.Millisecond, Decide: 300 * time.Millisecond, RTO: 100 * time.Millisecond, Timeout: 800 * time.Millisecond}

func TestProbeNoNAT(t *testing.T) {
	s := startStun(t, false, true)
	o := fast
	o.Server, o.TCP = s.Addrs()[0], true
	r, err := Probe(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.NAT == nil || *r.NAT || r.Mapped != r.Local {
		t.Fatalf("loopback seen as NAT: %+v", r)
	}
	if !r.RFC5780 || r.Other != s.Addrs()[3] {
		t.Errorf("RFC5780 %v other %v", r.RFC5780, r.Other)
	}
	if r.Mapping != EndpointIndependent || r.Filtering != EndpointIndependent || r.RFC3489 != Open {
		t.Errorf("mapping %q filtering %q class %q, want EIM, EIF, open", r.Mapping, r.Filtering, r.RFC3489)
	}
	if r.Allocation != Preserving || r.Preservation == nil || !*r.Preservation || r.Parity == nil || !*r.Parity {
		t.Errorf("allocation %q preservation %v parity %v", r.Allocation, r.Preservation, r.Parity)
	}
	if r.ALG == nil || *r.ALG {
		t.Errorf("ALG %v", r.ALG)
	}
	if r.OriginRewritten == nil || *r.OriginRewritten {
		t.Errorf("origin rewritten %v: %q", r.OriginRewritten, r.OriginNotes)
	}
	if r.TCP == nil || r.TCP.Mapping != EndpointIndependent || r.TCP.Preservation == nil || !*r.TCP.Preservation {
		t.Errorf("tcp %+v", r.TCP)
	}
	if len(r.Skipped) != 0 {
		t.Errorf("skipped %v", r.Skipped)
	}
}

// TestProbeSingleHomed: a server without OTHER-ADDRESS. The probe says which
// tests it could not run and does not guess them.
func TestProbeSingleHomed(t *testing.T) {
	s := startStun(t, true, false)
	o := fast
	o.Server = s.Addrs()[0]
	r, err := Probe(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.RFC5780 || r.Other.IsValid() || r.Filtering != "" || r.RFC3489 != "" {
		t.Fatalf("guessed: %+v", r)
	}
	if len(r.Skipped) == 0 || !strings.Contains(r.Skipped[0], "OTHER-ADDRESS") {
		t.Fatalf("skipped %q", r.Skipped)
	}
	j, _ := json.Marshal(r)
	var m map[string]any
	_ = json.Unmarshal(j, &m)
	if m["filtering"] != nil || m["rfc3489"] != nil {
		t.Errorf("JSON %s", j)
	}
}

func TestProbeNoAnswer(t *testing.T) {
	c, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer c.Close() // a socket that never answers
	o := fast
	o.Server = c.LocalAddr().(*net.UDPAddr).AddrPort()
	start := time.Now()
	r, err := Probe(context.Background(), o)
	if !errors.Is(err, ErrTimeout) || r.RFC3489 != Blocked {
		t.Fatalf("err %v class %q", err, r.RFC3489)
	}
	if !strings.Contains(err.Error(), "mapping test I") {
		t.Errorf("error does not name the test: %v", err)
	}
	// Retransmissions: 0, RTO, 3 RTO, 7 RTO (< Timeout), from each of the
	// two sockets whose first test expects an answer (mapping and
	// filtering test I).
	buf := make([]byte, 100)
	per := map[netip.AddrPort]int{}
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	for {
		_, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		per[from]++
	}
	if len(per) != 2 {
		t.Errorf("requests from %d sockets, want 2: %v", len(per), per)
	}
	for from, n := range per {
		if n != 4 {
			t.Errorf("%v sent %d requests in %v, want 4 (RTO doubling)", from, n, time.Since(start))
		}
	}
}

// TestProbeHostileServer answers with garbage, wrong IDs and errors: the
// probe must not panic and must report each failure.
func TestProbeHostileServer(t *testing.T) {
	for _, mode := range []string{"garbage", "error420", "nomapped", "badaddr"} {
		t.Run(mode, func(t *testing.T) {
			c, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			defer c.Close()
			go func() {
				buf := make([]byte, 2048)
				for {
					n, from, err := c.ReadFromUDPAddrPort(buf)
					if err != nil {
						return
					}
					var m stun.Message
					if stun.Parse(buf[:n], &m) != nil {
						continue
					}
					var b stun.Builder
					switch mode {
					case "garbage":
						_, _ = c.WriteToUDPAddrPort(append(append([]byte(nil), buf[:n]...), 1, 2, 3), from)
						_, _ = c.WriteToUDPAddrPort([]byte{1, 1, 0, 4}, from)
						continue
					case "error420":
						b.Start(nil, stun.BindingError, m.ID)
						b.AddErrorCode(420, "Unknown Attribute")
					case "nomapped":
						b.Start(nil, stun.BindingSuccess, m.ID)
					case "badaddr":
						b.Start(nil, stun.BindingSuccess, m.ID)
						b.Add(stun.AttrXORMappedAddress, []byte{0, 9, 0, 0})
					}
					_, _ = c.WriteToUDPAddrPort(b.Bytes(), from)
				}
			}()
			o := fast
			o.Server = c.LocalAddr().(*net.UDPAddr).AddrPort()
			r, err := Probe(context.Background(), o)
			if err == nil {
				t.Fatalf("no error; result %+v", r)
			}
			if r.Mapping != "" || r.Filtering != "" {
				t.Errorf("classified a hostile server: %+v", r)
			}
		})
	}
}

func TestOptionsRejected(t *testing.T) {
	for _, o := range []Options{{}, {Server: netip.MustParseAddrPort("0.0.0.0:3478")}, {Server: netip.MustParseAddrPort("127.0.0.1:0")},
		{Server: netip.MustParseAddrPort("127.0.0.1:3478"), RTO: -1}} {
		if _, err := Probe(context.Background(), o); !errors.Is(err, ErrBadOptions) {
			t.Errorf("%+v: %v", o, err)
		}
	}
}

func sample(local, mapped uint16) Sample {
	return Sample{Local: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), local), Mapped: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), mapped)}
}

func TestAnalyse(t *testing.T) {
	for _, c := range []struct {
		name    string
		s       []Sample
		alloc   Allocation
		delta   int
		pres    bool
		parity  bool
		overlap bool
	}{
		{"preserving", []Sample{sample(40001, 40001), sample(40100, 40100), sample(50000, 50000)}, Preserving, 0, true, true, false},
		{"sequential +1", []Sample{sample(40001, 1024), sample(40100, 1025), sample(50000, 1026), sample(41000, 1027)}, Sequential, 1, false, false, false},
		{"sequential -2 across wrap", []Sample{sample(40001, 1), sample(40003, 65535), sample(50001, 65533)}, Sequential, -2, false, true, false},
		{"sequential with gaps", []Sample{sample(40001, 49152), sample(40100, 49153), sample(50000, 49157), sample(41000, 49158), sample(41001, 49159)}, Sequential, 1, false, false, false},
		{"not sequential: a step back", []Sample{sample(40001, 49152), sample(40100, 49153), sample(50000, 49151), sample(41000, 49158)}, Random, 0, false, false, false},
		{"random", []Sample{sample(40001, 7001), sample(40100, 33333), sample(50000, 1234)}, Random, 0, false, false, false},
		{"overlapping", []Sample{sample(40001, 5000), sample(40100, 5000), sample(50000, 6000)}, Random, 0, false, false, true},
	} {
		pres, parity, ov, alloc, d := analyse(c.s, c.s)
		if alloc != c.alloc || d != c.delta || pres == nil || *pres != c.pres || parity == nil || *parity != c.parity || (ov != nil) != c.overlap {
			t.Errorf("%s: alloc %q delta %d pres %v parity %v overlap %v", c.name, alloc, d, *pres, *parity, ov)
		}
	}
}

func TestClass(t *testing.T) {
	no, yes := ptr(false), ptr(true)
	for _, c := range []struct {
		nat  *bool
		m, f Behavior
		want Class
	}{
		{no, EndpointIndependent, EndpointIndependent, Open},
		{no, EndpointIndependent, AddressAndPortDependent, SymmetricFirewall},
		{yes, EndpointIndependent, EndpointIndependent, FullCone},
		{yes, EndpointIndependent, AddressDependent, RestrictedCone},
		{yes, EndpointIndependent, AddressAndPortDependent, PortRestrictedCone},
		{yes, AddressDependent, EndpointIndependent, Symmetric},
		{yes, AddressAndPortDependent, AddressAndPortDependent, Symmetric},
		{yes, EndpointIndependent, "", ""},
		{nil, "", "", ""},
	} {
		if got := class(c.nat, c.m, c.f); got != c.want {
			t.Errorf("class(%v, %q, %q) = %q, want %q", *ptrOr(c.nat), c.m, c.f, got, c.want)
		}
	}
}

func ptrOr(p *bool) *bool {
	if p == nil {
		return ptr(false)
	}
	return p
}

// TestSearchLifetime drives the binary search with a fake binding (no
// sleeping): it must land within the resolution of the true lifetime.
func TestSearchLifetime(t *testing.T) {
	for _, truth := range []time.Duration{0, 700 * time.Millisecond, 30 * time.Second, 119 * time.Second, 200 * time.Second} {
		trials := 0
		alive := func(T time.Duration) (bool, error) { trials++; return T <= truth, nil }
		got, atLeast, err := searchLifetime(180*time.Second, time.Second, alive)
		if err != nil {
			t.Fatal(err)
		}
		if truth >= 180*time.Second {
			if !atLeast || got != 180*time.Second || trials != 1 {
				t.Errorf("truth %v: got %v atLeast %v after %d trials", truth, got, atLeast, trials)
			}
			continue
		}
		if atLeast || got > truth || truth-got > time.Second {
			t.Errorf("truth %v: got %v atLeast %v", truth, got, atLeast)
		}
		if trials > 10 {
			t.Errorf("truth %v: %d trials", truth, trials)
		}
	}
	boom := errors.New("boom")
	if _, _, err := searchLifetime(time.Minute, time.Second, func(time.Duration) (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Errorf("error lost: %v", err)
	}
}

// TestLifetimeLoopback runs the section 4.6 exchange for real on loopback,
// where no NAT expires anything: the binding outlives a short maximum.
func TestLifetimeLoopback(t *testing.T) {
	s := startStun(t, false, false)
	o := fast
	o.Server, o.Lifetime, o.LifetimeMax = s.Addrs()[0], true, 50*time.Millisecond
	r, err := Probe(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !r.LifetimeAtLeast || r.Lifetime != 50*time.Millisecond {
		t.Fatalf("lifetime %v atLeast %v skipped %v", r.Lifetime, r.LifetimeAtLeast, r.Skipped)
	}
}

func TestJSONFields(t *testing.T) {
	s := startStun(t, false, true)
	o := fast
	o.Server, o.TCP = s.Addrs()[0], true
	r, err := Probe(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"mapping": "endpoint-independent", "filtering": "endpoint-independent",
		"hairpinning": nil, "preservation": true, "parity": true, "allocation": "preserving",
		"mapped": r.Mapped.String(), "rfc3489": "open"} {
		got, ok := m[k]
		if !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, want)
		}
	}
	tcp, _ := m["tcp"].(map[string]any)
	for _, k := range []string{"mapping", "preservation", "allocation"} {
		if _, ok := tcp[k]; !ok {
			t.Errorf("tcp.%s missing: %s", k, j)
		}
	}
	var text strings.Builder
	if err := r.WriteText(&text); err != nil || !strings.Contains(text.String(), "rfc3489        open") {
		t.Errorf("text:\n%s", text.String())
	}
}

// fakeServer answers Binding requests on one loopback socket with a
// stun.Handler whose addresses are primary and alternate (zero: single
// homed), which need not be the socket's own: a handler that names another
// primary is a server behind a NAT of its own. Every answer leaves from the
// one socket; with ignorePort it goes to the request's source even when
// RESPONSE-PORT names another port (a server that does not honour it).
func fakeServer(t *testing.T, primary func(netip.AddrPort) netip.AddrPort, alternate netip.AddrPort, ignorePort bool) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	self := c.LocalAddr().(*net.UDPAddr).AddrPort()
	h, err := stun.NewHandler(primary(self), alternate, "")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		in := make([]byte, 2048)
		out := make([]byte, 0, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(in)
			if err != nil {
				return
			}
			r, ok := h.Handle(out, in[:n], from, stun.SocketPrimary, false)
			if !ok {
				continue
			}
			to := r.To
			if ignorePort {
				to = from
			}
			_, _ = c.WriteToUDPAddrPort(r.Data, to)
		}
	}()
	return self
}

// TestProbeOriginRewritten: a server whose RESPONSE-ORIGIN names another
// address than the one its answers come from (RFC 5780 section 7.3: it sits
// behind a NAT of its own) is reported, with the answers that showed it; one
// that names its own address is not.
func TestProbeOriginRewritten(t *testing.T) {
	for _, behind := range []bool{true, false} {
		t.Run(fmt.Sprintf("behind=%v", behind), func(t *testing.T) {
			srv := fakeServer(t, func(self netip.AddrPort) netip.AddrPort {
				if behind {
					return netip.AddrPortFrom(netip.MustParseAddr("10.9.9.9"), 3478)
				}
				return self
			}, netip.AddrPort{}, false)
			o := fast
			o.Server = srv
			r, err := Probe(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			if r.OriginRewritten == nil || *r.OriginRewritten != behind {
				t.Fatalf("origin rewritten %v, want %v; notes %q", fmtPtr(r.OriginRewritten), behind, r.OriginNotes)
			}
			if behind && (len(r.OriginNotes) == 0 || !strings.Contains(r.OriginNotes[0], "10.9.9.9:3478")) {
				t.Errorf("notes %q do not name the origin", r.OriginNotes)
			}
			j, _ := json.Marshal(r)
			var m map[string]any
			_ = json.Unmarshal(j, &m)
			if m["origin_rewritten"] != behind {
				t.Errorf("JSON origin_rewritten %v: %s", m["origin_rewritten"], j)
			}
		})
	}
}

// TestLifetimeAnswerOnY: RFC 5780 section 4.6 counts an answer that
// arrives on the checking port Y, not X, as an expired binding. A server
// that ignores RESPONSE-PORT answers every check on Y, so no idle time
// survives, where counting any answer would report the binding alive.
func TestLifetimeAnswerOnY(t *testing.T) {
	srv := fakeServer(t, func(self netip.AddrPort) netip.AddrPort { return self },
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), 9), true)
	o := fast
	o.Server, o.Lifetime, o.LifetimeMax, o.LifetimeResolution = srv, true, 40*time.Millisecond, 10*time.Millisecond
	r, err := Probe(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.LifetimeAtLeast || r.Lifetime != 0 || r.InboundRefresh != nil {
		t.Fatalf("lifetime %v atLeast %v refresh %v; skipped %q", r.Lifetime, r.LifetimeAtLeast, fmtPtr(r.InboundRefresh), r.Skipped)
	}
}

// TestRefreshBehavior drives the refresh test (RFC 5780 section 4.6, last
// paragraph) with a fake binding on a fake clock: it lives lt after the
// last outbound packet and, when inbound traffic refreshes it, after the
// last answer delivered to it too.
func TestRefreshBehavior(t *testing.T) {
	const lt = 10 * time.Second
	mx := netip.MustParseAddrPort("192.0.2.1:4000")
	for _, c := range []struct {
		name    string
		inbound bool
		life    time.Duration // the binding's true lifetime
		want    *bool
		err     bool
	}{
		{"inbound", true, lt + time.Second, ptr(true), false},
		{"outbound-only", false, lt + time.Second, ptr(false), false},
		{"outbound-only-exact", false, lt, ptr(false), false},
		{"dies-early", true, lt / 3, nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var now, last time.Duration
			checks := 0
			got, err := refreshBehavior(lt,
				func(d time.Duration) error { now += d; return nil },
				func() (netip.AddrPort, error) { last = now; return mx, nil },
				func(m netip.AddrPort) (bool, error) {
					checks++
					if m != mx {
						t.Errorf("check toward %v, want %v", m, mx)
					}
					alive := now-last <= c.life
					if alive && c.inbound {
						last = now
					}
					return alive, nil
				})
			if (err != nil) != c.err || fmtPtr(got) != fmtPtr(c.want) {
				t.Fatalf("got %v, %v; want %v (error %v)", fmtPtr(got), err, fmtPtr(c.want), c.err)
			}
			if c.want != nil && *c.want && (checks != refreshChecks || now < 2*lt) {
				t.Errorf("%d checks over %v: not twice the lifetime", checks, now)
			}
		})
	}
	boom := errors.New("boom")
	if _, err := refreshBehavior(lt, func(time.Duration) error { return nil },
		func() (netip.AddrPort, error) { return mx, nil },
		func(netip.AddrPort) (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Errorf("error lost: %v", err)
	}
}

func fmtPtr(p *bool) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprint(*p)
}
