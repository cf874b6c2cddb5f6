package proxy

import (
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
)

// TestCurlHTTPVia: a forwarded request and its response each carry this
// proxy in Via (RFC 9110 section 7.6.3), with the version the proxy
// received the message with, after the intermediaries already listed.
func TestCurlHTTPVia(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.10:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Via"))
		mu.Unlock()
		if r.URL.Path == "/upstream" {
			w.Header().Set("Via", "1.1 cache")
		}
		fmt.Fprint(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	url := "http://" + ln.Addr().String()
	p := startProxy(t, "", nil)
	px := "http://" + p.addr.String()

	for _, c := range []struct {
		args           []string
		path           string
		wantReq, wantR string
	}{
		{nil, "/", "1.1 portspace", "1.1 portspace"},
		{[]string{"-H", "Via: 1.0 fred, 1.1 p.example"}, "/", "1.0 fred, 1.1 p.example, 1.1 portspace", "1.1 portspace"},
		{[]string{"-0"}, "/", "1.0 portspace", "1.1 portspace"},
		{nil, "/upstream", "1.1 portspace", "1.1 cache, 1.1 portspace"},
	} {
		args := append([]string{"-x", px, "-o", "/dev/null", "-w", "%{http_code} %header{via}"}, c.args...)
		out, code := curl(t, append(args, url+c.path)...)
		if code != 0 || out != "200 "+c.wantR {
			t.Errorf("curl %v: exit %d, %q; want 200 with response Via %q", c.args, code, out, c.wantR)
		}
		mu.Lock()
		last := got[len(got)-1]
		mu.Unlock()
		if last != c.wantReq {
			t.Errorf("curl %v: the origin got Via %q, want %q", c.args, last, c.wantReq)
		}
	}
}
