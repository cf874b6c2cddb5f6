package natlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/tuple"
)

var lgT0 = time.Date(2026, 11, 21, 5, 0, 0, 0, time.UTC)

func lgAt(d time.Duration) time.Time { return lgT0.Add(d) }

func lgSample() []nat.Event {
	sub := netip.MustParseAddr("100.64.0.7")
	return []nat.Event{
		{Time: lgAt(0), Kind: nat.BlockAllocated, Proto: tuple.UDP, Subscriber: sub,
			External: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 0), Block: tuple.PortRangeFrom(2048, 2559)},
		{Time: lgAt(time.Second + 123456789), Kind: nat.MappingCreated, Proto: tuple.UDP, Subscriber: sub,
			Internal: netip.MustParseAddrPort("100.64.0.7:5353"), External: netip.MustParseAddrPort("192.0.2.1:2050"),
			Block: tuple.PortRangeFrom(2048, 2559)},
		{Time: lgAt(2 * time.Second), Kind: nat.SessionCreated, Proto: tuple.UDP, Subscriber: sub,
			Internal: netip.MustParseAddrPort("100.64.0.7:5353"), External: netip.MustParseAddrPort("192.0.2.1:2050"),
			Remote: netip.MustParseAddrPort("198.51.100.1:53")},
		{Time: lgAt(5 * time.Minute), Kind: nat.MappingDeleted, Proto: tuple.UDP, Subscriber: sub,
			Internal: netip.MustParseAddrPort("100.64.0.7:5353"), External: netip.MustParseAddrPort("192.0.2.1:2050"),
			Reason: nat.ReasonIdle},
		{Time: lgAt(6 * time.Minute), Kind: nat.MappingCreated, Proto: tuple.ICMP, Subscriber: sub,
			Internal: netip.MustParseAddrPort("100.64.0.7:0"), External: netip.MustParseAddrPort("192.0.2.1:0")},
		{Time: lgAt(7 * time.Minute), Kind: nat.BlockFreed, Proto: tuple.UDP, Subscriber: sub,
			External: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 0), Block: tuple.PortRangeFrom(2048, 2559),
			Reason: "weird \"reason\"\n\x01 ünïcode"},
	}
}

func lgEqual(a, b nat.Event) bool {
	return a.Time.Equal(b.Time) && a.Kind == b.Kind && a.Proto == b.Proto && a.Subscriber == b.Subscriber &&
		a.Internal == b.Internal && a.External == b.External && a.Block == b.Block && a.Remote == b.Remote && a.Reason == b.Reason
}

func TestLogRoundTrip(t *testing.T) {
	for _, dest := range []bool{false, true} {
		var buf bytes.Buffer
		w := NewLogWriter(&buf, LogOptions{Destinations: dest, BufferSize: 100})
		evs := lgSample()
		for _, ev := range evs {
			w.Record(ev)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if int(w.Bytes()) != buf.Len() {
			t.Fatalf("Bytes %d, wrote %d", w.Bytes(), buf.Len())
		}
		r := NewLogReader(&buf, "events.jsonl")
		var got []nat.Event
		for {
			ev, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, ev)
		}
		var want []nat.Event
		for _, ev := range evs {
			if !dest && (ev.Kind == nat.SessionCreated || ev.Kind == nat.SessionDeleted) {
				continue
			}
			if !dest {
				ev.Remote = netip.AddrPort{}
			}
			want = append(want, ev)
		}
		if len(got) != len(want) || int(w.Events()) != len(want) {
			t.Fatalf("dest=%v: got %d events, want %d (Events %d)", dest, len(got), len(want), w.Events())
		}
		for i := range want {
			if !lgEqual(got[i], want[i]) {
				t.Fatalf("event %d:\n got %+v\nwant %+v", i, got[i], want[i])
			}
		}
	}
}

