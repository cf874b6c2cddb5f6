package natlog

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/portalloc"
	"github.com/portspace/portspace/tuple"
)

func lgMapEv(d time.Duration, kind nat.EventKind, proto tuple.Proto, internal, external string) nat.Event {
	in := netip.MustParseAddrPort(internal)
	return nat.Event{Time: lgAt(d), Kind: kind, Proto: proto, Subscriber: in.Addr(), Internal: in, External: netip.MustParseAddrPort(external)}
}

func lgBlockEv(d time.Duration, kind nat.EventKind, sub, ext string, lo, hi uint16) nat.Event {
	return nat.Event{Time: lgAt(d), Kind: kind, Proto: tuple.TCP, Subscriber: netip.MustParseAddr(sub),
		External: netip.AddrPortFrom(netip.MustParseAddr(ext), 0), Block: tuple.PortRangeFrom(lo, hi)}
}

func lgSubs(hs []Holding) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Proto.String()+" "+h.Subscriber.String())
	}
	return out
}

func TestWhoisMappings(t *testing.T) {
	ix := NewIndex()
	ext := "192.0.2.1:40000"
	for _, ev := range []nat.Event{
		lgMapEv(0, nat.MappingCreated, tuple.UDP, "10.0.0.1:1000", ext),
		lgMapEv(10*time.Minute, nat.MappingDeleted, tuple.UDP, "10.0.0.1:1000", ext),
		// The port is reused by another subscriber after the quarantine.
		lgMapEv(13*time.Minute, nat.MappingCreated, tuple.UDP, "10.0.0.2:2000", ext),
		// Same port number, other protocol, other holder, never deleted.
		lgMapEv(5*time.Minute, nat.MappingCreated, tuple.TCP, "10.0.0.3:3000", ext),
	} {
		ix.Add(ev)
	}
	eP := netip.MustParseAddrPort(ext)
	cases := []struct {
		at   time.Duration
		want []string
	}{
		{0, []string{"udp 10.0.0.1"}},
		{5 * time.Minute, []string{"udp 10.0.0.1", "tcp 10.0.0.3"}},
		{10*time.Minute - 1, []string{"udp 10.0.0.1", "tcp 10.0.0.3"}},
		{10 * time.Minute, []string{"tcp 10.0.0.3"}}, // deleted at exactly this instant
		{12 * time.Minute, []string{"tcp 10.0.0.3"}},
		{24 * time.Hour, []string{"tcp 10.0.0.3", "udp 10.0.0.2"}}, // open intervals
	}
	for _, c := range cases {
		hs, err := ix.Whois(eP, lgAt(c.at))
		if err != nil {
			t.Fatalf("at %v: %v", c.at, err)
		}
		if got := lgSubs(hs); strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Fatalf("at %v: got %v, want %v", c.at, got, c.want)
		}
	}
	if _, err := ix.Whois(eP, lgAt(-time.Second)); !errors.Is(err, ErrNoHolder) || !strings.Contains(err.Error(), "at that time") {
		t.Fatalf("before: %v", err)
	}
	if _, err := ix.Whois(netip.MustParseAddrPort("192.0.2.1:40001"), lgAt(0)); !errors.Is(err, ErrNoHolder) || !strings.Contains(err.Error(), "never") {
		t.Fatalf("unknown port: %v", err)
	}
	hs, _ := ix.Whois(eP, lgAt(time.Minute))
	if hs[0].Internal != netip.MustParseAddrPort("10.0.0.1:1000") || hs[0].Open() || !hs[0].To.Equal(lgAt(10*time.Minute)) {
		t.Fatalf("holding %+v", hs[0])
	}
	if s := ix.Stats(); s.Events != 4 || s.Mappings != 3 || s.Open != 2 || s.Unmatched != 0 {
		t.Fatalf("stats %+v", s)
	}
	if len(ix.History(eP)) != 3 {
		t.Fatal("history")
	}
}

