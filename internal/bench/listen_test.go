package bench

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/portspace/portspace/tuple"
)

// TestListenersRelease checks that Release closes the accepted side of a
// connection whether it comes before or after the accept (a tombstone),
// and that the other connections stay held.
func TestListenersRelease(t *testing.T) {
	dests, _ := CountDests(2)
	l, err := Listen(tuple.TCP, dests, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	eps := l.Endpoints()
	if len(eps) != 2 || eps[0].Port() != eps[1].Port() {
		t.Fatalf("endpoints %v, want two on one port", eps)
	}
	for i := range 10 {
		c, err := net.Dial("tcp4", eps[i%2].String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i < 5 { // released at once: usually before the accept
			tp, _ := connTuple(tuple.TCP, c)
			l.Release(tp)
		}
	}
	// Wait (bounded) for the accept loops to catch up; no sleeping.
	for deadline := time.Now().Add(10 * time.Second); l.Accepted() < 10; runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatalf("accepted %d of 10", l.Accepted())
		}
	}
	if got := l.Held(); got != 5 {
		t.Errorf("held %d accepted connections, want 5 (5 released)", got)
	}
	l.CloseAccepted()
	if got := l.Held(); got != 0 {
		t.Errorf("held %d after CloseAccepted, want 0", got)
	}
}
