package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/portspace/portspace/capacity"
	"github.com/portspace/portspace/internal/progress"
)

// Report is the outcome of a run: its settings, one Result per dialer and
// phase, ratios between them, and notes (caps applied, warnings).
type Report struct {
	Proto          string           `json:"proto"`
	Sources        []netip.Addr     `json:"sources"`
	Ports          string           `json:"ports"`
	PortCount      int              `json:"port_count"`
	Dests          int              `json:"dests"`
	DestEndpoints  []netip.AddrPort `json:"-"`
	DestFirst      string           `json:"dest_first,omitempty"`
	DestLast       string           `json:"dest_last,omitempty"`
	Capacity       int              `json:"capacity"`
	Conns          int              `json:"conns"`
	Rounds         int              `json:"rounds"`
	Concurrency    int              `json:"concurrency"`
	HoldSeconds    float64          `json:"hold_seconds"`
	OpenFilesLimit int              `json:"open_files_limit"`
	Workers        *WorkersFigures  `json:"workers,omitempty"`
	Results        []Result         `json:"results"`
	Comparisons    []Comparison     `json:"comparisons,omitempty"`
	// Capacities is how many connections the same port set holds at once
	// toward the run's destinations, with portspace's 4-tuple sharing and
	// with binding each port (one connection per port), computed with
	// capacity.Compute.
	Capacities []CapacityRow `json:"capacities"`
	// Summary is the report in one sentence, built from Results,
	// Comparisons and Capacities, so it cannot say what they do not.
	Summary string   `json:"summary"`
	Notes   []string `json:"notes,omitempty"`
}

// CapacityRow is the number of connections a way of choosing source ports
// can hold at once from the run's sources and port set toward its
// destinations.
type CapacityRow struct {
	// Method is "portspace (4-tuple sharing)" or "bind each port".
	Method string `json:"method"`
	// Connections is the most connections open at once.
	Connections int64 `json:"connections"`
	// Why is the arithmetic: "1000 ports x 20 destinations".
	Why string `json:"why"`
}

// capacities computes the two CapacityRows of c: portspace shares each port
// over every destination (capacity.FourTuple), binding each port before
// connect gives it to one connection (capacity.Exclusive).
func capacities(c Config) []CapacityRow {
	in := capacity.Input{Ports: c.Ports, Destinations: int64(len(c.Dests)), Sources: int64(len(c.Sources))}
	if !c.Ports.IsValid() || len(c.Dests) == 0 {
		return nil
	}
	shared, err1 := capacity.Compute(in)
	in.Sharing = capacity.Exclusive
	excl, err2 := capacity.Compute(in)
	if err1 != nil || err2 != nil {
		return nil
	}
	srcs := ""
	if len(c.Sources) > 1 {
		srcs = fmt.Sprintf(" x %d sources", len(c.Sources))
	}
	return []CapacityRow{
		{Method: CapacityShared, Connections: shared.TotalMaxConcurrent,
			Why: fmt.Sprintf("%s ports x %s destinations%s: a port carries one connection per destination", progress.Group(int64(c.Ports.Len())), progress.Group(int64(len(c.Dests))), srcs)},
		{Method: CapacityBindEach, Connections: excl.TotalMaxConcurrent,
			Why: fmt.Sprintf("%s ports%s: bind() before connect() holds a port for one connection", progress.Group(int64(c.Ports.Len())), srcs)},
	}
}

// The methods of the CapacityRows.
const (
	CapacityShared   = "portspace (4-tuple sharing)"
	CapacityBindEach = "bind each port"
)

// Comparison is a named ratio between two results, such as the portspace
// dialer's connection rate over the baseline's.
type Comparison struct {
	What  string  `json:"what"`
	Ratio float64 `json:"ratio"`
	// Better is "higher" or "lower": which way the ratio is good for
	// portspace (or, for a latency ratio, for the dialer named).
	Better string `json:"better"`
}

// The directions of a Comparison.
const (
	HigherIsBetter = "higher"
	LowerIsBetter  = "lower"
)

