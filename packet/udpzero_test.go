package packet

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/portspace/portspace/tuple"
)

// TestUDPRewriteNeverSendsZeroChecksum: when the new UDP checksum of a
// rewrite computes to 0, the packet carries 0xffff instead, because 0 means
// "no checksum" (RFC 768: "If the computed checksum is zero, it is
// transmitted as all ones"). The new source port is searched so that the
// checksum computed from scratch over the rewritten datagram is 0; the same
// is checked for an address rewrite (SetSrc) to that endpoint.
func TestUDPRewriteNeverSendsZeroChecksum(t *testing.T) {
	src := netip.MustParseAddrPort("10.0.0.1:1000")
	dst := netip.MustParseAddrPort("198.51.100.7:53")
	orig := udpPacket(t, src, dst, []byte("zero-sum probe"), false)
	// scratch returns the checksum of orig with source port p, computed from
	// scratch (checksum field zeroed).
	scratch := func(p uint16) uint16 {
		b := append([]byte(nil), orig...)
		l4 := b[20:]
		binary.BigEndian.PutUint16(l4[0:2], p)
		l4[6], l4[7] = 0, 0
		return Checksum(l4, PseudoHeaderSum(src.Addr(), dst.Addr(), tuple.UDP, len(l4)))
	}
	port := -1
	for p := 1; p < 65536; p++ {
		if scratch(uint16(p)) == 0 {
			port = p
			break
		}
	}
	if port < 0 {
		t.Fatal("no source port gives a zero checksum")
	}
	for name, rewrite := range map[string]func(*Packet) error{
		"SetSrcPort": func(p *Packet) error { p.SetSrcPort(uint16(port)); return nil },
		"SetSrc":     func(p *Packet) error { return p.SetSrc(netip.AddrPortFrom(src.Addr(), uint16(port))) },
	} {
		b := append([]byte(nil), orig...)
		var p Packet
		if err := p.Parse(b); err != nil {
			t.Fatal(err)
		}
		if err := rewrite(&p); err != nil {
			t.Fatal(err)
		}
		if got := binary.BigEndian.Uint16(b[26:28]); got != 0xffff {
			t.Errorf("%s to port %d: UDP checksum %#04x, want 0xffff (a computed 0 is sent as all ones)", name, port, got)
		}
		if err := p.VerifyChecksums(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
