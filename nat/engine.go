package nat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/portspace/portspace/packet"
	"github.com/portspace/portspace/portalloc"
	"github.com/portspace/portspace/tuple"
)

// Action is what the caller does with a packet after Outbound or Inbound.
type Action uint8

// The actions. The zero Action is Drop.
const (
	// Drop: discard the packet; Verdict.Reason says why.
	Drop Action = iota
	// Forward: send the rewritten packet on (outbound packets to the
	// external side, inbound packets to the internal side).
	Forward
	// Hairpin: the packet came from inside, was addressed to an external
	// address of this NAT and has been translated twice (RFC 4787 REQ-9):
	// send it back to the internal side.
	Hairpin
	// Reply: drop the packet and send Verdict.Reply, an ICMP message the
	// engine built, back towards the packet's source.
	Reply
)

// String returns "drop", "forward", "hairpin" or "reply".
func (a Action) String() string {
	switch a {
	case Drop:
		return "drop"
	case Forward:
		return "forward"
	case Hairpin:
		return "hairpin"
	case Reply:
		return "reply"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Verdict is the result of translating one packet.
type Verdict struct {
	// Action says what to do with the packet.
	Action Action
	// Released is true when the packet was the first fragment of a
	// datagram whose later fragments had arrived before it and were held:
	// they are now translated and Engine.Released returns them, to be sent
	// on the internal side after this packet (RFC 4787 REQ-14).
	Released bool
	// Reason says why a packet was dropped (or replied to); ReasonNone for
	// Forward and Hairpin.
	Reason Reason
	// Reply is, for Action Reply, the ICMP message to send back to the
	// packet's source. It points into the engine's buffer and is valid
	// until the next call on the Engine.
	Reply []byte
}

// Stats are the engine's counters (see Engine.Stats).
type Stats struct {
	Outbound, Inbound uint64 // packets handed to Outbound and Inbound
	Forwarded         uint64 // Forward verdicts
	Hairpinned        uint64 // Hairpin verdicts
	Replied           uint64 // Reply verdicts
	Dropped           uint64 // Drop verdicts
	Expired           uint64 // sessions retired by timers
	Untranslated      uint64 // packets forwarded untouched (Config.NoTranslate)
	HeldSYNReplies    uint64 // port-unreachable messages for held SYNs (Engine.Replies)
	ReleasedFragments uint64 // held fragments translated and released (Engine.Released)
	HeldFragments     int    // fragments held now, waiting for their first fragment
	HeldFragmentBytes int    // their bytes
	Sessions          int    // live sessions (flows)
	Mappings          int    // live mappings
	HeldSYNs          int    // SYNs held now
	Records           int    // table records (sessions, mappings, filters)
	TableBytes        int    // memory of the table's arrays
	// Drops counts Drop and Reply verdicts by Reason, and held fragments
	// dropped later (fragment-timeout; their verdict was fragment-held).
	// An array, so that Stats does not allocate.
	Drops [NumReasons]uint64
}

type heldSYN struct {
	extAddr, remAddr uint32
	extPort, remPort uint16
	deadline         uint32
	n                int
	buf              [256]byte
}

type subCount struct{ sessions int32 }

// Engine is a NAT44 engine. Create it with New. It is not safe for
// concurrent use (see the package doc); it starts no goroutines.
type Engine struct {
	cfg   Config
	t     *table
	alloc [3]*portalloc.Allocator // tcp, udp, icmp
	det   *portalloc.Deterministic

	inside []struct{ a, m uint32 }
	noXlat []struct{ a, m uint32 }
	ext    []uint32
	// extSet holds the external addresses (open addressing, 0 empty;
	// see isExternal), extLo and extHi the lowest and highest.
	extSet       []uint32
	extShift     uint8
	extLo, extHi uint32

	base    int64
	hasBase bool

	tmUDP, tmEst, tmTrans, tmClose, tmICMP, tmHold, tmFrag uint32
	filt                                                   [3]Filtering // by proto index
	overlap                                                bool
	debug                                                  bool // Logger enabled at debug level

	sessions, mappings, loose int
	inMembers                 int // sessions created inbound on another flow's mapping
	subs                      map[uint32]*subCount
	ovSubs                    map[ovSubKey]*ovPorts // overlapping ports per subscriber (engine_overlap.go)

	cursor  uint32 // next record ExpireSome visits
	chk     overlapCheck
	held    []heldSYN
	nheld   int
	replies [][]byte
	rbuf    []byte
	reply   [576]byte

	frags     [fragSlots]fragEntry
	fragHeld  []heldFrag // held fragments (engine_frag.go), arrival order
	fragBuf   []byte     // their bytes
	nfrag     int        // entries of fragHeld not gone
	fragDirty bool       // fragHeld has gone entries or released is not empty
	released  [][]byte   // Released
	nextID    uint16     // last IPv4 ID given to an outbound fragmented datagram
	st        Stats
}

func pidx(p tuple.Proto) int {
	switch p {
	case tuple.TCP:
		return 0
	case tuple.UDP:
		return 1
	}
	return 2
}

func u4(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

// src4 and dst4 return the source and destination address of parsed
// packet p as u4 would (p.Src() and p.Dst()), read from its header
// without building a netip.Addr: a parsed packet has 20 header bytes.
func src4(p *packet.Packet) uint32 { return binary.BigEndian.Uint32(p.Bytes()[12:16]) }
func dst4(p *packet.Packet) uint32 { return binary.BigEndian.Uint32(p.Bytes()[16:20]) }
func a4(u uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}
func ap4(u uint32, p uint16) netip.AddrPort { return netip.AddrPortFrom(a4(u), p) }

// secs rounds d up to whole seconds (0 for a negative d: a disabled hold).
func secs(d time.Duration) uint32 {
	if d < 0 {
		return 0
	}
	return uint32((d + time.Second - 1) / time.Second)
}

// New validates cfg and returns an Engine. An invalid cfg gives a
// *ConfigError naming the field ("nat: Config.External: ...").
func New(cfg Config) (*Engine, error) {
	cfg.External = append([]netip.Addr(nil), cfg.External...)
	cfg.Internal = append([]netip.Prefix(nil), cfg.Internal...)
	cfg.NoTranslate = append([]netip.Prefix(nil), cfg.NoTranslate...)
	cfg, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, subs: map[uint32]*subCount{}}
	s := cfg.Secret
	e.t = newTable(binary.LittleEndian.Uint64(s[:8])^0x5bd1e995, binary.LittleEndian.Uint64(s[8:])^0x27d4eb2f165667c5,
		keyMode{
			mapRemAddr: cfg.Mapping != MappingEIM || cfg.Overlapping,
			mapRemPort: cfg.Mapping == MappingAPDM || cfg.Overlapping,
			inRem:      cfg.Overlapping,
		}, cfg.ExpectedSessions)
	e.overlap = cfg.Overlapping
	e.debug = cfg.Logger.Enabled(context.Background(), slog.LevelDebug)
	e.tmUDP, e.tmEst, e.tmTrans = secs(cfg.UDPTimeout), secs(cfg.TCPEstablished), secs(cfg.TCPTransitory)
	e.tmClose, e.tmICMP, e.tmHold = secs(cfg.TCPClosing), secs(cfg.ICMPTimeout), secs(cfg.SYNHold)
	e.tmFrag = secs(cfg.FragmentHold)
	e.filt = [3]Filtering{cfg.TCPFiltering, cfg.Filtering, cfg.Filtering}
	for _, p := range cfg.Internal {
		e.inside = append(e.inside, prefix32(p))
	}
	for _, p := range cfg.NoTranslate {
		e.noXlat = append(e.noXlat, prefix32(p))
	}
	for _, a := range cfg.External {
		e.ext = append(e.ext, u4(a))
	}
	e.makeExtSet()
	ports := cfg.Ports
	if cfg.Deterministic {
		r := tuple.PortRangeFrom(1024, 65535)
		if ports.IsValid() {
			if ports.NumRanges() != 1 {
				return nil, configError("Ports", "deterministic mapping needs one contiguous range")
			}
			r = ports.Range(0)
		}
		e.det, err = portalloc.NewDeterministic(cfg.Internal, cfg.External, r)
		if err != nil {
			return nil, configError("Deterministic", "%w", err)
		}
	}
	for i, proto := range []tuple.Proto{tuple.TCP, tuple.UDP, tuple.ICMP} {
		pc := portalloc.Config{
			Addrs: cfg.External, Ports: ports, Algorithm: cfg.Algorithm, Secret: cfg.Secret,
			Seed: cfg.Seed + uint64(i), Preserve: cfg.PreservePort, Parity: cfg.Parity,
			MixClasses: cfg.MixClasses, Pooling: cfg.Pooling, Quarantine: cfg.Quarantine,
			BlockSize: cfg.BlockSize, MaxBlocks: cfg.MaxBlocksPerSubscriber,
			MaxPorts: cfg.MaxPortsPerSubscriber, Deterministic: e.det,
		}
		if proto == tuple.ICMP && !cfg.Deterministic {
			pc.Ports = tuple.PortSetOf(tuple.PortRangeFrom(0, 65535))
			pc.MixClasses, pc.Parity = true, false
		}
		if proto == tuple.ICMP && cfg.Deterministic {
			pc.Parity = false
		}
		if e.alloc[i], err = portalloc.New(pc); err != nil {
			// nat has checked every other setting portalloc checks: what
			// is left is port blocks that do not fit the ports.
			field := "Ports"
			if cfg.BlockSize > 0 {
				field = "BlockSize"
			}
			return nil, configError(field, "%w", err)
		}
	}
	e.held = make([]heldSYN, cfg.MaxHeldSYNs)
	return e, nil
}

// Config returns the engine's configuration with defaults filled in.
func (e *Engine) Config() Config { return e.cfg }

// Deterministic returns the RFC 7422 mapping when Config.Deterministic is
// set (for `nat whois`: Reverse), else nil.
func (e *Engine) Deterministic() *portalloc.Deterministic { return e.det }

func (e *Engine) now(t time.Time) uint32 {
	u := t.Unix()
	if !e.hasBase {
		e.base, e.hasBase = u-1, true
	}
	d := u - e.base
	if d < 1 {
		d = 1
	}
	if d > 1<<31 {
		d = 1 << 31
	}
	return uint32(d)
}

func prefix32(p netip.Prefix) struct{ a, m uint32 } {
	m := uint32(0)
	if p.Bits() > 0 {
		m = ^uint32(0) << (32 - p.Bits())
	}
	return struct{ a, m uint32 }{u4(p.Addr()) & m, m}
}

// noTranslate reports whether traffic with remote a:port is exempt from
// translation (Config.NoTranslate, RFC 6888 REQ-6).
func (e *Engine) noTranslate(a uint32, port uint16, proto tuple.Proto) bool {
	for _, p := range e.noXlat {
		if a&p.m == p.a {
			return !e.cfg.NoTranslatePorts.IsValid() || proto.HasPorts() && e.cfg.NoTranslatePorts.Contains(port)
		}
	}
	return false
}

func (e *Engine) isInside(a uint32) bool {
	for _, p := range e.inside {
		if a&p.m == p.a {
			return true
		}
	}
	return false
}

// makeExtSet builds isExternal's set of the external addresses: a table
// at most half full, probed linearly from a multiplicative hash.
func (e *Engine) makeExtSet() {
	b := 1
	for 1<<b < 2*len(e.ext) {
		b++
	}
	e.extSet = make([]uint32, 1<<b)
	e.extShift = uint8(32 - b)
	e.extLo, e.extHi = ^uint32(0), 0
	mask := uint32(len(e.extSet) - 1)
	for _, a := range e.ext {
		e.extLo, e.extHi = min(e.extLo, a), max(e.extHi, a)
		for i := a * 0x9e3779b1 >> e.extShift; ; i = (i + 1) & mask {
			if e.extSet[i] == a {
				break
			}
			if e.extSet[i] == 0 {
				e.extSet[i] = a
				break
			}
		}
	}
}

// isExternal reports whether a is one of the external addresses: up to
// four are compared in turn; with more, most packets' destinations lie
// outside the pool's range and cost two comparisons, the rest one or two
// probes of extSet (no Go map on the packet path).
func (e *Engine) isExternal(a uint32) bool {
	if len(e.ext) <= 4 {
		for _, x := range e.ext {
			if x == a {
				return true
			}
		}
		return false
	}
	if a < e.extLo || a > e.extHi || a == 0 {
		return false
	}
	mask := uint32(len(e.extSet) - 1)
	for i := a * 0x9e3779b1 >> e.extShift; ; i = (i + 1) & mask {
		switch e.extSet[i] {
		case a:
			return true
		case 0:
			return false
		}
	}
}

func (e *Engine) drop(r Reason) Verdict {
	e.st.Drops[r]++
	e.st.Dropped++
	return Verdict{Action: Drop, Reason: r}
}

func (e *Engine) bad(err error) Verdict {
	return e.drop(FromPacket(packet.ReasonOf(err)))
}

// timeout returns the idle timer of a session of proto in TCP state s.
func (e *Engine) timeout(proto uint8, s uint8) uint32 {
	switch tuple.Proto(proto) {
	case tuple.UDP:
		return e.tmUDP
	case tuple.ICMP:
		return e.tmICMP
	}
	switch s {
	case tcpOutSYN, tcpInSYN:
		return e.tmTrans
	case tcpFinBoth, tcpRst:
		return e.tmClose
	}
	return e.tmEst
}

func (e *Engine) alive(r *rec, now uint32) bool { return now < r.expire }

// The mapping timer (RFC 4787 §4.3, RFC 5382 REQ-5, RFC 5508 REQ-2): a
// mapping lives while one of its sessions does. The owner's own timer
// covers the mapping while its flow lives; rec.mx bounds how long its
// other sessions outlive it, and when the owner's flow ends (a zombie) its
// expire becomes that bound: a look-up that lands on a zombie past it
// treats the mapping as expired although its dead sessions still await
// the sweep. The bound is exact while the mapping has one other session
// and an upper bound with more (a timer that shortens, TCP closing, is
// not reflected: the sweep then ends the mapping).

// mxSpan returns rec.mx for other sessions ending at end and an owner's
// own timer at own.
func mxSpan(end, own uint32) uint16 {
	switch {
	case end == ^uint32(0):
		return mxUnknown
	case end <= own:
		return 0
	}
	return uint16(min(end-own, mxUnknown))
}

// setExpire sets r's own timer to x, keeping an owner's mx bound.
func setExpire(r *rec, x uint32) {
	if r.mx != 0 && r.mx != mxUnknown {
		r.mx = mxSpan(r.expire+uint32(r.mx), x)
	}
	r.expire = x
}

// revive makes zombie r a live owner again with its own timer at x.
func revive(r *rec, x uint32) {
	end := r.expire
	r.flags &^= fZombie
	r.expire, r.mx = x, mxSpan(end, x)
}

// memberTimer notes that another session of the mapping that owner o
// holds now ends at x.
func memberTimer(o *rec, x uint32) {
	if o.flags&fZombie != 0 {
		if o.refs <= 1 {
			o.expire = x
		} else {
			o.expire = max(o.expire, x)
		}
		return
	}
	if d := mxSpan(x, o.expire); o.refs <= 1 {
		o.mx = d
	} else {
		o.mx = max(o.mx, d)
	}
}

// ownerOf returns the owner of session r (not an owner itself), given
// the owner o (index+1, or 0) that the look-up found; nil for a session
// without one.
func (e *Engine) ownerOf(r *rec, o uint32) *rec {
	if r.flags&(fOwner|fLoose) != 0 {
		return nil
	}
	if o != 0 {
		if or := e.t.at(o - 1); or.extAddr == r.extAddr && or.extPort == r.extPort && or.proto == r.proto {
			return or
		}
	}
	// Under ADM/APDM a session opened inbound on another flow's mapping
	// has another mapping key outbound.
	var ira uint32
	var irp uint16
	if e.t.mode.inRem {
		ira, irp = r.remAddr, r.remPort
	}
	if f := e.t.find(mkKey(kMapIn, r.proto, r.extAddr, r.extPort, ira, irp)); f != 0 {
		return e.t.at(f - 1)
	}
	return nil
}

// Outbound translates pkt, an IPv4 packet from the internal side, in place.
// It never panics on malformed input; such packets are dropped with a
// packet.Reason name. It does not allocate for packets of existing flows.
func (e *Engine) Outbound(pkt []byte, now time.Time) Verdict {
	e.st.Outbound++
	if e.t.moving {
		e.t.settle(settleStep) // the slab resizes: before any look-up
	}
	if e.fragDirty {
		e.compactFragments()
	}
	var p packet.Packet
	if err := p.Parse(pkt); err != nil {
		return e.bad(err)
	}
	src := src4(&p)
	ns := e.now(now)
	if !e.isInside(src) {
		return e.drop(ReasonNotInternal)
	}
	if p.IsFragment() && !p.HasTransport() {
		return e.outboundFragment(&p, ns)
	}
	dst := dst4(&p)
	if len(e.noXlat) > 0 && e.noTranslate(dst, p.DstPort(), p.Proto()) {
		if p.IsFragment() {
			e.exemptFragment(&p, 1, ns)
		}
		return e.untranslated() // RFC 6888 REQ-6
	}
	hairpin := e.isExternal(dst)
	if hairpin && e.cfg.NoHairpinning {
		return e.drop(ReasonNoHairpin)
	}
	if p.IsFragment() && p.Proto() == tuple.ICMP && p.IsICMPError() {
		return e.drop(ReasonFragment)
	}
	if p.Proto() == tuple.ICMP && p.IsICMPError() {
		return e.outboundError(&p, now, ns)
	}
	if p.Proto() == tuple.ICMP && (!p.IsICMPQueryRequest() || hairpin) {
		// A query to an external address of this NAT would come back to
		// its sender; the NAT's own host answers such pings, not the engine.
		return e.drop(ReasonICMPUnsolicited)
	}
	origID := p.IPID()
	v := e.outboundFlow(&p, now, ns)
	var f *fragEntry
	if v.Action == Forward && p.IsFragment() {
		f = e.noteFragment(&p, true, src, origID, ns)
	}
	if v.Action != Forward || !hairpin {
		if v.Action == Forward {
			e.st.Forwarded++
		}
		return v
	}
	// Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8): the packet now has the
	// external source; deliver it as if it had arrived from outside.
	v = e.inboundFlow(&p, now, ns, true)
	if v.Action == Forward {
		v.Action = Hairpin
		e.st.Hairpinned++
		if f != nil {
			f.xlat2, f.hairpin = u4(p.Dst()), true
			v.Released = e.nfrag > 0 && e.releaseFragments(f, ns)
		}
	}
	return v
}

// flowKey returns the (remote address, remote port) used as the remote of
// a flow: for ICMP queries the identifier is the local "port" and the
// remote port is 0.
func remoteOf(p *packet.Packet, outbound bool) (uint32, uint16) {
	if outbound {
		if p.Proto() == tuple.ICMP {
			return dst4(p), 0
		}
		return dst4(p), p.DstPort()
	}
	if p.Proto() == tuple.ICMP {
		return src4(p), 0
	}
	return src4(p), p.SrcPort()
}

// lookupOut finds the session (index+1) of an outbound flow and the owner
// of its mapping (index+1), expiring dead records on the way.
func (e *Engine) lookupOut(proto uint8, ia uint32, ip uint16, ra uint32, rp uint16, now time.Time, ns uint32) (sess, owner uint32) {
	t := e.t
	var mra uint32
	var mrp uint16
	if t.mode.mapRemAddr {
		mra = ra
	}
	if t.mode.mapRemPort {
		mrp = rp
	}
	o := t.find(mkKey(kMapOut, proto, ia, ip, mra, mrp))
	if o != 0 {
		r := t.at(o - 1)
		if r.flags&fZombie == 0 && !e.alive(r, ns) {
			e.expireRec(o-1, now, ReasonIdle)
			o = t.find(mkKey(kMapOut, proto, ia, ip, mra, mrp))
			if o != 0 {
				r = t.at(o - 1)
			}
		}
		if o != 0 && r.flags&fZombie == 0 && r.remAddr == ra && r.remPort == rp {
			return o, o
		}
	}
	// Other sessions of the mapping; under ADM/APDM a session opened by an
	// inbound SYN on another flow's mapping has a different mapping key.
	if (o != 0 && t.at(o-1).refs > 0) || e.loose > 0 || e.inMembers > 0 && t.mode.mapRemAddr {
		if s := t.find(mkKey(kOut, proto, ia, ip, ra, rp)); s != 0 {
			if e.alive(t.at(s-1), ns) {
				return s, o
			}
			e.expireRec(s-1, now, ReasonIdle)
			// The owner may have gone with its last session.
			o = t.find(mkKey(kMapOut, proto, ia, ip, mra, mrp))
		}
	}
	return 0, o
}

// lookupIn finds the session (index+1) of an inbound flow to external
// endpoint (ea, ep) from (ra, rp), and the owner of the mapping.
func (e *Engine) lookupIn(proto uint8, ea uint32, ep uint16, ra uint32, rp uint16, now time.Time, ns uint32) (sess, owner uint32) {
	t := e.t
	var ira uint32
	var irp uint16
	if t.mode.inRem {
		ira, irp = ra, rp
	}
	o := t.find(mkKey(kMapIn, proto, ea, ep, ira, irp))
	if o != 0 {
		r := t.at(o - 1)
		if r.flags&fZombie == 0 && !e.alive(r, ns) {
			e.expireRec(o-1, now, ReasonIdle)
			o = t.find(mkKey(kMapIn, proto, ea, ep, ira, irp))
			if o != 0 {
				r = t.at(o - 1)
			}
		}
		if o != 0 && r.flags&fZombie == 0 && r.remAddr == ra && r.remPort == rp {
			return o, o
		}
	}
	if (o != 0 && t.at(o-1).refs > 0) || e.loose > 0 {
		if s := t.find(mkKey(kIn, proto, ea, ep, ra, rp)); s != 0 {
			if e.alive(t.at(s-1), ns) {
				return s, o
			}
			e.expireRec(s-1, now, ReasonIdle)
			o = t.find(mkKey(kMapIn, proto, ea, ep, ira, irp))
		}
	}
	if o != 0 {
		if r := t.at(o - 1); r.flags&fZombie != 0 && !e.alive(r, ns) {
			// Every session of the mapping has expired: so has the
			// mapping (RFC 4787 §4.3), though its dead sessions, and so
			// the holder, await the sweep.
			return 0, 0
		}
	}
	return 0, o
}

// touch applies a packet to session r: TCP state and timer refresh.
func (e *Engine) touch(r *rec, p *packet.Packet, outbound bool, ns uint32) {
	if r.proto == uint8(tuple.TCP) {
		flags := p.TCPFlags()
		s := tcpNext(r.state, flags, outbound)
		if s != r.state {
			r.state = s
			setExpire(r, ns+e.timeout(r.proto, s)+1)
			return
		}
		if !tcpRefreshes(s) || flags&packet.TCPRst != 0 {
			return // a RST never refreshes (RFC 7857 §2.2, N-REF)
		}
	}
	if outbound && !e.cfg.NoOutboundRefresh || !outbound && e.cfg.InboundRefresh {
		setExpire(r, ns+e.timeout(r.proto, r.state)+1)
	}
}

func (e *Engine) outboundFlow(p *packet.Packet, now time.Time, ns uint32) Verdict {
	proto := uint8(p.Proto())
	ia, ip := src4(p), p.SrcPort()
	ra, rp := remoteOf(p, true)
	s, o := e.lookupOut(proto, ia, ip, ra, rp, now, ns)
	if s == 0 {
		if proto == uint8(tuple.TCP) && p.TCPFlags()&(packet.TCPSyn|packet.TCPRst) != packet.TCPSyn {
			return e.drop(ReasonTCPNoSession)
		}
		var v Verdict
		s, v = e.newOutbound(p, proto, ia, ip, ra, rp, o, now, ns)
		if s == 0 {
			return v
		}
	}
	r := e.t.at(s - 1)
	e.touch(r, p, true, ns)
	if s != o {
		if or := e.ownerOf(r, o); or != nil {
			memberTimer(or, r.expire)
		}
	}
	_ = p.SetSrc(ap4(r.extAddr, r.extPort))
	return Verdict{Action: Forward}
}

// overlapCheck implements portalloc.Checker for port overlapping: an
// external endpoint is taken for the flow being set up when a session from
// it to the same remote endpoint exists (the 5-tuple would collide). The
// engine keeps one, so setting up a flow does not allocate it.
type overlapCheck struct {
	e      *Engine
	proto  uint8
	ra     uint32
	rp     uint16
	now    time.Time
	ns     uint32
	mapped bool // also count endpoints held as mappings (overloading)
}

func (c *overlapCheck) Taken(ext netip.AddrPort) bool {
	ea, ep := u4(ext.Addr()), ext.Port()
	s, o := c.e.lookupIn(c.proto, ea, ep, c.ra, c.rp, c.now, c.ns)
	if s != 0 {
		return true
	}
	if c.mapped && o != 0 {
		r := c.e.t.at(o - 1)
		return r.remAddr == c.ra && r.remPort == c.rp
	}
	return false
}

func (e *Engine) subscriberFull(ia uint32) bool {
	if e.cfg.MaxSessionsPerSubscriber == 0 {
		return false
	}
	sc := e.subs[ia]
	return sc != nil && int(sc.sessions) >= e.cfg.MaxSessionsPerSubscriber
}

func (e *Engine) sessionUp(ia uint32) {
	e.sessions++
	if e.cfg.MaxSessionsPerSubscriber == 0 {
		return
	}
	sc := e.subs[ia]
	if sc == nil {
		sc = &subCount{}
		e.subs[ia] = sc
	}
	sc.sessions++
}

func (e *Engine) sessionDown(ia uint32) {
	e.sessions--
	if e.cfg.MaxSessionsPerSubscriber == 0 {
		return
	}
	if sc := e.subs[ia]; sc != nil {
		sc.sessions--
		if sc.sessions <= 0 {
			delete(e.subs, ia)
		}
	}
}

// refuse answers a packet for which no session can be created: ICMP type 3
// code 13 to its source (RFC 5508 REQ-8), or a plain drop.
func (e *Engine) refuse(p *packet.Packet, r Reason) Verdict {
	return e.refuseFrom(p, r, e.cfg.ReplySource)
}

// refuseFrom is refuse with the given source address for the ICMP error
// (the external address for packets from outside).
func (e *Engine) refuseFrom(p *packet.Packet, r Reason, from netip.Addr) Verdict {
	if e.debug {
		attrs := []slog.Attr{slog.String("reason", r.String()), slog.String("proto", p.Proto().String()),
			slog.String("internal", p.SrcAddrPort().String())}
		if e.cfg.LogDestinations { // RFC 6888 REQ-12
			attrs = append(attrs, slog.String("remote", p.DstAddrPort().String()))
		}
		e.cfg.Logger.LogAttrs(context.Background(), slog.LevelDebug, "nat: session refused", attrs...)
	}
	if e.cfg.NoICMPReplies {
		return e.drop(r)
	}
	n, err := packet.BuildICMPError(e.reply[:], p, packet.ICMPErrorOptions{
		Src: from, Type: packet.ICMPDestUnreachable, Code: packet.CodeAdminProhibited})
	if err != nil {
		return e.drop(r)
	}
	e.st.Drops[r]++
	e.st.Replied++
	return Verdict{Action: Reply, Reason: r, Reply: e.reply[:n]}
}

// newOutbound creates the session of a new outbound flow (and its mapping
// when needed). o is the existing owner of the mapping (index+1) or 0.
func (e *Engine) newOutbound(p *packet.Packet, proto uint8, ia uint32, ip uint16, ra uint32, rp uint16, o uint32, now time.Time, ns uint32) (uint32, Verdict) {
	t := e.t
	if e.cfg.MaxSessions > 0 && e.sessions >= e.cfg.MaxSessions || e.subscriberFull(ia) {
		return 0, e.refuse(p, ReasonSessionLimit)
	}
	st := tcpNone
	if proto == uint8(tuple.TCP) {
		st = tcpOutSYN
	}
	if o != 0 {
		r := t.at(o - 1)
		if r.flags&fZombie != 0 {
			// Revive the mapping's holder as the session for this remote.
			revive(r, ns+e.timeout(proto, st)+1)
			r.remAddr, r.remPort, r.state, r.aux = ra, rp, st, 0
			e.sessionUp(ia)
			e.filterUp(r)
			e.afterCreate(o-1, now)
			return o, Verdict{}
		}
		if e.loose > 0 && t.find(mkKey(kIn, proto, r.extAddr, r.extPort, ra, rp)) != 0 {
			// An overloaded session already uses this 5-tuple.
			return 0, e.refuse(p, ReasonPortsExhausted)
		}
		i, ok := t.insert(rec{flags: fUsed, intAddr: ia, intPort: ip, extAddr: r.extAddr, extPort: r.extPort,
			remAddr: ra, remPort: rp, proto: proto, state: st, expire: ns + e.timeout(proto, st) + 1})
		if !ok {
			return 0, e.refuse(p, ReasonSessionLimit)
		}
		t.at(o-1).refs++
		m := t.at(i)
		memberTimer(t.at(o-1), m.expire)
		e.sessionUp(ia)
		e.filterUp(m)
		e.afterCreate(i, now)
		return i + 1, Verdict{}
	}
	// A new mapping.
	al := e.alloc[pidx(tuple.Proto(proto))]
	sub := a4(ia)
	remote := ap4(ra, rp)
	var lease portalloc.Lease
	var err error
	loose := false
	if e.overlap {
		var ep netip.AddrPort
		e.chk = overlapCheck{e: e, proto: proto, ra: ra, rp: rp, now: now, ns: ns}
		ep, err = al.GetShared(sub, ip, remote, &e.chk)
		if err == nil && e.overlapLimited() {
			var ok bool
			if ep, ok = e.overlapPort(proto, ia, ep); !ok {
				err = portalloc.ErrLimit // RFC 6888 REQ-3/REQ-4: no more ports by way of overlapping
			}
		}
		lease.Ext = ep
	} else {
		lease, err = al.Get(sub, ip, remote, now)
		if err == nil && e.loose > 0 && t.find(mkKey(kIn, proto, u4(lease.Ext.Addr()), lease.Ext.Port(), ra, rp)) != 0 {
			// An overloaded session still uses this port towards the same
			// remote endpoint: the 5-tuple is not free.
			e.putPort(proto, ia, lease.Ext, now)
			err = portalloc.ErrExhausted
		}
		if err != nil && errors.Is(err, portalloc.ErrExhausted) && e.cfg.Overloading {
			var ep netip.AddrPort
			e.chk = overlapCheck{e: e, proto: proto, ra: ra, rp: rp, now: now, ns: ns, mapped: true}
			ep, err = al.GetShared(sub, ip, remote, &e.chk)
			lease = portalloc.Lease{Ext: ep}
			loose = err == nil
		}
	}
	if err != nil {
		switch {
		case errors.Is(err, portalloc.ErrLimit):
			return 0, e.refuse(p, ReasonPortLimit)
		default:
			return 0, e.refuse(p, ReasonPortsExhausted)
		}
	}
	flags := uint8(fUsed | fOwner)
	if loose {
		flags = fUsed | fLoose
	}
	i, ok := t.insert(rec{flags: flags, intAddr: ia, intPort: ip, extAddr: u4(lease.Ext.Addr()), extPort: lease.Ext.Port(),
		remAddr: ra, remPort: rp, proto: proto, state: st, expire: ns + e.timeout(proto, st) + 1})
	if !ok {
		if !e.overlap && !loose {
			e.putPort(proto, ia, lease.Ext, now)
		}
		return 0, e.refuse(p, ReasonSessionLimit)
	}
	r := t.at(i)
	if loose {
		e.loose++
	}
	if !loose {
		e.mappings++
	}
	if e.overlapLimited() {
		e.overlapUp(proto, ia, lease.Ext)
	}
	e.sessionUp(ia)
	e.filterUp(r)
	if e.cfg.Events != nil {
		if lease.NewBlock {
			e.cfg.Events.Record(Event{Time: now, Kind: BlockAllocated, Proto: tuple.Proto(proto), Subscriber: sub,
				External: netip.AddrPortFrom(lease.Ext.Addr(), 0), Block: lease.Block})
		}
		if !loose {
			ev := Event{Time: now, Kind: MappingCreated, Proto: tuple.Proto(proto), Subscriber: sub,
				Internal: netip.AddrPortFrom(sub, ip), External: lease.Ext, Block: lease.Block}
			if e.cfg.LogDestinations {
				ev.Remote = remote
			}
			e.cfg.Events.Record(ev)
		}
	}
	if e.debug {
		e.cfg.Logger.LogAttrs(context.Background(), slog.LevelDebug, "nat: mapping created",
			slog.String("proto", tuple.Proto(proto).String()), slog.String("internal", netip.AddrPortFrom(sub, ip).String()),
			slog.String("external", lease.Ext.String()))
	}
	e.afterCreate(i, now)
	return i + 1, Verdict{}
}

// afterCreate runs after a session is created outbound: session events and
// dropping a held SYN of the same connection (RFC 5382 REQ-4).
func (e *Engine) afterCreate(i uint32, now time.Time) {
	r := e.t.at(i)
	if e.nheld > 0 && r.proto == uint8(tuple.TCP) {
		for k := range e.held[:e.nheld] {
			h := &e.held[k]
			if h.extAddr == r.extAddr && h.extPort == r.extPort && h.remAddr == r.remAddr && h.remPort == r.remPort {
				e.unhold(k)
				break
			}
		}
	}
	if e.cfg.LogDestinations && e.cfg.Events != nil {
		e.cfg.Events.Record(e.sessionEvent(r, SessionCreated, now, ""))
	}
}

func (e *Engine) sessionEvent(r *rec, kind EventKind, now time.Time, reason string) Event {
	return Event{Time: now, Kind: kind, Proto: tuple.Proto(r.proto), Subscriber: a4(r.intAddr),
		Internal: ap4(r.intAddr, r.intPort), External: ap4(r.extAddr, r.extPort),
		Remote: ap4(r.remAddr, r.remPort), Reason: reason}
}

func (e *Engine) unhold(k int) {
	e.nheld--
	e.held[k] = e.held[e.nheld]
}

// filterUp counts session r in the ADF filter record of its mapping and
// remote address (address-dependent filtering only).
func (e *Engine) filterUp(r *rec) {
	if e.filt[pidx(tuple.Proto(r.proto))] != FilterADF {
		return
	}
	t := e.t
	k := mkKey(kFilt, r.proto, r.extAddr, r.extPort, r.remAddr, 0)
	if f := t.find(k); f != 0 {
		t.at(f-1).refs++
		return
	}
	if _, ok := t.insert(rec{flags: fUsed | fFilter, proto: r.proto, extAddr: r.extAddr, extPort: r.extPort,
		remAddr: r.remAddr, refs: 1, expire: ^uint32(0)}); !ok {
		return // the filter then refuses; fail closed
	}
}

func (e *Engine) filterDown(r *rec) {
	if e.filt[pidx(tuple.Proto(r.proto))] != FilterADF {
		return
	}
	t := e.t
	f := t.find(mkKey(kFilt, r.proto, r.extAddr, r.extPort, r.remAddr, 0))
	if f == 0 {
		return
	}
	fr := t.at(f - 1)
	fr.refs--
	if fr.refs == 0 {
		t.unindex(f - 1)
		t.release(f - 1)
	}
}

func (e *Engine) putPort(proto uint8, ia uint32, ext netip.AddrPort, now time.Time) {
	freed, err := e.alloc[pidx(tuple.Proto(proto))].Put(a4(ia), ext, now)
	if err == nil && freed.IsValid() && e.cfg.Events != nil {
		e.cfg.Events.Record(Event{Time: now, Kind: BlockFreed, Proto: tuple.Proto(proto), Subscriber: a4(ia),
			External: netip.AddrPortFrom(ext.Addr(), 0), Block: freed})
	}
}

// expireRec retires the session at index i (its timer ran out).
func (e *Engine) expireRec(i uint32, now time.Time, reason string) {
	t := e.t
	r := t.at(i)
	e.st.Expired++
	if e.cfg.LogDestinations && e.cfg.Events != nil {
		e.cfg.Events.Record(e.sessionEvent(r, SessionDeleted, now, reason))
	}
	e.sessionDown(r.intAddr)
	e.filterDown(r)
	switch {
	case r.flags&fOwner != 0:
		if r.refs > 0 {
			// The mapping outlives its first flow (a zombie): its timer
			// is now that of its other sessions.
			end := r.expire + uint32(r.mx)
			if r.mx == mxUnknown {
				end = ^uint32(0)
			}
			r.flags |= fZombie
			r.state = tcpNone
			r.expire, r.mx = end, 0
			return
		}
		e.deleteMapping(i, now, reason)
	case r.flags&fLoose != 0:
		t.unindex(i)
		t.release(i)
		e.loose--
	default:
		var ira uint32
		var irp uint16
		if t.mode.inRem {
			ira, irp = r.remAddr, r.remPort
		}
		proto, ea, ep := r.proto, r.extAddr, r.extPort
		if r.aux&auxInbound != 0 {
			e.inMembers--
		}
		t.unindex(i)
		t.release(i)
		if o := t.find(mkKey(kMapIn, proto, ea, ep, ira, irp)); o != 0 {
			or := t.at(o - 1)
			or.refs--
			if or.refs == 0 && or.flags&fZombie != 0 {
				e.deleteMapping(o-1, now, ReasonLastFlow)
			} else if or.refs == 0 {
				or.mx = 0
			}
		}
	}
}

func (e *Engine) deleteMapping(i uint32, now time.Time, reason string) {
	t := e.t
	r := t.at(i)
	proto, ia, ip := r.proto, r.intAddr, r.intPort
	ext := ap4(r.extAddr, r.extPort)
	rem := ap4(r.remAddr, r.remPort)
	t.unindex(i)
	t.release(i)
	e.mappings--
	if e.debug {
		e.cfg.Logger.LogAttrs(context.Background(), slog.LevelDebug, "nat: mapping deleted",
			slog.String("proto", tuple.Proto(proto).String()), slog.String("internal", ap4(ia, ip).String()),
			slog.String("external", ext.String()), slog.String("reason", reason))
	}
	if e.cfg.Events != nil {
		ev := Event{Time: now, Kind: MappingDeleted, Proto: tuple.Proto(proto), Subscriber: a4(ia),
			Internal: ap4(ia, ip), External: ext, Reason: reason,
			Block: e.alloc[pidx(tuple.Proto(proto))].BlockOf(a4(ia), ext)}
		if e.cfg.LogDestinations {
			ev.Remote = rem
		}
		e.cfg.Events.Record(ev)
	}
	if !e.overlap {
		e.putPort(proto, ia, ext, now)
	} else if e.overlapLimited() {
		e.overlapDown(proto, ia, ext)
	}
}

// Inbound translates pkt, an IPv4 packet from the external side, in place.
// It never panics on malformed input. It does not allocate.
func (e *Engine) Inbound(pkt []byte, now time.Time) Verdict {
	e.st.Inbound++
	if e.t.moving {
		e.t.settle(settleStep) // the slab resizes: before any look-up
	}
	if e.fragDirty {
		e.compactFragments()
	}
	var p packet.Packet
	if err := p.Parse(pkt); err != nil {
		return e.bad(err)
	}
	ns := e.now(now)
	if !e.isExternal(dst4(&p)) {
		if len(e.noXlat) > 0 && e.isInside(dst4(&p)) {
			// The reply of untranslated traffic (RFC 6888 REQ-6).
			if p.IsFragment() && !p.HasTransport() {
				return e.inboundExemptFragment(&p, ns)
			}
			if e.noTranslate(src4(&p), p.SrcPort(), p.Proto()) {
				if p.IsFragment() {
					e.exemptFragment(&p, 2, ns)
				}
				return e.untranslated()
			}
		}
		return e.drop(ReasonNotExternal)
	}
	if p.IsFragment() && !p.HasTransport() {
		return e.inboundFragment(&p, ns)
	}
	if p.IsFragment() && p.Proto() == tuple.ICMP && p.IsICMPError() {
		return e.drop(ReasonFragment)
	}
	var v Verdict
	switch {
	case p.Proto() == tuple.ICMP && p.IsICMPError():
		v = e.inboundError(&p, now, ns)
	case p.Proto() == tuple.ICMP && p.IsICMPQueryRequest():
		v = e.drop(ReasonICMPUnsolicited)
	default:
		dst := dst4(&p)
		v = e.inboundFlow(&p, now, ns, false)
		if v.Action == Forward && p.IsFragment() {
			f := e.noteFragment(&p, false, dst, 0, ns)
			v.Released = e.nfrag > 0 && e.releaseFragments(f, ns)
		}
	}
	if v.Action == Forward {
		e.st.Forwarded++
	}
	return v
}

// inboundFlow translates a TCP, UDP or ICMP query-reply packet addressed
// to an external endpoint. hairpin is true for packets looped back from
// Outbound (their source is an external endpoint of this NAT).
func (e *Engine) inboundFlow(p *packet.Packet, now time.Time, ns uint32, hairpin bool) Verdict {
	proto := uint8(p.Proto())
	ea, ep := dst4(p), p.DstPort()
	ra, rp := remoteOf(p, false)
	s, o := e.lookupIn(proto, ea, ep, ra, rp, now, ns)
	if s != 0 {
		r := e.t.at(s - 1)
		e.touch(r, p, false, ns)
		if s != o {
			if or := e.ownerOf(r, o); or != nil {
				memberTimer(or, r.expire)
			}
		}
		_ = p.SetDst(ap4(r.intAddr, r.intPort))
		return Verdict{Action: Forward}
	}
	isSYN := proto == uint8(tuple.TCP) && p.TCPFlags()&(packet.TCPSyn|packet.TCPAck|packet.TCPRst) == packet.TCPSyn
	allowed := false
	if o != 0 {
		switch e.filt[pidx(tuple.Proto(proto))] {
		case FilterEIF:
			allowed = true
		case FilterADF:
			allowed = e.t.find(mkKey(kFilt, proto, ea, ep, ra, 0)) != 0
		}
	}
	if !allowed {
		if isSYN && !hairpin {
			return e.holdSYN(p, ea, ep, ra, rp, ns)
		}
		if o == 0 {
			return e.drop(ReasonNoMapping)
		}
		return e.drop(ReasonFiltered)
	}
	r := e.t.at(o - 1)
	if proto != uint8(tuple.TCP) {
		// EIF/ADF let the packet through on the mapping alone; no state is
		// created by inbound UDP or ICMP packets.
		if x := ns + e.timeout(proto, r.state) + 1; e.cfg.InboundRefresh && r.flags&fZombie == 0 && x > r.expire {
			setExpire(r, x)
		}
		_ = p.SetDst(ap4(r.intAddr, r.intPort))
		return Verdict{Action: Forward}
	}
	if !isSYN {
		return e.drop(ReasonTCPNoSession)
	}
	// A SYN the filter admits opens a session (RFC 6146 V4 INIT).
	if e.cfg.MaxSessions > 0 && e.sessions >= e.cfg.MaxSessions || e.subscriberFull(r.intAddr) {
		return e.refuseFrom(p, ReasonSessionLimit, a4(ea)) // RFC 5508 REQ-8
	}
	ia, ip := r.intAddr, r.intPort
	if e.cfg.Mapping != MappingEIM {
		// Under ADM/APDM the internal endpoint may already have a session
		// with this remote on another mapping; a second one would make the
		// outbound 5-tuple ambiguous.
		if s, _ := e.lookupOut(proto, ia, ip, ra, rp, now, ns); s != 0 {
			return e.drop(ReasonFiltered)
		}
		r = e.t.at(o - 1)
	}
	if r.flags&fZombie != 0 && e.cfg.Mapping == MappingEIM {
		// The holder's keys do not include the remote: revive it.
		revive(r, ns+e.tmTrans+1)
		r.remAddr, r.remPort, r.state, r.aux = ra, rp, tcpInSYN, auxInbound
		e.sessionUp(ia)
		e.filterUp(r)
	} else {
		i, ok := e.t.insert(rec{flags: fUsed, intAddr: ia, intPort: ip, extAddr: ea, extPort: ep, remAddr: ra, remPort: rp,
			proto: proto, state: tcpInSYN, aux: auxInbound, expire: ns + e.tmTrans + 1})
		if !ok {
			return e.drop(ReasonSessionLimit)
		}
		e.t.at(o-1).refs++
		m := e.t.at(i)
		memberTimer(e.t.at(o-1), m.expire)
		e.inMembers++
		e.sessionUp(ia)
		e.filterUp(m)
		if e.cfg.LogDestinations && e.cfg.Events != nil {
			e.cfg.Events.Record(e.sessionEvent(m, SessionCreated, now, ""))
		}
	}
	_ = p.SetDst(ap4(ia, ip))
	return Verdict{Action: Forward}
}

// holdSYN keeps an unsolicited SYN for Config.SYNHold (RFC 5382 REQ-4).
func (e *Engine) holdSYN(p *packet.Packet, ea uint32, ep uint16, ra uint32, rp uint16, ns uint32) Verdict {
	if e.cfg.SYNHold < 0 {
		return e.drop(ReasonSYNDropped)
	}
	for k := range e.held[:e.nheld] {
		h := &e.held[k]
		if h.extAddr == ea && h.extPort == ep && h.remAddr == ra && h.remPort == rp {
			return e.drop(ReasonSYNDropped) // a retransmission of a held SYN
		}
	}
	b := p.Bytes()
	if e.nheld == len(e.held) || len(b) > len(e.held[0].buf) {
		return e.drop(ReasonSYNDropped)
	}
	h := &e.held[e.nheld]
	e.nheld++
	h.extAddr, h.extPort, h.remAddr, h.remPort = ea, ep, ra, rp
	h.deadline = ns + e.tmHold
	h.n = copy(h.buf[:], b)
	return e.drop(ReasonSYNHeld)
}

// Expire retires sessions and mappings whose timers ran out, answers
// SYNs held longer than Config.SYNHold with ICMP port unreachable (see
// Replies) and drops fragments held longer than Config.FragmentHold
// (ReasonFragmentTimeout). It visits every record (about 1-3 ms per
// million): call it about once a second, or use ExpireSome to bound the
// pause. Lookups also retire the dead records they meet, so translation
// stays correct however rarely either runs. After mass expiry it also
// shrinks the table a bounded step per call (see ExpireSome).
func (e *Engine) Expire(now time.Time) {
	e.ExpireSome(now, 0)
}

// ExpireSome is Expire visiting at most max records (0 = all; free slab
// positions it passes count 1/8 each), continuing from where the previous
// call stopped, so a datapath can spread the sweep
// over many short calls. Held SYNs, held fragments and quarantined ports
// are handled on every call. It reports whether the sweep completed a pass
// over the table. Each call also does up to max steps of table
// maintenance: moving index slots of a growth or shrink (the index shrinks
// when less than 1/8 full) and moving records of a slab resize (at most
// 32 768 per call; the slab shrinks when less than 1/8 full).
func (e *Engine) ExpireSome(now time.Time, max int) (wrapped bool) {
	ns := e.now(now)
	e.replies = e.replies[:0]
	e.rbuf = e.rbuf[:0]
	if e.fragDirty || e.nfrag > 0 {
		e.expireFragments(ns)
	}
	t := e.t
	total := int(t.span())
	// A used record counts 1 towards max, a free slab position 1/8 (the
	// slab is at least 1/8 full except at its smallest, so a call looks
	// at no more than about 8 max positions).
	budget := 8 * max
	if max <= 0 || max > total {
		max, budget = total, 8*total
	}
	for n := 0; n < total && budget > 0; n++ {
		if e.cursor >= t.span() {
			e.cursor = 0
			wrapped = true
		}
		i := t.nth(e.cursor)
		e.cursor++
		r := t.at(i)
		if r.flags&fUsed == 0 {
			budget--
			continue
		}
		budget -= 8
		if r.flags&(fZombie|fFilter) != 0 || ns < r.expire {
			continue
		}
		reason := ReasonIdle
		switch r.state {
		case tcpFinBoth:
			reason = ReasonTCPClosed
		case tcpRst:
			reason = ReasonTCPRst
		}
		e.expireRec(i, now, reason)
	}
	if e.cursor >= t.span() {
		e.cursor = 0
		wrapped = true
	}
	t.maintain(max) // resize the index and the slab, moving records
	for _, a := range e.alloc {
		a.Expire(now)
	}
	for k := 0; k < e.nheld; {
		h := &e.held[k]
		if ns < h.deadline+1 {
			k++
			continue
		}
		if !e.cfg.SilentSYNDrop {
			var orig packet.Packet
			if orig.Parse(h.buf[:h.n]) == nil {
				start := len(e.rbuf)
				e.rbuf = append(e.rbuf, make([]byte, 576)...)
				n, err := packet.BuildICMPError(e.rbuf[start:], &orig, packet.ICMPErrorOptions{
					Src: a4(h.extAddr), Type: packet.ICMPDestUnreachable, Code: packet.CodePortUnreachable})
				if err == nil {
					e.rbuf = e.rbuf[:start+n]
					e.replies = append(e.replies, e.rbuf[start:start+n:start+n])
					e.st.HeldSYNReplies++
				} else {
					e.rbuf = e.rbuf[:start]
				}
			}
		}
		e.unhold(k)
	}
	return wrapped
}

// Replies returns the ICMP messages produced by the last Expire call (port
// unreachable for SYNs held longer than Config.SYNHold, RFC 5382 REQ-4), to
// be sent on the external side. They are valid until the next Expire.
func (e *Engine) Replies() [][]byte { return e.replies }

// Stats returns the engine's counters. It does not allocate.
func (e *Engine) Stats() Stats {
	s := e.st
	s.Sessions, s.Mappings, s.HeldSYNs = e.sessions, e.mappings, e.nheld
	s.HeldFragments = e.nfrag
	for _, h := range e.fragHeld {
		if !h.gone {
			s.HeldFragmentBytes += h.n
		}
	}
	s.Records, s.TableBytes = e.t.n, e.t.memBytes()
	return s
}

// Flush removes every session and mapping (emitting MappingDeleted events
// with ReasonFlush) and forgets held SYNs and held fragments.
func (e *Engine) Flush(now time.Time) {
	t := e.t
	for c := range t.span() {
		i := t.nth(c)
		if r := t.at(i); r.flags&fUsed != 0 && r.flags&(fZombie|fFilter) == 0 {
			e.expireRec(i, now, ReasonFlush)
		}
	}
	e.nheld = 0
	for k := range e.fragHeld {
		e.fragHeld[k].gone = true
	}
	e.nfrag = 0
	e.compactFragments()
}
