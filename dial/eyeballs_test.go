package dial

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
)

// fakeResolver answers A and AAAA queries from names, over an in-memory
// stream (no packet leaves the process); unknown names get NXDOMAIN.
func fakeResolver(t *testing.T, names map[string][]netip.Addr) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		client, server := net.Pipe()
		go serveDNS(t, server, names)
		return client, nil
	}}
}

// serveDNS answers the length-prefixed DNS queries of one stream.
func serveDNS(t *testing.T, c net.Conn, names map[string][]netip.Addr) {
	defer c.Close()
	for {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(q)
		if err != nil {
			return
		}
		qs, err := p.AllQuestions()
		if err != nil || len(qs) != 1 {
			return
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
		b.EnableCompression()
		addrs, known := names[qs[0].Name.String()]
		if !known {
			b = dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RCode: dnsmessage.RCodeNameError})
		}
		b.StartQuestions()
		b.Question(qs[0])
		b.StartAnswers()
		rh := dnsmessage.ResourceHeader{Name: qs[0].Name, Class: dnsmessage.ClassINET, TTL: 60}
		for _, a := range addrs {
			switch {
			case a.Is4() && qs[0].Type == dnsmessage.TypeA:
				b.AResource(rh, dnsmessage.AResource{A: a.As4()})
			case a.Is6() && qs[0].Type == dnsmessage.TypeAAAA:
				b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
			}
		}
		msg, err := b.Finish()
		if err != nil {
			t.Errorf("fake DNS: %v", err)
			return
		}
		binary.BigEndian.PutUint16(l[:], uint16(len(msg)))
		if _, err := c.Write(append(l[:], msg...)); err != nil {
			return
		}
	}
}

