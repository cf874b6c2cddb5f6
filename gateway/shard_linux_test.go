package gateway

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/packet"
	"github.com/portspace/portspace/tuple"
)

var (
	ext1 = netip.MustParseAddr("192.0.2.1")
	ext2 = netip.MustParseAddr("192.0.2.2")
	srv1 = netip.MustParseAddrPort("192.0.2.10:7000")
	srv2 = netip.MustParseAddrPort("192.0.2.11:7001")
)

func shardGateway(t testing.TB, preset string, n int, edit func(*nat.Config)) *Gateway {
	t.Helper()
	cfg, err := nat.Preset(preset)
	if err != nil {
		t.Fatal(err)
	}
	cfg.External = []netip.Addr{ext1, ext2}
	cfg.Internal = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}
	cfg.Seed = 1
	if edit != nil {
		edit(&cfg)
	}
	return newTestGateway(t, cfg, n)
}

// subscriberOf returns an inside address of 10.0.0.0/24 that ShardOf puts
// in shard k of n, skipping skip.
func subscriberOf(t testing.TB, k, n int, skip netip.Addr) netip.Addr {
	for i := 2; i < 255; i++ {
		a := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
		if a != skip && ShardOf(a, n) == k {
			return a
		}
	}
	t.Fatalf("no subscriber in shard %d", k)
	return netip.Addr{}
}

// xlate sends one packet through translate and returns what is written
// back (nil when dropped).
func xlate(t testing.TB, g *Gateway, b []byte) []byte {
	t.Helper()
	extra := make([][]byte, extraBufs)
	for i := range extra {
		extra[i] = make([]byte, offset+2048)
	}
	n := int(binary.BigEndian.Uint16(b[offset+2:]))
	out, _ := g.translate([][]byte{b}, []int{n}, nil, extra, nil, nil, &g.per[0], g.sc)
	if len(out) == 0 {
		return nil
	}
	p := out[0][offset:]
	if p[9] == 17 && !valid(p) {
		t.Fatalf("translated packet has a broken checksum")
	}
	return p
}

func srcOf(p []byte) netip.AddrPort {
	a, _ := netip.AddrFromSlice(p[12:16])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(p[20:]))
}

func dstOf(p []byte) netip.AddrPort {
	a, _ := netip.AddrFromSlice(p[16:20])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(p[22:]))
}

// TestShardOf: ShardOf spreads a /24 over the shards and is the same for
// the same address.
func TestShardOf(t *testing.T) {
	for _, n := range []int{2, 3, 4} {
		count := make([]int, n)
		for i := 0; i < 256; i++ {
			a := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
			k := ShardOf(a, n)
			if k < 0 || k >= n || ShardOf(a, n) != k {
				t.Fatalf("ShardOf(%v, %d) = %d", a, n, k)
			}
			count[k]++
		}
		for k, c := range count {
			if c < 256/n/2 {
				t.Errorf("n=%d: shard %d serves %d of 256 subscribers", n, k, c)
			}
		}
	}
	if ShardOf(netip.MustParseAddr("10.0.0.2"), 1) != 0 {
		t.Fatal("one shard: not shard 0")
	}
}

// TestShardConfigs: each shard owns whole external addresses (k, k+n, ...)
// and a share of the global limits; too few addresses is an error.
func TestShardConfigs(t *testing.T) {
	cfg := nat.Config{External: []netip.Addr{ext1, ext2, netip.MustParseAddr("192.0.2.3")}, MaxSessions: 1001, ExpectedSessions: 10}
	cs, err := shardConfigs(cfg, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || len(cs[0].External) != 2 || cs[0].External[1] != netip.MustParseAddr("192.0.2.3") ||
		len(cs[1].External) != 1 || cs[1].External[0] != ext2 {
		t.Fatalf("addresses: %v, %v", cs[0].External, cs[1].External)
	}
	if cs[0].MaxSessions != 501 || cs[1].ExpectedSessions != 5 {
		t.Fatalf("limits: %d, %d", cs[0].MaxSessions, cs[1].ExpectedSessions)
	}
	if _, err := shardConfigs(cfg, 4); err == nil {
		t.Fatal("4 shards over 3 addresses accepted")
	}
	o := Options{Engine: nat.Config{External: []netip.Addr{ext1}, Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}}, Shards: 2}
	if err := o.check(); err == nil {
		t.Fatal("Options.check accepted 2 shards over 1 address")
	}
}

