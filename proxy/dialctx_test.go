package proxy

import (
	"testing"
	"time"
)

// TestDialContextShared: dials that start within dialCtxSlack share one
// context, whose deadline is never earlier than the dial's timeout; another
// timeout gets its own.
func TestDialContextShared(t *testing.T) {
	s := &Server{}
	start := time.Now()
	a := s.dialContext(time.Second)
	b := s.dialContext(time.Second)
	if a != b {
		t.Fatal("two dials in a row got two contexts")
	}
	dl, ok := a.Deadline()
	if !ok || dl.Before(start.Add(time.Second)) || dl.After(time.Now().Add(time.Second+dialCtxSlack)) {
		t.Fatalf("deadline %v, want within [%v, +%v]", dl, start.Add(time.Second), dialCtxSlack)
	}
	c := s.dialContext(2 * time.Second)
	if c == a {
		t.Fatal("a dial with another timeout got the same context")
	}
	if dl, _ := c.Deadline(); dl.Before(start.Add(2 * time.Second)) {
		t.Fatalf("deadline %v is before the 2 s timeout", dl)
	}
	time.Sleep(2 * dialCtxSlack)
	if d := s.dialContext(2 * time.Second); d == c {
		t.Fatal("a dial after the slack got a context that would end early")
	}
}