// TestHappyEyeballs checks RFC 6555 fast fallback for "tcp": a name whose
// first address (in the resolver's order) never answers (an nftables drop
// in the test's namespace) and whose other-family address listens connects through
// the other family once FallbackDelay has passed, well within Timeout;
// with FallbackDelay negative the addresses are dialed one after another
// and the dial times out on the first. "tcp4"/"tcp6" and a name whose
// first address answers use the first address without racing.
func TestHappyEyeballs(t *testing.T) {
	netnstest.RequireCommand(t, "nft")
	// The unreachable addresses are local, and the namespace's own input
	// hook drops what is sent to them, so a SYN gets no answer and no error.
	if !netnstest.InNetNS(t,
		netnstest.SetupCmd("ip", "addr", "add", "10.99.0.2/32", "dev", "lo"),
		netnstest.SetupCmd("ip", "-6", "addr", "add", "fd00:99::2/128", "dev", "lo", "nodad"),
		netnstest.SetupCmd("ip", "-6", "addr", "add", "fd00::1:1/128", "dev", "lo", "nodad"),
		netnstest.SetupCmd("nft", "add", "table", "inet", "hole"),
		netnstest.SetupCmd("nft", "add", "chain", "inet", "hole", "in", "{", "type", "filter", "hook", "input", "priority", "0", ";", "}"),
		netnstest.SetupCmd("nft", "add", "rule", "inet", "hole", "in", "ip", "daddr", "10.99.0.2", "drop"),
		netnstest.SetupCmd("nft", "add", "rule", "inet", "hole", "in", "ip6", "daddr", "fd00:99::2", "drop"),
		netnstest.SetupCmd("nft", "add", "rule", "inet", "hole", "in", "ip", "daddr", "127.99.0.2", "drop")) {
		return
	}
	ln4 := holdListener(t, "tcp4", "127.0.1.1:0")
	ln6 := holdListener(t, "tcp6", "[fd00::1:1]:"+strconv.Itoa(int(ln4.Port())))
	port := ln4.Port()
	hole4, hole6 := netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("fd00:99::2")
	// Whichever family the resolver sorts first (RFC 6724), one of these
	// names has the unreachable address first.
	names := map[string][]netip.Addr{
		"v4hole.test.": {hole4, ln6.Addr()},
		"v6hole.test.": {ln4.Addr(), hole6},
		"both.test.":   {ln4.Addr(), ln6.Addr()},
		"twov4.test.":  {netip.MustParseAddr("127.99.0.2"), ln4.Addr()}, // both loopback: the order stays
	}
	res := fakeResolver(t, names)
	var name string
	var first, fallback netip.Addr
	for _, n := range []string{"v4hole.test", "v6hole.test"} {
		got, err := res.LookupNetIP(context.Background(), "ip", n)
		if err != nil || len(got) != 2 {
			t.Fatalf("fake resolver: %s = %v, %v", n, got, err)
		}
		if got[0] == hole4 || got[0] == hole6 {
			name, first, fallback = n, got[0], got[1]
		}
	}
	if name == "" {
		t.Fatal("no name has its unreachable address first")
	}
	t.Logf("%s resolves to %v (unreachable) then %v", name, first, fallback)
	address := net.JoinHostPort(name, strconv.Itoa(int(port)))
	for _, s := range []Strategy{Kernel, Search} {
		d := &Dialer{Resolver: res, Strategy: s, FallbackDelay: 50 * time.Millisecond, Timeout: 3 * time.Second}
		if s == Search {
			d.Ports = tuple.MustParsePortSet("20000-20009")
		}
		start := time.Now()
		c, err := d.Dial("tcp", address)
		if err != nil {
			t.Fatalf("%v: Happy Eyeballs dial of %s: %v", s, address, err)
		}
		if got := fourTuple(c)[1].Addr(); got != fallback {
			t.Errorf("%v: connected to %v, want the fallback %v", s, got, fallback)
		}
		c.Close()
		if el := time.Since(start); el >= d.Timeout {
			t.Errorf("%v: the fallback connected after %v, not before the first address timed out", s, el)
		}
		serial := &Dialer{Resolver: res, Strategy: s, FallbackDelay: -1, Timeout: 300 * time.Millisecond, Ports: d.Ports}
		c, err = serial.Dial("tcp", address)
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			if c != nil {
				c.Close()
			}
			t.Errorf("%v: serial dial with the first address unreachable: %v, want a timeout", s, err)
		}
	}
	// Two addresses of one family, the first unreachable: as net.Dialer,
	// each address gets a share of the timeout (at least 2 s), so the second
	// is still reached within Timeout.
	if got, err := res.LookupNetIP(context.Background(), "ip4", "twov4.test"); err != nil || len(got) != 2 || got[0] != netip.MustParseAddr("127.99.0.2") {
		t.Fatalf("twov4.test resolves to %v (%v); want the unreachable 127.99.0.2 first", got, err)
	}
	for _, s := range []Strategy{Kernel, Search} {
		d := &Dialer{Resolver: res, Strategy: s, Timeout: 3500 * time.Millisecond}
		if s == Search {
			d.Ports = tuple.MustParsePortSet("20010-20019")
		}
		c, err := d.Dial("tcp4", net.JoinHostPort("twov4.test", strconv.Itoa(int(port))))
		if err != nil {
			t.Fatalf("%v: two IPv4 addresses, the first unreachable: %v", s, err)
		}
		if got := fourTuple(c)[1]; got != ln4 {
			t.Errorf("%v: connected to %v, want %v", s, got, ln4)
		}
		c.Close()
	}
	// Both answer: the first address wins, with no second connection left.
	d := &Dialer{Resolver: res, FallbackDelay: 50 * time.Millisecond}
	both, err := res.LookupNetIP(context.Background(), "ip", "both.test")
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Dial("tcp", net.JoinHostPort("both.test", strconv.Itoa(int(port))))
	if err != nil {
		t.Fatal(err)
	}
	if got := fourTuple(c)[1].Addr(); got != both[0] {
		t.Errorf("both families answer: connected to %v, want the first, %v", got, both[0])
	}
	c.Close()
}

// TestPartialDeadline checks the share of the remaining time that one of
// several addresses gets, as net.Dialer computes it.
func TestPartialDeadline(t *testing.T) {
	now := time.Unix(1e9, 0)
	ctx, cancel := context.WithDeadline(context.Background(), now.Add(10*time.Second))
	defer cancel()
	for _, tc := range []struct {
		left int
		want time.Duration // 0: no partial deadline
	}{{1, 0}, {2, 5 * time.Second}, {4, 2500 * time.Millisecond}, {10, 2 * time.Second}} {
		dl, ok := partialDeadline(ctx, now, tc.left)
		if ok != (tc.want != 0) || ok && dl.Sub(now) != tc.want {
			t.Errorf("%d addresses left of 10 s: %v after now (%v), want %v", tc.left, dl.Sub(now), ok, tc.want)
		}
	}
	short, cancel2 := context.WithDeadline(context.Background(), now.Add(time.Second))
	defer cancel2()
	if _, ok := partialDeadline(short, now, 2); ok {
		t.Error("1 s left for 2 addresses: a partial deadline past the 2 s minimum would pass the context's")
	}
	if _, ok := partialDeadline(context.Background(), now, 3); ok {
		t.Error("no deadline: got a partial one")
	}
}
