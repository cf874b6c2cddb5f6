package nat

import "net/netip"

// Per-subscriber port accounting under port overlapping (RFC 6888 REQ-4 and
// REQ-3: a subscriber must not exceed its port limit by way of overlapping).
// Without overlapping the allocator counts a subscriber's leases; with it
// the allocator records nothing (GetShared), so the engine counts the
// distinct external endpoints each subscriber's mappings use, per protocol.

// ovSubKey names a subscriber's ports of one protocol.
type ovSubKey struct {
	ia    uint32
	proto uint8
}

// ovPorts are the external endpoints (address<<16 | port) one subscriber's
// mappings of one protocol use, with the number of mappings on each.
type ovPorts struct {
	ext  []uint64
	refs []int32
}

func ovExt(ep netip.AddrPort) uint64 { return uint64(u4(ep.Addr()))<<16 | uint64(ep.Port()) }

func (o *ovPorts) find(x uint64) int {
	for k, v := range o.ext {
		if v == x {
			return k
		}
	}
	return -1
}

// overlapLimited reports whether overlapping mappings are counted against
// Config.MaxPortsPerSubscriber.
func (e *Engine) overlapLimited() bool { return e.overlap && e.cfg.MaxPortsPerSubscriber > 0 }

// overlapPort checks ep, the endpoint GetShared chose for a new mapping of
// subscriber ia, against the port limit: an endpoint the subscriber already
// uses is fine; a new one only below the limit. At the limit it falls back
// to one of the subscriber's own endpoints on which the new 5-tuple is free
// (overlapping onto its own ports), else ok is false (ReasonPortLimit).
func (e *Engine) overlapPort(proto uint8, ia uint32, ep netip.AddrPort) (netip.AddrPort, bool) {
	o := e.ovSubs[ovSubKey{ia, proto}]
	if o == nil || o.find(ovExt(ep)) >= 0 || len(o.ext) < e.cfg.MaxPortsPerSubscriber {
		return ep, true
	}
	for _, x := range o.ext {
		own := ap4(uint32(x>>16), uint16(x))
		if !e.chk.Taken(own) {
			return own, true
		}
	}
	return netip.AddrPort{}, false
}

// overlapUp counts a new mapping of subscriber ia on ep.
func (e *Engine) overlapUp(proto uint8, ia uint32, ep netip.AddrPort) {
	if e.ovSubs == nil {
		e.ovSubs = map[ovSubKey]*ovPorts{}
	}
	k := ovSubKey{ia, proto}
	o := e.ovSubs[k]
	if o == nil {
		o = &ovPorts{}
		e.ovSubs[k] = o
	}
	x := ovExt(ep)
	if j := o.find(x); j >= 0 {
		o.refs[j]++
		return
	}
	o.ext = append(o.ext, x)
	o.refs = append(o.refs, 1)
}

// overlapDown uncounts a deleted mapping of subscriber ia on ep.
func (e *Engine) overlapDown(proto uint8, ia uint32, ep netip.AddrPort) {
	k := ovSubKey{ia, proto}
	o := e.ovSubs[k]
	if o == nil {
		return
	}
	j := o.find(ovExt(ep))
	if j < 0 {
		return
	}
	if o.refs[j]--; o.refs[j] > 0 {
		return
	}
	last := len(o.ext) - 1
	o.ext[j], o.refs[j] = o.ext[last], o.refs[last]
	o.ext, o.refs = o.ext[:last], o.refs[:last]
	if last == 0 {
		delete(e.ovSubs, k)
	}
}
