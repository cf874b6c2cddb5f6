package natlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/tuple"
)

// LogOptions configures a LogWriter. The zero value is the RFC 6888 REQ-12
// default: no destination fields, session events skipped, 64 KiB buffer.
type LogOptions struct {
	// Destinations, when true, writes the remote endpoint of events that
	// carry one and writes session events. When false (the default) no
	// "remote" field is ever written and session events, which exist only
	// to carry destinations, are skipped (RFC 6888 REQ-12: a CGN should
	// not log destination addresses and ports).
	Destinations bool
	// BufferSize is the size at which buffered lines are written to the
	// underlying writer; 0 means 64 KiB. Call Flush to write the rest.
	BufferSize int
	// Compact omits the mapping events of ports that belong to a port
	// block (nat.Event.Block valid on creation: bulk port allocation or RFC 7422
	// deterministic blocks). The block events (or, for deterministic NAT,
	// its parameters) already attribute every port of the block to its
	// subscriber, which is how bulk allocation and deterministic NAT cut
	// log volume (RFC 6888, RFC 7422). Whois then answers
	// with the block, without the internal port. The writer remembers the
	// omitted mappings until their deletion (a map; Record may allocate).
	Compact bool
}

// LogWriter is a nat.EventSink that writes one JSON object per event and line
// (JSON Lines), the log RFC 6888 REQ-12 and RFC 7422 expect a CGN to
// keep so that an external endpoint can be traced back to a subscriber:
//
//	{"time":"2026-11-21T05:00:00.5Z","kind":"mapping-created","proto":"udp","subscriber":"10.0.0.7","internal":"10.0.0.7:40000","external":"192.0.2.1:61001"}
//
// Fields: time (RFC 3339, UTC, nanoseconds), kind (EventKind.String), proto
// (tcp/udp/icmp), subscriber, internal, external, block ("lo-hi"), remote
// (only with LogOptions.Destinations) and reason; zero fields are left out.
// Record encodes without allocating into a buffer that is written out when
// full; the engine calls it synchronously, so the writer is not safe for
// concurrent use. Call Flush before closing the underlying writer and check
// Err: Record cannot return a write error, so the first one is kept.
type LogWriter struct {
	w       io.Writer
	opts    LogOptions
	buf     []byte
	events  int64
	bytes   int64
	err     error
	omitted map[mappingKey]int // Compact: open mappings whose creation was omitted
}

// NewLogWriter returns a LogWriter writing to w.
func NewLogWriter(w io.Writer, opts LogOptions) *LogWriter {
	if opts.BufferSize <= 0 {
		opts.BufferSize = 64 << 10
	}
	return &LogWriter{w: w, opts: opts, buf: make([]byte, 0, opts.BufferSize+512)}
}

// Record implements nat.EventSink: it appends ev as one JSON line.
func (l *LogWriter) Record(ev nat.Event) {
	if !l.opts.Destinations && (ev.Kind == nat.SessionCreated || ev.Kind == nat.SessionDeleted) {
		return
	}
	if l.opts.Compact && l.omit(ev) {
		return
	}
	n := len(l.buf)
	l.buf = AppendEventJSON(l.buf, ev, l.opts.Destinations)
	l.buf = append(l.buf, '\n')
	l.events++
	l.bytes += int64(len(l.buf) - n)
	if len(l.buf) >= l.opts.BufferSize {
		l.flush()
	}
}

// omit reports whether Compact drops ev: the creation of a mapping inside a
// block, and the deletion of a mapping whose creation was dropped.
func (l *LogWriter) omit(ev nat.Event) bool {
	k := mappingKey{ev.Proto, ev.Internal, ev.External, ev.Remote}
	switch ev.Kind {
	case nat.MappingCreated:
		if !ev.Block.IsValid() {
			return false
		}
		if l.omitted == nil {
			l.omitted = map[mappingKey]int{}
		}
		l.omitted[k]++
		return true
	case nat.MappingDeleted:
		if n := l.omitted[k]; n > 0 {
			if n == 1 {
				delete(l.omitted, k)
			} else {
				l.omitted[k] = n - 1
			}
			return true
		}
		return ev.Block.IsValid()
	}
	return false
}