func newReport(c Config) *Report {
	return &Report{
		Proto:       c.Proto.String(),
		Sources:     c.Sources,
		Ports:       c.Ports.String(),
		PortCount:   c.Ports.Len(),
		Dests:       len(c.Dests),
		Capacity:    c.Capacity(),
		Conns:       c.Conns,
		Rounds:      c.Rounds,
		Concurrency: c.Concurrency,
		HoldSeconds: c.Hold.Seconds(),
		Capacities:  capacities(c),
	}
}

// compare fills Comparisons: for each phase, the portspace rate over the
// baseline rate; for each dialer, p50 at each non-zero fill level over p50
// at fill 0 (when both were run).
func (r *Report) compare() {
	r.Comparisons = nil
	type key struct {
		mode string
		fill float64
	}
	byKey := map[key]map[string]Result{}
	var keys []key
	for _, res := range r.Results {
		k := key{res.Mode, res.FillPercent}
		if byKey[k] == nil {
			byKey[k] = map[string]Result{}
			keys = append(keys, k)
		}
		byKey[k][res.Dialer] = res
	}
	for _, k := range keys {
		p, ok1 := byKey[k][DialerPortspace]
		b, ok2 := byKey[k][DialerBaseline]
		if !ok1 || !ok2 || b.ConnsPerSec <= 0 {
			continue
		}
		c := Comparison{
			What:   fmt.Sprintf("%s/%s conns per second (%s)", DialerPortspace, DialerBaseline, phaseName(k.mode, k.fill)),
			Ratio:  round3(p.ConnsPerSec / b.ConnsPerSec),
			Better: HigherIsBetter,
		}
		if n := len(p.RoundConnsPerSec); n > 1 && n == len(b.RoundConnsPerSec) {
			// Each round runs both dialers back to back; the median of
			// the per-round ratios resists a burst of other load on the
			// machine better than the ratio of the sums.
			ratios := make([]float64, 0, n)
			for i := range n {
				if b.RoundConnsPerSec[i] > 0 {
					ratios = append(ratios, p.RoundConnsPerSec[i]/b.RoundConnsPerSec[i])
				}
			}
			if len(ratios) > 0 {
				c.What += fmt.Sprintf(", median of %d per-round ratios", len(ratios))
				c.Ratio = round3(median(ratios))
			}
		}
		r.Comparisons = append(r.Comparisons, c)
		if p.CPUPerConnUs > 0 && b.CPUPerConnUs > 0 {
			r.Comparisons = append(r.Comparisons, Comparison{
				What:   fmt.Sprintf("%s/%s CPU time per connection (%s)", DialerPortspace, DialerBaseline, phaseName(k.mode, k.fill)),
				Ratio:  round3(p.CPUPerConnUs / b.CPUPerConnUs),
				Better: LowerIsBetter,
			})
		}
	}
	for _, name := range []string{DialerPortspace, DialerBaseline} {
		zero, ok := byKey[key{"fill", 0}][name]
		if !ok || zero.P50us <= 0 {
			continue
		}
		for _, k := range keys {
			if k.mode != "fill" || k.fill == 0 {
				continue
			}
			if res, ok := byKey[k][name]; ok {
				r.Comparisons = append(r.Comparisons, Comparison{
					What:   fmt.Sprintf("%s p50 at %v%% fill / at 0%% fill", name, k.fill),
					Ratio:  round3(res.P50us / zero.P50us),
					Better: LowerIsBetter,
				})
			}
		}
	}
	r.summarize()
}

