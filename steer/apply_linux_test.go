package steer

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/lease"
)

// gatewayNS creates a namespace in which the fixture's hosts (10.0.0.0/16,
// fd00::/16) are on-link, on a veth pair (the kernel may lack dummy links), so routes via them are accepted.
func gatewayNS(t *testing.T) *netnstest.NS {
	t.Helper()
	ns := netnstest.New(t)
	ns.MustRun(t, "ip", "link", "add", "name", "va", "type", "veth", "peer", "name", "vb")
	ns.MustRun(t, "ip", "link", "set", "va", "up")
	ns.MustRun(t, "ip", "link", "set", "vb", "up")
	ns.MustRun(t, "ip", "addr", "add", "10.0.0.1/16", "dev", "va")
	ns.MustRun(t, "ip", "-6", "addr", "add", "fd00::1/16", "dev", "va", "nodad")
	return ns
}

func nsPath(ns *netnstest.NS) string { return filepath.Join("/run/netns", ns.Name) }

func openGW(t *testing.T, ns *netnstest.NS) *Gateway {
	t.Helper()
	g, err := OpenGateway(nsPath(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// routing returns the namespace's rules and the routes of every table, as
// ip(8) prints them.
func routing(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"-4", "rule", "show"}, {"-6", "rule", "show"},
		{"-4", "route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"},
	} {
		out := ns.MustRun(t, "ip", args...)
		for _, line := range strings.Split(out, "\n") {
			// Kernel-made routes (local, link-local, multicast) are the same
			// in both namespaces; keep the owned tables and rules.
			if strings.Contains(line, "table 23") || strings.Contains(line, "lookup 23") || strings.Contains(line, "goto 23") {
				b.WriteString(line + "\n")
			}
		}
	}
	return b.String()
}

func runScript(t *testing.T, ns *netnstest.NS, script []byte, prog string, args ...string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(f, script, 0o644); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, prog, append(args, f)...)
}

