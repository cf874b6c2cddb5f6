package progress

import (
	"bytes"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock the test advances by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// TestOffWhenNotATerminal checks that a buffer, a regular file and a pipe get
// no progress output unless Always is set.
func TestOffWhenNotATerminal(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Options{Label: "dial", Total: 10})
	l.Set(5)
	l.Done()
	if buf.Len() != 0 || l != nil {
		t.Fatalf("progress on a buffer: %q (line %v)", buf.String(), l)
	}
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) {
		t.Errorf("a regular file is reported as a terminal")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if IsTerminal(w) {
		t.Errorf("a pipe is reported as a terminal")
	}
	if IsTerminal(nil) {
		t.Errorf("nil is reported as a terminal")
	}
}

// TestRedrawAtMostOncePerInterval checks the rate limit with a fake clock:
// updates within the interval draw nothing, the first one after it draws.
func TestRedrawAtMostOncePerInterval(t *testing.T) {
	c := &fakeClock{t: time.Unix(0, 0)}
	var buf bytes.Buffer
	l := New(&buf, Options{Label: "dial", Total: 1000, Unit: "conns", Interval: time.Second, Now: c.now, Always: true})
	l.Set(1)
	if got := strings.Count(buf.String(), "\r"); got != 1 {
		t.Fatalf("first update drew %d times, want 1: %q", got, buf.String())
	}
	c.advance(999 * time.Millisecond)
	l.Set(2)
	l.Add(3)
	if got := strings.Count(buf.String(), "\r"); got != 1 {
		t.Fatalf("updates within the interval drew: %q", buf.String())
	}
	c.advance(time.Millisecond)
	l.Add(495)
	if got := strings.Count(buf.String(), "\r"); got != 2 {
		t.Fatalf("update after the interval drew %d times in all, want 2: %q", got, buf.String())
	}
	if !strings.HasSuffix(buf.String(), "\rdial: 500/1,000 conns (50.0%), 1s") {
		t.Fatalf("line = %q", buf.String())
	}
	l.Done()
	if !strings.HasSuffix(buf.String(), "(50.0%), 1s\n") || strings.Count(buf.String(), "\r") != 2 {
		t.Fatalf("Done redrew the count already shown or did not end the line: %q", buf.String())
	}
	n := buf.Len()
	l.Set(999)
	l.Done()
	if buf.Len() != n {
		t.Fatalf("output after Done: %q", buf.String()[n:])
	}
}

// TestShorterLineBlanksTheRest checks that a redraw shorter than the last
// line overwrites the old characters with spaces.
func TestShorterLineBlanksTheRest(t *testing.T) {
	c := &fakeClock{t: time.Unix(0, 0)}
	var buf bytes.Buffer
	l := New(&buf, Options{Interval: time.Second, Now: c.now, Always: true})
	l.Set(123456)
	first := len("123,456, 0s")
	c.advance(time.Second)
	l.Set(7)
	last := buf.String()[strings.LastIndex(buf.String(), "\r")+1:]
	if len(last) != first || !strings.HasPrefix(last, "7, 1s") {
		t.Fatalf("redraw %q (len %d), want %d characters starting 7, 1s", last, len(last), first)
	}
}

// TestClearErasesTheLine checks that Clear leaves the cursor at the start of
// an empty line and writes no newline.
func TestClearErasesTheLine(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Options{Label: "sim", Always: true})
	l.Set(42)
	l.Clear()
	s := buf.String()
	if !strings.HasSuffix(s, "\r") || strings.Contains(s, "\n") {
		t.Fatalf("Clear wrote %q", s)
	}
	if tail := s[strings.Index(s[1:], "\r")+2:]; strings.TrimSpace(tail) != "" {
		t.Fatalf("Clear left %q", tail)
	}
}

// TestNilLineDoesNothing checks that the disabled Line is safe to use.
func TestNilLineDoesNothing(t *testing.T) {
	var l *Line
	l.Set(1)
	l.Add(1)
	l.Done()
	l.Clear()
}

// TestConcurrentAdds checks that Add from many goroutines loses no count.
func TestConcurrentAdds(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Options{Always: true, Interval: time.Hour})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				l.Add(1)
			}
		}()
	}
	wg.Wait()
	l.Done()
	if !strings.Contains(buf.String(), "8,000") {
		t.Fatalf("final line %q does not say 8,000", buf.String())
	}
}

// TestGroup checks the thousands separators.
func TestGroup(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1000000: "1,000,000", -12345: "-12,345"} {
		if got := Group(n); got != want {
			t.Errorf("Group(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestDoneDrawsTheFinalCount checks that Done shows a count that arrived
// within the interval, so the last line is the final figure.
func TestDoneDrawsTheFinalCount(t *testing.T) {
	c := &fakeClock{t: time.Unix(0, 0)}
	var buf bytes.Buffer
	l := New(&buf, Options{Total: 10, Interval: time.Hour, Now: c.now, Always: true})
	l.Set(3)
	l.Set(10) // within the interval: not drawn
	l.Done()
	if !strings.HasSuffix(buf.String(), "\r10/10 (100.0%), 0s\n") {
		t.Fatalf("final line %q, want 10/10", buf.String())
	}
}
