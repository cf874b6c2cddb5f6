package gateway

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/packet"
	"github.com/portspace/portspace/tuple"
)

// udp4 builds an IPv4 UDP packet with valid checksums at buf[offset:].
func udp4(src, dst netip.AddrPort, payload int) []byte {
	n := 28 + payload
	b := make([]byte, offset+65535)
	p := b[offset : offset+n]
	p[0], p[8], p[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(p[2:], uint16(n))
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], packet.Checksum(p[:20], 0))
	binary.BigEndian.PutUint16(p[20:], src.Port())
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(8+payload))
	c := packet.Checksum(p[20:], packet.PseudoHeaderSum(src.Addr(), dst.Addr(), tuple.UDP, 8+payload))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(p[26:], c)
	return b
}

// valid reports whether the IPv4 header and UDP checksums of p verify.
func valid(p []byte) bool {
	if packet.Checksum(p[:20], 0) != 0 {
		return false
	}
	src, _ := netip.AddrFromSlice(p[12:16])
	dst, _ := netip.AddrFromSlice(p[16:20])
	return packet.Checksum(p[20:], packet.PseudoHeaderSum(src, dst, tuple.UDP, len(p)-20)) == 0
}

func testGateway(t testing.TB, preset string) *Gateway {
	t.Helper()
	cfg, err := nat.Preset(preset)
	if err != nil {
		t.Fatal(err)
	}
	cfg.External = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	cfg.Internal = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}
	cfg.Seed = 1
	return newTestGateway(t, cfg, 1)
}

// newTestGateway builds a gateway of cfg with n shards and no TUN, for
// calling translate directly.
func newTestGateway(t testing.TB, cfg nat.Config, n int) *Gateway {
	t.Helper()
	opts := Options{Engine: cfg, Shards: n}.withDefaults()
	if err := opts.check(); err != nil {
		t.Fatal(err)
	}
	shards, owner, err := newShards(opts)
	if err != nil {
		t.Fatal(err)
	}
	return &Gateway{opts: opts, shards: shards, ext: owner,
		local: map[uint32]bool{0x0a000001: true}, inside: cfg.Internal, per: make([]counters, 1), sc: newScratch(256)}
}

// TestTranslateBatch sends a batch of outbound packets and their replies
// through translate: each comes out rewritten with valid checksums, the
// counters count them, and a batch of established flows allocates nothing.
func TestTranslateBatch(t *testing.T) {
	g := testGateway(t, "port-restricted-cone")
	srv := netip.MustParseAddrPort("192.0.2.10:7000")
	const n = 64
	bufs := make([][]byte, n)
	sizes := make([]int, n)
	for i := range bufs {
		bufs[i] = udp4(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), uint16(20000+i)), srv, 18)
		sizes[i] = 46
	}
	extra := make([][]byte, extraBufs)
	for i := range extra {
		extra[i] = make([]byte, offset+2048)
	}
	out, _ := g.translate(bufs, sizes, nil, extra, nil, nil, &g.per[0], g.sc)
	if len(out) != n {
		t.Fatalf("%d packets out of %d", len(out), n)
	}
	ext := make([]netip.AddrPort, n)
	for i, b := range out {
		p := b[offset:]
		if !valid(p) {
			t.Fatalf("packet %d: bad checksum after translation", i)
		}
		a, _ := netip.AddrFromSlice(p[12:16])
		ext[i] = netip.AddrPortFrom(a, binary.BigEndian.Uint16(p[20:]))
		if ext[i].Addr() != netip.MustParseAddr("192.0.2.1") {
			t.Fatalf("packet %d: source %v not translated", i, ext[i])
		}
	}
	// The replies.
	for i := range bufs {
		bufs[i] = udp4(srv, ext[i], 18)
	}
	out, _ = g.translate(bufs, sizes, nil, extra, out[:0], nil, &g.per[0], g.sc)
	if len(out) != n {
		t.Fatalf("%d replies out of %d", len(out), n)
	}
	for i, b := range out {
		p := b[offset:]
		if !valid(p) || binary.BigEndian.Uint32(p[16:]) != 0x0a000002 || binary.BigEndian.Uint16(p[22:]) != uint16(20000+i) {
			t.Fatalf("reply %d not translated back with valid checksums", i)
		}
	}
	s := g.Stats()
	if s.OutForwarded != n || s.InForwarded != n || s.RxPackets != 2*n || s.Batches != 2 {
		t.Fatalf("counters %+v", s.Counters)
	}
	// Hot path: established flows, no allocation.
	for i := range bufs {
		bufs[i] = udp4(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), uint16(20000+i)), srv, 18)
	}
	if a := testing.AllocsPerRun(50, func() {
		for i := range bufs {
			// Restore the inside source the previous run translated.
			binary.BigEndian.PutUint32(bufs[i][offset+12:], 0x0a000002)
			binary.BigEndian.PutUint16(bufs[i][offset+20:], uint16(20000+i))
			p := bufs[i][offset : offset+46]
			binary.BigEndian.PutUint16(p[10:], 0)
			binary.BigEndian.PutUint16(p[10:], packet.Checksum(p[:20], 0))
			binary.BigEndian.PutUint16(p[26:], 0)
			c := packet.Checksum(p[20:], packet.PseudoHeaderSum(netip.MustParseAddr("10.0.0.2"), srv.Addr(), tuple.UDP, 26))
			binary.BigEndian.PutUint16(p[26:], c)
		}
		out, _ = g.translate(bufs, sizes, nil, extra, out[:0], nil, &g.per[0], g.sc)
	}); a != 0 {
		t.Fatalf("translate allocates %v times per batch", a)
	}
}

