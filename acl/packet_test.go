package acl

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
)

// The packet test's topology, all inside namespaces the test creates:
//
//	cli 10.231.1.2 --c0/r0-- rtr (10.231.1.1, 10.231.2.1) --r1/s0-- srv 10.231.2.2
//	    fd00:231:1::2             (fd00:231:1::1, fd00:231:2::1)       fd00:231:2::2
//
// The generated ruleset is loaded in all three: the router filters in its
// forward hook (all four rules of a flow), the hosts in input and output.
const packetPolicy = `
services:
  - {name: web, protocol: tcp, ports: [8080]}
  - {name: echo, protocol: udp, ports: [5353]}
zones:
  - {name: clients, type: internal, cidrs: [10.231.1.0/24, "fd00:231:1::/64"]}
  - {name: servers, type: internal, cidrs: [10.231.2.0/24, "fd00:231:2::/64"]}
flows:
  - from: clients
    to: servers
    services: [web, echo]
    ephemeral: [40000-40999]
`

const helperEnv = "PORTSPACE_ACL_PACKET_HELPER"

// TestPacketHelper is not a test: the packet test runs the test binary in
// a namespace with helperEnv set, and this function then serves or dials.
func TestPacketHelper(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return // only a helper process for TestPacketFilter; nothing to test here
	}
	args := strings.Fields(os.Getenv(helperEnv + "_ARGS"))
	switch mode {
	case "serve":
		serveHelper(args)
	case "dial":
		fmt.Println(dialHelper(args))
	}
	os.Exit(0)
}

// serveHelper echoes on TCP and UDP ports (args "tcp:8080 udp:5353 ...")
// until its stdin closes.
func serveHelper(args []string) {
	for _, a := range args {
		proto, port, _ := strings.Cut(a, ":")
		addr := ":" + port
		if proto == "tcp" {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				fmt.Println("listen:", err)
				os.Exit(1)
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() { io.Copy(c, c); c.Close() }()
				}
			}()
		} else {
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				fmt.Println("listen:", err)
				os.Exit(1)
			}
			go func() {
				buf := make([]byte, 1500)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo(buf[:n], from)
				}
			}()
		}
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}

// dialHelper args: proto, destination ip:port, source port, timeout. It
// returns "ok" when a message makes the round trip within the timeout.
func dialHelper(args []string) string {
	if len(args) != 4 {
		return "fail: bad args"
	}
	dst, err := netip.ParseAddrPort(args[1])
	if err != nil {
		return "fail: " + err.Error()
	}
	sport, _ := strconv.Atoi(args[2])
	timeout, err := time.ParseDuration(args[3])
	if err != nil {
		return "fail: " + err.Error()
	}
	var c net.Conn
	if args[0] == "tcp" {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{Port: sport}}
		c, err = d.Dial("tcp", dst.String())
	} else {
		d := net.Dialer{LocalAddr: &net.UDPAddr{Port: sport}}
		c, err = d.Dial("udp", dst.String())
	}
	if err != nil {
		return "fail: " + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return "fail: " + err.Error()
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "ping\n" {
		return fmt.Sprintf("fail: read %q %v", buf[:n], err)
	}
	return "ok"
}

func helperCmd(ns *netnstest.NS, mode string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "env",
		helperEnv+"="+mode, helperEnv+"_ARGS="+strings.Join(args, " "),
		os.Args[0], "-test.run=^TestPacketHelper$", "-test.count=1")
	return cmd
}

func startServer(t *testing.T, ns *netnstest.NS, ports ...string) {
	t.Helper()
	cmd := helperCmd(ns, "serve", ports...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("server in %s: %q %v", ns.Name, line, err)
	}
}

// dial runs the dial helper in ns. A connection that should work gets a
// generous timeout (the machine may be busy); one that should fail waits
// one second for a reply that must not come.
func dial(t *testing.T, ns *netnstest.NS, proto, dst string, sport int, wantOK bool) string {
	t.Helper()
	timeout := "1s"
	if wantOK {
		timeout = "10s"
	}
	out, err := helperCmd(ns, "dial", proto, dst, strconv.Itoa(sport), timeout).CombinedOutput()
	if err != nil {
		t.Fatalf("dial helper: %v: %s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if l == "ok" || strings.HasPrefix(l, "fail") {
			return l
		}
	}
	t.Fatalf("dial helper said %q", out)
	return ""
}

