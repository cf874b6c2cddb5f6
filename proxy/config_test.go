package proxy

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// TestParseConfigExample parses the example configuration.
func TestParseConfigExample(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	c, err := ParseConfig("ex.yaml", []byte(`
listen: [127.0.0.1:1080, "[::1]:1080"]
metrics: 127.0.0.1:9180
store: bolt:/var/lib/portspace/leases.db
holder: host-a
pools: pools.yaml
max-slices: 4
users:
  - {name: alice, password: secret, traits: {geo: de}}
  - {name: bob, password-hash: "`+string(hash)+`", max-connections: 10}
clients:
  - {cidr: 10.0.0.0/8, traits: {geo: de}}
destinations:
  allow: [127.0.0.10/32, 127.0.0.11]
  deny: []
timeouts: {handshake: 5s, idle: 1m, dial: 3s, drain: 10s}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Listen) != 2 || c.Metrics.Port() != 9180 || c.MaxSlices != 4 || c.Users[1].MaxConnections != 10 ||
		c.Destinations.Allow[1].String() != "127.0.0.11/32" || c.Timeouts.Idle.String() != "1m0s" || c.Holder != "host-a" {
		t.Errorf("parsed %+v", c)
	}
	s := &Server{authCache: map[[32]byte]bool{}}
	if !s.checkPassword(&c.Users[1], "pw") || s.checkPassword(&c.Users[1], "px") {
		t.Error("bcrypt password-hash check is wrong")
	}
}

// TestParseConfigErrors: each bad configuration is refused with file:line
// and the input as written.
func TestParseConfigErrors(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"listen: [127.0.0.1:1080]\nbogus: 1\n", "c.yaml:2: "},
		{"users:\n  - {name: a, password: x, color: red}\n", `c.yaml:2: unknown key "color"`},
		{"clients:\n  - {cidr: 10.0.0.0/33, traits: {geo: de}}\n", `c.yaml:2: clients: cidr "10.0.0.0/33"`},
		{"clients:\n  - {cidr: 10.0.0.1/8}\n", "c.yaml:2: clients: cidr \"10.0.0.1/8\" has host bits set"},
		{"listen: [localhost:1080]\n", `c.yaml:1: listen "localhost:1080"`},
		{"\n\ntimeouts: {idle: soon}\n", `c.yaml:3: timeouts.idle "soon"`},
		{"users:\n  - {name: a}\n", `c.yaml:2: user "a": set exactly one of password and password-hash`},
		{"users:\n  - {name: a, password-hash: nothash}\n", "c.yaml:2: user \"a\": password-hash is not a bcrypt hash"},
		{"users:\n  - {name: a, password: x}\n  - {name: a, password: y}\n", `c.yaml:3: user "a" is already defined at line 2`},
		{"users:\n  - {name: 'a,b', password: x}\n", `c.yaml:2: user name "a,b"`},
		{"users:\n  - {name: a, password: x, traits: {Geo: de}}\n", `c.yaml:2: user "a": trait name "Geo"`},
		{"destinations:\n  allow: [nope]\n", `c.yaml:2: destinations.allow "nope"`},
		{"max-slices: 0\n", "c.yaml:1: max-slices 0"},
		{"listen: [127.0.0.1:1080\n", "c.yaml:"},
	}
	for _, c := range cases {
		_, err := ParseConfig("c.yaml", []byte(c.yaml))
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want ErrConfig containing %q", c.yaml, err, c.want)
		}
	}
}

// TestConfigTraitsOffered: a trait no egress offers is refused with the
// line of the user or client rule.
func TestConfigTraitsOffered(t *testing.T) {
	c, err := ParseConfig("t.yaml", []byte("users:\n  - {name: a, password: x, traits: {geo: de}}\nclients:\n  - {cidr: 10.0.0.0/8, traits: {geo: fr}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = c.CheckTraits(map[string]map[string]bool{"geo": {"de": true}})
	if err == nil || !strings.Contains(err.Error(), "t.yaml:4: clients 10.0.0.0/8: trait geo=fr is offered by no pool") {
		t.Errorf("got %v", err)
	}
	if err := c.CheckTraits(map[string]map[string]bool{"geo": {"de": true, "fr": true}}); err != nil {
		t.Error(err)
	}
}

// TestCheckOpen: a non-loopback listener without users is refused unless
// allow-open is set, and the message names the listener.
func TestCheckOpen(t *testing.T) {
	c, _ := ParseConfig("o.yaml", []byte("listen: [127.0.0.1:1080, 0.0.0.0:1080]"))
	if err := c.CheckOpen(); err == nil || !strings.Contains(err.Error(), "0.0.0.0:1080") {
		t.Errorf("open listener: %v", err)
	}
	c.AllowOpen = true
	if err := c.CheckOpen(); err != nil {
		t.Error(err)
	}
	c, _ = ParseConfig("o.yaml", []byte("listen: [0.0.0.0:1080]\nusers: [{name: a, password: b}]"))
	if err := c.CheckOpen(); err != nil {
		t.Errorf("with users: %v", err)
	}
	if c, _ := ParseConfig("o.yaml", nil); c.CheckOpen() != nil || c.Listeners()[0].String() != DefaultListen {
		t.Error("the empty configuration is not the loopback default")
	}
}

func TestLoadConfigMissing(t *testing.T) {
	_, err := LoadConfig(filepath.Join(t.TempDir(), "none.yaml"))
	if !errors.Is(err, ErrConfig) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v", err)
	}
}

// TestParseUsername covers the username syntax.
func TestParseUsername(t *testing.T) {
	name, tr, sess, err := ParseUsername("alice,geo=de,session=s1,category=dc")
	if err != nil || name != "alice" || tr["geo"] != "de" || tr["category"] != "dc" || sess != "s1" || len(tr) != 2 {
		t.Errorf("got %q %v %q %v", name, tr, sess, err)
	}
	for _, bad := range []string{"", ",geo=de", "alice,geo", "alice,geo=", "alice,geo=de,geo=fr", "alice,GEO=de"} {
		if _, _, _, err := ParseUsername(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestAccessLog: with access-log set, each finished connection is one JSON
// line naming the user, destination, egress and result.
func TestAccessLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.jsonl")
	echo := echoServer(t, "127.0.0.10")
	p := startProxy(t, "access-log: "+path+"\nusers: [{name: alice, password: secret}]", nil)
	c, rep, _, err := socksDial(t, p.addr, "alice", "secret", cmdConnect, addrBytes(echo))
	if err != nil || rep != 0 {
		t.Fatal(rep, err)
	}
	c.Close()
	socksDial(t, p.addr, "alice", "wrong", cmdConnect, addrBytes(echo))
	p.waitCount("socks5", resultAuth, 1)
	p.waitCount("socks5", resultOK, 1)
	// A connection is counted in the metrics before its log line is
	// written: wait (bounded) for both lines.
	var b []byte
	var lines []string
	for deadline := time.Now().Add(5 * time.Second); ; {
		b, err = os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		lines = strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(lines) != 2 {
		t.Fatalf("access log %q, want 2 lines", b)
	}
	var ok, bad map[string]any
	json.Unmarshal([]byte(lines[0]), &ok)
	json.Unmarshal([]byte(lines[1]), &bad)
	if ok["result"] == "auth_failed" {
		ok, bad = bad, ok
	}
	if ok["user"] != "alice" || ok["dst"] != echo.String() || ok["result"] != "ok" || !strings.HasPrefix(ok["egress"].(string), "127.0.0.") || bad["result"] != "auth_failed" {
		t.Errorf("access log lines %v / %v", ok, bad)
	}
}