// summarize sets Summary from the capacity rows, the results and the
// comparisons (so it says nothing they do not).
func (r *Report) summarize() {
	var parts []string
	if len(r.Capacities) == 2 && r.Capacities[1].Connections > 0 {
		sh, be := r.Capacities[0], r.Capacities[1]
		parts = append(parts, fmt.Sprintf("the %s ports hold %s connections at once with portspace against %s when binding each port (%.2fx)",
			progress.Group(int64(r.PortCount)), progress.Group(sh.Connections), progress.Group(be.Connections), float64(sh.Connections)/float64(be.Connections)))
	}
	for _, res := range r.Results {
		if res.Dialer != DialerPortspace {
			continue
		}
		s := fmt.Sprintf("portspace opened %s of %s (%s)", progress.Group(int64(res.Opened)), progress.Group(int64(res.Attempted)), phaseName(res.Mode, res.FillPercent))
		if res.Census.Taken {
			s += fmt.Sprintf(" with %d duplicate 4-tuples in the census", res.Census.Duplicates)
		}
		parts = append(parts, s)
	}
	for _, c := range r.Comparisons {
		if !strings.HasPrefix(c.What, DialerPortspace+"/") {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.2f (%s is better)", c.What, c.Ratio, c.Better))
	}
	r.Summary = strings.Join(parts, "; ")
}

// median returns the median of v (the mean of the middle two for an even
// count); it sorts v.
func median(v []float64) float64 {
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func phaseName(mode string, fill float64) string {
	if mode == "fill" {
		return strconv.FormatFloat(fill, 'f', -1, 64) + "% fill"
	}
	return mode
}

func round3(f float64) float64 {
	v, _ := strconv.ParseFloat(strconv.FormatFloat(f, 'f', 3, 64), 64)
	return v
}

// WriteJSON writes r as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	if len(r.DestEndpoints) > 0 {
		r.DestFirst = r.DestEndpoints[0].String()
		r.DestLast = r.DestEndpoints[len(r.DestEndpoints)-1].String()
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes r as a human-readable table.
func (r *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	srcs := make([]string, len(r.Sources))
	for i, a := range r.Sources {
		srcs[i] = a.String()
	}
	dests := fmt.Sprintf("%d destinations", r.Dests)
	if n := len(r.DestEndpoints); n > 0 {
		dests += " (" + r.DestEndpoints[0].String()
		if n > 1 {
			dests += " .. " + r.DestEndpoints[n-1].String()
		}
		dests += ")"
	}
	fmt.Fprintf(&b, "portspace bench dial: %s from %s, ports %s (%d), %s, capacity %d\n",
		r.Proto, strings.Join(srcs, ","), r.Ports, r.PortCount, dests, r.Capacity)
	if len(r.Capacities) > 0 {
		fmt.Fprintf(&b, "\nconnections the same %s ports hold at once toward the %d destinations (computed; higher is better):\n", progress.Group(int64(r.PortCount)), r.Dests)
		ctw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, c := range r.Capacities {
			fmt.Fprintf(ctw, "  %s\t%s\t%s\n", c.Method, progress.Group(c.Connections), c.Why)
		}
		ctw.Flush()
		b.WriteString("  (a run with --conns above the capacity measures it: the dials beyond it are exhausted)\n\n")
	}
	rounds := ""
	if r.Rounds > 1 {
		rounds = fmt.Sprintf(" and round (%d rounds, dialer order alternating, figures summed)", r.Rounds)
	}
	fmt.Fprintf(&b, "%d measured connections per dialer%s, concurrency %d, hold %v, open-files limit %d\n",
		r.Conns, rounds, r.Concurrency, time.Duration(r.HoldSeconds*float64(time.Second)), r.OpenFilesLimit)
	if wf := r.Workers; wf != nil {
		open := ""
		if len(r.Results) > 0 {
			open = fmt.Sprintf("time to open: %.1f s; ", r.Results[0].Seconds)
		}
		fmt.Fprintf(&b, "%d dialer and %d listener processes; %speak memory: %s\n",
			wf.DialerProcs, wf.ListenerProcs, open, wf.MemorySummary())
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "dialer\tphase\topened\texhausted\teaddrnotavail\ttimeout\tother\tdistinct\tcensus\tdups\tconn/s\tcpu/conn\tp50\tp99\t")
	for _, res := range r.Results {
		phase := phaseName(res.Mode, res.FillPercent)
		if res.Mode == "fill" {
			phase += fmt.Sprintf(" (%d held)", res.Prefilled/max(r.Rounds, 1))
		}
		census, dups, cpu := "-", "-", "-"
		if res.CPUPerConnUs > 0 {
			cpu = fmtUs(res.CPUPerConnUs)
		}
		if res.Census.Taken {
			census, dups = strconv.Itoa(res.Census.Seen), strconv.Itoa(res.Census.Duplicates)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%.0f\t%s\t%s\t%s\t\n",
			res.Dialer, phase, res.Opened, res.Attempted,
			res.Failed[ErrKindExhausted], res.Failed[ErrKindEADDRNOTAVAIL], res.Failed[ErrKindTimeout], res.Failed[ErrKindOther],
			res.Distinct, census, dups, res.ConnsPerSec, cpu, fmtUs(res.P50us), fmtUs(res.P99us))
	}
	tw.Flush()
	b.WriteString(tableLegend)
	if len(r.Comparisons) > 0 {
		b.WriteString("\nratios:\n")
		for _, c := range r.Comparisons {
			fmt.Fprintf(&b, "  %s: %.2f (%s is better)\n", c.What, c.Ratio, c.Better)
		}
	}
	if r.Summary != "" {
		fmt.Fprintf(&b, "\nsummary: %s.\n", r.Summary)
	}
	var extra []string
	for _, res := range r.Results {
		if res.Census.Err != "" {
			extra = append(extra, fmt.Sprintf("%s census: %s", res.Dialer, res.Census.Err))
		}
		if res.Census.OutsidePorts > 0 {
			extra = append(extra, fmt.Sprintf("%s: %d sockets outside the port set %s", res.Dialer, res.Census.OutsidePorts, r.Ports))
		}
		if res.EchoChecked > 0 {
			extra = append(extra, fmt.Sprintf("%s (%s): UDP echo came back on %d of %d connections",
				res.Dialer, phaseName(res.Mode, res.FillPercent), res.EchoChecked-res.EchoFailed, res.EchoChecked))
		}
		if res.PrefillFailed > 0 {
			extra = append(extra, fmt.Sprintf("%s: %d of %d pre-fill dials failed", res.Dialer, res.PrefillFailed, res.Prefilled+res.PrefillFailed))
		}
		for _, k := range ErrKinds {
			if s, ok := res.FailSamples[k]; ok {
				extra = append(extra, fmt.Sprintf("%s %s (%s), e.g.: %s", res.Dialer, k, phaseName(res.Mode, res.FillPercent), s))
			}
		}
	}
	if notes := append(append([]string(nil), r.Notes...), extra...); len(notes) > 0 {
		b.WriteString("\nnotes:\n")
		for _, n := range notes {
			fmt.Fprintf(&b, "  - %s\n", n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// tableLegend explains the columns of the results table.
const tableLegend = `
columns (measured; net.Dialer binds the source with port 0, so the kernel
picks from its whole ephemeral range, not from --ports):
  dialer, phase  who dialed; hold (connections held) or N% fill (a pre-fill held)
  opened         connections opened / attempted (measured, summed over rounds)
  exhausted      dials refused for lack of a free source port (dial.ErrExhausted)
  eaddrnotavail  dials the kernel refused with EADDRNOTAVAIL
  timeout other  dials that timed out, and that failed otherwise
  distinct       distinct 4-tuples among the held connections (equals opened)
  census         ESTABLISHED (TCP) or connected (UDP) sockets of the run that
                 an independent sock_diag dump counted
  dups           4-tuples held by more than one socket in the census (must be 0)
  conn/s         connections opened per second (higher is better)
  cpu/conn       process CPU time per opened connection (lower is better)
  p50 p99        connect latency, median and 99th percentile (lower is better)
`

func fmtUs(v float64) string {
	if v >= 1000 {
		return strconv.FormatFloat(v/1000, 'f', 2, 64) + "ms"
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + "µs"
}