// TestPacketFilter applies the generated nftables ruleset in namespaces
// and sends real packets: permitted flows connect, with their return
// traffic; a client bound to a source port outside its ephemeral profile
// gets no replies; other ports and reverse connections fail.
func TestPacketFilter(t *testing.T) {
	netnstest.RequireCommand(t, "nft")
	cli, rtr, srv := netnstest.New(t), netnstest.New(t), netnstest.New(t)
	for _, ns := range []*netnstest.NS{cli, rtr, srv} {
		// No duplicate address detection: addresses are usable at once.
		ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	rtr.MustRun(t, "ip", "link", "add", "r0", "type", "veth", "peer", "name", "c0", "netns", cli.Name)
	rtr.MustRun(t, "ip", "link", "add", "r1", "type", "veth", "peer", "name", "s0", "netns", srv.Name)
	for _, c := range [][]string{
		{"ip", "addr", "add", "10.231.1.1/24", "dev", "r0"},
		{"ip", "addr", "add", "10.231.2.1/24", "dev", "r1"},
		{"ip", "addr", "add", "fd00:231:1::1/64", "dev", "r0", "nodad"},
		{"ip", "addr", "add", "fd00:231:2::1/64", "dev", "r1", "nodad"},
		{"sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
		{"ip", "link", "set", "r0", "up"},
		{"ip", "link", "set", "r1", "up"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
	} {
		rtr.MustRun(t, c[0], c[1:]...)
	}
	for _, h := range []struct {
		ns        *netnstest.NS
		dev, addr string
		gw        string
		addr6     string
		gw6       string
	}{
		{cli, "c0", "10.231.1.2/24", "10.231.1.1", "fd00:231:1::2/64", "fd00:231:1::1"},
		{srv, "s0", "10.231.2.2/24", "10.231.2.1", "fd00:231:2::2/64", "fd00:231:2::1"},
	} {
		h.ns.MustRun(t, "ip", "addr", "add", h.addr, "dev", h.dev)
		h.ns.MustRun(t, "ip", "addr", "add", h.addr6, "dev", h.dev, "nodad")
		h.ns.MustRun(t, "ip", "link", "set", h.dev, "up")
		h.ns.MustRun(t, "ip", "route", "add", "default", "via", h.gw)
		h.ns.MustRun(t, "ip", "-6", "route", "add", "default", "via", h.gw6)
	}
	// Listeners on the service ports, a port no flow allows, and a port
	// inside the clients' return range (for the reverse test).
	startServer(t, srv, "tcp:8080", "tcp:8081", "udp:5353", "udp:5354")
	startServer(t, cli, "tcp:40700")

	// Control: before the rules, a source port outside the profile works,
	// so the failures below are the filter's doing.
	for i, dst := range []string{"10.231.2.2:8080", "[fd00:231:2::2]:8080"} {
		if got := dial(t, cli, "tcp", dst, 41100+i, true); got != "ok" {
			t.Fatalf("without rules, the topology does not work (%s): %s", dst, got)
		}
	}

	p, err := ParsePolicy("packet.yaml", []byte(packetPolicy))
	if err != nil {
		t.Fatal(err)
	}
	text, err := render(t, p, "nftables", "packet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "acl.nft")
	if err := os.WriteFile(file, text, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []*netnstest.NS{cli, rtr, srv} {
		ns.MustRun(t, "nft", "-f", file)
	}
	// Loading twice replaces the table (add; delete; define).
	rtr.MustRun(t, "nft", "-f", file)
	if out := rtr.MustRun(t, "nft", "list", "chain", "inet", NFTTable, "forward"); !bytes.Contains([]byte(out), []byte("jump out_clients")) {
		t.Fatalf("forward chain not loaded:\n%s", out)
	}

	cases := []struct {
		name        string
		from        *netnstest.NS
		proto, dst  string
		sport       int
		wantConnect bool
	}{
		{"tcp service from a port in the profile", cli, "tcp", "10.231.2.2:8080", 40001, true},
		{"tcp service from the profile's last port", cli, "tcp", "10.231.2.2:8080", 40999, true},
		{"udp service from a port in the profile", cli, "udp", "10.231.2.2:5353", 40002, true},
		{"tcp return to a client port above the profile", cli, "tcp", "10.231.2.2:8080", 41001, false},
		{"tcp return to a client port below the profile", cli, "tcp", "10.231.2.2:8080", 39999, false},
		{"udp return to a client port outside the profile", cli, "udp", "10.231.2.2:5353", 41002, false},
		{"tcp port no flow allows", cli, "tcp", "10.231.2.2:8081", 40003, false},
		{"udp port no flow allows", cli, "udp", "10.231.2.2:5354", 40004, false},
		{"server cannot start a connection into the return range", srv, "tcp", "10.231.1.2:40700", 40800, false},
		{"IPv6 tcp service from a port in the profile", cli, "tcp", "[fd00:231:2::2]:8080", 40011, true},
		{"IPv6 udp service from a port in the profile", cli, "udp", "[fd00:231:2::2]:5353", 40012, true},
		{"IPv6 tcp return to a client port outside the profile", cli, "tcp", "[fd00:231:2::2]:8080", 41011, false},
		{"IPv6 udp return to a client port outside the profile", cli, "udp", "[fd00:231:2::2]:5353", 41012, false},
		{"IPv6 tcp port no flow allows", cli, "tcp", "[fd00:231:2::2]:8081", 40013, false},
	}
	// Each case uses its own source port, so they run in parallel and the
	// failing ones wait out their timeouts together.
	t.Run("flows", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				got := dial(t, c.from, c.proto, c.dst, c.sport, c.wantConnect)
				if (got == "ok") != c.wantConnect {
					t.Errorf("%s %s from port %d: got %s, want connect=%v", c.proto, c.dst, c.sport, got, c.wantConnect)
				}
			})
		}
	})
}