// TestTranslateHostile feeds random and truncated packets from both sides:
// none panics, none that came valid leaves with a broken checksum (the engine's incremental updates keep a checksum's validity), drops are counted.
func TestTranslateHostile(t *testing.T) {
	g := testGateway(t, "full-cone")
	r := rand.New(rand.NewPCG(1, 2))
	extra := make([][]byte, extraBufs)
	for i := range extra {
		extra[i] = make([]byte, offset+2048)
	}
	good := udp4(netip.MustParseAddrPort("10.0.0.2:5000"), netip.MustParseAddrPort("192.0.2.10:7000"), 18)
	var out [][]byte
	for k := 0; k < 20000; k++ {
		b := make([]byte, offset+128)
		n := r.IntN(100)
		switch k % 3 {
		case 0: // random bytes
			for i := range b[offset : offset+n] {
				b[offset+i] = byte(r.Uint32())
			}
		case 1: // a good packet, truncated
			copy(b[offset:], good[offset:offset+46])
			n = min(n, 46)
		case 2: // a good packet with one byte flipped, to either side
			copy(b[offset:], good[offset:offset+46])
			n = 46
			b[offset+r.IntN(46)] ^= byte(1 + r.IntN(255))
			if r.IntN(2) == 0 {
				copy(b[offset+12:], []byte{192, 0, 2, 10})
				copy(b[offset+16:], []byte{192, 0, 2, 1})
			}
		}
		in := b[offset : offset+n]
		udp := len(in) >= 28 && in[9] == 17 && in[0] == 0x45 && int(binary.BigEndian.Uint16(in[2:])) == n
		wasValid := udp && valid(in)
		out, _ = g.translate([][]byte{b}, []int{n}, nil, extra, out[:0], nil, &g.per[0], g.sc)
		for _, o := range out {
			p := o[offset:]
			if udp && &p[0] == &in[0] && wasValid && !valid(p) {
				t.Fatalf("case %d: a valid UDP packet left with a broken checksum", k)
			}
		}
	}
	s := g.Stats()
	if s.OutDropped+s.InDropped == 0 || len(s.Drops) == 0 {
		t.Fatalf("no drops counted: %+v", s.Counters)
	}
}