// TestShards runs two subscribers of different shards through a sharded
// gateway: each subscriber's flows use its shard's external address with
// one mapping per internal endpoint (EIM, paired pooling, preserved ports),
// replies reach the right subscriber, and a hairpin from one subscriber
// to the other's mapping, in both directions, crosses the shards (source
// by the sender's shard, then destination by the owner's, in the same
// batch) with valid checksums. A batch of both
// shards' established flows allocates nothing.
func TestShards(t *testing.T) {
	g := shardGateway(t, "full-cone", 2, nil)
	a := subscriberOf(t, 0, 2, netip.Addr{})
	b := subscriberOf(t, 1, 2, a)
	extOf := map[netip.Addr]netip.Addr{a: ext1, b: ext2}
	mapped := map[netip.Addr]netip.AddrPort{}
	for _, sub := range []netip.Addr{a, b} {
		in := netip.AddrPortFrom(sub, 40000)
		var m netip.AddrPort
		for _, srv := range []netip.AddrPort{srv1, srv2} {
			p := xlate(t, g, udp4(in, srv, 18))
			if p == nil {
				t.Fatalf("%v -> %v dropped", in, srv)
			}
			if s := srcOf(p); s.Addr() != extOf[sub] || (m.IsValid() && s != m) {
				t.Fatalf("%v -> %v mapped to %v (want %v, the same for every remote)", in, srv, s, extOf[sub])
			}
			m = srcOf(p)
		}
		if m.Port() != 40000 {
			t.Errorf("%v: port not preserved: %v", in, m)
		}
		// A second endpoint of the subscriber pairs on the same address.
		p := xlate(t, g, udp4(netip.AddrPortFrom(sub, 40002), srv1, 18))
		if p == nil || srcOf(p).Addr() != extOf[sub] {
			t.Fatalf("%v: second endpoint not paired on %v", sub, extOf[sub])
		}
		mapped[sub] = m
		// The reply reaches the subscriber.
		r := xlate(t, g, udp4(srv1, m, 18))
		if r == nil || dstOf(r) != in {
			t.Fatalf("reply to %v: %v", m, r)
		}
	}
	// Hairpin from a to b's mapping, and back: one batch translates both
	// the source (the sender's shard) and the destination (the owner's),
	// so the packet leaves toward the inside, never back into the TUN.
	for _, c := range []struct{ from, to netip.Addr }{{a, b}, {b, a}} {
		q := xlate(t, g, udp4(netip.AddrPortFrom(c.from, 40000), mapped[c.to], 18))
		if q == nil || srcOf(q) != mapped[c.from] || dstOf(q) != netip.AddrPortFrom(c.to, 40000) {
			t.Fatalf("hairpin %v -> %v: %v", c.from, mapped[c.to], q)
		}
	}
	s := g.Stats()
	if s.Hairpinned != 2 || s.Shards != 2 || s.Engine.Mappings < 4 || len(s.PortsInUse) != 2 || s.PortsInUse[ext1] == 0 || s.PortsInUse[ext2] == 0 {
		t.Fatalf("stats: hairpinned %d, shards %d, mappings %d, ports %v", s.Hairpinned, s.Shards, s.Engine.Mappings, s.PortsInUse)
	}
	if n := len(g.Sessions()); n < 6 {
		t.Fatalf("%d sessions listed", n)
	}

	// A batch of both shards' established flows, a quarter of them
	// hairpins across the shards: no allocation.
	const n = 64
	bufs := make([][]byte, n)
	sizes := make([]int, n)
	subs := []netip.Addr{a, b}
	for i := range bufs {
		dst := srv1
		if i%4 == 3 { // a hairpin to the other subscriber: both shards' passes
			dst = mapped[subs[(i+1)%2]]
		}
		bufs[i] = udp4(netip.AddrPortFrom(subs[i%2], 40000), dst, 18)
		sizes[i] = 46
	}
	orig := make([][]byte, n)
	for i := range bufs {
		orig[i] = append([]byte(nil), bufs[i][offset:offset+46]...)
	}
	extra := make([][]byte, extraBufs)
	for i := range extra {
		extra[i] = make([]byte, offset+2048)
	}
	out := make([][]byte, 0, n+extraBufs)
	if al := testing.AllocsPerRun(50, func() {
		for i := range bufs {
			copy(bufs[i][offset:], orig[i])
		}
		out, _ = g.translate(bufs, sizes, nil, extra, out[:0], nil, &g.per[0], g.sc)
	}); al != 0 {
		t.Fatalf("translate allocates %v times per batch", al)
	}
	if len(out) != n {
		t.Fatalf("%d of %d forwarded", len(out), n)
	}
	for i, o := range out {
		if srcOf(o[offset:]) != mapped[subs[0]] && srcOf(o[offset:]) != mapped[subs[1]] {
			t.Fatalf("packet %d: source %v", i, srcOf(o[offset:]))
		}
	}
}

