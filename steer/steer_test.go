package steer

import (
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/tuple"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func held(id, addr, ports, host string) lease.Lease {
	l := lease.Lease{ID: id, Pool: "p", Addr: netip.MustParseAddr(addr), Ports: tuple.MustParsePortSet(ports),
		Holder: "h-" + host, Token: 1, Expires: t0.Add(time.Minute), State: lease.Held}
	if host != "" {
		l.Host = netip.MustParseAddr(host)
	}
	return l
}

// fixture is a store listing: two hosts holding contiguous slices of one
// address (two adjacent slices of one host merge in the nft map), a PSID
// slice, an IPv6 slice, and leases that must not be steered: free,
// quarantined, held but past its expiry, held without a host.
func fixture() []lease.Lease {
	ls := []lease.Lease{
		held("de/192.0.2.10/1", "192.0.2.10", "2048-3071", "10.0.1.2"),
		held("de/192.0.2.10/0", "192.0.2.10", "1024-2047", "10.0.1.2"),
		held("de/192.0.2.10/2", "192.0.2.10", "3072-4095", "10.0.2.2"),
		held("de/192.0.2.10/5", "192.0.2.10", "6144-7167", ""),
		held("psid/192.0.2.20/3", "192.0.2.20", "a=4,k=4,psid=3", "10.0.2.2"),
		held("v6/2001:db8::10/0", "2001:db8::10", "40000-40999", "fd00:1::2"),
	}
	free := held("de/192.0.2.10/3", "192.0.2.10", "4096-5119", "")
	free.State, free.Holder, free.Token = lease.Free, "", 0
	q := held("de/192.0.2.10/4", "192.0.2.10", "5120-6143", "10.0.1.2")
	q.State = lease.Quarantined
	late := held("de/192.0.2.11/0", "192.0.2.11", "1024-2047", "10.0.1.2")
	late.Expires = t0
	return append(ls, free, q, late)
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./steer -run Golden -update)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from the golden file; got:\n%s", name, got)
	}
}

func TestRenderGolden(t *testing.T) {
	p, err := NewPlan(fixture(), t0, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]Format{"ip.golden": FormatIP, "nft.golden": FormatNFT, "nft-ip.golden": FormatNFTIP, "hosts.golden": FormatHosts} {
		out, err := Render(p, f)
		if err != nil {
			t.Fatal(err)
		}
		golden(t, name, out)
	}
}

