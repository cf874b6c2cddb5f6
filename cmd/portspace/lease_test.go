package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/lease/leasetest"
)

const leasePoolsYAML = `pools:
  - name: de
    addresses: [192.0.2.10]
    traits: {geo: de, category: residential}
    ports: 1024-2047
    slice: 512
  - name: fr
    addresses: [192.0.2.20]
    traits: {geo: fr}
    ports: 1024-65535
    psid: {offset: 6, length: 2}
`

func leaseStore(t *testing.T) (store, pools string) {
	dir := t.TempDir()
	pools = filepath.Join(dir, "pools.yaml")
	if err := os.WriteFile(pools, []byte(leasePoolsYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	return "bolt:" + filepath.Join(dir, "leases.db"), pools
}

func TestLeaseCLI(t *testing.T) {
	store, pools := leaseStore(t)
	out, _, err := runCLI(t, "lease", "apply", "--store", store, pools)
	if err != nil || !strings.Contains(out, "2 pools, 6 slices") {
		t.Fatalf("apply: %q, %v", out, err)
	}
	out, _, err = runCLI(t, "lease", "claim", "--store", store, "--holder", "web-1", "--trait", "geo=de", "--ttl", "45s", "--json")
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("claim JSON %q: %v", out, err)
	}
	var keys []string
	for k := range raw {
		keys = append(keys, k)
	}
	if len(raw) != 7 {
		t.Fatalf("claim JSON keys %v, want id pool addr ports holder token expires", keys)
	}
	var l leaseJSON
	json.Unmarshal([]byte(out), &l)
	exp, err := time.Parse(time.RFC3339, l.Expires)
	if err != nil || l.ID != "de/192.0.2.10/0" || l.Pool != "de" || l.Addr != "192.0.2.10" || l.Ports != "1024-1535" || l.Holder != "web-1" || l.Token != 1 {
		t.Fatalf("claim = %+v (%v)", l, err)
	}
	if d := time.Until(exp); d < 40*time.Second || d > 46*time.Second {
		t.Fatalf("claim expires in %v, want about 45 s", d)
	}
	// A PSID slice prints the PSID form.
	out, _, err = runCLI(t, "lease", "claim", "--store", store, "--holder", "web-2", "--trait", "geo=fr", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var fr leaseJSON
	json.Unmarshal([]byte(out), &fr)
	if fr.Ports != "a=6,k=2,psid=0" {
		t.Fatalf("PSID slice ports %q", fr.Ports)
	}
	tok := fmt.Sprint(l.Token)
	if _, _, err := runCLI(t, "lease", "renew", "--store", store, "--id", l.ID, "--token", tok); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if _, _, err := runCLI(t, "lease", "renew", "--store", store, "--id", l.ID, "--token", "2"); err == nil || !strings.Contains(err.Error(), "lease lost") {
		t.Fatalf("renew with a wrong token: %v", err)
	}
	if _, _, err := runCLI(t, "lease", "release", "--store", store, "--id", l.ID, "--token", tok); err != nil {
		t.Fatalf("release: %v", err)
	}
	out, _, err = runCLI(t, "lease", "list", "--store", store, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var ls []leaseJSON
	if err := json.Unmarshal([]byte(out), &ls); err != nil || len(ls) != 6 {
		t.Fatalf("list JSON %q: %v", out, err)
	}
	states := map[string]string{}
	for _, x := range ls {
		states[x.ID] = x.State
	}
	if states["de/192.0.2.10/0"] != "quarantined" || states["fr/192.0.2.20/0"] != "held" || states["de/192.0.2.10/1"] != "free" {
		t.Fatalf("list states %v", states)
	}
	out, _, err = runCLI(t, "lease", "list", "--store", store)
	if err != nil || !strings.Contains(out, "quarantined") || !strings.Contains(out, "web-2") {
		t.Fatalf("list table %q: %v", out, err)
	}
}

func TestLeaseCLIBadInput(t *testing.T) {
	store, pools := leaseStore(t)
	if _, _, err := runCLI(t, "lease", "apply", "--store", store, pools); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("pools:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: 1024-2047\n    slice: 1000\n"), 0o600)
	port := func() int {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"lease", "apply", "--store", store, bad}, bad + ":5: pool a: slice 1000 does not divide"},
		{[]string{"lease", "claim", "--store", store, "--holder", "h", "--trait", "geo=us"}, "no pool matches the traits {geo=us}"},
		{[]string{"lease", "claim", "--store", store, "--holder", "h", "--trait", "geo"}, `--trait "geo": want KEY=VALUE`},
		{[]string{"lease", "claim", "--store", store, "--trait", "geo=de"}, "--holder: required"},
		{[]string{"lease", "claim", "--store", store, "--holder", "h", "--host", "nope"}, `--host "nope"`},
		{[]string{"lease", "list", "--store", "etcd:/x"}, `--store: lease: bad store URL "etcd:/x"`},
		{[]string{"lease", "list", "--store", fmt.Sprintf("etcd://127.0.0.1:%d", port)}, fmt.Sprintf("etcd://127.0.0.1:%d", port)},
		{[]string{"lease", "renew", "--store", store, "--token", "1"}, "--id: required"},
		{[]string{"lease", "list", "--store", "etcd://127.0.0.1:2379?cacert=/ca.pem"}, `--store: lease: bad store URL "etcd://127.0.0.1:2379?cacert=/ca.pem": option cacert needs TLS: use etcds://`},
		{[]string{"lease", "list", "--store", "etcd://ps:s3cret@127.0.0.1:2379?ca=x"}, `bad store URL "etcd://ps:xxxxx@127.0.0.1:2379?ca=x": unknown option "ca"`},
		{[]string{"lease", "list", "--store", "etcds://127.0.0.1:2379?cacert=" + bad + ".missing"}, "cacert=" + bad + ".missing: open"},
	} {
		start := time.Now()
		_, _, err := runCLI(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want it to contain %q", tc.args, err, tc.want)
		}
		if d := time.Since(start); d > 6*time.Second {
			t.Errorf("%v took %v", tc.args, d)
		}
	}
}

