package lease

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/tuple"
)

const examplePools = `pools:
  - name: de-residential
    addresses: [192.0.2.10, 192.0.2.11]
    traits: {geo: de, category: residential}
    ports: 1024-65535
    slice: 1024
  - name: fr
    addresses: [192.0.2.20, "2001:db8::20"]
    traits: {geo: fr}
    ports: 1024-65535
    psid: {offset: 6, length: 6}
    quarantine: 0s
  - name: plain
    addresses: 192.0.2.30
    ports: 4000-4099,5000-5099
    slice: 50
    quarantine: 30s
`

func TestParsePools(t *testing.T) {
	pools, err := ParsePools("pools.yaml", []byte(examplePools))
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 3 {
		t.Fatalf("%d pools", len(pools))
	}
	de, fr, plain := pools[0], pools[1], pools[2]
	if de.Name != "de-residential" || len(de.Addrs) != 2 || de.Traits["geo"] != "de" || de.Traits["category"] != "residential" ||
		de.Slice != 1024 || de.PSID != nil || de.Quarantine != DefaultQuarantine || de.Ports.Len() != 64512 {
		t.Fatalf("de = %+v", de)
	}
	if numSlices(de) != 63 {
		t.Fatalf("de: %d slices per address, want 63", numSlices(de))
	}
	if fr.PSID == nil || *fr.PSID != (PSIDLayout{6, 6}) || fr.Quarantine != 0 || fr.Addrs[1] != netip.MustParseAddr("2001:db8::20") {
		t.Fatalf("fr = %+v", fr)
	}
	if numSlices(fr) != 64 {
		t.Fatalf("fr: %d slices, want 64", numSlices(fr))
	}
	want, _ := tuple.PSIDPortSet(6, 6, 5)
	if got := slicePorts(fr, 5); got != want {
		t.Fatalf("fr slice 5 = %v, want %v", got, want)
	}
	if plain.Quarantine != 30*time.Second || plain.Traits != nil || numSlices(plain) != 4 {
		t.Fatalf("plain = %+v", plain)
	}
	// A slice of a pool with a gap stays inside the pool's ports.
	if got := slicePorts(plain, 1); got != tuple.MustParsePortSet("4050-4099") {
		t.Fatalf("plain slice 1 = %v", got)
	}
	if got := slicePorts(plain, 2); got != tuple.MustParsePortSet("5000-5049") {
		t.Fatalf("plain slice 2 = %v", got)
	}
	// Every slice of every pool is disjoint from the others and covers
	// the pool's ports.
	for _, p := range pools {
		var all tuple.PortSet
		for i := range numSlices(p) {
			s := slicePorts(p, i)
			if all.Intersect(s).IsValid() {
				t.Fatalf("%s slice %d overlaps an earlier one", p.Name, i)
			}
			all = all.Union(s)
		}
		if p.PSID == nil && !all.Equal(p.Ports) {
			t.Fatalf("%s slices cover %v, want %v", p.Name, all, p.Ports)
		}
	}
}

func TestParsePoolsErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"overlap", "pools:\n  - {name: a, addresses: [192.0.2.1], ports: 1024-2047, slice: 512}\n  - {name: b, addresses: [192.0.2.1], ports: 2000-2099, slice: 100}\n",
			"p.yaml:3: pool b: address 192.0.2.1 ports 2000-2047 are also in pool a"},
		{"slice does not divide", "pools:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: 1024-2047\n    slice: 1000\n",
			"p.yaml:5: pool a: slice 1000 does not divide the 1024 ports of 1024-2047 (24 left over)"},
		{"psid too long", "pools:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: 1024-65535\n    psid: {offset: 6, length: 11}\n",
			"p.yaml:5: pool a: psid offset 6 + length 11 exceeds the 16 bits"},
		{"psid outside ports", "pools:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: 2048-65535\n    psid: {offset: 6, length: 6}\n",
			"p.yaml:5: pool a: psid offset 6 length 6: the port set of PSID 0"},
		{"slice and psid", "pools:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: 1024-65535\n    slice: 1024\n    psid: {offset: 6, length: 6}\n",
			"p.yaml:6: pool a: give slice or psid, not both"},
		{"bad address", "pools:\n  - name: a\n    addresses: [192.0.2.300]\n    ports: 1024-2047\n    slice: 512\n",
			"p.yaml:3: pool a: address \"192.0.2.300\": not an IP address"},
		{"unknown key", "pools:\n  - name: a\n    adresses: [192.0.2.1]\n", "p.yaml:3: pool: unknown key \"adresses\""},
		{"duplicate pool", "pools:\n  - {name: a, addresses: [192.0.2.1], ports: 1024-2047, slice: 512}\n  - {name: a, addresses: [192.0.2.2], ports: 1024-2047, slice: 512}\n",
			"p.yaml:3: pool \"a\" defined twice (first at line 2)"},
		{"bad quarantine", "pools:\n  - {name: a, addresses: [192.0.2.1], ports: 1024-2047, slice: 512, quarantine: soon}\n",
			"p.yaml:2: pool a: quarantine \"soon\""},
		{"bad ports", "pools:\n  - {name: a, addresses: [192.0.2.1], ports: 1024-99999, slice: 512}\n", "p.yaml:2: pool a: ports \"1024-99999\""},
		{"no slice", "pools:\n  - {name: a, addresses: [192.0.2.1], ports: 1024-2047}\n", "p.yaml:2: pool a: no slice size"},
		{"bad yaml", "pools:\n  - name: a: b\n", "p.yaml:2: YAML: mapping values are not allowed in this context"},
		{"empty", "", "p.yaml: no pools"},
		{"no pools key", "pool: []\n", "p.yaml:1: the document: unknown key \"pool\""},
		{"name with space", "pools:\n  - {name: a b, addresses: [192.0.2.1], ports: 1024-2047, slice: 512}\n", "p.yaml:2: pool name \"a b\""},
		{"bad trait", "pools:\n  - {name: a, addresses: [192.0.2.1], ports: 1024-2047, slice: 512, traits: {geo: \"d e\"}}\n", "p.yaml:2: pool a: trait geo=\"d e\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePools("p.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrPools) {
				t.Errorf("%v does not wrap ErrPools", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Location
	}{
		{"", Location{Kind: "bolt"}},
		{"bolt:", Location{Kind: "bolt"}},
		{"bolt:/var/lib/portspace/leases.db", Location{Kind: "bolt", Path: "/var/lib/portspace/leases.db"}},
		{"bolt:///tmp/x.db", Location{Kind: "bolt", Path: "/tmp/x.db"}},
		{"bolt:rel.db", Location{Kind: "bolt", Path: "rel.db"}},
		{"etcd://127.0.0.1:2379,127.0.0.1:22379", Location{Kind: "etcd", Endpoints: []string{"127.0.0.1:2379", "127.0.0.1:22379"}, Prefix: DefaultEtcdPrefix}},
		{"etcd://[::1]:2379/fleet/a", Location{Kind: "etcd", Endpoints: []string{"[::1]:2379"}, Prefix: "/fleet/a/"}},
		{"etcd://etcd-1.internal:2379", Location{Kind: "etcd", Endpoints: []string{"etcd-1.internal:2379"}, Prefix: DefaultEtcdPrefix}},
	} {
		got, err := ParseURL(tc.in)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.in, err)
			continue
		}
		if got.String() != tc.want.String() || got.Kind != tc.want.Kind || got.Path != tc.want.Path || got.Prefix != tc.want.Prefix {
			t.Errorf("ParseURL(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	for _, in := range []string{"etcd://", "etcd://127.0.0.1", "etcd://127.0.0.1:0", "etcd://127.0.0.1:70000", "http://x:1",
		"bolt://relative", "bolt:/tmp/dir/", "etcd://a b:1", "etcd://127.0.0.1:2379,", "leases.db", "etcd://h:1/p?x=1"} {
		_, err := ParseURL(in)
		if !errors.Is(err, ErrURL) {
			t.Errorf("ParseURL(%q) = %v, want ErrURL", in, err)
		} else if !strings.Contains(err.Error(), in) {
			t.Errorf("ParseURL(%q): error %q does not name the URL", in, err)
		}
	}
}

