package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/portspace/portspace/punch"
)

// TestPunchDialCopies runs two `punch dial` commands against a loopback
// rendezvous and checks the bytes, the half-close and the JSON result.
func TestPunchDialCopies(t *testing.T) {
	srv := &punch.Server{}
	var addrs []string
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		go srv.Serve(ln)
	}
	defer srv.Close()
	type out struct {
		stdout, stderr string
		err            error
	}
	var wg sync.WaitGroup
	res := make([]out, 2)
	for i, id := range []string{"alice", "bob"} {
		peer := []string{"bob", "alice"}[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			root := newRootCmd()
			var so, se bytes.Buffer
			root.SetOut(&so)
			root.SetErr(&se)
			root.SetIn(strings.NewReader("data from " + id))
			root.SetArgs([]string{"punch", "dial", "--rendezvous", addrs[0], "--id", id, "--peer", peer, "--json"})
			res[i].err = root.ExecuteContext(context.Background())
			res[i].stdout, res[i].stderr = so.String(), se.String()
		}()
	}
	wg.Wait()
	for i, want := range []string{"data from bob", "data from alice"} {
		if res[i].err != nil {
			t.Fatalf("peer %d: %v (stderr %s)", i, res[i].err, res[i].stderr)
		}
		if res[i].stdout != want {
			t.Errorf("peer %d stdout = %q, want %q", i, res[i].stdout, want)
		}
		var r struct {
			Method string  `json:"method"`
			Local  string  `json:"local"`
			Remote string  `json:"remote"`
			MS     float64 `json:"ms"`
			Rounds int     `json:"rounds"`
		}
		lines := strings.Split(strings.TrimSpace(res[i].stderr), "\n")
		if len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &r) != nil || r.Method == "" || r.Local == "" || r.Remote == "" || r.Rounds < 1 {
			t.Errorf("peer %d stderr is not one JSON result line: %q", i, res[i].stderr)
		}
	}
}

func TestPunchBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"punch", "dial", "--id", "a", "--peer", "b"}, "--rendezvous is required"},
		{[]string{"punch", "dial", "--rendezvous", "127.0.0.1:1", "--id", "a", "--peer", "b", "--local", "nope"}, `--local "nope"`},
		{[]string{"punch", "dial", "--rendezvous", "127.0.0.1:1", "--id", "a", "--peer", "b", "--timeout", "0s"}, "--timeout"},
		{[]string{"punch", "rendezvous"}, "--listen"},
		{[]string{"punch", "rendezvous", "--listen", "bogus"}, `--listen "bogus"`},
	} {
		_, _, err := runCLI(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to name %s", tc.args, err, tc.want)
		}
	}
}
