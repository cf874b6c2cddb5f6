// Package progress prints one plain line of progress on standard error for
// commands that run for more than a few seconds ("portspace bench dial
// --workers", "portspace nat simulate"). The line is rewritten in place with
// a carriage return, at most once per interval, and only when the writer is a
// terminal: a redirected or piped standard error gets nothing, so logs and
// test output stay clean.
//
// The clock is passed in (Options.Now), so the rate limit is tested without
// sleeping; the caller reports what it has done with Set or Add, from any
// goroutine.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultInterval is how often the line is redrawn when Options.Interval is
// zero.
const DefaultInterval = 250 * time.Millisecond

// Options configures a Line. The zero value is a line with no label, no
// total, DefaultInterval, the real clock, and output only on a terminal.
type Options struct {
	// Label starts the line ("dial").
	Label string
	// Total is the amount of work when known (0: unknown, no percentage).
	Total int64
	// Unit names what is counted ("conns", "flows"); empty prints bare
	// numbers.
	Unit string
	// Interval is the least time between two redraws (0: DefaultInterval).
	Interval time.Duration
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Always draws the line even when the writer is not a terminal (tests,
	// or a user who asked for it).
	Always bool
}

// Line is one progress line. A nil *Line and a Line on a writer that is not
// a terminal do nothing, so callers need no conditionals. Its methods are
// safe for concurrent use.
type Line struct {
	w     io.Writer
	o     Options
	start time.Time
	done  atomic.Int64

	mu    sync.Mutex
	last  time.Time // last redraw
	drawn bool      // something is on the line
	width int       // length of the last line drawn, to blank it
	shown int64     // the count the last line showed
	ended bool
}

// New returns a Line that writes to w, or nil (a Line that does nothing)
// when w is not a terminal and o.Always is false.
func New(w io.Writer, o Options) *Line {
	if !o.Always && !IsTerminal(w) {
		return nil
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Line{w: w, o: o, start: o.Now()}
}

// IsTerminal reports whether w is an *os.File open on a character device
// (a terminal). Files, pipes and buffers are not.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || f == nil {
		return false
	}
	st, err := f.Stat()
	if err != nil {
		return false
	}
	return st.Mode()&os.ModeCharDevice != 0 && f.Name() != os.DevNull
}

// Set records that n units are done and redraws the line if the interval
// has passed since the last redraw.
func (l *Line) Set(n int64) {
	if l == nil {
		return
	}
	l.done.Store(n)
	l.maybeDraw()
}

// Add records that n more units are done, and redraws as Set does.
func (l *Line) Add(n int64) {
	if l == nil {
		return
	}
	l.done.Add(n)
	l.maybeDraw()
}

// Done draws the final count (unless the line already shows it) and ends
// the line with a newline, so what follows starts on a line of its own.
// Later calls do nothing.
func (l *Line) Done() {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return
	}
	l.ended = true
	if !l.drawn || l.shown != l.done.Load() {
		l.drawLocked(l.o.Now())
	}
	fmt.Fprint(l.w, "\n")
}

// Clear erases the line without a final count (for a run that failed and
// prints its error instead). Later calls do nothing.
func (l *Line) Clear() {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return
	}
	l.ended = true
	if l.drawn {
		fmt.Fprint(l.w, "\r"+strings.Repeat(" ", l.width)+"\r")
	}
}

func (l *Line) maybeDraw() {
	now := l.o.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended || (l.drawn && now.Sub(l.last) < l.o.Interval) {
		return
	}
	l.drawLocked(now)
}

func (l *Line) drawLocked(now time.Time) {
	n := l.done.Load()
	s := l.text(n, now.Sub(l.start))
	pad := ""
	if n := l.width - len(s); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	fmt.Fprint(l.w, "\r"+s+pad)
	l.last, l.drawn, l.width, l.shown = now, true, len(s), n
}

// text renders "label: 1,234/10,000 conns (12.3%), 4.2s".
func (l *Line) text(done int64, elapsed time.Duration) string {
	var b strings.Builder
	if l.o.Label != "" {
		b.WriteString(l.o.Label)
		b.WriteString(": ")
	}
	b.WriteString(Group(done))
	if l.o.Total > 0 {
		b.WriteString("/")
		b.WriteString(Group(l.o.Total))
	}
	if l.o.Unit != "" {
		b.WriteString(" ")
		b.WriteString(l.o.Unit)
	}
	if l.o.Total > 0 {
		fmt.Fprintf(&b, " (%.1f%%)", 100*float64(done)/float64(l.o.Total))
	}
	fmt.Fprintf(&b, ", %s", elapsed.Round(100*time.Millisecond))
	return b.String()
}

// Group writes n in decimal with a comma between each group of three
// digits (12,345,678), as the progress line and the benchmark tables show
// counts.
func Group(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