// TestApplyMatchesRenderIP applies the fixture's FormIP plan through
// netlink in one namespace and runs the rendered ip commands in another:
// both hold the same rules and routes, and a second Apply changes nothing.
func TestApplyMatchesRenderIP(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireCommand(t, "ip")
	p, err := NewPlan(fixture(), t0, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b := gatewayNS(t), gatewayNS(t)
	g := openGW(t, a)
	st, err := g.Apply(p, FormIP)
	if err != nil {
		t.Fatal(err)
	}
	rules := len(p.Rules(FormIP))
	if st.RulesAdded != rules || st.RoutesAdded != len(p.Routes()) || st.RulesDeleted != 0 {
		t.Errorf("first apply %+v, want %d rules and %d routes added", st, rules, len(p.Routes()))
	}
	out, _ := Render(p, FormatIP)
	runScript(t, b, out, "sh", "-e")
	if ga, gb := routing(t, a), routing(t, b); ga != gb {
		t.Errorf("netlink apply and rendered commands differ:\napply:\n%s\nrender:\n%s", ga, gb)
	} else if strings.Count(ga, "\n") != rules+len(p.Routes()) {
		t.Errorf("%d owned lines, want %d:\n%s", strings.Count(ga, "\n"), rules+len(p.Routes()), ga)
	}
	st, err = g.Apply(p, FormIP)
	if err != nil || st.Changed() {
		t.Errorf("second apply changed %+v (%v)", st, err)
	}
	// The running gateway reports each host's table.
	tables, err := g.Tables(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range p.Hosts {
		if tables[h.Addr] != h.Table {
			t.Errorf("Tables()[%s] = %d, want %d", h.Addr, tables[h.Addr], h.Table)
		}
	}
}

// TestApplyMatchesRenderNFT does the same for FormNFT: the table applied
// through nf_tables lists exactly as the rendered file loaded with nft -f,
// which nft -c accepts; the companion rules and routes match too.
func TestApplyMatchesRenderNFT(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireCommand(t, "nft")
	p, err := NewPlan(fixture(), t0, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b := gatewayNS(t), gatewayNS(t)
	g := openGW(t, a)
	st, err := g.Apply(p, FormNFT)
	if err != nil {
		t.Fatal(err)
	}
	if !st.NFT || st.RulesAdded != len(p.Rules(FormNFT)) {
		t.Errorf("first apply %+v", st)
	}
	file, _ := Render(p, FormatNFT)
	runScript(t, b, file, "nft", "-c", "-f")
	runScript(t, b, file, "nft", "-f")
	runScript(t, b, file, "nft", "-f") // the file replaces the table: loading it twice works
	ipcmds, _ := Render(p, FormatNFTIP)
	runScript(t, b, ipcmds, "sh", "-e")
	la := a.MustRun(t, "nft", "list", "table", "inet", DefaultNFTable)
	lb := b.MustRun(t, "nft", "list", "table", "inet", DefaultNFTable)
	if la != lb {
		t.Errorf("nf_tables apply and nft -f differ:\napply:\n%s\nnft -f:\n%s", la, lb)
	}
	if !strings.Contains(la, "3072 comment \"host_2 10.0.2.2\" : goto host_2") || !strings.Contains(la, "udp dport & 64512 vmap @ports_0") {
		t.Errorf("listing lacks a slice:\n%s", la)
	}
	if ga, gb := routing(t, a), routing(t, b); ga != gb {
		t.Errorf("rules and routes differ:\napply:\n%s\nrender:\n%s", ga, gb)
	}
	st, err = g.Apply(p, FormNFT)
	if err != nil || st.Changed() {
		t.Errorf("second apply changed %+v (%v)", st, err)
	}
	// Switching to FormIP removes the fwmark rules and the table.
	st, err = g.Apply(p, FormIP)
	if err != nil || !st.NFT || st.RulesDeleted != len(p.Rules(FormNFT))-len(p.Shared) {
		t.Errorf("switch to ip: %+v (%v)", st, err)
	}
	if out, err := a.Run("nft", "list", "table", "inet", DefaultNFTable); err == nil {
		t.Errorf("table still there after switching to ip:\n%s", out)
	}
}

// TestApplyReconciles moves a slice to another host and lets one expire:
// Apply removes exactly their old rules, keeps the others, and leaves
// routing configuration it does not own alone.
func TestApplyReconciles(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := gatewayNS(t)
	ns.MustRun(t, "ip", "rule", "add", "priority", "23100", "to", "192.0.2.10", "lookup", "100")
	ns.MustRun(t, "ip", "rule", "add", "priority", "22999", "to", "192.0.2.10", "lookup", "23001")
	ns.MustRun(t, "ip", "route", "add", "unreachable", "default", "table", "100")
	ns.MustRun(t, "ip", "route", "add", "unreachable", "default", "table", "24000")
	ns.MustRun(t, "nft", "add", "table", "inet", "other")
	// A stray route in an owned table is removed.
	ns.MustRun(t, "ip", "route", "add", "unreachable", "198.51.100.0/24", "table", "23005")
	g := openGW(t, ns)
	ls := []lease.Lease{
		held("a/0", "192.0.2.10", "1024-2047", "10.0.1.2"),
		held("a/1", "192.0.2.10", "2048-3071", "10.0.2.2"),
		held("a/2", "192.0.2.10", "3072-4095", "10.0.2.2"),
	}
	for _, f := range []Form{FormIP, FormNFT} {
		p, err := NewPlan(ls, t0, Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := g.Apply(p, f); err != nil {
			t.Fatal(err)
		}
		moved := append([]lease.Lease(nil), ls...)
		moved[0].Host = netip.MustParseAddr("10.0.2.2") // a/0 moves to host 2
		moved[2].Expires = t0                           // a/2 expires
		keep, err := g.Tables(Options{})
		if err != nil {
			t.Fatal(err)
		}
		p2, err := NewPlan(moved, t0, Options{}, keep)
		if err != nil {
			t.Fatal(err)
		}
		if p2.Hosts[0].Table != DefaultTableBase+2 {
			t.Errorf("%v: host 2 did not keep its table: %+v", f, p2.Hosts)
		}
		st, err := g.Apply(p2, f)
		if err != nil {
			t.Fatal(err)
		}
		got := routing(t, ns)
		switch f {
		case FormIP:
			// 0-2047 and 2048-3071 merge into one host-2 range.
			if st.RulesAdded != 2 || st.RulesDeleted != 4 || st.RoutesDeleted != 1 {
				t.Errorf("ip: %+v", st)
			}
			if !strings.Contains(got, "dport 1024-3071 lookup 23002") || strings.Contains(got, "3072-4095") || strings.Contains(got, "lookup 23001") && !strings.Contains(got, "22999:") {
				t.Errorf("ip: after the move:\n%s", got)
			}
		case FormNFT:
			l := ns.MustRun(t, "nft", "list", "table", "inet", DefaultNFTable)
			if !strings.Contains(l, "1024 comment \"host_2 10.0.2.2\" : goto host_2") || !strings.Contains(l, "2048 comment \"host_2 10.0.2.2\" : goto host_2") ||
				strings.Contains(l, "3072") || strings.Contains(l, "host_1") {
				t.Errorf("nft: after the move:\n%s", l)
			}
			if !st.NFT || st.RulesDeleted != 1 {
				t.Errorf("nft: %+v", st)
			}
		}
	}
	if _, err := g.Clear(Options{}); err != nil {
		t.Fatal(err)
	}
	if got := routing(t, ns); got != "" {
		// Only the foreign rule at 22999 (lookup 23001) may remain.
		if strings.TrimSpace(got) != "22999:\tfrom all to 192.0.2.10 lookup 23001" {
			t.Errorf("after Clear:\n%s", got)
		}
	}
	all := ns.MustRun(t, "ip", "rule", "show") + ns.MustRun(t, "ip", "route", "show", "table", "all") + ns.MustRun(t, "nft", "list", "tables")
	for _, want := range []string{"23100:", "22999:", "unreachable default table 100", "unreachable default table 24000", "table inet other"} {
		if !strings.Contains(all, want) {
			t.Errorf("foreign %q was touched:\n%s", want, all)
		}
	}
	if strings.Contains(all, "198.51.100.0/24") {
		t.Errorf("stray route in an owned table survived Clear")
	}
}

// applyAndScript applies p with Apply (nf_tables over netlink) in one new
// gateway namespace and its rendered nft file with nft -f in another, fails
// the test if the two tables list differently, and returns the first
// namespace's gateway and listing.
func applyAndScript(t *testing.T, p Plan) (*Gateway, string) {
	t.Helper()
	a, b := gatewayNS(t), gatewayNS(t)
	g := openGW(t, a)
	if _, err := g.Apply(p, FormNFT); err != nil {
		t.Fatal(err)
	}
	file, _ := Render(p, FormatNFT)
	runScript(t, b, file, "nft", "-f")
	la := a.MustRun(t, "nft", "list", "table", "inet", DefaultNFTable)
	if lb := b.MustRun(t, "nft", "list", "table", "inet", DefaultNFTable); la != lb {
		if n := strings.Count(la, "\n"); n > 200 {
			t.Errorf("nf_tables apply and nft -f differ (%d and %d lines)", n, strings.Count(lb, "\n"))
		} else {
			t.Errorf("nf_tables apply and nft -f differ:\napply:\n%s\nnft -f:\n%s", la, lb)
		}
	}
	return g, la
}

// TestApplyNFT1000 applies 1,000 slices of 100 hosts in FormNFT: the
// table lists exactly as the rendered file loaded with nft -f (all 1,000
// elements: they span many netlink messages), and a second Apply finds
// nothing to change.
func TestApplyNFT1000(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireCommand(t, "nft")
	p, err := NewPlan(manySlices(1000, 100), t0, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g, la := applyAndScript(t, p)
	if n := strings.Count(la, ": goto host_"); n != 1000 {
		t.Errorf("%d map elements, want 1000", n)
	}
	if st, err := g.Apply(p, FormNFT); err != nil || st.Changed() {
		t.Errorf("second apply changed %+v (%v)", st, err)
	}
}

// TestApplyNFTEdges applies slices at both ends of the port space (the
// interval ending at 65535 has no end element), once aligned on 1,024-port
// blocks (a hash map keyed by dport & 0xfc00, listed as 64512) and once not aligned and too
// many ports for blocks (an interval map): the table lists as nft -f makes
// it, and a second Apply changes nothing.
func TestApplyNFTEdges(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireCommand(t, "nft")
	for _, c := range []struct {
		name, lo, hi string
		want         []string
	}{
		{"hash", "0-1023", "64512-65535", []string{"{ 0 comment \"host_1 10.0.1.2\" : goto host_1,", "64512 comment \"host_2 10.0.2.2\" : goto host_2 }", "dport & 64512 vmap"}},
		{"interval", "0-4999", "60001-65535", []string{"0-4999 comment", "60001-65535 comment", "flags interval", "dport vmap"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ls := []lease.Lease{
				held("e/0", "192.0.2.10", c.lo, "10.0.1.2"),
				held("e/1", "192.0.2.10", c.hi, "10.0.2.2"),
				held("e/2", "192.0.2.10", "65000", "10.0.1.2"), // inside e/1: refused below
			}
			if _, err := NewPlan(ls, t0, Options{}, nil); err == nil {
				t.Fatal("a port inside another slice was accepted")
			}
			p, err := NewPlan(ls[:2], t0, Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			g, la := applyAndScript(t, p)
			for _, w := range c.want {
				if !strings.Contains(la, w) {
					t.Errorf("listing lacks %q:\n%s", w, la)
				}
			}
			if st, err := g.Apply(p, FormNFT); err != nil || st.Changed() {
				t.Errorf("second apply changed %+v (%v)", st, err)
			}
		})
	}
}

// TestApplyNFTElementsOnly moves and expires slices while the same hosts
// stay, so that only the map's elements change (the chains, marks and
// rules stay): Apply must notice and replace the table, and a second
// Apply must find nothing to change.
func TestApplyNFTElementsOnly(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireCommand(t, "nft")
	ns := gatewayNS(t)
	g := openGW(t, ns)
	ls := []lease.Lease{
		held("a/0", "192.0.2.10", "1024-2047", "10.0.1.2"),
		held("a/1", "192.0.2.10", "2048-3071", "10.0.2.2"),
		held("a/2", "192.0.2.10", "3072-4095", "10.0.1.2"),
		held("a/3", "192.0.2.10", "4096-5119", "10.0.1.2"),
	}
	p, err := NewPlan(ls, t0, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Apply(p, FormNFT); err != nil {
		t.Fatal(err)
	}
	moved := append([]lease.Lease(nil), ls...)
	moved[0].Host = netip.MustParseAddr("10.0.2.2") // a/0 moves to host 2
	moved[2].Expires = t0                           // a/2 expires; host 1 keeps a/3
	keep, err := g.Tables(Options{})
	if err != nil {
		t.Fatal(err)
	}
	p2, err := NewPlan(moved, t0, Options{}, keep)
	if err != nil {
		t.Fatal(err)
	}
	st, err := g.Apply(p2, FormNFT)
	if err != nil {
		t.Fatal(err)
	}
	if !st.NFT {
		t.Errorf("Apply after a move within the same hosts changed nothing: %+v", st)
	}
	l := ns.MustRun(t, "nft", "list", "table", "inet", DefaultNFTable)
	if !strings.Contains(l, "1024 comment \"host_2 10.0.2.2\" : goto host_2") ||
		!strings.Contains(l, "2048 comment \"host_2 10.0.2.2\" : goto host_2") ||
		!strings.Contains(l, "4096 comment \"host_1 10.0.1.2\" : goto host_1") ||
		strings.Contains(l, "3072") {
		t.Errorf("after the move:\n%s", l)
	}
	if st, err := g.Apply(p2, FormNFT); err != nil || st.NFT {
		t.Errorf("second Apply: %+v, %v; want no change", st, err)
	}
	// Only the hash map's mask changes: a slice of 1,024 ports at 1024
	// (key 1024, mask 0xfc00) shrinks to 64 ports (key 1024, mask 0xffc0).
	for _, ports := range []string{"1024-2047", "1024-1087"} {
		p, err := NewPlan([]lease.Lease{held("m/0", "192.0.2.10", ports, "10.0.1.2")}, t0, Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st, err := g.Apply(p, FormNFT); err != nil || !st.NFT {
			t.Errorf("Apply of %s: %+v, %v; want the table replaced", ports, st, err)
		}
	}
	if l := ns.MustRun(t, "nft", "list", "table", "inet", DefaultNFTable); !strings.Contains(l, "dport & 65472 vmap") {
		t.Errorf("the mask did not change:\n%s", l)
	}
}