// TestParseURLSecurity checks the etcd URL's TLS and authentication parts,
// and that malformed ones are refused with the URL named, its password
// redacted.
func TestParseURLSecurity(t *testing.T) {
	for _, tc := range []struct {
		in, str string
		want    Location
	}{
		{"etcds://127.0.0.1:2379,127.0.0.1:22379?cacert=/etc/ca.pem&cert=/etc/c.pem&key=/etc/c.key",
			"etcds://127.0.0.1:2379,127.0.0.1:22379?cacert=/etc/ca.pem&cert=/etc/c.pem&key=/etc/c.key",
			Location{Kind: "etcd", TLS: true, Endpoints: []string{"127.0.0.1:2379", "127.0.0.1:22379"}, Prefix: DefaultEtcdPrefix,
				CACert: "/etc/ca.pem", Cert: "/etc/c.pem", Key: "/etc/c.key"}},
		{"etcds://h:1", "etcds://h:1", Location{Kind: "etcd", TLS: true, Endpoints: []string{"h:1"}, Prefix: DefaultEtcdPrefix}},
		{"etcd://ps:s%40cr%2Ft@127.0.0.1:2379/fleet", "etcd://ps:xxxxx@127.0.0.1:2379/fleet",
			Location{Kind: "etcd", Endpoints: []string{"127.0.0.1:2379"}, Prefix: "/fleet/", User: "ps", Password: "s@cr/t"}},
		{"etcds://ps@[::1]:2379/p?password-file=/run/pw&cacert=ca%20file.pem", "etcds://ps@[::1]:2379/p?cacert=ca+file.pem&password-file=/run/pw",
			Location{Kind: "etcd", TLS: true, Endpoints: []string{"[::1]:2379"}, Prefix: "/p/", User: "ps", PasswordFile: "/run/pw", CACert: "ca file.pem"}},
		{"etcd://a%3Ab:pw@h:1", "etcd://a%3Ab:xxxxx@h:1", Location{Kind: "etcd", Endpoints: []string{"h:1"}, Prefix: DefaultEtcdPrefix, User: "a:b", Password: "pw"}},
	} {
		got, err := ParseURL(tc.in)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.in, err)
			continue
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("ParseURL(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if got.String() != tc.str {
			t.Errorf("ParseURL(%q).String() = %q, want %q", tc.in, got.String(), tc.str)
		}
	}
	for _, tc := range []struct{ in, shown, why string }{
		{"etcd://h:1?cacert=/ca.pem", "", "option cacert needs TLS: use etcds://"},
		{"etcds://h:1?cert=/c.pem", "", "options cert and key go together"},
		{"etcds://h:1?key=/c.key", "", "options cert and key go together"},
		{"etcds://h:1?cacert=", "", `option "cacert=": want cacert=VALUE`},
		{"etcds://h:1?cacert", "", `option "cacert": want cacert=VALUE`},
		{"etcds://h:1?", "", "empty options after ?"},
		{"etcds://h:1?cacert=a&cacert=b", "", "option cacert given twice"},
		{"etcds://h:1?ca=x", "", `unknown option "ca" (want cacert, cert, key, password-file)`},
		{"etcds://h:1?cacert=%zz", "", "option cacert: invalid URL escape"},
		{"etcd://h:1#frag", "", "fragments (#) are not supported"},
		{"etcd://:pw@h:1", "etcd://:xxxxx@h:1", "empty user before @"},
		{"etcd://u:@h:1", "etcd://u:xxxxx@h:1", "empty password after USER:"},
		{"etcd://u@h:1", "", `user "u" has no password`},
		{"etcd://h:1?password-file=/pw", "", "option password-file needs a user"},
		{"etcd://u:pw@h:1?password-file=/pw", "etcd://u:xxxxx@h:1?password-file=/pw", "a password and option password-file: give one"},
		{"etcd://u:sec%zz@h:1", "etcd://u:xxxxx@h:1", "password: bad percent-encoding"},
		{"etcd://u:se/cret@h:1", "etcd://u:xxxxx@h:1", "endpoint"},
		{"etcds://", "", "no endpoints (want etcds://"},
		{"etcd://u:pw@", "etcd://u:xxxxx@", "no endpoints"},
	} {
		_, err := ParseURL(tc.in)
		shown := tc.shown
		if shown == "" {
			shown = tc.in
		}
		if !errors.Is(err, ErrURL) {
			t.Errorf("ParseURL(%q) = %v, want ErrURL", tc.in, err)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, fmt.Sprintf("%q", shown)) || !strings.Contains(msg, tc.why) {
			t.Errorf("ParseURL(%q): error %q, want it to name %q and say %q", tc.in, msg, shown, tc.why)
		}
		for _, secret := range []string{"pw", "cret", "sec"} {
			if strings.Contains(tc.in, ":"+secret) && strings.Contains(err.Error(), ":"+secret) {
				t.Errorf("ParseURL(%q): error %q shows the password", tc.in, err)
			}
		}
	}
}

func TestStateDir(t *testing.T) {
	t.Setenv("PORTSPACE_STATE", "/srv/ps")
	if d, _ := StateDir(); d != "/srv/ps" {
		t.Fatalf("StateDir with PORTSPACE_STATE = %q", d)
	}
	t.Setenv("PORTSPACE_STATE", "")
	t.Setenv("XDG_STATE_HOME", "/home/u/.state")
	d, _ := StateDir()
	if want := "/home/u/.state/portspace"; d != want && d != "/var/lib/portspace" {
		t.Fatalf("StateDir = %q, want %q (or /var/lib/portspace as root)", d, want)
	}
}