func (l *LogWriter) flush() {
	if len(l.buf) == 0 {
		return
	}
	if l.err == nil {
		if _, err := l.w.Write(l.buf); err != nil {
			l.err = fmt.Errorf("natlog: event log: %w", err)
		}
	}
	l.buf = l.buf[:0]
}

// Flush writes buffered lines to the underlying writer and returns the first
// write error seen so far.
func (l *LogWriter) Flush() error {
	l.flush()
	return l.err
}

// Err returns the first write error (nil if none).
func (l *LogWriter) Err() error { return l.err }

// Events returns the number of events written (buffered or not).
func (l *LogWriter) Events() int64 { return l.events }

// Bytes returns the number of bytes of JSON lines written (buffered or not).
func (l *LogWriter) Bytes() int64 { return l.bytes }

// AppendEventJSON appends ev as a JSON object (no newline) to b, in the
// LogWriter format; withRemote controls the "remote" field. It does not
// allocate when b has room.
func AppendEventJSON(b []byte, ev nat.Event, withRemote bool) []byte {
	b = append(b, `{"time":"`...)
	b = ev.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","kind":`...)
	b = appendJSONString(b, ev.Kind.String())
	if ev.Proto != 0 {
		b = append(b, `,"proto":"`...)
		b = append(b, ev.Proto.String()...)
		b = append(b, '"')
	}
	if ev.Subscriber.IsValid() {
		b = append(b, `,"subscriber":"`...)
		b = ev.Subscriber.AppendTo(b)
		b = append(b, '"')
	}
	if ev.Internal.IsValid() {
		b = append(b, `,"internal":"`...)
		b = ev.Internal.AppendTo(b)
		b = append(b, '"')
	}
	if ev.External.Addr().IsValid() {
		b = append(b, `,"external":"`...)
		if ev.Kind == nat.BlockAllocated || ev.Kind == nat.BlockFreed {
			b = ev.External.Addr().AppendTo(b) // a block event has no port
		} else {
			b = ev.External.AppendTo(b)
		}
		b = append(b, '"')
	}
	if ev.Block.IsValid() {
		b = append(b, `,"block":"`...)
		b = ev.Block.AppendTo(b)
		b = append(b, '"')
	}
	if withRemote && ev.Remote.IsValid() {
		b = append(b, `,"remote":"`...)
		b = ev.Remote.AppendTo(b)
		b = append(b, '"')
	}
	if ev.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendJSONString(b, ev.Reason)
	}
	return append(b, '}')
}

// appendJSONString appends s as a JSON string (RFC 8259 §7).
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x80 {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, `\ufffd`...)
			} else {
				b = append(b, s[i:i+size]...)
			}
			i += size
			continue
		}
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
		i++
	}
	return append(b, '"')
}

// logLine is the decoded form of one log line.
type logLine struct {
	Time       string `json:"time"`
	Kind       string `json:"kind"`
	Proto      string `json:"proto"`
	Subscriber string `json:"subscriber"`
	Internal   string `json:"internal"`
	External   string `json:"external"`
	Block      string `json:"block"`
	Remote     string `json:"remote"`
	Reason     string `json:"reason"`
}

// parseFast decodes the lines LogWriter writes (an object of string fields
// without escapes or spaces) without encoding/json, about 4x faster. It
// returns false, for the caller to fall back to encoding/json, on anything
// else: other value types, escapes, whitespace, control bytes, invalid
// UTF-8, or keys that match a field only case-insensitively (which
// encoding/json would accept). FuzzLogReader checks that both agree.
func (l *logLine) parseFast(line []byte) bool {
	if len(line) < 2 || line[0] != '{' || line[len(line)-1] != '}' {
		return false
	}
	s := line[1 : len(line)-1]
	for len(s) > 0 {
		key, rest, ok := fastString(s)
		if !ok || len(rest) == 0 || rest[0] != ':' {
			return false
		}
		val, rest, ok := fastString(rest[1:])
		if !ok {
			return false
		}
		var dst *string
		switch string(key) {
		case "time":
			dst = &l.Time
		case "kind":
			dst = &l.Kind
		case "proto":
			dst = &l.Proto
		case "subscriber":
			dst = &l.Subscriber
		case "internal":
			dst = &l.Internal
		case "external":
			dst = &l.External
		case "block":
			dst = &l.Block
		case "remote":
			dst = &l.Remote
		case "reason":
			dst = &l.Reason
		default:
			for _, k := range logKeys {
				if strings.EqualFold(string(key), k) {
					return false // encoding/json matches keys case-insensitively
				}
			}
		}
		if dst != nil {
			*dst = string(val)
		}
		s = rest
		if len(s) == 0 {
			break
		}
		if s[0] != ',' || len(s) == 1 {
			return false
		}
		s = s[1:]
	}
	return true
}