// TestLeaseCLIEtcd runs apply, claim, renew, release and list against a
// real three-member etcd cluster.
func TestLeaseCLIEtcd(t *testing.T) {
	c := leasetest.StartEtcd(t, 3)
	store := c.URL("cli")
	_, pools := leaseStore(t)
	if out, _, err := runCLI(t, "lease", "apply", "--store", store, pools); err != nil || !strings.Contains(out, "2 pools, 6 slices") {
		t.Fatalf("apply: %q, %v", out, err)
	}
	out, _, err := runCLI(t, "lease", "claim", "--store", store, "--holder", "web-1", "--trait", "geo=de", "--trait", "category=residential", "--json")
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	var l leaseJSON
	if err := json.Unmarshal([]byte(out), &l); err != nil || l.Pool != "de" || l.Holder != "web-1" || l.Token == 0 || l.Expires == "" {
		t.Fatalf("claim = %q (%v)", out, err)
	}
	tok := fmt.Sprint(l.Token)
	if _, _, err := runCLI(t, "lease", "renew", "--store", store, "--id", l.ID, "--token", tok); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if _, _, err := runCLI(t, "lease", "release", "--store", store, "--id", l.ID, "--token", fmt.Sprint(l.Token+1)); err == nil || !strings.Contains(err.Error(), "lease lost") {
		t.Fatalf("release with a wrong token: %v", err)
	}
	if _, _, err := runCLI(t, "lease", "release", "--store", store, "--id", l.ID, "--token", tok); err != nil {
		t.Fatalf("release: %v", err)
	}
	out, _, err = runCLI(t, "lease", "list", "--store", store, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var ls []leaseJSON
	if err := json.Unmarshal([]byte(out), &ls); err != nil || len(ls) != 6 {
		t.Fatalf("list %q: %v", out, err)
	}
	for _, x := range ls {
		want := "free"
		if x.ID == l.ID {
			want = "quarantined"
		}
		if x.State != want {
			t.Fatalf("list: %s is %s, want %s", x.ID, x.State, want)
		}
	}
	// steer reads the same store; a mistyped prefix is refused (its empty
	// plan would remove the steering), naming --store as typed.
	if _, _, err := runCLI(t, "steer", "render", "--store", store); err != nil {
		t.Fatalf("steer render on the applied store: %v", err)
	}
	typo := c.URL("cl1")
	if _, _, err := runCLI(t, "steer", "render", "--store", typo); !errors.Is(err, lease.ErrNoStore) || !strings.Contains(err.Error(), `--store "`+typo+`"`) {
		t.Fatalf("steer render on an empty prefix: err = %v, want ErrNoStore naming --store", err)
	}
}
