package main

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/portspace/portspace/stun"
)

func TestNatprobeBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"natprobe", "stun.example.org"}, `SERVER "stun.example.org"`},
		{[]string{"natprobe", "192.0.2.1:99999"}, `bad port "99999"`},
		{[]string{"natprobe", "192.0.2.1", "--local", "nope"}, `--local "nope"`},
		{[]string{"natprobe", "192.0.2.1", "--alt-local", "x"}, `--alt-local "x"`},
		{[]string{"natprobe"}, "accepts 1 arg"},
	} {
		_, _, err := runCLI(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want it to name %q", c.args, err, c.want)
		}
	}
	if ap, err := parseServer("[::1]"); err != nil || ap.Port() != 3478 {
		t.Errorf("[::1]: %v %v", ap, err)
	}
}

// TestNatprobeJSONLoopback runs the command against the package's server on
// loopback and reads the JSON it prints.
func TestNatprobeJSONLoopback(t *testing.T) {
	var s *stun.Server
	for try := 0; s == nil && try < 20; try++ {
		p := uint16(20000 + rand.IntN(20000))
		s, _ = stun.Listen(stun.Options{Primary: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p),
			Alternate: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), p+1)})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	out, _, err := runCLI(t, "natprobe", s.Addrs()[0].String(), "--json")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if m["rfc3489"] != "open" || m["mapping"] != "endpoint-independent" {
		t.Errorf("%s", out)
	}
}

func TestStunServeBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"stun", "serve"}, "--primary is required"},
		{[]string{"stun", "serve", "--primary", "nope"}, `--primary "nope"`},
		{[]string{"stun", "serve", "--primary", "127.0.0.1:3478", "--alternate", "x"}, `--alternate "x"`},
		{[]string{"stun", "serve", "--primary", "127.0.0.1:3478", "--alternate", "127.0.0.1:3479"}, `--primary "127.0.0.1:3478" --alternate "127.0.0.1:3479": stun: bad configuration: alternate address 127.0.0.1 equals the primary's`},
		// 192.0.2.99 is on no interface: the bind fails, named once.
		{[]string{"stun", "serve", "--primary", "192.0.2.99:3478"}, "stun: listen udp 192.0.2.99:3478: bind: cannot assign requested address"},
		{[]string{"stun", "serve", "--primary", "127.0.0.1:3478", "--rate", "-1"}, "--rate"},
		{[]string{"stun", "serve", "--primary", "127.0.0.1:3478", "--workers", "-2"}, "--workers -2"},
	} {
		_, _, err := runCLI(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want it to name %q", c.args, err, c.want)
		}
	}
}