var logKeys = [...]string{"time", "kind", "proto", "subscriber", "internal", "external", "block", "remote", "reason"}

// fastString reads a JSON string without escapes at the start of s.
func fastString(s []byte) (val, rest []byte, ok bool) {
	if len(s) == 0 || s[0] != '"' {
		return nil, nil, false
	}
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			v := s[1:i]
			if !utf8.Valid(v) {
				return nil, nil, false
			}
			return v, s[i+1:], true
		case c == '\\' || c < 0x20:
			return nil, nil, false
		}
	}
	return nil, nil, false
}

// LogError is a bad line in an event log: the file name, the 1-based line
// number and what is wrong. LogReader returns it and goes on with the next
// line.
type LogError struct {
	File string
	Line int
	Err  error
}

func (e *LogError) Error() string { return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err) }

// Unwrap returns the underlying error.
func (e *LogError) Unwrap() error { return e.Err }

// ErrBadLogLine is matched (errors.Is) by every LogError.
var ErrBadLogLine = errors.New("natlog: bad event log line")

// Is makes errors.Is(err, ErrBadLogLine) true for every LogError.
func (e *LogError) Is(target error) bool { return target == ErrBadLogLine }

// MaxLogLine is the longest log line LogReader accepts; longer lines are
// reported as bad and skipped.
const MaxLogLine = 64 << 10

// LogReader reads a JSON-lines event log written by LogWriter. Next returns
// one event per good line; a bad line yields a *LogError naming file:line,
// after which reading continues with the next line. Blank lines are skipped.
type LogReader struct {
	r    *bufio.Reader
	name string
	line int
	long []byte
}

// NewLogReader returns a reader of the log in r; name (a file name) is used
// in error messages.
func NewLogReader(r io.Reader, name string) *LogReader {
	return &LogReader{r: bufio.NewReaderSize(r, 64<<10), name: name}
}