// TestLogNoDestinationsByDefault checks RFC 6888 REQ-12: with the zero
// LogOptions, no destination appears anywhere in the log.
func TestLogNoDestinationsByDefault(t *testing.T) {
	var buf bytes.Buffer
	w := NewLogWriter(&buf, LogOptions{})
	for _, ev := range lgSample() {
		ev.Remote = netip.MustParseAddrPort("198.51.100.1:53") // even if the engine set one
		w.Record(ev)
	}
	w.Flush()
	if s := buf.String(); strings.Contains(s, "remote") || strings.Contains(s, "198.51.100.1") || strings.Contains(s, "session") {
		t.Fatalf("destination in default log:\n%s", s)
	}
}

func TestLogLineFormat(t *testing.T) {
	ev := lgSample()[1]
	got := string(AppendEventJSON(nil, ev, false))
	want := `{"time":"2026-11-21T05:00:01.123456789Z","kind":"mapping-created","proto":"udp","subscriber":"100.64.0.7","internal":"100.64.0.7:5353","external":"192.0.2.1:2050","block":"2048-2559"}`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	blk := string(AppendEventJSON(nil, lgSample()[0], false))
	if !strings.Contains(blk, `"external":"192.0.2.1",`) {
		t.Fatalf("block event external must be an address: %s", blk)
	}
	// Non-UTC times are written in UTC.
	ev.Time = ev.Time.In(time.FixedZone("x", 3600))
	if got := string(AppendEventJSON(nil, ev, false)); got != want {
		t.Fatalf("zone: %s", got)
	}
}

