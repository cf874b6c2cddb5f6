package bench

import (
	"bytes"
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/portspace/portspace/tuple"
)

func sampleReport() *Report {
	dests, _ := CountDests(20)
	r := newReport(Config{Proto: tuple.TCP, Dests: dests, Conns: 201, Ports: tuple.MustParsePortSet("40000-40009")}.withDefaults())
	r.OpenFilesLimit = 20000
	r.Results = []Result{
		{Dialer: DialerPortspace, Proto: "tcp", Mode: "hold", Attempted: 201, Opened: 200,
			Failed:      map[string]int{ErrKindExhausted: 1, ErrKindEADDRNOTAVAIL: 0, ErrKindTimeout: 0, ErrKindOther: 0},
			FailSamples: map[string]string{ErrKindExhausted: "dial: no free source port toward the destination"},
			Held:        200, Distinct: 200, Census: Census{Taken: true, Seen: 200, Distinct: 200},
			Seconds: 0.01, ConnsPerSec: 20000, P50us: 41.5, P99us: 1234.5},
		{Dialer: DialerBaseline, Proto: "tcp", Mode: "hold", Attempted: 201, Opened: 201,
			Failed: map[string]int{ErrKindExhausted: 0, ErrKindEADDRNOTAVAIL: 0, ErrKindTimeout: 0, ErrKindOther: 0},
			Held:   201, Distinct: 201, Census: Census{Taken: true, Seen: 201, Distinct: 201},
			Seconds: 0.01, ConnsPerSec: 16000, P50us: 50, P99us: 90},
	}
	r.compare()
	return r
}

// TestReportTable checks that the table shows each dialer's figures, the
// rate ratio and the failure sample.
func TestReportTable(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"tcp from 127.0.0.1, ports 40000-40009 (10), 20 destinations", "capacity 200",
		"dialer", "exhausted", "eaddrnotavail", "census", "dups", "conn/s", "p50", "p99",
		"200/201", "201/201", "20000", "41.5µs", "1.23ms",
		"portspace/net.Dialer conns per second (hold): 1.25",
		"portspace exhausted (hold), e.g.: dial: no free source port",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// The portspace row: opened 200/201, exhausted 1, the other kinds 0.
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 6 && f[0] == DialerPortspace && f[1] == "hold" {
			if got := strings.Join(f[2:7], " "); got != "200/201 1 0 0 0" {
				t.Errorf("portspace row columns opened..other = %q, want \"200/201 1 0 0 0\"", got)
			}
		}
	}
}

