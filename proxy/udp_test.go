package proxy

import (
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/lease"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// udpEcho answers each datagram with "echo:" and the datagram.
func udpEcho(t *testing.T, ip string) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(append([]byte("echo:"), b[:n]...), from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

const pysocksUDP = `
import socks, socket, sys
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, sys.argv[1], int(sys.argv[2]), username=sys.argv[5] or None, password=sys.argv[6] or None)
s.settimeout(5)
for i in range(3):
    s.sendto(b"ping%d" % i, (sys.argv[3], int(sys.argv[4])))
    data, addr = s.recvfrom(2048)
    print(data.decode(), addr[0], addr[1])
`

// TestPySocksUDPAssociate relays UDP with PySocks (a client the project
// does not write): it sends the hint as the domain "0", which the proxy
// must not resolve, and gets each reply with the destination's header.
func TestPySocksUDPAssociate(t *testing.T) {
	netnstest.RequireCommand(t, "/usr/bin/python3")
	if err := exec.Command("/usr/bin/python3", "-c", "import socks").Run(); err != nil {
		netnstest.RequireCommand(t, "python3-socks-module-missing")
	}
	echo := udpEcho(t, "127.0.0.10")
	for _, creds := range [][2]string{{"", ""}, {"alice", "secret"}} {
		cfg := ""
		if creds[0] != "" {
			cfg = "users: [{name: alice, password: secret}]"
		}
		p := startProxy(t, cfg, nil)
		cmd := exec.Command("/usr/bin/python3", "-c", pysocksUDP, "127.0.0.1", itoa(p.addr.Port()), "127.0.0.10", itoa(echo.Port()), creds[0], creds[1])
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pysocks (user %q): %v: %s", creds[0], err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 3 || lines[2] != "echo:ping2 127.0.0.10 "+itoa(echo.Port()) {
			t.Fatalf("pysocks got %q", out)
		}
		p.waitCount("socks5", resultOK, 1) // the association ended with its TCP connection
		if n := testutil.ToFloat64(p.srv.metrics.UDPDatagrams.WithLabelValues("up", "relayed")); n != 3 {
			t.Errorf("relayed up %v, want 3", n)
		}
	}
}

func itoa(p uint16) string {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), p).String()[len("0.0.0.0:"):]
}

// TestUDPAssociateRules uses the project's own client for what PySocks
// cannot show: fragments dropped, datagrams from another address dropped,
// the guard applied per datagram, and the association ending with its TCP
// connection.
func TestUDPAssociateRules(t *testing.T) {
	echo := udpEcho(t, "127.0.0.10")
	p := startProxy(t, "", nil)
	ctl, rep, relayAddr, err := socksDial(t, p.addr, "", "", cmdUDP, addrBytes(netip.MustParseAddrPort("0.0.0.0:0")))
	if err != nil || rep != 0 {
		t.Fatal(rep, err)
	}
	if relayAddr.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("BND %v, want the address the client reached the proxy at", relayAddr)
	}
	client, _ := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	defer client.Close()
	other, _ := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.2:0")))
	defer other.Close()
	hdr := append([]byte{0, 0, 0}, addrBytes(echo)...)
	send := func(c *net.UDPConn, b []byte) { c.WriteToUDPAddrPort(b, relayAddr) }
	send(client, append(append([]byte{}, hdr...), "one"...))
	buf := make([]byte, 2048)
	client.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, _, err := client.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[len(hdr):n]) != "echo:one" || string(buf[:len(hdr)]) != string(hdr) {
		t.Fatalf("reply % x, err %v", buf[:n], err)
	}
	frag := append([]byte{0, 0, 1}, addrBytes(echo)...)
	send(client, append(frag, "frag"...))
	send(other, append(append([]byte{}, hdr...), "other"...))
	send(client, append(append([]byte{0, 0, 0}, addrBytes(netip.MustParseAddrPort("127.0.0.1:53"))...), "guarded"...))
	send(client, []byte{0, 0, 0, 9, 1})
	send(client, append(append([]byte{}, hdr...), "two"...))
	n, _, err = client.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[len(hdr):n]) != "echo:two" {
		t.Fatalf("second reply %q, err %v (a dropped datagram got an answer?)", buf[:n], err)
	}
	for _, r := range []string{"dropped_fragment", "dropped_source", "dropped_guard", "dropped_malformed"} {
		if v := testutil.ToFloat64(p.srv.metrics.UDPDatagrams.WithLabelValues("up", r)); v != 1 {
			t.Errorf("%s = %v, want 1", r, v)
		}
	}
	ctl.Close()
	p.waitCount("socks5", resultOK, 1)
	send(client, append(append([]byte{}, hdr...), "after"...))
	client.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, _, err := client.ReadFromUDPAddrPort(buf); err == nil {
		t.Error("the association relayed after its TCP connection closed")
	}
}

// TestUDPAssociateFromSlice relays UDP through a LeaseEgress: the
// destination sees a source port of the held slice (the dialer's UDP path),
// and two associations to the same destination get different ports.
func TestUDPAssociateFromSlice(t *testing.T) {
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.10:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(append([]byte(from.String()+" "), b[:n]...), from)
		}
	}()
	echo := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pools := []lease.Pool{{Name: "u", Addrs: []netip.Addr{lo1}, Ports: rangePorts(21700, 21709), Slice: 10, Quarantine: time.Second}}
	eg := &LeaseEgress{Store: boltStore(t, pools), Holder: "h", Pools: pools}
	p := startProxy(t, "", eg)
	seen := map[netip.AddrPort]bool{}
	for i := range 2 {
		ctl, rep, relayAddr, err := socksDial(t, p.addr, "", "", cmdUDP, addrBytes(netip.MustParseAddrPort("0.0.0.0:0")))
		if err != nil || rep != 0 {
			t.Fatal(rep, err)
		}
		defer ctl.Close()
		client, _ := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
		defer client.Close()
		hdr := append([]byte{0, 0, 0}, addrBytes(echo)...)
		client.WriteToUDPAddrPort(append(hdr, "hi"...), relayAddr)
		buf := make([]byte, 2048)
		client.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _, err := client.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("association %d: %v", i, err)
		}
		from, _, _ := strings.Cut(string(buf[len(hdr):n]), " ")
		ap, err := netip.ParseAddrPort(from)
		if err != nil || ap.Addr() != lo1 || ap.Port() < 21700 || ap.Port() > 21709 || seen[ap] {
			t.Fatalf("association %d: the destination saw %q, want a fresh port of 21700-21709", i, from)
		}
		seen[ap] = true
	}
}
