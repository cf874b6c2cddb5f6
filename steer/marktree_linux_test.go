package steer

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/tuple"
)

// TestMarkTreeSteers applies a FormNFT plan of 1,000 slices held by 101
// hosts (seven mark groups) and checks, with the kernel's own rule walk,
// that replies reach their owners: "ip route get" with each of the 101
// hosts' marks gives that host's route, and UDP datagrams from the
// internet namespace to the first and last port of each slice of three
// real hosts (tables 1, 16 and 101: the first host, the first of the
// second group, the last host; their slices at the start, middle and end
// of the map, next to other hosts' slices) arrive at the owner's socket and
// at no other host's. The same holds after the rules are re-applied in
// reverse order within each priority (the kernel keeps rules of one
// priority in the order they were added).
func TestMarkTreeSteers(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireCommand(t, "ip")
	netnstest.RequireCommand(t, "nft")
	f := newFleet(t, 3)
	f.gw.MustRun(t, "ip", "addr", "add", "10.0.0.1/24", "dev", "h1") // the 98 other hosts, on-link
	real := []netip.Addr{hostAddr(0), hostAddr(1), hostAddr(2)}
	keep := map[netip.Addr]uint32{real[0]: DefaultTableBase + 1, real[1]: DefaultTableBase + 16, real[2]: DefaultTableBase + 101}
	owner := map[int]int{0: 0, 1: 2, 500: 1, 501: 0, 998: 1, 999: 2} // slice -> real host
	var ls []lease.Lease
	for i := range 1000 {
		host := netip.AddrFrom4([4]byte{10, 0, 0, byte(3 + i%98)})
		if r, ok := owner[i]; ok {
			host = real[r]
		}
		lo := uint16(1024 + 64*i)
		ls = append(ls, lease.Lease{ID: fmt.Sprintf("de/192.0.2.10/%d", i), Pool: "de", Addr: shared,
			Ports: tuple.PortSetOf(tuple.PortRangeFrom(lo, lo+63)), Holder: host.String(), Host: host,
			Token: 1, Expires: t0.Add(time.Hour), State: lease.Held})
	}
	p, err := NewPlan(ls, t0, Options{}, keep)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Hosts) != 101 {
		t.Fatalf("%d hosts, want 101", len(p.Hosts))
	}
	for _, h := range real {
		if err := HoldShared(nsPath(f.hosts[h.As4()[2]-1]), Options{}, []netip.Addr{shared}); err != nil {
			t.Fatal(err)
		}
	}
	// Every real host listens on every tested port; only the owner may
	// receive.
	type probe struct {
		port  uint16
		owner int
	}
	var probes []probe
	for i, r := range owner {
		lo := uint16(1024 + 64*i)
		probes = append(probes, probe{lo, r}, probe{lo + 63, r})
	}
	got := make(chan [2]int, 64) // {probe index, host}
	for hi := range real {
		for pi, pr := range probes {
			var pc net.PacketConn
			if err := inNS(t, nsPath(f.hosts[hi]), func() (err error) {
				pc, err = net.ListenPacket("udp", netip.AddrPortFrom(shared, pr.port).String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 64)
				for {
					if _, _, err := pc.ReadFrom(buf); err != nil {
						return
					}
					got <- [2]int{pi, hi}
				}
			}()
		}
	}
	var c *net.UDPConn
	if err := inNS(t, nsPath(f.inet), func() (err error) {
		c, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(203, 0, 113, 2)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g := openGW(t, f.gw)
	check := func(round string) {
		t.Helper()
		var batch strings.Builder
		for _, h := range p.Hosts {
			fmt.Fprintf(&batch, "route get %s mark %#x\n", shared, h.Mark)
		}
		var out []string // one line per route, without the "cache" lines
		for _, l := range runBatch(t, f.gw, batch.String()) {
			if strings.HasPrefix(l, shared.String()+" ") {
				out = append(out, l)
			}
		}
		for i, h := range p.Hosts {
			if i >= len(out) || !strings.Contains(out[i], "via "+h.Addr.String()+" ") {
				t.Fatalf("%s: route get with mark %#x (host %s): %q", round, h.Mark, h.Addr, out[min(i, len(out)-1)])
			}
		}
		for try := 0; ; try++ { // the first datagrams may wait for ARP
			seen := map[[2]int]bool{}
			for _, pr := range probes {
				c.WriteToUDPAddrPort([]byte(round), netip.AddrPortFrom(shared, pr.port))
			}
			deadline := time.After(500 * time.Millisecond)
		collect:
			for {
				select {
				case x := <-got:
					seen[x] = true
				case <-deadline:
					break collect
				}
			}
			missing := 0
			for pi, pr := range probes {
				for hi := range real {
					if seen[[2]int{pi, hi}] && hi != pr.owner {
						t.Fatalf("%s: port %d (owner %s) reached %s", round, pr.port, real[pr.owner], real[hi])
					}
				}
				if !seen[[2]int{pi, pr.owner}] {
					missing++
					if try == 4 {
						t.Errorf("%s: port %d did not reach its owner %s", round, pr.port, real[pr.owner])
					}
				}
			}
			if missing == 0 || try == 4 {
				return
			}
		}
	}
	if _, err := g.Apply(p, FormNFT); err != nil {
		t.Fatal(err)
	}
	check("applied")
	// Re-add the fwmark rules in reverse order within each priority.
	rs := p.Rules(FormNFT)
	var del, add strings.Builder
	for _, r := range rs {
		if r.Mask != 0 {
			fmt.Fprintf(&del, "rule del priority %d fwmark %#x/%#x\n", r.Priority, r.Mark, r.Mask)
		}
	}
	for i := len(rs) - 1; i >= 0; i-- {
		if r := rs[i]; r.Mask != 0 {
			action := fmt.Sprintf("lookup %d", r.Table)
			if r.Goto != 0 {
				action = fmt.Sprintf("goto %d", r.Goto)
			}
			fmt.Fprintf(&add, "rule add priority %d fwmark %#x/%#x %s\n", r.Priority, r.Mark, r.Mask, action)
		}
	}
	runBatch(t, f.gw, del.String())
	runBatch(t, f.gw, add.String())
	check("reversed")
	if st, err := g.Apply(p, FormNFT); err != nil || st.Changed() {
		t.Errorf("Apply after the reordering: %+v, %v; want no change", st, err)
	}
}

// runBatch runs ip -batch with the commands in ns and returns its output
// lines.
func runBatch(t *testing.T, ns *netnstest.NS, cmds string) []string {
	t.Helper()
	f := t.TempDir() + "/batch"
	if err := writeFile(f, cmds); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(ns.MustRun(t, "ip", "-batch", f)), "\n")
}

func writeFile(name, s string) error { return os.WriteFile(name, []byte(s), 0o644) }