func TestWhoisOverlappingIsAmbiguous(t *testing.T) {
	// RFC 7857 port overlapping: two subscribers share one external endpoint
	// (different destinations). Without destination logging, whois must
	// return both rather than pick one.
	ix := NewIndex()
	ext := "192.0.2.1:5000"
	ix.Add(lgMapEv(0, nat.MappingCreated, tuple.TCP, "10.0.0.1:1000", ext))
	ix.Add(lgMapEv(time.Second, nat.MappingCreated, tuple.TCP, "10.0.0.2:1000", ext))
	hs, err := ix.Whois(netip.MustParseAddrPort(ext), lgAt(2*time.Second))
	if err != nil || len(hs) != 2 || hs[0].Subscriber == hs[1].Subscriber {
		t.Fatalf("got %v %v", lgSubs(hs), err)
	}
}

func TestWhoisBlocks(t *testing.T) {
	ix := NewIndex()
	ix.Add(lgBlockEv(0, nat.BlockAllocated, "100.64.0.1", "192.0.2.9", 1024, 1535))
	ix.Add(lgBlockEv(time.Hour, nat.BlockFreed, "100.64.0.1", "192.0.2.9", 1024, 1535))
	ix.Add(lgBlockEv(2*time.Hour, nat.BlockAllocated, "100.64.0.2", "192.0.2.9", 1024, 1535))
	ix.Add(lgBlockEv(0, nat.BlockAllocated, "100.64.0.3", "192.0.2.9", 1536, 2047))
	for _, c := range []struct {
		port uint16
		at   time.Duration
		want string
	}{
		{1024, 30 * time.Minute, "100.64.0.1"},
		{1535, 30 * time.Minute, "100.64.0.1"},
		{1536, 30 * time.Minute, "100.64.0.3"},
		{1300, 3 * time.Hour, "100.64.0.2"},
		{1300, 90 * time.Minute, ""},
		{2048, 30 * time.Minute, ""},
	} {
		hs, err := ix.Whois(netip.AddrPortFrom(netip.MustParseAddr("192.0.2.9"), c.port), lgAt(c.at))
		if c.want == "" {
			if !errors.Is(err, ErrNoHolder) {
				t.Fatalf("port %d at %v: %v %v", c.port, c.at, lgSubs(hs), err)
			}
			continue
		}
		if err != nil || len(hs) != 1 || hs[0].Subscriber.String() != c.want || !hs[0].IsBlock {
			t.Fatalf("port %d at %v: %v %v", c.port, c.at, lgSubs(hs), err)
		}
	}
}

func TestWhoisLogStartsMidway(t *testing.T) {
	ix := NewIndex()
	// Deletion without creation: held from before the log until then.
	ix.Add(lgMapEv(time.Minute, nat.MappingDeleted, tuple.UDP, "10.0.0.1:1", "192.0.2.1:7"))
	e := netip.MustParseAddrPort("192.0.2.1:7")
	hs, err := ix.Whois(e, lgAt(-time.Hour))
	if err != nil || len(hs) != 1 || hs[0].Subscriber.String() != "10.0.0.1" || !hs[0].From.IsZero() {
		t.Fatalf("%v %v", hs, err)
	}
	if _, err := ix.Whois(e, lgAt(time.Minute)); !errors.Is(err, ErrNoHolder) {
		t.Fatal(err)
	}
	if s := ix.Stats(); s.Unmatched != 1 || s.Open != 0 {
		t.Fatalf("stats %+v", s)
	}
	if !strings.Contains(hs[0].String(), "before the log") {
		t.Fatal(hs[0].String())
	}
}

