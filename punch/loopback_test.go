package punch

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// startServer runs a rendezvous on two loopback ports and returns its
// first endpoint.
func startServer(t *testing.T, s *Server) string {
	t.Helper()
	var eps []netip.AddrPort
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		eps = append(eps, netip.MustParseAddrPort(ln.Addr().String()))
		go s.Serve(ln)
	}
	s.Endpoints = eps
	t.Cleanup(func() { s.Close() })
	return eps[0].String()
}

type dialOut struct {
	c   net.Conn
	res Result
	err error
}

// dialPair runs Dial for a and b at once.
func dialPair(t *testing.T, oa, ob Options) (dialOut, dialOut) {
	t.Helper()
	var wg sync.WaitGroup
	var a, b dialOut
	wg.Add(2)
	go func() { defer wg.Done(); a.c, a.res, a.err = Dial(context.Background(), oa) }()
	go func() { defer wg.Done(); b.c, b.res, b.err = Dial(context.Background(), ob) }()
	wg.Wait()
	for _, x := range []dialOut{a, b} {
		if x.c != nil {
			t.Cleanup(func() { x.c.Close() })
		}
	}
	return a, b
}

// exchange checks that bytes and a half-close pass both ways over a and b.
func exchange(t *testing.T, a, b net.Conn) {
	t.Helper()
	var wg sync.WaitGroup
	for _, pair := range [][2]net.Conn{{a, b}, {b, a}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := "from " + pair[0].LocalAddr().String()
			if _, err := pair[0].Write([]byte(msg)); err != nil {
				t.Error(err)
				return
			}
			if err := pair[0].(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				t.Error(err)
			}
			got, err := io.ReadAll(pair[1])
			if err != nil {
				t.Error(err)
			}
			if string(got) != msg {
				t.Errorf("read %q, want %q", got, msg)
			}
		}()
	}
	wg.Wait()
}

func TestLoopbackDirect(t *testing.T) {
	srv := &Server{}
	rv := startServer(t, srv)
	a, b := dialPair(t, Options{Rendezvous: rv, ID: "alice", Peer: "bob"}, Options{Rendezvous: rv, ID: "bob", Peer: "alice"})
	if a.err != nil || b.err != nil {
		t.Fatalf("dial: %v / %v", a.err, b.err)
	}
	if a.res.NAT.Mapping != MappingNone {
		t.Errorf("loopback NAT = %+v, want none", a.res.NAT)
	}
	if a.res.Method == MethodRelay || a.res.Method != b.res.Method {
		t.Errorf("methods %s / %s", a.res.Method, b.res.Method)
	}
	if a.res.Local != b.res.Remote || a.res.Remote != b.res.Local {
		t.Errorf("ends differ: a %v->%v, b %v->%v", a.res.Local, a.res.Remote, b.res.Local, b.res.Remote)
	}
	exchange(t, a.c, b.c)
}

// nowhere aims every SYN at a loopback port with no listener, so punching
// fails with RSTs.
func nowhere([]netip.AddrPort) []netip.AddrPort {
	return []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}
}

func TestRelayWhenPunchingFails(t *testing.T) {
	srv := &Server{}
	rv := startServer(t, srv)
	oa := Options{Rendezvous: rv, ID: "a", Peer: "b", RoundTimeout: 50 * time.Millisecond, Rounds: 1, candidates: nowhere}
	ob := Options{Rendezvous: rv, ID: "b", Peer: "a", RoundTimeout: 50 * time.Millisecond, Rounds: 1, candidates: nowhere}
	a, b := dialPair(t, oa, ob)
	if a.err != nil || b.err != nil {
		t.Fatalf("dial: %v / %v", a.err, b.err)
	}
	if a.res.Method != MethodRelay || b.res.Method != MethodRelay {
		t.Fatalf("methods %s / %s, want relay", a.res.Method, b.res.Method)
	}
	exchange(t, a.c, b.c)
}

func TestNoRelayFails(t *testing.T) {
	srv := &Server{}
	rv := startServer(t, srv)
	oa := Options{Rendezvous: rv, ID: "a", Peer: "b", RoundTimeout: 50 * time.Millisecond, Rounds: 2, NoRelay: true, candidates: nowhere}
	ob := Options{Rendezvous: rv, ID: "b", Peer: "a", RoundTimeout: 50 * time.Millisecond, Rounds: 2, NoRelay: true, candidates: nowhere}
	a, b := dialPair(t, oa, ob)
	for _, x := range []dialOut{a, b} {
		if !errors.Is(x.err, ErrNoPath) || !strings.Contains(x.res.Reason, "127.0.0.1:9 refused by RST") {
			t.Errorf("err = %v, reason %q; want ErrNoPath with the RSTs as the reason", x.err, x.res.Reason)
		}
		if x.res.Rounds != 2 {
			t.Errorf("rounds = %d, want 2", x.res.Rounds)
		}
	}
}

func TestPeerAbsent(t *testing.T) {
	srv := &Server{WaitTimeout: 200 * time.Millisecond}
	rv := startServer(t, srv)
	_, _, err := Dial(context.Background(), Options{Rendezvous: rv, ID: "a", Peer: "nobody"})
	if !errors.Is(err, ErrPeerAbsent) {
		t.Fatalf("err = %v, want ErrPeerAbsent", err)
	}
}

func TestIDTakenIsRefused(t *testing.T) {
	srv := &Server{}
	rv := startServer(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Dial(ctx, Options{Rendezvous: rv, ID: "a", Secret: "s1", Peer: "b"})
	deadline := time.Now().Add(5 * time.Second)
	for {
		srv.mu.Lock()
		_, ok := srv.peers["a"]
		srv.mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("first registration never arrived")
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, _, err := Dial(context.Background(), Options{Rendezvous: rv, ID: "a", Secret: "other", Peer: "b"})
	if err == nil || !strings.Contains(err.Error(), "another secret") {
		t.Fatalf("hijack: err = %v, want refusal", err)
	}
}

func TestRelayByteLimit(t *testing.T) {
	srv := &Server{MaxRelayBytes: 1000}
	rv := startServer(t, srv)
	oa := Options{Rendezvous: rv, ID: "a", Peer: "b", RoundTimeout: 50 * time.Millisecond, Rounds: 1, candidates: nowhere}
	ob := Options{Rendezvous: rv, ID: "b", Peer: "a", RoundTimeout: 50 * time.Millisecond, Rounds: 1, candidates: nowhere}
	a, b := dialPair(t, oa, ob)
	if a.err != nil || b.err != nil || a.res.Method != MethodRelay {
		t.Fatalf("dial: %v / %v (%s)", a.err, b.err, a.res.Method)
	}
	if _, err := a.c.Write(make([]byte, 600)); err != nil { // within the budget
		t.Fatal(err)
	}
	b.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(b.c, make([]byte, 600)); err != nil {
		t.Fatalf("the 600 bytes within the budget: %v", err)
	}
	a.c.Write(make([]byte, 5000)) // over it
	got, err := io.ReadAll(b.c)
	if len(got) != 0 {
		t.Fatalf("relayed %d more bytes past the 1000-byte budget (err %v)", len(got), err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the relay did not close past its budget: %v", err)
	}
}