func TestPlanSelectsHeldLive(t *testing.T) {
	p, err := NewPlan(fixture(), t0, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range p.Slices {
		ids = append(ids, s.ID)
	}
	want := []string{"de/192.0.2.10/0", "de/192.0.2.10/1", "de/192.0.2.10/2", "psid/192.0.2.20/3", "v6/2001:db8::10/0"}
	if len(ids) != len(want) {
		t.Fatalf("steered %v, want %v", ids, want)
	}
	for i := range ids {
		if ids[i] != want[i] {
			t.Fatalf("steered %v, want %v", ids, want)
		}
	}
	if len(p.Skipped) != 1 || p.Skipped[0] != "de/192.0.2.10/5" {
		t.Errorf("skipped %v, want the hostless lease", p.Skipped)
	}
	// Every listed address gets a catch-all, held or not.
	if len(p.Shared) != 4 {
		t.Errorf("shared %v, want 4 addresses", p.Shared)
	}
	// The PSID slice (a=4: 15 ranges) gives 15 ranges x 2 protocols rules.
	n := 0
	for _, r := range p.Rules(FormIP) {
		if r.Dst.Addr() == netip.MustParseAddr("192.0.2.20") && r.Dport.IsValid() {
			n++
		}
	}
	if n != 30 {
		t.Errorf("PSID slice has %d rules, want 30", n)
	}
}

func TestPlanKeepsTables(t *testing.T) {
	ls := []lease.Lease{
		held("a/0", "192.0.2.10", "1024-2047", "10.0.1.2"),
		held("a/1", "192.0.2.10", "2048-3071", "10.0.2.2"),
	}
	p, err := NewPlan(ls, t0, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Hosts[0].Table != DefaultTableBase+1 || p.Hosts[1].Table != DefaultTableBase+2 {
		t.Fatalf("tables %d %d", p.Hosts[0].Table, p.Hosts[1].Table)
	}
	// 10.0.1.2 leaves; 10.0.0.2 (which sorts first) arrives: 10.0.2.2
	// keeps its table and the newcomer takes the free one.
	ls = []lease.Lease{ls[1], held("a/2", "192.0.2.10", "3072-4095", "10.0.0.2")}
	keep := map[netip.Addr]uint32{netip.MustParseAddr("10.0.2.2"): DefaultTableBase + 2}
	p, err = NewPlan(ls, t0, Options{}, keep)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint32{}
	for _, h := range p.Hosts {
		got[h.Addr.String()] = h.Table
	}
	if got["10.0.2.2"] != DefaultTableBase+2 || got["10.0.0.2"] != DefaultTableBase+1 {
		t.Errorf("tables %v", got)
	}
}

func TestPlanErrors(t *testing.T) {
	over := []lease.Lease{
		held("a/0", "192.0.2.10", "1024-2047", "10.0.1.2"),
		held("b/0", "192.0.2.10", "2000-2100", "10.0.2.2"),
	}
	if _, err := NewPlan(over, t0, Options{}, nil); !errors.Is(err, ErrOverlap) {
		t.Errorf("overlap: %v", err)
	}
	psid := []lease.Lease{
		held("a/0", "192.0.2.10", "a=6,k=6,psid=1", "10.0.1.2"),
		held("a/1", "192.0.2.10", "a=6,k=6,psid=2", "10.0.1.2"),
		held("b/0", "192.0.2.10", "1040", "10.0.2.2"), // port 1040 = A 1, PSID 1, j 0
	}
	if _, err := NewPlan(psid, t0, Options{}, nil); !errors.Is(err, ErrOverlap) {
		t.Errorf("PSID overlap: %v", err)
	}
	if _, err := NewPlan(psid[:2], t0, Options{}, nil); err != nil {
		t.Errorf("disjoint PSID slices: %v", err)
	}
	fam := []lease.Lease{held("a/0", "192.0.2.10", "1024-2047", "fd00::2")}
	if _, err := NewPlan(fam, t0, Options{}, nil); !errors.Is(err, ErrFamily) {
		t.Errorf("family: %v", err)
	}
	many := []lease.Lease{
		held("a/0", "192.0.2.10", "1024-2047", "10.0.1.2"),
		held("a/1", "192.0.2.10", "2048-3071", "10.0.2.2"),
	}
	if _, err := NewPlan(many, t0, Options{MaxHosts: 1}, nil); !errors.Is(err, ErrTooManyHosts) {
		t.Errorf("hosts: %v", err)
	}
	for _, o := range []Options{{Priority: 32700}, {TableBase: 200, MaxHosts: 100}, {NFTable: "bad name"}, {HostLink: "averyveryverylongname"}} {
		if _, err := NewPlan(nil, t0, o, nil); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}

func TestParseFormAndFormat(t *testing.T) {
	for _, s := range []string{"ip", "nft"} {
		f, err := ParseForm(s)
		if err != nil || f.String() != s {
			t.Errorf("ParseForm(%q) = %v, %v", s, f, err)
		}
	}
	if _, err := ParseForm("iptables"); err == nil {
		t.Error("ParseForm accepted iptables")
	}
	for _, s := range []string{"ip", "nft", "nft-ip", "hosts"} {
		if _, err := ParseFormat(s); err != nil {
			t.Errorf("ParseFormat(%q): %v", s, err)
		}
	}
	if _, err := ParseFormat("json"); err == nil {
		t.Error("ParseFormat accepted json")
	}
}
