package gateway_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portspace/portspace/gateway"
	"github.com/portspace/portspace/internal/gwtest"
	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/nat"
)

const python = "/usr/bin/python3"

// background starts a long-running program in ns and kills it when tb ends.
func background(tb testing.TB, ns *netnstest.NS, args ...string) {
	tb.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %v: %v", args, err)
	}
	tb.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
}

// servers starts, in the topology's server namespace, stund (RFC 3489, on
// both addresses), coturn's turnserver (RFC 5780, on both addresses, port
// 5478: Debian's /etc/turnserver.conf sets no-rfc5780, so it runs with an
// empty configuration of ours), a UDP echo server and a TCP data server.
func servers(tb testing.TB, topo *gwtest.Topology) {
	tb.Helper()
	for _, c := range []string{"stund", "turnserver", "turnutils_natdiscovery", "stun", "ping", python} {
		netnstest.RequireCommand(tb, c)
	}
	conf := filepath.Join(topo.Dir(), "turnserver.conf")
	if err := os.WriteFile(conf, []byte("# empty: RFC 5780 on (Debian's default file turns it off)\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	s := topo.ServerNS
	background(tb, s, "stund", "-h", gwtest.Server.String(), "-a", gwtest.Server2.String())
	background(tb, s, "turnserver", "-c", conf, "-L", gwtest.Server.String(), "-L", gwtest.Server2.String(),
		"-p", "5478", "--no-auth", "--no-tls", "--no-dtls", "--no-cli", "--log-file", "stdout",
		"--pidfile", filepath.Join(topo.Dir(), "turnserver.pid"))
	tool := filepath.Join("testdata", "nettool.py")
	background(tb, s, python, tool, "udp-echo", gwtest.Server.String(), "7000")
	background(tb, s, python, tool, "tcp-serve", gwtest.Server.String(), "8000", fmt.Sprint(downloadBytes))
}

const downloadBytes = 4 << 20

// expected returns what the two STUN clients print for a preset's claimed
// mapping and filtering.
func expected(p nat.PresetInfo) (stun, natdisc []string) {
	names := map[nat.Mapping]string{nat.MappingEIM: "Endpoint Independent", nat.MappingADM: "Address Dependent", nat.MappingAPDM: "Address and Port Dependent"}
	fnames := map[nat.Filtering]string{nat.FilterEIF: "Endpoint Independent", nat.FilterADF: "Address Dependent", nat.FilterAPDF: "Address and Port Dependent"}
	natdisc = []string{"NAT with " + names[p.Mapping] + " Mapping!", "NAT with " + fnames[p.Filtering] + " Filtering!"}
	if p.Mapping != nat.MappingEIM {
		return []string{"Primary: Dependent Mapping"}, natdisc
	}
	f := map[nat.Filtering]string{nat.FilterEIF: "Independent Filter", nat.FilterADF: "Address Dependent Filter", nat.FilterAPDF: "Port Dependent Filter"}
	return []string{"Primary: Independent Mapping, " + f[p.Filtering] + ",", "will hairpin"}, natdisc
}

// probe is one check run against a preset's gateway.
type probe struct {
	name string
	ns   func(*gwtest.Topology) *netnstest.NS
	args []string
	want []string // substrings of the output
	exit bool     // a non-zero exit status is expected (stun exits with its class)
}

func probes(p nat.PresetInfo, spec gwtest.Spec) []probe {
	mapped := spec.MappedAddr(gwtest.Client).String()
	client := func(t *gwtest.Topology) *netnstest.NS { return t.ClientNS }
	tool := filepath.Join("testdata", "nettool.py")
	stunWant, discWant := expected(p)
	ps := []probe{
		{"ping", client, []string{"ping", "-c", "3", "-i", "0.2", "-W", "2", gwtest.Server.String()}, []string{" 0% packet loss"}, false},
		// TTL 2 expires at the router's second forwarding (TUN to the
		// outside): the kernel's time-exceeded goes to the external address,
		// through the engine's ICMP error translation, back to the client.
		{"ttl-expiry", client, []string{"ping", "-c", "3", "-i", "0.3", "-t", "2", "-W", "2", gwtest.Server.String()}, []string{"Time to live exceeded"}, true},
		{"udp", client, []string{python, tool, "udp-client", gwtest.Server.String(), "7000", "20"}, []string{"replies 20 mapped " + mapped + ":"}, false},
		{"tcp-download", client, []string{python, tool, "tcp-get", gwtest.Server.String(), "8000", fmt.Sprint(downloadBytes)}, []string{fmt.Sprintf("ok %d", downloadBytes)}, false},
		{"stun", client, []string{"stun", gwtest.Server.String()}, stunWant, true},
		{"natdiscovery", client, []string{"turnutils_natdiscovery", "-m", "-f", "-p", "5478", gwtest.Server.String()}, discWant, false},
	}
	if p.Mapping == nat.MappingEIM {
		ps = append(ps, probe{"hairpin", client, []string{python, tool, "hairpin", gwtest.Server.String(), "7000"}, []string{"hairpin ok from " + mapped + ":"}, false})
	}
	return ps
}

// TestPresets runs every preset as a gateway between namespaces and checks
// ping, TTL expiry, UDP, a TCP download, hairpinning (EIM presets) and the
// classification by Debian's stun client (RFC 3489, against stund) and by
// coturn's turnutils_natdiscovery -m -f (RFC 5780, against turnserver on
// two addresses). One topology per preset; the probes of all presets run
// at once, since most of their time is STUN timeouts.
func TestPresets(t *testing.T) { testPresets(t, 1) }

// TestPresetsSharded runs the same with two shards (two external
// addresses, the client's mappings on its shard's).
func TestPresetsSharded(t *testing.T) { testPresets(t, 2) }

func testPresets(t *testing.T, shards int) {
	spec := gwtest.Spec{Shards: shards}
	if shards > 1 && gateway.ShardOf(gwtest.Client, shards) == gateway.ShardOf(gwtest.Client2, shards) {
		// The hairpin probe talks from Client to Client2's mapping: with
		// shards it must cross them (source by one, destination by the
		// other).
		t.Fatalf("Client and Client2 share shard %d: the hairpin probe would not cross shards", gateway.ShardOf(gwtest.Client, shards))
	}
	presets := nat.Presets()
	if s := os.Getenv("PORTSPACE_GATEWAY_PRESETS"); s != "" {
		var keep []nat.PresetInfo
		for _, p := range presets {
			if strings.Contains(","+s+",", ","+p.Name+",") {
				keep = append(keep, p)
			}
		}
		presets = keep
	}
	type result struct {
		out string
		err error
	}
	topos := make([]*gwtest.Topology, len(presets))
	gws := make([]*gwtest.Gateway, len(presets))
	for i, p := range presets {
		topos[i] = gwtest.New(t, gwtest.Options{})
		servers(t, topos[i])
		sp := spec
		sp.Preset = p.Name
		gws[i] = topos[i].Start(t, sp)
	}
	time.Sleep(300 * time.Millisecond) // the servers bind
	results := make([][]result, len(presets))
	var wg sync.WaitGroup
	for i, p := range presets {
		ps := probes(p, spec)
		results[i] = make([]result, len(ps))
		for j, pr := range ps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := pr.ns(topos[i]).Run(pr.args[0], pr.args[1:]...)
				results[i][j] = result{out, err}
			}()
		}
	}
	wg.Wait()
	for i, p := range presets {
		t.Run(p.Name, func(t *testing.T) {
			for j, pr := range probes(p, spec) {
				r := results[i][j]
				if r.err != nil && !pr.exit {
					t.Errorf("%s: %v", pr.name, r.err)
					continue
				}
				for _, w := range pr.want {
					if !strings.Contains(r.out, w) {
						t.Errorf("%s: output lacks %q:\n%s\nthe router's ICMP counters: %v", pr.name, w, r.out, icmpCounters(t, topos[i].RouterNS))
					}
				}
			}
			st := gws[i].Stats(t)
			if st.WriteErrors != 0 || st.ReadErrors != 0 {
				t.Errorf("TUN errors: %d read, %d write", st.ReadErrors, st.WriteErrors)
			}
			if st.OutForwarded == 0 || st.InForwarded == 0 {
				t.Errorf("no traffic counted: %+v", st.Counters)
			}
			if st.Shards != shards {
				t.Errorf("%d shards, want %d", st.Shards, shards)
			}
			if p.Mapping == nat.MappingEIM && st.Hairpinned == 0 {
				t.Errorf("no hairpinned packets counted")
			}
			if len(gws[i].Sessions(t)) == 0 {
				t.Errorf("no sessions listed")
			}
			// No packet went from the TUN back into the TUN (a hairpin
			// across shards is translated by both shards in user space):
			// the kernel sends an ICMP redirect for each such packet, and
			// the redirects suppress the ICMP errors (TTL expiry) to the
			// same external address for a second.
			if c := icmpCounters(t, topos[i].RouterNS); c["IcmpOutRedirects"] != 0 {
				t.Errorf("the router sent ICMP redirects: %v", c)
			}
		})
	}
}

// icmpCounters returns the non-zero IPv4 ICMP counters of ns (nstat).
func icmpCounters(tb testing.TB, ns *netnstest.NS) map[string]uint64 {
	tb.Helper()
	out, err := ns.Run("nstat", "-asz")
	if err != nil {
		tb.Fatalf("nstat: %v\n%s", err, out)
	}
	m := map[string]uint64{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || !strings.HasPrefix(f[0], "Icmp") || strings.HasPrefix(f[0], "Icmp6") {
			continue
		}
		if n, err := strconv.ParseUint(f[1], 10, 64); err == nil && n > 0 {
			m[f[0]] = n
		}
	}
	return m
}
