package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/dial"
	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/lease/leasetest"
)

// openEtcdStore opens a store on a real etcd cluster under prefix.
func openEtcdStore(t *testing.T, c *leasetest.Etcd, prefix string) *lease.EtcdStore {
	t.Helper()
	loc, err := lease.ParseURL(c.URL(prefix))
	if err != nil {
		t.Fatal(err)
	}
	st, err := lease.OpenEtcd(context.Background(), loc, lease.EtcdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// remotePort parses the origin's "hello from O to CLIENT path P" answer
// and returns the client (egress) address the origin saw.
func remotePort(t *testing.T, out string) netip.AddrPort {
	t.Helper()
	_, rest, ok := strings.Cut(out, " to ")
	if !ok {
		t.Fatalf("origin answer %q", out)
	}
	from, _, _ := strings.Cut(rest, " ")
	ap, err := netip.ParseAddrPort(from)
	if err != nil {
		t.Fatalf("origin answer %q: %v", out, err)
	}
	return ap
}

// heldOf returns the slices eg holds of pool.
func heldOf(eg *LeaseEgress, pool string) []lease.Lease {
	var out []lease.Lease
	for _, l := range eg.Held() {
		if l.Pool == pool {
			out = append(out, l)
		}
	}
	return out
}

// TestEtcdLeaseEgress runs the egress-from-leases behaviour the bolt tests
// prove against a real etcd server on loopback, with curl as the client:
// the proxy claims a slice of the pool whose traits the username asks for,
// the origin sees a source port of that slice, a full slice makes it claim
// another of the same pool, a pool used up answers SOCKS X'01' (curl fails)
// and HTTP 503, and a lease lost in etcd stops dials from its slice.
func TestEtcdLeaseEgress(t *testing.T) {
	c := leasetest.StartEtcd(t, 1)
	pools := []lease.Pool{
		{Name: "de", Addrs: []netip.Addr{lo1}, Traits: map[string]string{"geo": "de"}, Ports: rangePorts(23800, 23807), Slice: 4, Quarantine: time.Minute},
		{Name: "fr", Addrs: []netip.Addr{lo1}, Traits: map[string]string{"geo": "fr"}, Ports: rangePorts(23820, 23823), Slice: 4, Quarantine: time.Minute},
	}
	st := openEtcdStore(t, c, "proxy-egress")
	if err := st.Apply(context.Background(), pools); err != nil {
		t.Fatal(err)
	}
	eg := &LeaseEgress{Store: st, Holder: "host-a", Pools: pools, Strategy: dial.Search}
	p := startProxy(t, "users: [{name: u, password: pw}]", eg)
	o := startOrigin(t, "127.0.0.10")
	url := fmt.Sprintf("http://%s/etcd", o.addr)
	socks := func(traits string) string { return "socks5://u," + traits + ":pw@" + p.addr.String() }
	httpx := func(traits string) string { return "http://u," + traits + ":pw@" + p.addr.String() }
	inSlice := func(what string, ap netip.AddrPort, l lease.Lease) {
		t.Helper()
		if ap.Addr() != l.Addr || !l.Ports.Contains(ap.Port()) {
			t.Fatalf("%s: the origin saw %v, want %v with a port of slice %s (%s)", what, ap, l.Addr, l.ID, l.Ports)
		}
	}

	// A first request per trait claims a slice of the matching pool in
	// etcd; the origin sees a port of it.
	for _, tr := range []struct{ traits, pool, proxy string }{
		{"geo=fr", "fr", socks("geo=fr")},
		{"geo=de", "de", httpx("geo=de")},
	} {
		out, code := curl(t, "-x", tr.proxy, url)
		if code != 0 {
			t.Fatalf("curl %s: exit %d: %s", tr.traits, code, out)
		}
		held := heldOf(eg, tr.pool)
		if len(held) != 1 {
			t.Fatalf("after a %s request the proxy holds %v of pool %s, want one slice", tr.traits, held, tr.pool)
		}
		inSlice("curl "+tr.traits, remotePort(t, out), held[0])
	}
	// etcd (through another client) shows the grants under our holder.
	other := openEtcdStore(t, c, "proxy-egress")
	ls, err := other.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ours int
	for _, l := range ls {
		if l.State == lease.Held && l.Holder == "host-a" {
			ours++
		}
	}
	if ours != 2 {
		t.Fatalf("etcd lists %d slices held by host-a, want 2: %v", ours, ls)
	}

	// Fill the de slice toward a second origin with open tunnels: the next
	// request (curl) is served from a second de slice claimed in etcd.
	o2 := startOrigin(t, "127.0.0.11")
	url2 := fmt.Sprintf("http://%s/full", o2.addr)
	first := heldOf(eg, "de")[0]
	for i := range 4 {
		tc, rep, bnd, err := socksDial(t, p.addr, "u,geo=de", "pw", cmdConnect, addrBytes(o2.addr))
		if err != nil || rep != 0 {
			t.Fatalf("tunnel %d: reply %d err %v", i, rep, err)
		}
		t.Cleanup(func() { tc.Close() })
		if !first.Ports.Contains(bnd.Port()) {
			t.Fatalf("tunnel %d from %v, want the first de slice %s", i, bnd, first.Ports)
		}
	}
	out, code := curl(t, "-x", socks("geo=de"), url2)
	if code != 0 {
		t.Fatalf("curl with the first de slice full: exit %d: %s", code, out)
	}
	de := heldOf(eg, "de")
	if len(de) != 2 {
		t.Fatalf("holds %v of pool de, want two slices", de)
	}
	second := de[0]
	if second.ID == first.ID {
		second = de[1]
	}
	inSlice("curl with the first slice full", remotePort(t, out), second)

	// Fill the one fr slice toward the second origin: the pool is used up.
	for i := range 4 {
		tc, rep, _, err := socksDial(t, p.addr, "u,geo=fr", "pw", cmdConnect, addrBytes(o2.addr))
		if err != nil || rep != 0 {
			t.Fatalf("fr tunnel %d: reply %d err %v", i, rep, err)
		}
		t.Cleanup(func() { tc.Close() })
	}
	if out, code := curl(t, "-x", socks("geo=fr"), url2); code == 0 {
		t.Fatalf("curl through a used-up pool got through: %s", out)
	}
	p.waitCount("socks5", resultExhausted, 1)
	if out, _ := curl(t, "-x", httpx("geo=fr"), "-o", "/dev/null", "-w", "%{http_code}", url2); out != "503" {
		t.Fatalf("HTTP through a used-up pool: %q, want 503", out)
	}
	// Toward the first origin the fr slice still has free ports.
	if out, code := curl(t, "-x", socks("geo=fr"), url); code != 0 {
		t.Fatalf("curl geo=fr toward the first origin: exit %d: %s", code, out)
	}

	// The fr grant ends in etcd behind the proxy's back (another client
	// releases it by its token, as an expiry would end it). The next Tick
	// finds it lost; no dial uses the slice again, and the pool's only
	// slice is in quarantine, so the request is refused instead.
	fr := heldOf(eg, "fr")[0]
	if err := other.Release(context.Background(), fr); err != nil {
		t.Fatal(err)
	}
	eg.Tick(context.Background())
	if h := heldOf(eg, "fr"); len(h) != 0 {
		t.Fatalf("after the loss the proxy still holds %v", h)
	}
	if out, _ := curl(t, "-x", httpx("geo=fr"), "-o", "/dev/null", "-w", "%{http_code}", url); out != "503" {
		t.Fatalf("HTTP geo=fr after the lease was lost: %q, want 503 (no dial from the lost slice)", out)
	}
	// The de slices were renewed by the same Tick and still serve.
	out, code = curl(t, "-x", socks("geo=de"), url)
	if code != 0 {
		t.Fatalf("curl geo=de after the Tick: exit %d: %s", code, out)
	}
	if ap := remotePort(t, out); !first.Ports.Contains(ap.Port()) && !second.Ports.Contains(ap.Port()) {
		t.Fatalf("geo=de after the Tick from %v, outside both de slices", ap)
	}
}
