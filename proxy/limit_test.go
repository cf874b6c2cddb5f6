package proxy

import (
	"fmt"
	"sync/atomic"
	"testing"
)

// TestCurlHTTPLimitBackToBack: with max-connections 1, curl's second
// request, sent on a new connection as soon as the first has its answer,
// is served (200, not 429) even while the proxy has not yet finished the
// first request (a test hook holds it just after the answer): the slot is
// given back before the client can see the answer end. The same holds
// for an error answer (502 from a refused origin port).
func TestCurlHTTPLimitBackToBack(t *testing.T) {
	o := startOrigin(t, "127.0.0.10")
	p := startProxy(t, `
users:
  - {name: alice, password: pw, max-connections: 1}
`, nil)
	var calls atomic.Int32
	entered, gate := make(chan struct{}), make(chan struct{})
	hook := func() {
		if calls.Add(1) == 1 {
			close(entered)
			<-gate // the first request's cleanup waits here
		}
	}
	p.srv.testHookResponded.Store(&hook)
	defer close(gate)
	px := "http://alice:pw@" + p.addr.String()
	for i, u := range []string{fmt.Sprintf("http://%s/one", o.addr), fmt.Sprintf("http://%s/two", o.addr)} {
		out, code := curl(t, "-x", px, "-o", "/dev/null", "-w", "%{http_code}", u)
		if code != 0 || out != "200" {
			t.Fatalf("request %d: exit %d, %q; want 200", i+1, code, out)
		}
		if i == 0 {
			<-entered // the first request is answered and held before its cleanup
		}
	}

	// An error answer: the first request's 502 is held the same way.
	p2 := startProxy(t, `
users:
  - {name: alice, password: pw, max-connections: 1}
`, nil)
	var calls2 atomic.Int32
	entered2, gate2 := make(chan struct{}), make(chan struct{})
	hook2 := func() {
		if calls2.Add(1) == 1 {
			close(entered2)
			<-gate2
		}
	}
	p2.srv.testHookResponded.Store(&hook2)
	defer close(gate2)
	px2 := "http://alice:pw@" + p2.addr.String()
	out, _ := curl(t, "-x", px2, "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.11:1/")
	if out != "502" {
		t.Fatalf("refused origin: %q, want 502", out)
	}
	<-entered2
	if out, code := curl(t, "-x", px2, "-o", "/dev/null", "-w", "%{http_code}", fmt.Sprintf("http://%s/three", o.addr)); code != 0 || out != "200" {
		t.Fatalf("request after a 502: exit %d, %q; want 200", code, out)
	}
}