// TestReportJSON checks the JSON field names and values a script would
// read.
func TestReportJSON(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Proto    string `json:"proto"`
		Capacity int    `json:"capacity"`
		Dests    int    `json:"dests"`
		Results  []struct {
			Dialer      string         `json:"dialer"`
			Opened      int            `json:"opened"`
			Failed      map[string]int `json:"failed"`
			Distinct    int            `json:"distinct"`
			Census      Census         `json:"census"`
			ConnsPerSec float64        `json:"conns_per_sec"`
			P50us       float64        `json:"p50_us"`
			P99us       float64        `json:"p99_us"`
		} `json:"results"`
		Comparisons []Comparison `json:"comparisons"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if got.Proto != "tcp" || got.Capacity != 200 || got.Dests != 20 || len(got.Results) != 2 {
		t.Fatalf("header %+v", got)
	}
	p := got.Results[0]
	if p.Dialer != DialerPortspace || p.Opened != 200 || p.Failed[ErrKindExhausted] != 1 || p.Distinct != 200 ||
		p.Census.Seen != 200 || p.Census.Duplicates != 0 || p.ConnsPerSec != 20000 || p.P50us != 41.5 || p.P99us != 1234.5 {
		t.Errorf("portspace result %+v", p)
	}
	for _, k := range ErrKinds {
		if _, ok := p.Failed[k]; !ok {
			t.Errorf("failed lacks kind %q", k)
		}
	}
	if len(got.Comparisons) != 1 || got.Comparisons[0].Ratio != 1.25 {
		t.Errorf("comparisons %+v, want one ratio 1.25", got.Comparisons)
	}
}

func TestClassify(t *testing.T) {
	sentinel := &InputError{Msg: "x"}
	for _, tt := range []struct {
		err  error
		want string
	}{
		{sentinel, ErrKindExhausted},
		{&wrapErr{errAddrNotAvail}, ErrKindEADDRNOTAVAIL},
		{&timeoutErr{}, ErrKindTimeout},
		{errAddrInUse, ErrKindOther},
	} {
		if got := Classify(tt.err, sentinel); got != tt.want {
			t.Errorf("Classify(%v) = %s, want %s", tt.err, got, tt.want)
		}
	}
}

type wrapErr struct{ err error }

func (e *wrapErr) Error() string { return "wrapped: " + e.err.Error() }
func (e *wrapErr) Unwrap() error { return e.err }

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestParseSockstat(t *testing.T) {
	text := "sockets: used 15\nTCP: inuse 12 orphan 0 tw 5 alloc 13 mem 3\nUDP: inuse 4 mem 2\n"
	in, mem := parseSockstat(text, tuple.TCP)
	if in != 12 || mem != 3*int64(pageSize()) {
		t.Errorf("TCP: inuse %d mem %d", in, mem)
	}
	if in, _ := parseSockstat(text, tuple.UDP); in != 4 {
		t.Errorf("UDP: inuse %d", in)
	}
}

// TestCompareMedianOfRounds checks that with per-round rates the rate
// ratio is the median of the per-round ratios, not the ratio of the sums.
func TestCompareMedianOfRounds(t *testing.T) {
	r := &Report{Results: []Result{
		{Dialer: DialerPortspace, Mode: "hold", ConnsPerSec: 100, RoundConnsPerSec: []float64{90, 100, 10}},
		{Dialer: DialerBaseline, Mode: "hold", ConnsPerSec: 50, RoundConnsPerSec: []float64{100, 100, 100}},
	}}
	r.compare()
	if len(r.Comparisons) != 1 || r.Comparisons[0].Ratio != 0.9 || !strings.Contains(r.Comparisons[0].What, "median of 3 per-round ratios") {
		t.Errorf("comparisons %+v, want the median ratio 0.9 of 3 rounds", r.Comparisons)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median(1..4) = %v, want 2.5", got)
	}
}

// TestPortNotes checks that a port set outside the ephemeral range is
// explained, and that one inside it is not.
func TestPortNotes(t *testing.T) {
	eph, ok := ephemeralRange()
	if !ok {
		t.Skip("no /proc/sys/net/ipv4/ip_local_port_range")
	}
	if n := portNotes(tuple.PortSetOf(eph)); len(n) != 0 {
		t.Errorf("the ephemeral range itself gave notes %q", n)
	}
	if eph.First() > 1100 {
		outside := tuple.MustParsePortSet("1024-1100")
		if n := portNotes(outside); len(n) == 0 || !strings.Contains(n[0], "ip_local_port_range") {
			t.Errorf("ports 1024-1100 gave notes %q, want one naming ip_local_port_range", n)
		}
	}
}

// TestCompareRatioDirections checks that each comparison divides the right
// way round: portspace over net.Dialer for rate and CPU, and p50 at a fill
// level over p50 at fill 0 for latency.
func TestCompareRatioDirections(t *testing.T) {
	r := &Report{Results: []Result{
		{Dialer: DialerPortspace, Mode: "hold", ConnsPerSec: 900, CPUPerConnUs: 30},
		{Dialer: DialerBaseline, Mode: "hold", ConnsPerSec: 1000, CPUPerConnUs: 20},
		{Dialer: DialerPortspace, Mode: "fill", FillPercent: 0, P50us: 40},
		{Dialer: DialerPortspace, Mode: "fill", FillPercent: 95, P50us: 50},
	}}
	r.compare()
	want := map[string]float64{
		"conns per second": 0.9,
		"CPU time per":     1.5,
		"p50 at 95% fill":  1.25,
	}
	for part, ratio := range want {
		found := false
		for _, c := range r.Comparisons {
			if strings.Contains(c.What, part) {
				found = true
				if c.Ratio != ratio {
					t.Errorf("%s: ratio %v, want %v", c.What, c.Ratio, ratio)
				}
			}
		}
		if !found {
			t.Errorf("no comparison %q among %+v", part, r.Comparisons)
		}
	}
}

// fakeConn is a net.Conn with fixed addresses, for counting tuples.
type fakeConn struct {
	net.Conn
	l, r net.Addr
}

func (c fakeConn) LocalAddr() net.Addr  { return c.l }
func (c fakeConn) RemoteAddr() net.Addr { return c.r }

// TestDistinctTuples checks that two conns with the same 4-tuple count once.
func TestDistinctTuples(t *testing.T) {
	udp := func(s string) net.Addr { return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	conns := []net.Conn{
		fakeConn{l: udp("127.0.2.1:20000"), r: udp("127.0.1.1:7000")},
		fakeConn{l: udp("127.0.2.1:20000"), r: udp("127.0.1.1:7000")},
		fakeConn{l: udp("127.0.2.1:20000"), r: udp("127.0.1.2:7000")},
	}
	if n := distinctTuples(tuple.UDP, conns); n != 2 {
		t.Errorf("distinctTuples = %d, want 2 (two conns share one 4-tuple)", n)
	}
}

// TestReportCapacityRows checks the capacity comparison on the first
// screen: the default run's 1,000 ports toward 20 destinations hold 20,000
// connections with portspace and 1,000 when binding each port; sources
// multiply both.
func TestReportCapacityRows(t *testing.T) {
	dests, _ := CountDests(DefaultDests)
	cfg := Config{Proto: tuple.TCP, Dests: dests, Ports: tuple.MustParsePortSet(DefaultPorts)}.withDefaults()
	r := newReport(cfg)
	if len(r.Capacities) != 2 || r.Capacities[0].Method != CapacityShared || r.Capacities[0].Connections != 20000 ||
		r.Capacities[1].Method != CapacityBindEach || r.Capacities[1].Connections != 1000 {
		t.Fatalf("default capacities %+v, want 20000 shared and 1000 bind-each", r.Capacities)
	}
	r.compare()
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"portspace (4-tuple sharing)  20,000", "bind each port               1,000", "higher is better"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	cfg.Sources = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}
	if c := capacities(cfg); c[0].Connections != 40000 || c[1].Connections != 2000 {
		t.Errorf("two sources: %+v, want 40000 and 2000", c)
	}
}

// TestReportLegendAndDirections checks that every column of the results
// table is explained in the legend and that every ratio says which way is
// better: higher for the rate, lower for CPU and latency.
func TestReportLegendAndDirections(t *testing.T) {
	r := &Report{Results: []Result{
		{Dialer: DialerPortspace, Mode: "hold", ConnsPerSec: 900, CPUPerConnUs: 30},
		{Dialer: DialerBaseline, Mode: "hold", ConnsPerSec: 1000, CPUPerConnUs: 20},
		{Dialer: DialerPortspace, Mode: "fill", FillPercent: 0, P50us: 40},
		{Dialer: DialerPortspace, Mode: "fill", FillPercent: 95, P50us: 50},
	}}
	r.compare()
	want := map[string]string{"conns per second": HigherIsBetter, "CPU time per": LowerIsBetter, "p50 at 95% fill": LowerIsBetter}
	for _, c := range r.Comparisons {
		for part, dir := range want {
			if strings.Contains(c.What, part) && c.Better != dir {
				t.Errorf("%s: better %q, want %q", c.What, c.Better, dir)
			}
		}
	}
	var b bytes.Buffer
	if err := sampleReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if !strings.Contains(out, "portspace/net.Dialer conns per second (hold): 1.25 (higher is better)") {
		t.Errorf("rate ratio without its direction:\n%s", out)
	}
	legend := out[strings.Index(out, "columns ("):]
	for _, col := range []string{"dialer", "phase", "opened", "exhausted", "eaddrnotavail", "timeout", "other", "distinct", "census", "dups", "conn/s", "cpu/conn", "p50", "p99"} {
		if !strings.Contains(legend, "  "+col+" ") && !strings.Contains(legend, " "+col+",") && !strings.Contains(legend, " "+col+"  ") {
			t.Errorf("legend does not explain %q:\n%s", col, legend)
		}
	}
}

// TestSummaryFollowsTheRows checks that the summary is computed from the
// capacity rows, the results and the ratios: change a row and the summary
// changes with it; drop the baseline and it claims no ratio.
func TestSummaryFollowsTheRows(t *testing.T) {
	r := sampleReport()
	for _, want := range []string{"the 10 ports hold 200 connections at once with portspace against 10 when binding each port (20.00x)",
		"portspace opened 200 of 201 (hold) with 0 duplicate 4-tuples", "conns per second (hold) 1.25 (higher is better)"} {
		if !strings.Contains(r.Summary, want) {
			t.Errorf("summary %q lacks %q", r.Summary, want)
		}
	}
	r.Results[0].ConnsPerSec = 8000 // half the baseline's 16000
	r.Results[0].Census.Duplicates = 3
	r.compare()
	if !strings.Contains(r.Summary, "(hold) 0.50 (higher") || !strings.Contains(r.Summary, "with 3 duplicate 4-tuples") {
		t.Errorf("summary did not follow the rows: %q", r.Summary)
	}
	r.Results = r.Results[:1]
	r.compare()
	if strings.Contains(r.Summary, "net.Dialer") {
		t.Errorf("summary names a ratio without a baseline: %q", r.Summary)
	}
}