// TestShardsNoHairpin: with hairpinning off, a packet to another shard's
// mapping is dropped before any shard creates state, and counted as
// no-hairpin.
func TestShardsNoHairpin(t *testing.T) {
	g := shardGateway(t, "full-cone", 2, func(c *nat.Config) { c.NoHairpinning = true })
	a := subscriberOf(t, 0, 2, netip.Addr{})
	b := subscriberOf(t, 1, 2, a)
	p := xlate(t, g, udp4(netip.AddrPortFrom(b, 40000), srv1, 18))
	if p == nil {
		t.Fatal("b's flow dropped")
	}
	before := g.Stats().Engine.Sessions
	if q := xlate(t, g, udp4(netip.AddrPortFrom(a, 40000), srcOf(p), 18)); q != nil {
		t.Fatalf("hairpin forwarded: %v -> %v", srcOf(q), dstOf(q))
	}
	s := g.Stats()
	if s.NoHairpin != 1 || s.Drops[nat.ReasonNoHairpin.String()] != 1 || s.Engine.Sessions != before {
		t.Fatalf("no-hairpin %d, drops %v, sessions %d (before %d)", s.NoHairpin, s.Drops, s.Engine.Sessions, before)
	}
}

// TestShardsLimit: a subscriber's per-subscriber session limit holds with
// shards (all its flows meet one engine).
func TestShardsLimit(t *testing.T) {
	g := shardGateway(t, "full-cone", 2, func(c *nat.Config) { c.MaxSessionsPerSubscriber = 3 })
	a := subscriberOf(t, 1, 2, netip.Addr{})
	ok := 0
	for port := uint16(1000); port < 1010; port++ {
		if p := xlate(t, g, udp4(netip.AddrPortFrom(a, port), srv1, 18)); p != nil && p[9] == 17 {
			ok++
		}
	}
	if ok != 3 {
		t.Fatalf("%d sessions admitted, want 3", ok)
	}
}

// TestShardsReload: a reload reaches every shard; a changed external list
// is refused.
func TestShardsReload(t *testing.T) {
	g := shardGateway(t, "full-cone", 2, nil)
	cfg := g.Config()
	if len(cfg.External) != 2 {
		t.Fatalf("Config: %v", cfg.External)
	}
	cfg.UDPTimeout = 77e9
	if err := g.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	for k, sh := range g.shards {
		if sh.eng.Config().UDPTimeout != 77e9 {
			t.Fatalf("shard %d not reloaded", k)
		}
	}
	cfg.External = cfg.External[:1]
	if err := g.Reload(cfg); err == nil {
		t.Fatal("changed external addresses accepted")
	}
}

// hairpinBatch sets up a 2-shard gateway with subscribers a (shard 0) and
// b (shard 1, mapped to mb), and returns a function translating one batch
// and returning how many packets it wrote and the counters it added.
func hairpinBatch(t *testing.T) (a netip.Addr, mb netip.AddrPort, batch func(pkts ...[]byte) (int, Counters)) {
	g := shardGateway(t, "full-cone", 2, nil)
	a = subscriberOf(t, 0, 2, netip.Addr{})
	b := subscriberOf(t, 1, 2, a)
	p := xlate(t, g, udp4(netip.AddrPortFrom(b, 40000), srv1, 18))
	if p == nil {
		t.Fatal("b's flow dropped")
	}
	extra := make([][]byte, extraBufs)
	for i := range extra {
		extra[i] = make([]byte, offset+2048)
	}
	return a, srcOf(p), func(pkts ...[]byte) (int, Counters) {
		before := g.Stats().Counters
		sizes := make([]int, len(pkts))
		for i, b := range pkts {
			sizes[i] = int(binary.BigEndian.Uint16(b[offset+2:]))
		}
		out, _ := g.translate(pkts, sizes, nil, extra, nil, nil, &g.per[0], g.sc)
		c := g.Stats().Counters
		return len(out), Counters{RxPackets: c.RxPackets - before.RxPackets, OutForwarded: c.OutForwarded - before.OutForwarded,
			InForwarded: c.InForwarded - before.InForwarded, Hairpinned: c.Hairpinned - before.Hairpinned,
			OutDropped: c.OutDropped - before.OutDropped, InDropped: c.InDropped - before.InDropped, Replies: c.Replies - before.Replies}
	}
}

