package gateway

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/portspace/portspace/internal/tunnet"
	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/packet"
)

// offset is the headroom left before each packet in the TUN buffers: the
// virtio-net header (10 bytes) goes there on write.
const offset = 16

// extraBufs bounds the ICMP replies and released fragments one batch adds.
const extraBufs = 64

type system struct {
	setup *tunnet.Setup
	devs  []tun.Device
}

// New validates opts, builds the engine and sets up the TUN device, routes,
// rules and proxy-ARP entries (removing first what a killed run left). The
// datapath starts with Run. Errors name the bad input: an inside network
// that overlaps an external address (ErrOverlap), an external address
// configured on this host (ErrAddressConfigured), a TUN device that cannot
// be created.
func New(opts Options) (*Gateway, error) {
	opts = opts.withDefaults()
	if err := opts.check(); err != nil {
		return nil, err
	}
	shards, owner, err := newShards(opts)
	if err != nil {
		return nil, err
	}
	local, err := tunnet.LocalAddrs()
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if !opts.Passthrough {
		for _, a := range opts.Engine.External {
			if dev, ok := local[a]; ok {
				return nil, fmt.Errorf("%w: %v is on %s (remove it: the gateway answers for it by proxy ARP)", ErrAddressConfigured, a, dev)
			}
		}
	}
	setup, err := tunnet.Apply(tunnet.Plan{
		TUN: opts.TUN, MTU: opts.MTU, Queues: opts.Workers, Table: opts.Table, Priority: opts.Priority,
		Inside: opts.Engine.Internal, External: opts.Engine.External, Passthrough: opts.Passthrough,
		StateDir: opts.StateDir,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g := &Gateway{opts: opts, shards: shards, ext: owner, inside: opts.Engine.Internal,
		log: opts.Logger, per: make([]counters, opts.Workers), sys: &system{setup: setup}, started: time.Now()}
	// The router's own addresses are outside the NAT, even one in an inside
	// network: ICMP errors the kernel sends about packets it forwards out of
	// the TUN (TTL expired, fragmentation needed) come from them.
	g.local = map[uint32]bool{}
	for a := range local {
		b := a.As4()
		g.local[binary.BigEndian.Uint32(b[:])] = true
	}
	for _, f := range setup.Queues {
		d, err := tun.CreateTUNFromFile(f, opts.MTU)
		if err != nil {
			g.closeSystem()
			return nil, fmt.Errorf("gateway: TUN %s: %w", opts.TUN, err)
		}
		go func() {
			for range d.Events() {
			}
		}()
		g.sys.devs = append(g.sys.devs, d)
	}
	g.log.Info("gateway up", "tun", opts.TUN, "workers", opts.Workers, "shards", opts.Shards, "external", opts.Engine.External,
		"inside", opts.Engine.Internal, "inside_devs", setup.InsideDevs, "outside_devs", setup.OutsideDevs,
		"passthrough", opts.Passthrough, "batch", g.sys.devs[0].BatchSize())
	return g, nil
}

// Close removes the TUN device and everything New set up, for a gateway
// that was not Run (Run cleans up itself).
func (g *Gateway) Close() error { return g.closeSystem() }

func (g *Gateway) closeSystem() error {
	for _, d := range g.sys.devs {
		d.Close()
	}
	return g.sys.setup.Remove()
}

// Run runs the datapath until ctx is done, then removes the TUN device and
// everything New set up. It returns the first worker error, if any.
func (g *Gateway) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errc := make(chan error, len(g.sys.devs)+1)
	for i, d := range g.sys.devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work := g.worker
			if !g.opts.SplitGSO {
				work = g.rawWorker
			}
			if err := work(d, g.sys.setup.Queues[i], &g.per[i]); err != nil {
				errc <- err
			}
		}()
	}
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		g.sweeper(stop)
	}()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	close(stop)
	for _, d := range g.sys.devs {
		d.Close()
	}
	wg.Wait()
	if rerr := g.sys.setup.Remove(); rerr != nil {
		err = errors.Join(err, fmt.Errorf("gateway: clean-up: %w", rerr))
	}
	g.log.Info("gateway down", "tun", g.opts.TUN)
	return err
}