func FuzzParsePools(f *testing.F) {
	f.Add([]byte(examplePools))                                                                                 // the documented example
	f.Add([]byte("pools:\n  - {name: a, addresses: [192.0.2.1], ports: 1024-2047, slice: 512}\n"))              // flow style
	f.Add([]byte("pools:\n  - {name: a, addresses: [::1], ports: 1024-65535, psid: {offset: 0, length: 1}}\n")) // a = 0
	f.Add([]byte("pools: [{name: x, addresses: 1.2.3.4, ports: '1', slice: 1}]"))                               // one port
	f.Add([]byte("pools:\n  - &a {name: a}\n  - *a\n"))                                                         // aliases
	f.Fuzz(func(t *testing.T, data []byte) {
		pools, err := ParsePools("f.yaml", data)
		if err != nil {
			if !errors.Is(err, ErrPools) || !strings.HasPrefix(err.Error(), "lease: bad pools: f.yaml") {
				t.Fatalf("error %q does not wrap ErrPools with the file name", err)
			}
			return
		}
		if err := checkPools(pools); err != nil {
			t.Fatalf("ParsePools accepted pools that checkPools refuses: %v", err)
		}
		total := 0
		for _, p := range pools {
			total += numSlices(p) * len(p.Addrs)
		}
		if total > 4096 {
			return // keep each run short
		}
		for _, p := range pools {
			for i := range numSlices(p) {
				if s := slicePorts(p, i); !s.IsValid() || !p.Ports.ContainsSet(s) {
					t.Fatalf("pool %s slice %d = %v, not inside %v", p.Name, i, s, p.Ports)
				}
			}
		}
	})
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"", "bolt:", "bolt:/x.db", "bolt:///x", "etcd://127.0.0.1:2379", "etcd://[::1]:1,h:2/p", "etcd://", "x://y",
		"etcds://u:p%40w@h:1/p?cacert=/ca&cert=c&key=k", "etcd://u@h:1?password-file=/f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		loc, err := ParseURL(s)
		if err != nil {
			if !errors.Is(err, ErrURL) {
				t.Fatalf("error %v does not wrap ErrURL", err)
			}
			return
		}
		// The String form parses back to the same location.
		again, err := ParseURL(loc.String())
		if err != nil {
			t.Fatalf("ParseURL(%q) = %+v, whose String %q does not parse: %v", s, loc, loc.String(), err)
		}
		if again.String() != loc.String() {
			t.Fatalf("round trip %q -> %q -> %q", s, loc.String(), again.String())
		}
		if loc.Kind == "etcd" && len(loc.Endpoints) == 0 {
			t.Fatalf("etcd location without endpoints from %q", s)
		}
	})
}

func FuzzParseSliceID(f *testing.F) {
	for _, s := range []string{"de/192.0.2.10/3", "p/2001:db8::1/0", "p//1", "/1.2.3.4/1", "p/1.2.3.4/-1", "a/b/c/d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pool, addr, index, err := parseSliceID(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "lease: slice ID ") {
				t.Fatalf("error %q does not say what it parsed", err)
			}
			return
		}
		if pool == "" || !addr.IsValid() || index < 0 {
			t.Fatalf("parseSliceID(%q) = %q, %v, %d", s, pool, addr, index)
		}
		// The canonical form parses back to the same parts.
		p2, a2, i2, err := parseSliceID(sliceID(pool, addr, index))
		if err != nil || p2 != pool || a2 != addr || i2 != index {
			t.Fatalf("round trip of %q: %q %v %d %v", s, p2, a2, i2, err)
		}
	})
}

// TestParsePoolsIssueExample parses the example of the pools format as
// the issue gives it, comments and all.
func TestParsePoolsIssueExample(t *testing.T) {
	const y = `pools:
  - name: de-residential
    addresses: [192.0.2.10, 192.0.2.11]     # IPv4 or IPv6; each address is cut the same way
    traits: {geo: de, category: residential}
    ports: 1024-65535                        # tuple.PortSet syntax
    slice: 1024                              # ports per contiguous slice; or
    # psid: {offset: 6, length: 6}           # RFC 7597 port sets: one PSID per slice
    quarantine: 120s                         # default 120 s
`
	pools, err := ParsePools("issue.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	p := pools[0]
	if len(pools) != 1 || p.Slice != 1024 || p.Quarantine != 120*time.Second || len(slicesOf(p)) != 2*63 {
		t.Fatalf("pools = %+v", pools)
	}
}