// TestShardsHairpinMarkPerBatch: the mark that hands a hairpin across the
// shards to the owner's pass does not outlive its batch: a later batch's
// packet at the same index whose destination is still an external address
// (an unsolicited packet the owner drops) is not translated a second time.
func TestShardsHairpinMarkPerBatch(t *testing.T) {
	a, mb, batch := hairpinBatch(t)
	hp := func() []byte { return udp4(netip.AddrPortFrom(a, 40000), mb, 18) }
	if n, _ := batch(hp()); n != 1 {
		t.Fatalf("a hairpin across the shards: %d written", n)
	}
	// Index 0 held the hairpin; now it holds a packet to b's address that
	// the owner does not forward, beside another hairpin (so the owner's
	// pass runs).
	n, c := batch(udp4(srv2, netip.AddrPortFrom(mb.Addr(), 41234), 18), hp())
	if v := c.InDropped + c.Replies; n != 1+int(c.Replies) || v != 1 {
		t.Fatalf("an unsolicited packet where a hairpin was, and a hairpin: %d written, counted %+v; want the packet dropped (or answered) once", n, c)
	}
}

// TestShardsHairpinCountedOnce: a hairpin across the shards, read once and
// written once, is counted once, as hairpinned (packets and bytes), not
// also as inbound forwarded by the owner's pass.
func TestShardsHairpinCountedOnce(t *testing.T) {
	a, mb, batch := hairpinBatch(t)
	n, c := batch(udp4(netip.AddrPortFrom(a, 40000), mb, 18))
	if n != 1 || c.RxPackets != 1 || c.Hairpinned != 1 || c.InForwarded != 0 || c.OutForwarded != 0 {
		t.Fatalf("a hairpin across the shards: %d written, counted %+v; want 1 written, 1 hairpinned, nothing else", n, c)
	}
}

// TestShardsHairpinPartialChecksum: a UDP GSO super-packet (its checksum
// field a partial, pseudo-header sum) hairpinned across the shards is
// translated by both shards (source, then destination), goes out whole
// with its header, and its checksum, completed as the kernel's
// segmentation would, verifies against the translated addresses and
// ports. The namespace tests cannot see this (veth peers trust
// CHECKSUM_PARTIAL).
func TestShardsHairpinPartialChecksum(t *testing.T) {
	g := shardGateway(t, "full-cone", 2, nil)
	a := subscriberOf(t, 0, 2, netip.Addr{})
	b := subscriberOf(t, 1, 2, a)
	mapped := map[netip.Addr]netip.AddrPort{}
	for _, sub := range []netip.Addr{a, b} {
		p := xlate(t, g, udp4(netip.AddrPortFrom(sub, 40000), srv1, 18))
		if p == nil {
			t.Fatalf("%v's flow dropped", sub)
		}
		mapped[sub] = srcOf(p)
	}
	extra := make([][]byte, extraBufs)
	for i := range extra {
		extra[i] = make([]byte, offset+2048)
	}
	for _, c := range []struct{ from, to netip.Addr }{{a, b}, {b, a}} {
		const payload = 1000
		src, dst := netip.AddrPortFrom(c.from, 40000), mapped[c.to]
		buf := udp4(src, dst, payload)
		n := 28 + payload
		p := buf[offset : offset+n]
		binary.BigEndian.PutUint16(p[26:], packet.Fold(packet.PseudoHeaderSum(src.Addr(), dst.Addr(), tuple.UDP, 8+payload)))
		h := buf[offset-vnetHdrLen : offset]
		h[0], h[1] = 1, 5 // VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4
		binary.LittleEndian.PutUint16(h[4:], payload)
		binary.LittleEndian.PutUint16(h[6:], 20)
		binary.LittleEndian.PutUint16(h[8:], 6)
		out, raw := g.translate([][]byte{buf}, []int{n}, []bool{true}, extra, nil, nil, &g.per[0], g.sc)
		if len(out) != 0 || len(raw) != 1 || len(raw[0]) != vnetHdrLen+n {
			t.Fatalf("hairpin %v -> %v: %d out, %d raw", src, dst, len(out), len(raw))
		}
		q := raw[0][vnetHdrLen:]
		if srcOf(q) != mapped[c.from] || dstOf(q) != netip.AddrPortFrom(c.to, 40000) {
			t.Fatalf("hairpin %v -> %v: %v -> %v", src, dst, srcOf(q), dstOf(q))
		}
		binary.BigEndian.PutUint16(q[26:], packet.Checksum(q[20:], 0))
		if !valid(q) {
			t.Fatalf("hairpin %v -> %v: the completed checksum does not verify", src, dst)
		}
	}
}