// sweeper runs the engine's timers every ExpireEvery and writes the ICMP
// messages they produce (port unreachable for held SYNs, RFC 5382 REQ-4).
func (g *Gateway) sweeper(stop <-chan struct{}) {
	t := time.NewTicker(g.opts.ExpireEvery)
	defer t.Stop()
	var out [][]byte
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			out = out[:0]
			for _, sh := range g.shards {
				sh.mu.Lock()
				sh.eng.ExpireSome(now, 65536)
				for _, r := range sh.eng.Replies() {
					b := make([]byte, offset+len(r))
					copy(b[offset:], r)
					out = append(out, b)
				}
				sh.mu.Unlock()
			}
			if len(out) > 0 {
				g.per[0].c[cReplies].Add(uint64(len(out)))
				if _, err := g.sys.devs[0].Write(out, offset); err != nil {
					g.per[0].c[cWriteErr].Add(1)
				}
			}
		}
	}
}

// worker serves one TUN queue: read a batch (super-packets split into
// segments by the offload code), translate each packet in place under one
// lock of the engine, write the batch back (coalesced again on write).
func (g *Gateway) worker(d tun.Device, _ *os.File, ctr *counters) error {
	bs := d.BatchSize()
	bufs := make([][]byte, bs)
	sizes := make([]int, bs)
	for i := range bufs {
		bufs[i] = make([]byte, offset+65535)
	}
	extra := make([][]byte, extraBufs)
	for i := range extra {
		extra[i] = make([]byte, offset+2048)
	}
	out := make([][]byte, 0, bs+extraBufs)
	sc := newScratch(bs)
	for {
		n, err := d.Read(bufs, sizes, offset)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			ctr.c[cReadErr].Add(1)
			if n == 0 {
				if errors.Is(err, tun.ErrTooManySegments) {
					continue
				}
				// A malformed virtio header or a super-packet that could
				// not be split: dropped, counted.
				continue
			}
		}
		out, _ = g.translate(bufs[:n], sizes[:n], nil, extra, out[:0], nil, ctr, sc)
		if len(out) > 0 {
			if _, err := d.Write(out, offset); err != nil {
				if errors.Is(err, os.ErrClosed) {
					return nil
				}
				ctr.c[cWriteErr].Add(1)
			}
		}
	}
}

// vnetHdrLen is the size of struct virtio_net_hdr.
const vnetHdrLen = 10

// rawWorker serves one TUN queue without splitting super-packets: it
// reads up to a batch of packets from the queue's descriptor (each with
// its virtio-net header), translates each once, writes super-packets and
// packets with a partial checksum back whole with their headers (the
// kernel segments them on output), and writes the other packets through
// the offload code (coalesced into super-packets where it can).
func (g *Gateway) rawWorker(d tun.Device, f *os.File, ctr *counters) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("gateway: TUN queue: %w", err)
	}
	bs := d.BatchSize()
	bufs := make([][]byte, bs)
	sizes := make([]int, bs)
	partial := make([]bool, bs)
	for i := range bufs {
		bufs[i] = make([]byte, offset+65535)
	}
	extra := make([][]byte, extraBufs)
	for i := range extra {
		extra[i] = make([]byte, offset+2048)
	}
	out := make([][]byte, 0, bs+extraBufs)
	raw := make([][]byte, 0, bs)
	sc := newScratch(bs)
	var n int
	var rerr error
	readBatch := func(fd uintptr) bool {
		for n < bs {
			m, err := syscall.Read(int(fd), bufs[n][offset-vnetHdrLen:])
			if err == syscall.EAGAIN || err == syscall.EINTR {
				break
			}
			if err != nil {
				rerr = err
				return true
			}
			if m <= vnetHdrLen {
				ctr.c[cReadErr].Add(1)
				continue
			}
			h := bufs[n][offset-vnetHdrLen : offset]
			partial[n] = h[1] != 0 || h[0]&1 != 0 // gso_type set, or VIRTIO_NET_HDR_F_NEEDS_CSUM
			sizes[n] = m - vnetHdrLen
			n++
		}
		return n > 0
	}
	// writeRaw writes the packets left in wraw, all in one call of the
	// descriptor's Write (one lock and poll preparation for the batch).
	var wraw [][]byte
	writeRaw := func(fd uintptr) bool {
		for len(wraw) > 0 {
			_, err := syscall.Write(int(fd), wraw[0])
			if err == syscall.EAGAIN {
				return false
			}
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				ctr.c[cWriteErr].Add(1)
			}
			wraw = wraw[1:]
		}
		return true
	}
	for {
		n, rerr = 0, nil
		if err := rc.Read(readBatch); err != nil {
			return nil // the queue was closed
		}
		if rerr != nil {
			if errors.Is(rerr, syscall.EBADFD) || errors.Is(rerr, syscall.EBADF) {
				return nil
			}
			ctr.c[cReadErr].Add(1)
		}
		if n == 0 {
			continue
		}
		out, raw = g.translate(bufs[:n], sizes[:n], partial[:n], extra, out[:0], raw[:0], ctr, sc)
		if len(raw) > 0 {
			wraw = raw
			if err := rc.Write(writeRaw); err != nil {
				return nil
			}
		}
		if len(out) > 0 {
			if _, err := d.Write(out, offset); err != nil {
				if errors.Is(err, os.ErrClosed) {
					return nil
				}
				ctr.c[cWriteErr].Add(1)
			}
		}
	}
}