// TestTranslatePartialChecksum translates packets whose UDP checksum field
// holds a partial (pseudo-header) sum, as the kernel hands over super-
// packets and CHECKSUM_PARTIAL packets, and checks that the checksum a NIC
// (or the kernel's segmentation) completes from it verifies against the
// translated addresses and ports: veth peers trust CHECKSUM_PARTIAL, so the
// namespace tests cannot see this.
func TestTranslatePartialChecksum(t *testing.T) {
	g := testGateway(t, "symmetric")
	extra := make([][]byte, extraBufs)
	for i := range extra {
		extra[i] = make([]byte, offset+2048)
	}
	src := netip.MustParseAddrPort("10.0.0.2:5000")
	dst := netip.MustParseAddrPort("192.0.2.10:7000")
	mk := func(src, dst netip.AddrPort, payload int) []byte {
		b := udp4(src, dst, payload)
		p := b[offset : offset+28+payload]
		binary.BigEndian.PutUint16(p[26:], packet.Fold(packet.PseudoHeaderSum(src.Addr(), dst.Addr(), tuple.UDP, 8+payload)))
		h := b[offset-vnetHdrLen : offset]
		h[0], h[1] = 1, 0 // VIRTIO_NET_HDR_F_NEEDS_CSUM, no GSO
		binary.LittleEndian.PutUint16(h[6:], 20)
		binary.LittleEndian.PutUint16(h[8:], 6)
		return b
	}
	complete := func(q []byte) bool {
		binary.BigEndian.PutUint16(q[26:], packet.Checksum(q[20:], 0))
		return valid(q)
	}
	for _, payload := range []int{18, 1000, 1472} {
		b := udp4(src, dst, payload)
		n := 28 + payload
		p := b[offset : offset+n]
		binary.BigEndian.PutUint16(p[26:], packet.Fold(packet.PseudoHeaderSum(src.Addr(), dst.Addr(), tuple.UDP, 8+payload)))
		h := b[offset-vnetHdrLen : offset]
		h[0], h[1] = 1, 0 // VIRTIO_NET_HDR_F_NEEDS_CSUM, no GSO
		binary.LittleEndian.PutUint16(h[6:], 20)
		binary.LittleEndian.PutUint16(h[8:], 6)
		// A single datagram: its checksum is completed and it goes to the
		// offload code's writes (coalesced with its flow's others).
		single := append([]byte(nil), b...)
		out, raw := g.translate([][]byte{single}, []int{n}, []bool{true}, extra, nil, nil, &g.per[0], g.sc)
		if len(out) != 1 || len(raw) != 0 || len(out[0]) != offset+n {
			t.Fatalf("payload %d, single datagram: %d out, %d raw", payload, len(out), len(raw))
		}
		if q := out[0][offset:]; binary.BigEndian.Uint32(q[12:]) != 0xc0000201 || !valid(q) {
			t.Fatalf("payload %d, single datagram: not translated with a complete checksum", payload)
		}
		// A UDP GSO super-packet (here of one segment): translated once,
		// written whole with its header, the checksum left partial.
		h[1] = 5 // VIRTIO_NET_HDR_GSO_UDP_L4
		binary.LittleEndian.PutUint16(h[4:], uint16(payload))
		out, raw = g.translate([][]byte{b}, []int{n}, []bool{true}, extra, nil, nil, &g.per[0], g.sc)
		if len(out) != 0 || len(raw) != 1 || len(raw[0]) != vnetHdrLen+n {
			t.Fatalf("payload %d: %d out, %d raw", payload, len(out), len(raw))
		}
		q := raw[0][vnetHdrLen:]
		if binary.BigEndian.Uint32(q[12:]) != 0xc0000201 {
			t.Fatalf("payload %d: source not translated", payload)
		}
		// Complete the checksum as the NIC would: the sum from csum_start
		// over the partial field, complemented, into the field.
		binary.BigEndian.PutUint16(q[26:], packet.Checksum(q[20:], 0))
		if !valid(q) {
			t.Fatalf("payload %d: the completed checksum does not verify after translation", payload)
		}
		ext := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), binary.BigEndian.Uint16(q[20:]))
		rb := mk(dst, ext, payload)
		rb[offset-vnetHdrLen+1] = 5
		_, raw = g.translate([][]byte{rb}, []int{n}, []bool{true}, extra, nil, nil, &g.per[0], g.sc)
		if len(raw) != 1 {
			t.Fatalf("payload %d: reply not forwarded", payload)
		}
		q = raw[0][vnetHdrLen:]
		if binary.BigEndian.Uint32(q[16:]) != 0x0a000002 || binary.BigEndian.Uint16(q[22:]) != 5000 || !complete(q) {
			t.Fatalf("payload %d: reply not translated back with a completable checksum", payload)
		}
	}
}