func TestLogReaderBadLines(t *testing.T) {
	var good bytes.Buffer
	w := NewLogWriter(&good, LogOptions{})
	w.Record(lgSample()[1])
	w.Flush()
	line := strings.TrimSpace(good.String())
	input := strings.Join([]string{
		line,
		"not json",
		`{"time":"yesterday","kind":"mapping-created"}`,
		`{"time":"2026-11-21T05:00:00Z","kind":"teleported"}`,
		`{"time":"2026-11-21T05:00:00Z","kind":"mapping-created","proto":"sctp","external":"192.0.2.1:1"}`,
		`{"time":"2026-11-21T05:00:00Z","kind":"mapping-created","proto":"udp"}`,
		`{"time":"2026-11-21T05:00:00Z","kind":"block-allocated","proto":"udp","external":"192.0.2.1"}`,
		`{"time":"2026-11-21T05:00:00Z","kind":"mapping-created","proto":"udp","external":"192.0.2.1:99999"}`,
		"",
		"   ",
		`{"kind":"mapping-created"}`,
		"{" + strings.Repeat(" ", MaxLogLine+10) + "}",
		line,
		line, // last line without newline
	}, "\n")
	r := NewLogReader(strings.NewReader(input), "x.jsonl")
	var goodN int
	var badLines []int
	for {
		_, err := r.Next()
		if err == io.EOF {
			break
		}
		var le *LogError
		if errors.As(err, &le) {
			if !errors.Is(err, ErrBadLogLine) || le.File != "x.jsonl" || !strings.HasPrefix(err.Error(), "x.jsonl:") {
				t.Fatalf("bad error %v", err)
			}
			badLines = append(badLines, le.Line)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		goodN++
	}
	if goodN != 3 {
		t.Fatalf("good events %d, want 3", goodN)
	}
	want := []int{2, 3, 4, 5, 6, 7, 8, 11, 12}
	if len(badLines) != len(want) {
		t.Fatalf("bad lines %v, want %v", badLines, want)
	}
	for i := range want {
		if badLines[i] != want[i] {
			t.Fatalf("bad lines %v, want %v", badLines, want)
		}
	}
}

type lgFailWriter struct{ n int }

func (f *lgFailWriter) Write(b []byte) (int, error) {
	f.n++
	return 0, errors.New("disk full")
}

func TestLogWriterError(t *testing.T) {
	fw := &lgFailWriter{}
	w := NewLogWriter(fw, LogOptions{BufferSize: 10})
	w.Record(lgSample()[1])
	w.Record(lgSample()[1])
	if err := w.Flush(); err == nil || !strings.Contains(err.Error(), "disk full") || !strings.HasPrefix(err.Error(), "natlog: ") {
		t.Fatalf("Flush: %v", err)
	}
	if w.Err() == nil || fw.n != 1 {
		t.Fatalf("Err %v, writes after failure %d", w.Err(), fw.n)
	}
}

func TestLogRecordAllocs(t *testing.T) {
	w := NewLogWriter(io.Discard, LogOptions{})
	ev := lgSample()[1]
	if n := testing.AllocsPerRun(1000, func() { w.Record(ev) }); n != 0 {
		t.Fatalf("Record: %v allocs", n)
	}
}

// BenchmarkLogRecord measures the cost of logging one mapping event (JSON
// encoding and buffered write to io.Discard).
func BenchmarkLogRecord(b *testing.B) {
	w := NewLogWriter(io.Discard, LogOptions{})
	ev := lgSample()[1]
	b.ReportAllocs()
	for b.Loop() {
		ev.Time = ev.Time.Add(time.Millisecond)
		w.Record(ev)
	}
	w.Flush()
	b.ReportMetric(float64(w.Bytes())/float64(w.Events()), "bytes/event")
}

// FuzzLogReader feeds arbitrary bytes to the reader: it must never panic,
// must make progress (every Next consumes a line or ends), and every event
// it accepts must survive a write/read round trip unchanged.
func FuzzLogReader(f *testing.F) {
	var buf bytes.Buffer
	w := NewLogWriter(&buf, LogOptions{Destinations: true})
	for _, ev := range lgSample() {
		w.Record(ev)
	}
	w.Flush()
	// A whole valid log with every event kind.
	f.Add(buf.Bytes())
	// One valid mapping line.
	f.Add([]byte(`{"time":"2026-11-21T05:00:00Z","kind":"mapping-created","proto":"tcp","external":"192.0.2.1:80"}`))
	// Wrong types, nested JSON, trailing garbage.
	f.Add([]byte(`{"time":1,"kind":["x"]}` + "\n" + `{"time":"2026-11-21T05:00:00Z","kind":"block-freed","external":"192.0.2.1","block":"1-2"} trailing`))
	// Carriage returns and blank lines.
	f.Add([]byte("\r\n\n{}\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewLogReader(bytes.NewReader(data), "fuzz")
		for i := 0; ; i++ {
			if i > len(data)+1 {
				t.Fatal("reader does not make progress")
			}
			ev, err := r.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				if !errors.Is(err, ErrBadLogLine) {
					t.Fatalf("unexpected error type: %v", err)
				}
				continue
			}
			line := AppendEventJSON(nil, ev, true)
			back, err := ParseEventJSON(line)
			if err != nil {
				t.Fatalf("re-read of %s: %v", line, err)
			}
			if !lgEqual(ev, back) {
				t.Fatalf("round trip:\n %+v\n %+v", ev, back)
			}
		}
	})
}