// tally sums a batch's counters before they go to the shared atomics.
type tally struct {
	rxBytes, outB, inB, hpB, nOut, nIn, nHp, dOut, dIn, nRep, nRel, noHp uint64
	ne                                                                   int // extra buffers used
}

// translate runs one batch through the engines and returns the packets to
// write back. It reads the clock once per batch (the engine's timers have
// one-second resolution) and does not allocate. With shards, each shard's
// packets are translated under one lock of that shard, in the order they
// were read (a flow's packets all go to one shard, so each flow keeps its
// order).
//
// partial, if not nil, marks the packets that carry a virtio-net header
// in the 10 bytes before offset with a partial checksum (a super-packet
// the kernel segments on write, or CHECKSUM_PARTIAL): their checksum field
// holds the pseudo-header sum, not its complement, so it is complemented
// around the engine's incremental update (RFC 1624 eq. 3 then updates the
// partial sum exactly), and the packet, translated once, goes to raw to be
// written back whole with its header.
func (g *Gateway) translate(bufs [][]byte, sizes []int, partial []bool, extra [][]byte, out, raw [][]byte, ctr *counters, sc *scratch) ([][]byte, [][]byte) {
	var t tally
	ctr.c[cBatches].Add(1)
	ctr.c[cRxPackets].Add(uint64(len(bufs)))
	if g.opts.Passthrough {
		for i := range bufs {
			t.rxBytes += uint64(sizes[i])
			if partial != nil && partial[i] && !completeUDP(bufs[i], sizes[i]) {
				raw = append(raw, bufs[i][offset-vnetHdrLen:offset+sizes[i]])
			} else {
				out = append(out, bufs[i][:offset+sizes[i]])
			}
		}
		ctr.c[cRxBytes].Add(t.rxBytes)
		ctr.c[cPassed].Add(uint64(len(bufs)))
		return out, raw
	}
	now := time.Now()
	ns := len(g.shards)
	crossed := 0 // packets marked in sc.again
	for i := range bufs {
		pkt := bufs[i][offset : offset+sizes[i]]
		t.rxBytes += uint64(len(pkt))
		inb := !g.outbound(pkt)
		sc.inb[i] = inb
		if ns > 1 {
			sc.shard[i] = g.shardFor(pkt, inb)
		}
	}
	for k, sh := range g.shards {
		// Prefetch the table look-ups of the shard's first packets: their
		// cache misses then overlap (nat.Engine.Prefetch).
		var views [nat.PrefetchSlots][]byte
		var inb [nat.PrefetchSlots]bool
		np, mine := 0, 0
		for i := range bufs {
			if ns > 1 && int(sc.shard[i]) != k {
				continue
			}
			mine++
			if np < len(views) {
				views[np], inb[np] = bufs[i][offset:offset+sizes[i]], sc.inb[i]
				np++
			}
		}
		if mine == 0 {
			continue
		}
		sh.mu.Lock()
		if np >= 4 {
			sh.eng.Prefetch(views[:np], inb[:np])
		}
		for i := range bufs {
			if ns > 1 && int(sc.shard[i]) != k {
				continue
			}
			var again bool
			out, raw, again = g.one(sh.eng, k, bufs[i], sizes[i], partial != nil && partial[i], !sc.inb[i], false, now, extra, out, raw, &t)
			if again {
				sc.again[i] = true
				crossed++
			}
		}
		sh.mu.Unlock()
	}
	// The second pass: the owner of a hairpinned packet's destination
	// translates it as an inbound packet from the sender's mapping, here
	// rather than after the kernel routes it back into the TUN. (Routed
	// from the TUN into the TUN, each such packet had the kernel send an
	// ICMP redirect to the sender's external address, and those reset the
	// kernel's ICMP rate limit for that address, so that time-exceeded
	// and unreachable errors to its subscribers were suppressed.) Shards
	// are locked one at a time, in order, as in the first pass.
	for k, sh := range g.shards {
		if crossed == 0 {
			break
		}
		locked := false
		for i := range bufs {
			if !sc.again[i] || int(g.shardFor(bufs[i][offset:offset+sizes[i]], true)) != k {
				continue
			}
			if !locked {
				sh.mu.Lock()
				locked = true
			}
			sc.again[i] = false
			crossed--
			out, raw, _ = g.one(sh.eng, k, bufs[i], sizes[i], partial != nil && partial[i], false, true, now, extra, out, raw, &t)
		}
		if locked {
			sh.mu.Unlock()
		}
	}
	ctr.c[cRxBytes].Add(t.rxBytes)
	ctr.c[cOutFwd].Add(t.nOut)
	ctr.c[cOutFwdBytes].Add(t.outB)
	ctr.c[cInFwd].Add(t.nIn)
	ctr.c[cInFwdBytes].Add(t.inB)
	ctr.c[cHairpin].Add(t.nHp)
	ctr.c[cHairpinBytes].Add(t.hpB)
	ctr.c[cOutDropped].Add(t.dOut)
	ctr.c[cInDropped].Add(t.dIn)
	ctr.c[cReplies].Add(t.nRep)
	ctr.c[cReleased].Add(t.nRel)
	if t.noHp > 0 {
		ctr.c[cNoHairpin].Add(t.noHp)
	}
	return out, raw
}