// TestWhoisDuplicateKeys covers one internal endpoint holding one external
// port for two destinations at once (port overlapping keeps EIM as a
// preference): the intervals are matched first-in first-out, so the port is
// held from the first creation to the last deletion.
func TestWhoisDuplicateKeys(t *testing.T) {
	ix := NewIndex()
	ix.Add(lgMapEv(0, nat.MappingCreated, tuple.TCP, "10.0.0.1:1", "192.0.2.1:7"))
	ix.Add(lgMapEv(time.Minute, nat.MappingCreated, tuple.TCP, "10.0.0.1:1", "192.0.2.1:7"))
	ix.Add(lgMapEv(2*time.Minute, nat.MappingDeleted, tuple.TCP, "10.0.0.1:1", "192.0.2.1:7"))
	e := netip.MustParseAddrPort("192.0.2.1:7")
	for _, c := range []struct {
		at   time.Duration
		want int
	}{{30 * time.Second, 1}, {90 * time.Second, 2}, {3 * time.Minute, 1}} {
		hs, err := ix.Whois(e, lgAt(c.at))
		if err != nil || len(hs) != c.want {
			t.Fatalf("at %v: %v %v", c.at, hs, err)
		}
	}
	ix.Add(lgMapEv(4*time.Minute, nat.MappingDeleted, tuple.TCP, "10.0.0.1:1", "192.0.2.1:7"))
	if _, err := ix.Whois(e, lgAt(5*time.Minute)); !errors.Is(err, ErrNoHolder) {
		t.Fatal(err)
	}
	if s := ix.Stats(); s.Duplicates != 1 || s.Open != 0 || s.Unmatched != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestWhoisRemote(t *testing.T) {
	// Two subscribers share 192.0.2.1:5000 (overlapping) towards different
	// remotes; with destinations in the log, WhoisRemote separates them.
	ix := NewIndex()
	ext := netip.MustParseAddrPort("192.0.2.1:5000")
	r1, r2 := netip.MustParseAddrPort("198.51.100.1:443"), netip.MustParseAddrPort("198.51.100.2:443")
	for i, r := range []netip.AddrPort{r1, r2} {
		in := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 1000)
		ix.Add(nat.Event{Time: lgAt(0), Kind: nat.MappingCreated, Proto: tuple.TCP, Subscriber: in.Addr(), Internal: in, External: ext, Remote: r})
		ix.Add(nat.Event{Time: lgAt(0), Kind: nat.SessionCreated, Proto: tuple.TCP, Subscriber: in.Addr(), Internal: in, External: ext, Remote: r})
	}
	ix.Add(nat.Event{Time: lgAt(time.Minute), Kind: nat.SessionDeleted, Proto: tuple.TCP, Subscriber: netip.MustParseAddr("10.0.0.2"),
		Internal: netip.MustParseAddrPort("10.0.0.2:1000"), External: ext, Remote: r2})
	if hs, _ := ix.Whois(ext, lgAt(time.Second)); len(hs) != 2 {
		t.Fatalf("Whois without remote: %v", hs)
	}
	hs, err := ix.WhoisRemote(ext, r2, lgAt(time.Second))
	if err != nil || len(hs) != 1 || hs[0].Subscriber.String() != "10.0.0.2" || hs[0].Remote != r2 {
		t.Fatalf("%v %v", hs, err)
	}
	// The mapping of 10.0.0.2 is still open after its session ended.
	if hs, err := ix.WhoisRemote(ext, r2, lgAt(2*time.Minute)); err != nil || len(hs) != 1 {
		t.Fatalf("%v %v", hs, err)
	}
	if _, err := ix.WhoisRemote(ext, netip.MustParseAddrPort("198.51.100.3:443"), lgAt(time.Second)); !errors.Is(err, ErrNoHolder) {
		t.Fatal(err)
	}
	if s := ix.Stats(); s.Sessions != 2 || s.Mappings != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestReadIndexFromLog(t *testing.T) {
	var buf bytes.Buffer
	w := NewLogWriter(&buf, LogOptions{})
	ix := NewIndex()
	for _, ev := range lgSample() {
		w.Record(ev)
		ix.Record(ev)
	}
	w.Flush()
	buf.WriteString("garbage line\n")
	var bad []string
	got, err := ReadIndex(NewLogReader(&buf, "log"), func(e *LogError) error { bad = append(bad, e.Error()); return nil })
	if err != nil || len(bad) != 1 || !strings.HasPrefix(bad[0], "log:6:") {
		t.Fatalf("%v %v", err, bad)
	}
	e := netip.MustParseAddrPort("192.0.2.1:2050")
	for _, x := range []*Index{ix, got} {
		hs, err := x.Whois(e, lgAt(time.Minute))
		// The mapping and the block that contains it.
		if err != nil || len(hs) != 2 || hs[0].Subscriber.String() != "100.64.0.7" {
			t.Fatalf("%v %v", hs, err)
		}
	}
	// A strict caller stops at the first bad line.
	buf.Reset()
	buf.WriteString("bad\n")
	stop := errors.New("stop")
	if _, err := ReadIndex(NewLogReader(&buf, "log"), func(*LogError) error { return stop }); err != stop {
		t.Fatal(err)
	}
}

func TestWhoisDeterministic(t *testing.T) {
	d, err := portalloc.NewDeterministic([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")},
		[]netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}, tuple.PortRangeFrom(1024, 65535))
	if err != nil {
		t.Fatal(err)
	}
	// Every inside address's block maps back to it, port by port (sampled).
	for i := 0; i < 256; i += 17 {
		in := netip.AddrFrom4([4]byte{100, 64, 0, byte(i)})
		out, block, ok := d.Forward(in)
		if !ok {
			t.Fatal("forward")
		}
		for _, p := range []uint16{block.First(), block.Last(), uint16((int(block.First()) + int(block.Last())) / 2)} {
			h, err := WhoisDeterministic(d, netip.AddrPortFrom(out, p))
			if err != nil || h.Subscriber != in || h.Block != block || !h.Deterministic {
				t.Fatalf("%v:%d: %+v %v", out, p, h, err)
			}
			if s := h.String(); strings.Contains(s, "log") || !strings.Contains(s, "deterministic") {
				t.Fatalf("deterministic holding talks about a log: %s", s)
			}
		}
	}
	if _, err := WhoisDeterministic(d, netip.MustParseAddrPort("192.0.2.3:2000")); !errors.Is(err, ErrNoHolder) {
		t.Fatal(err)
	}
	if _, err := WhoisDeterministic(d, netip.MustParseAddrPort("192.0.2.1:80")); !errors.Is(err, ErrNoHolder) {
		t.Fatal(err)
	}
}

func TestIndexFor(t *testing.T) {
	// An index for one endpoint answers like the full index for it and
	// keeps nothing else.
	full := NewIndex()
	ext := netip.MustParseAddrPort("192.0.2.9:1300")
	one := NewIndexFor(ext)
	evs := []nat.Event{
		lgBlockEv(0, nat.BlockAllocated, "100.64.0.1", "192.0.2.9", 1024, 1535),
		lgBlockEv(0, nat.BlockAllocated, "100.64.0.3", "192.0.2.9", 1536, 2047),
		lgMapEv(time.Second, nat.MappingCreated, tuple.TCP, "100.64.0.1:5", "192.0.2.9:1300"),
		lgMapEv(time.Second, nat.MappingCreated, tuple.TCP, "100.64.0.1:6", "192.0.2.9:1301"),
		lgMapEv(time.Minute, nat.MappingDeleted, tuple.TCP, "100.64.0.1:5", "192.0.2.9:1300"),
	}
	for _, ev := range evs {
		full.Add(ev)
		one.Add(ev)
	}
	for _, d := range []time.Duration{0, 30 * time.Second, time.Hour} {
		a, errA := full.Whois(ext, lgAt(d))
		b, errB := one.Whois(ext, lgAt(d))
		if len(a) != len(b) || (errA == nil) != (errB == nil) {
			t.Fatalf("at %v: full %v %v, filtered %v %v", d, a, errA, b, errB)
		}
	}
	if s := one.Stats(); s.Events != len(evs) || s.Mappings != 1 || s.Blocks != 1 {
		t.Fatalf("filtered index keeps %+v", s)
	}
}

// BenchmarkReadIndex measures reading a JSON-lines log into an Index
// (per event: JSON decoding, address parsing, interval bookkeeping).
func BenchmarkReadIndex(b *testing.B) {
	var buf bytes.Buffer
	w := NewLogWriter(&buf, LogOptions{})
	const n = 10000
	for i := range n {
		in := netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 40000)
		ext := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(1024+i))
		w.Record(nat.Event{Time: lgAt(time.Duration(i) * time.Millisecond), Kind: nat.MappingCreated, Proto: tuple.UDP,
			Subscriber: in.Addr(), Internal: in, External: ext})
		w.Record(nat.Event{Time: lgAt(time.Duration(i)*time.Millisecond + time.Minute), Kind: nat.MappingDeleted, Proto: tuple.UDP,
			Subscriber: in.Addr(), Internal: in, External: ext, Reason: nat.ReasonIdle})
	}
	w.Flush()
	data := buf.Bytes()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		ix, err := ReadIndex(NewLogReader(bytes.NewReader(data), "bench"), nil)
		if err != nil || ix.Stats().Events != 2*n {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/(2*n), "ns/event")
}
