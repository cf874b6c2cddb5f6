package packet

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/portspace/portspace/tuple"
)

func TestBuildICMPError(t *testing.T) {
	nat := netip.MustParseAddr("10.0.0.1")
	small := tcpPacket(t, inside, outside, []byte("syn"))
	big := udpPacket(t, inside, outside, make([]byte, 1400), false)
	for _, c := range []struct {
		name    string
		orig    []byte
		o       ICMPErrorOptions
		wantLen int
	}{
		{"admin prohibited", small, ICMPErrorOptions{Src: nat, Type: ICMPDestUnreachable, Code: CodeAdminProhibited}, 28 + len(small)},
		{"host unreachable", small, ICMPErrorOptions{Src: nat, Type: ICMPDestUnreachable, Code: CodeHostUnreachable, TTL: 3, ID: 99}, 28 + len(small)},
		{"port unreachable capped at 576", big, ICMPErrorOptions{Src: nat, Type: ICMPDestUnreachable, Code: CodePortUnreachable}, 576},
		{"frag needed", big, ICMPErrorOptions{Src: nat, Type: ICMPDestUnreachable, Code: CodeFragNeeded, MTU: 1280, MaxLen: 100}, 100},
		{"time exceeded minimal", big, ICMPErrorOptions{Src: nat, Type: ICMPTimeExceeded, MaxLen: 56}, 56},
		{"parameter problem", small, ICMPErrorOptions{Src: nat, Type: ICMPParameterProblem, Pointer: 9}, 28 + len(small)},
		{"redirect", small, ICMPErrorOptions{Src: nat, Type: ICMPRedirect, Code: 1, Gateway: netip.MustParseAddr("10.0.0.254")}, 28 + len(small)},
	} {
		t.Run(c.name, func(t *testing.T) {
			orig := mustParse(t, c.orig)
			buf := make([]byte, 2000)
			n, err := BuildICMPError(buf, orig, c.o)
			if err != nil {
				t.Fatal(err)
			}
			if n != c.wantLen {
				t.Fatalf("length %d, want %d", n, c.wantLen)
			}
			b := buf[:n]
			oracle(t, b)
			p := mustParse(t, b)
			if err := p.VerifyChecksums(); err != nil {
				t.Fatal(err)
			}
			if !p.IsICMPError() || p.ICMPType() != c.o.Type || p.ICMPCode() != c.o.Code || p.Src() != nat || p.Dst() != inside.Addr() {
				t.Fatalf("type %d code %d %v -> %v", p.ICMPType(), p.ICMPCode(), p.Src(), p.Dst())
			}
			if in := p.Inner(); in.SrcAddrPort() != inside || in.DstAddrPort() != outside || !bytes.Equal(in.Bytes(), c.orig[:n-28]) {
				t.Fatalf("inner %v -> %v", in.SrcAddrPort(), in.DstAddrPort())
			}
			// Independent decode of the ICMP header fields.
			pk := gopacket.NewPacket(b, layers.LayerTypeIPv4, gopacket.Default)
			ic := pk.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			ip := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			if ic.TypeCode != layers.CreateICMPv4TypeCode(c.o.Type, c.o.Code) || ip.Flags != 0 {
				t.Fatalf("gopacket: %v flags %v", ic.TypeCode, ip.Flags)
			}
			wantTTL := c.o.TTL
			if wantTTL == 0 {
				wantTTL = 64
			}
			if ip.TTL != wantTTL || ip.Id != c.o.ID {
				t.Fatalf("ttl %d id %d", ip.TTL, ip.Id)
			}
			switch c.o.Type {
			case ICMPDestUnreachable:
				if c.o.Code == CodeFragNeeded && ic.Seq != c.o.MTU {
					t.Fatalf("MTU %d", ic.Seq)
				}
			case ICMPParameterProblem:
				if b[24] != c.o.Pointer {
					t.Fatal("pointer")
				}
			case ICMPRedirect:
				if netip.AddrFrom4([4]byte(b[24:28])) != c.o.Gateway {
					t.Fatal("gateway")
				}
			}
		})
	}
}

func TestBuildICMPErrorRefuses(t *testing.T) {
	nat := netip.MustParseAddr("10.0.0.1")
	buf := make([]byte, 576)
	o := ICMPErrorOptions{Src: nat, Type: ICMPDestUnreachable, Code: CodeHostUnreachable}
	anErr := icmpError(t, outside.Addr(), inside.Addr(), 3, 3, udpPacket(t, inside, outside, nil, false), 0)
	frag := tcpPacket(t, inside, outside, make([]byte, 40))
	frag[6], frag[7] = 0, 2
	fixIP(frag)
	bcast := udpPacket(t, inside, netip.MustParseAddrPort("255.255.255.255:67"), nil, false)
	mcastSrc := udpPacket(t, netip.MustParseAddrPort("224.0.0.1:5"), outside, nil, false)
	zeroSrc := udpPacket(t, netip.MustParseAddrPort("0.0.0.0:68"), outside, nil, false)
	for name, b := range map[string][]byte{"icmp error": anErr, "non-first fragment": frag, "broadcast dst": bcast, "multicast src": mcastSrc, "zero src": zeroSrc} {
		p := mustParse(t, b)
		if p.MayTriggerICMPError() {
			t.Errorf("%s: MayTriggerICMPError true", name)
		}
		if _, err := BuildICMPError(buf, p, o); !errors.Is(err, ErrNoICMPError) {
			t.Errorf("%s: %v", name, err)
		}
	}
	p := mustParse(t, tcpPacket(t, inside, outside, nil))
	if !p.MayTriggerICMPError() {
		t.Fatal("unicast TCP may trigger an error")
	}
	if _, err := BuildICMPError(buf[:55], p, o); !errors.Is(err, ErrShortBuffer) {
		t.Fatalf("short buffer: %v", err)
	}
	if _, err := BuildICMPError(buf, p, ICMPErrorOptions{Src: nat, Type: ICMPEcho}); !errors.Is(err, ErrNoICMPError) {
		t.Fatalf("echo type: %v", err)
	}
	if _, err := BuildICMPError(buf, p, ICMPErrorOptions{Src: netip.MustParseAddr("2001:db8::1"), Type: 3}); !errors.Is(err, ErrNotIPv4) {
		t.Fatalf("v6 src: %v", err)
	}
	if _, err := BuildICMPError(buf, new(Packet), o); !errors.Is(err, ErrNoICMPError) {
		t.Fatalf("empty packet: %v", err)
	}
	// Errors about ICMP queries are allowed and embed the query.
	q := mustParse(t, icmpQuery(t, inside.Addr(), outside.Addr(), ICMPEcho, 5, nil))
	n, err := BuildICMPError(buf, q, o)
	if err != nil {
		t.Fatal(err)
	}
	if e := mustParse(t, buf[:n]); e.Inner().Proto() != tuple.ICMP || e.Inner().SrcPort() != 5 || e.Inner().ICMPType() != ICMPEcho {
		t.Fatal("error about echo")
	}
}