func TestLogCompact(t *testing.T) {
	sub := netip.MustParseAddr("100.64.0.9")
	blk := tuple.PortRangeFrom(4096, 4607)
	ext := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 0)
	inBlock := nat.Event{Time: lgAt(time.Second), Kind: nat.MappingCreated, Proto: tuple.TCP, Subscriber: sub,
		Internal: netip.MustParseAddrPort("100.64.0.9:40000"), External: netip.MustParseAddrPort("192.0.2.1:4100"), Block: blk}
	inBlockDel := inBlock
	inBlockDel.Kind, inBlockDel.Block, inBlockDel.Time = nat.MappingDeleted, tuple.PortRange{}, lgAt(time.Minute)
	plain := nat.Event{Time: lgAt(2 * time.Second), Kind: nat.MappingCreated, Proto: tuple.UDP, Subscriber: sub,
		Internal: netip.MustParseAddrPort("100.64.0.9:5000"), External: netip.MustParseAddrPort("192.0.2.1:9999")}
	plainDel := plain
	plainDel.Kind, plainDel.Time = nat.MappingDeleted, lgAt(3*time.Minute)
	evs := []nat.Event{
		{Time: lgAt(0), Kind: nat.BlockAllocated, Proto: tuple.TCP, Subscriber: sub, External: ext, Block: blk},
		inBlock, plain, inBlockDel, plainDel,
		{Time: lgAt(time.Hour), Kind: nat.BlockFreed, Proto: tuple.TCP, Subscriber: sub, External: ext, Block: blk},
	}
	var buf bytes.Buffer
	w := NewLogWriter(&buf, LogOptions{Compact: true})
	for _, ev := range evs {
		w.Record(ev)
	}
	w.Flush()
	ix, err := ReadIndex(NewLogReader(&buf, "c"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.Events() != 4 || strings.Contains(buf.String(), "40000") {
		t.Fatalf("compact log kept %d events:\n%s", w.Events(), buf.String())
	}
	// Whois still attributes the block port (via the block) and the plain
	// mapping (via its own events).
	hs, err := ix.Whois(netip.MustParseAddrPort("192.0.2.1:4100"), lgAt(30*time.Second))
	if err != nil || len(hs) != 1 || !hs[0].IsBlock || hs[0].Subscriber != sub {
		t.Fatalf("%v %v", hs, err)
	}
	hs, err = ix.Whois(netip.MustParseAddrPort("192.0.2.1:9999"), lgAt(time.Minute))
	if err != nil || len(hs) != 1 || hs[0].IsBlock || !hs[0].To.Equal(lgAt(3*time.Minute)) {
		t.Fatalf("%v %v", hs, err)
	}
}

// FuzzLogLineFastPath checks the fast decoder against encoding/json: when
// the fast path accepts a line, encoding/json must accept it and decode the
// same fields.
func FuzzLogLineFastPath(f *testing.F) {
	// A line exactly as LogWriter writes it.
	f.Add([]byte(`{"time":"2026-11-21T05:00:00Z","kind":"mapping-created","proto":"tcp","external":"192.0.2.1:80"}`))
	// Keys in another case, which encoding/json also matches.
	f.Add([]byte(`{"TIME":"2026-11-21T05:00:00Z","Kind":"block-freed"}`))
	// Escapes, spaces, numbers, null and unknown keys.
	f.Add([]byte(`{"time":"a\"b", "kind":1,"x":null,"reason":"\u00e9"}`))
	// Duplicate keys (the last one wins in both).
	f.Add([]byte(`{"kind":"a","kind":"b"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		var fast logLine
		if !fast.parseFast(line) {
			return
		}
		var slow logLine
		if err := json.Unmarshal(line, &slow); err != nil {
			t.Fatalf("fast path accepted what encoding/json rejects (%v): %q", err, line)
		}
		if fast != slow {
			t.Fatalf("fast %+v\njson %+v\nline %q", fast, slow, line)
		}
	})
}

// TestParseEventJSONErrors: a bad line gives an error with the package
// prefix that says what is wrong and matches ErrBadLogLine.
func TestParseEventJSONErrors(t *testing.T) {
	for line, want := range map[string]string{
		`nope`:                            "not a JSON object",
		`{"kind":"mapping-created"}`:      `missing "time"`,
		`{"time":"2026-01-01T00:00:00Z"}`: `bad "kind"`,
		`{"time":"yesterday","kind":"x"}`: `bad "time"`,
		`{"time":"2026-01-01T00:00:00Z","kind":"mapping-created","proto":"udp"}`: `needs "proto" and "external"`,
	} {
		_, err := ParseEventJSON([]byte(line))
		if err == nil || !errors.Is(err, ErrBadLogLine) || !strings.HasPrefix(err.Error(), "natlog: bad event log line: ") ||
			!strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", line, err, want)
		}
	}
}