// Next returns the next event, a *LogError for a bad line (call Next again
// to continue), or io.EOF at the end. Other errors are read errors.
func (lr *LogReader) Next() (nat.Event, error) {
	for {
		line, err := lr.readLine()
		if err != nil {
			return nat.Event{}, err
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		ev, perr := parseEvent(line)
		if perr != nil {
			return nat.Event{}, &LogError{File: lr.name, Line: lr.line, Err: perr}
		}
		return ev, nil
	}
}

// readLine returns the next line without its newline; a line longer than
// MaxLogLine is consumed and reported as a LogError.
func (lr *LogReader) readLine() ([]byte, error) {
	lr.long = lr.long[:0]
	tooLong := false
	for {
		frag, err := lr.r.ReadSlice('\n')
		if !tooLong {
			if len(lr.long)+len(frag) > MaxLogLine+1 {
				tooLong = true
				lr.long = lr.long[:0]
			} else {
				lr.long = append(lr.long, frag...)
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && (len(lr.long) > 0 || tooLong) {
			err = nil // last line without a newline
		} else if err != nil {
			if err != io.EOF {
				err = fmt.Errorf("natlog: read %s: %w", lr.name, err)
			}
			return nil, err
		}
		lr.line++
		if tooLong {
			return nil, &LogError{File: lr.name, Line: lr.line, Err: fmt.Errorf("line longer than %d bytes", MaxLogLine)}
		}
		return bytes.TrimSuffix(lr.long, []byte("\n")), nil
	}
}

// ParseEventJSON decodes one line of the LogWriter format. Unknown fields
// are ignored (newer writers may add some); time and kind are required, and
// mapping and session events need proto and external. Errors read
// "natlog: bad event log line: ..." and match ErrBadLogLine (errors.Is).
func ParseEventJSON(line []byte) (nat.Event, error) {
	ev, err := parseEvent(line)
	if err != nil {
		return nat.Event{}, fmt.Errorf("%w: %w", ErrBadLogLine, err)
	}
	return ev, nil
}

// parseEvent is ParseEventJSON with errors that say only what is wrong with
// the line (LogError adds file:line).
func parseEvent(line []byte) (nat.Event, error) {
	var l logLine
	if !l.parseFast(line) {
		l = logLine{}
		if err := json.Unmarshal(line, &l); err != nil {
			return nat.Event{}, fmt.Errorf("not a JSON object: %w", err)
		}
	}
	var ev nat.Event
	var err error
	if l.Time == "" {
		return nat.Event{}, errors.New(`missing "time"`)
	}
	if ev.Time, err = time.Parse(time.RFC3339Nano, l.Time); err != nil {
		return nat.Event{}, fmt.Errorf(`bad "time" %q: want RFC 3339`, l.Time)
	}
	if ev.Kind = parseEventKind(l.Kind); ev.Kind == 0 {
		return nat.Event{}, fmt.Errorf(`bad "kind" %q`, l.Kind)
	}
	if l.Proto != "" {
		if ev.Proto, err = tuple.ParseProto(l.Proto); err != nil {
			return nat.Event{}, fmt.Errorf(`bad "proto" %q`, l.Proto)
		}
	}
	if l.Subscriber != "" {
		if ev.Subscriber, err = netip.ParseAddr(l.Subscriber); err != nil {
			return nat.Event{}, fmt.Errorf(`bad "subscriber" %q`, l.Subscriber)
		}
	}
	if l.Internal != "" {
		if ev.Internal, err = netip.ParseAddrPort(l.Internal); err != nil {
			return nat.Event{}, fmt.Errorf(`bad "internal" %q`, l.Internal)
		}
	}
	if l.External != "" {
		if ev.External, err = netip.ParseAddrPort(l.External); err != nil {
			a, aerr := netip.ParseAddr(l.External)
			if aerr != nil {
				return nat.Event{}, fmt.Errorf(`bad "external" %q`, l.External)
			}
			ev.External = netip.AddrPortFrom(a, 0)
		}
	}
	if l.Block != "" {
		if ev.Block, err = tuple.ParsePortRange(l.Block); err != nil {
			return nat.Event{}, fmt.Errorf(`bad "block" %q`, l.Block)
		}
	}
	if l.Remote != "" {
		if ev.Remote, err = netip.ParseAddrPort(l.Remote); err != nil {
			return nat.Event{}, fmt.Errorf(`bad "remote" %q`, l.Remote)
		}
	}
	ev.Reason = l.Reason
	switch ev.Kind {
	case nat.MappingCreated, nat.MappingDeleted, nat.SessionCreated, nat.SessionDeleted:
		if ev.Proto == 0 || !ev.External.IsValid() || ev.External.Port() == 0 && ev.Proto != tuple.ICMP {
			return nat.Event{}, fmt.Errorf(`%s event needs "proto" and "external" address:port`, ev.Kind)
		}
	case nat.BlockAllocated, nat.BlockFreed:
		if !ev.External.Addr().IsValid() || !ev.Block.IsValid() {
			return nat.Event{}, fmt.Errorf(`%s event needs "external" address and "block"`, ev.Kind)
		}
		ev.External = netip.AddrPortFrom(ev.External.Addr(), 0) // a block has no single port
	}
	return ev, nil
}

func parseEventKind(s string) nat.EventKind {
	for k := nat.MappingCreated; k <= nat.SessionDeleted; k++ {
		if strings.EqualFold(s, k.String()) {
			return k
		}
	}
	return 0
}
