package dial

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
)

// TestErrorShape checks that dial errors are *net.OpError as net.Dialer's
// are (Op "dial", the caller's network, the source and the destination),
// and that ErrExhausted and ErrStrategy stay reachable with errors.Is.
func TestErrorShape(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	port := tcpSink(t, false)
	sink := udpSink(t, false)
	for _, tc := range []struct {
		network string
		s       Strategy
		ports   string
		port    uint16
	}{
		{"tcp", Search, "20000", port},
		{"tcp4", Kernel, "", port},
		{"udp", Search, "20000", uint16(sink.LocalAddr().(*net.UDPAddr).Port)},
	} {
		src := v4src(1)
		d := &Dialer{Sources: []netip.Addr{src}, Strategy: tc.s}
		if tc.ports != "" {
			d.Ports = tuple.MustParsePortSet(tc.ports)
		} else {
			// One port for Kernel: the namespace's range narrowed to it.
			eph, err := ephemeral(false)
			if err != nil {
				t.Fatal(err)
			}
			first := eph.Range(0).First()
			d.Ports = tuple.PortSetOf(tuple.PortRangeFrom(first, first))
		}
		dst := netip.AddrPortFrom(v4dst(1), tc.port)
		c, err := d.Dial(tc.network, dst.String())
		if err != nil {
			t.Fatalf("%s %v: first dial: %v", tc.network, tc.s, err)
		}
		defer c.Close()
		_, err = d.Dial(tc.network, dst.String())
		var oe *net.OpError
		if !errors.As(err, &oe) || err != error(oe) {
			t.Fatalf("%s %v: exhausted dial returned %T (%v), want a *net.OpError", tc.network, tc.s, err, err)
		}
		if !errors.Is(err, ErrExhausted) {
			t.Errorf("%s %v: %v does not wrap ErrExhausted", tc.network, tc.s, err)
		}
		if oe.Op != "dial" || oe.Net != tc.network {
			t.Errorf("%s %v: Op %q Net %q, want dial %s", tc.network, tc.s, oe.Op, oe.Net, tc.network)
		}
		if oe.Addr == nil || oe.Addr.String() != dst.String() || oe.Addr.Network() != tc.network[:3] {
			t.Errorf("%s %v: Addr %v, want %s %v", tc.network, tc.s, oe.Addr, tc.network[:3], dst)
		}
		if oe.Source == nil || !strings.HasPrefix(oe.Source.String(), src.String()+":") {
			t.Errorf("%s %v: Source %v, want %v", tc.network, tc.s, oe.Source, src)
		}
		if oe.Timeout() {
			t.Errorf("%s %v: exhaustion reports Timeout", tc.network, tc.s)
		}
	}
	var d Dialer
	_, err := d.Dial("sctp", "127.0.0.1:1")
	if oe, ok := err.(*net.OpError); !ok || oe.Op != "dial" || oe.Net != "sctp" || oe.Addr != nil {
		t.Errorf("unknown network: %#v", err)
	}
	d2 := &Dialer{Ports: tuple.MustParsePortSet("100-101,200"), Strategy: Kernel}
	_, err = d2.Dial("tcp", "127.0.0.1:1")
	if oe, ok := err.(*net.OpError); !ok || !errors.Is(err, ErrStrategy) || oe.Net != "tcp" {
		t.Errorf("forced kernel with two ranges: %#v", err)
	}
}

// TestContextCanceledUDP checks that a UDP dial with a cancelled context
// fails for both strategies, before any socket is connected.
func TestContextCanceledUDP(t *testing.T) {
	sink := udpSink(t, false)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, s := range []Strategy{Kernel, Search} {
		d := &Dialer{Strategy: s, Ports: tuple.MustParsePortSet("61000-61009")}
		if s == Kernel {
			d.Ports = tuple.PortSet{}
		}
		dst := netip.AddrPortFrom(loopback, uint16(sink.LocalAddr().(*net.UDPAddr).Port))
		c, err := d.DialContext(ctx, "udp", dst.String())
		if err == nil {
			c.Close()
		}
		var oe *net.OpError
		if !errors.Is(err, context.Canceled) || !errors.As(err, &oe) {
			t.Errorf("udp %v with a cancelled context: %v, want a *net.OpError wrapping context.Canceled", s, err)
		}
	}
}

// TestLocalAddr checks LocalAddr as net.Dialer has it: its IP is the source
// and its port the only port, which still serves every destination (so a
// second dial to one destination is exhausted), for TCP and UDP; set
// together with Sources it fails the dial.
func TestLocalAddr(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	tport := tcpSink(t, false)
	sink := udpSink(t, false)
	uport := uint16(sink.LocalAddr().(*net.UDPAddr).Port)
	local := netip.AddrPortFrom(v4src(1), 20005)
	for _, tc := range []struct {
		network string
		laddr   net.Addr
		port    uint16
	}{
		{"tcp", net.TCPAddrFromAddrPort(local), tport},
		{"udp", net.UDPAddrFromAddrPort(local), uport},
	} {
		d := &Dialer{LocalAddr: tc.laddr}
		var cs []net.Conn
		for i := 1; i <= 3; i++ {
			c, err := d.Dial(tc.network, netip.AddrPortFrom(v4dst(i), tc.port).String())
			if err != nil {
				t.Fatalf("%s from %v to destination %d: %v", tc.network, local, i, err)
			}
			cs = append(cs, c)
			if got := fourTuple(c)[0]; got != local {
				t.Errorf("%s: dialed from %v, want LocalAddr %v", tc.network, got, local)
			}
		}
		if _, err := d.Dial(tc.network, netip.AddrPortFrom(v4dst(1), tc.port).String()); !errors.Is(err, ErrExhausted) {
			t.Errorf("%s: second dial from the one LocalAddr port to one destination: %v, want ErrExhausted", tc.network, err)
		}
		closeAll(cs)
	}
	// An IP alone: the kernel's ports, from that source.
	d := &Dialer{LocalAddr: &net.TCPAddr{IP: v4src(2).AsSlice()}}
	c, err := d.Dial("tcp", netip.AddrPortFrom(v4dst(1), tport).String())
	if err != nil {
		t.Fatal(err)
	}
	if got := fourTuple(c)[0].Addr(); got != v4src(2) {
		t.Errorf("LocalAddr IP only: dialed from %v, want %v", got, v4src(2))
	}
	c.Close()
	both := &Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Sources: []netip.Addr{v4src(1)}}
	if _, err := both.Dial("tcp", netip.AddrPortFrom(v4dst(1), tport).String()); err == nil || !strings.Contains(err.Error(), "set together with Sources or Ports") {
		t.Errorf("LocalAddr with Sources: %v, want an error", err)
	}
}