// shardFor returns the shard of a packet: for inbound packets the owner of
// the destination (an external address), for outbound ones the shard of
// the source (the subscriber, ShardOf).
func (g *Gateway) shardFor(pkt []byte, inbound bool) uint8 {
	if len(pkt) < 20 {
		return 0
	}
	if inbound {
		return g.ext[binary.BigEndian.Uint32(pkt[16:20])] - 1
	}
	return uint8(shardOf(binary.BigEndian.Uint32(pkt[12:16]), len(g.shards)))
}

// one translates one packet (buf[offset:offset+size]) with eng, the engine
// of shard k, and appends what is to be written to out or raw. It reports
// again, appending nothing, for a packet from inside to another shard's
// external address whose source it translated: the caller hands it to the
// owner's shard, which translates its destination as an inbound packet
// from this shard's external endpoint (RFC 4787 REQ-9). owner marks that
// pass: the packet, read once, is counted once, as hairpinned, when the
// owner forwards it.
func (g *Gateway) one(eng *nat.Engine, k int, buf []byte, size int, partial, outbound, owner bool, now time.Time, extra [][]byte, out, raw [][]byte, t *tally) (_, _ [][]byte, again bool) {
	pkt := buf[offset : offset+size]
	cross := false
	if len(g.shards) > 1 && outbound && len(pkt) >= 20 {
		if o := g.ext[binary.BigEndian.Uint32(pkt[16:20])]; o != 0 && int(o-1) != k {
			if g.opts.Engine.NoHairpinning {
				t.noHp++
				t.dOut++
				return out, raw, false
			}
			cross = true
		}
	}
	cs := -1           // offset of a partial checksum field in pkt
	var l4, sp, dp int // start of the transport header; its ports before translation
	if partial {
		hdr := buf[offset-vnetHdrLen : offset]
		l4 = int(binary.LittleEndian.Uint16(hdr[6:]))
		cs = l4 + int(binary.LittleEndian.Uint16(hdr[8:]))
		if cs+2 > len(pkt) || l4+4 > len(pkt) {
			cs = -2 // a header that does not fit: dropped below
		} else {
			c := ^binary.BigEndian.Uint16(pkt[cs:])
			if c == 0 && len(pkt) > 9 && pkt[9] == 17 {
				c = 0xffff // UDP: 0 means "no checksum"; 0xffff is the same sum
			}
			binary.BigEndian.PutUint16(pkt[cs:], c)
			sp, dp = int(binary.BigEndian.Uint16(pkt[l4:])), int(binary.BigEndian.Uint16(pkt[l4+2:]))
		}
	}
	var v nat.Verdict
	switch {
	case cs == -2:
		v = nat.Verdict{Action: nat.Drop}
	case outbound:
		v = eng.Outbound(pkt, now)
	default:
		v = eng.Inbound(pkt, now)
	}
	if cross && v.Action == nat.Forward {
		v.Action = nat.Hairpin
	}
	if cs >= 0 && (v.Action == nat.Forward || v.Action == nat.Hairpin) {
		// The engine's update covers the pseudo-header (addresses) and
		// the ports; the ports are summed from the packet when the
		// checksum is completed, so their part is taken out again.
		c := binary.BigEndian.Uint16(pkt[cs:])
		c = packet.Update16(c, binary.BigEndian.Uint16(pkt[l4:]), uint16(sp))
		c = packet.Update16(c, binary.BigEndian.Uint16(pkt[l4+2:]), uint16(dp))
		binary.BigEndian.PutUint16(pkt[cs:], ^c)
		if cross {
			// Still partial: the owner's pass completes it (and counts it).
			return out, raw, true
		}
		if completeUDP(buf, size) {
			out = append(out, buf[:offset+len(pkt)])
		} else {
			raw = append(raw, buf[offset-vnetHdrLen:offset+len(pkt)])
		}
		if v.Action == nat.Hairpin || owner {
			t.nHp++
			t.hpB += uint64(len(pkt))
		} else if outbound {
			t.nOut++
			t.outB += uint64(len(pkt))
		} else {
			t.nIn++
			t.inB += uint64(len(pkt))
		}
		return out, raw, false
	}
	switch v.Action {
	case nat.Forward:
		out = append(out, buf[:offset+len(pkt)])
		if owner {
			t.nHp++
			t.hpB += uint64(len(pkt))
		} else if outbound {
			t.nOut++
			t.outB += uint64(len(pkt))
		} else {
			t.nIn++
			t.inB += uint64(len(pkt))
		}
	case nat.Hairpin:
		if cross {
			again = true // fragments it released (below) are routed back by the kernel
		} else {
			out = append(out, buf[:offset+len(pkt)])
			t.nHp++
			t.hpB += uint64(len(pkt))
		}
	case nat.Reply:
		if t.ne < len(extra) && len(v.Reply) <= len(extra[t.ne])-offset {
			out = append(out, extra[t.ne][:offset+copy(extra[t.ne][offset:], v.Reply)])
			t.ne++
			t.nRep++
		}
	default:
		if outbound {
			t.dOut++
		} else {
			t.dIn++
		}
	}
	if v.Released && cs < 0 {
		for _, f := range eng.Released() {
			if t.ne < len(extra) && len(f) <= len(extra[t.ne])-offset {
				out = append(out, extra[t.ne][:offset+copy(extra[t.ne][offset:], f)])
				t.ne++
				t.nRel++
			}
		}
	}
	return out, raw, again
}

// completeUDP completes the checksum of buf[offset:offset+size] if it is a
// single UDP datagram with a partial checksum (NEEDS_CSUM, no GSO, in the
// virtio-net header before offset: veth and most NICs hand datagrams over
// so), as the NIC would, and reports whether it did. Such a datagram is
// then written through the offload code, which coalesces the datagrams of
// one flow in the batch into one UDP GSO super-packet: one write and one
// pass through the kernel's forwarding path instead of one per datagram.
func completeUDP(buf []byte, size int) bool {
	hdr := buf[offset-vnetHdrLen : offset]
	pkt := buf[offset : offset+size]
	l4 := int(binary.LittleEndian.Uint16(hdr[6:]))
	if hdr[1] != 0 || hdr[0]&1 == 0 || len(pkt) < 28 || pkt[9] != 17 || l4 < 20 || l4+8 > len(pkt) ||
		binary.LittleEndian.Uint16(hdr[8:]) != 6 {
		return false
	}
	full := packet.Checksum(pkt[l4:], 0)
	if full == 0 {
		full = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	binary.BigEndian.PutUint16(pkt[l4+6:], full)
	return true
}

// outbound reports whether pkt goes to Engine.Outbound: everything but
// packets to an external address from outside the inside networks or from
// the router itself.
func (g *Gateway) outbound(pkt []byte) bool {
	if len(pkt) >= 20 && g.ext[binary.BigEndian.Uint32(pkt[16:20])] != 0 {
		src := binary.BigEndian.Uint32(pkt[12:16])
		return g.isInside(src) && !g.local[src]
	}
	return true
}

func (g *Gateway) isInside(a uint32) bool {
	for _, p := range g.inside {
		b := p.Addr().As4()
		m := uint32(0)
		if p.Bits() > 0 {
			m = ^uint32(0) << (32 - p.Bits())
		}
		if a&m == binary.BigEndian.Uint32(b[:])&m {
			return true
		}
	}
	return false
}
