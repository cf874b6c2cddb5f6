package proxy

import (
	"net/netip"
)

// Reason says why the Guard refused a destination.
type Reason uint8

// The guard's reasons; None means allowed.
const (
	None Reason = iota
	Loopback
	Private
	LinkLocal
	SharedCGN
	Multicast
	Unspecified
	Own
	Denied
	Reserved
)

// String names the reason.
func (r Reason) String() string {
	switch r {
	case None:
		return "allowed"
	case Loopback:
		return "loopback"
	case Private:
		return "private"
	case LinkLocal:
		return "link-local"
	case SharedCGN:
		return "shared address space"
	case Multicast:
		return "multicast"
	case Unspecified:
		return "unspecified"
	case Own:
		return "the proxy's own address"
	case Denied:
		return "destinations.deny"
	case Reserved:
		return "reserved"
	}
	return "unknown"
}

var (
	cgn       = netip.MustParsePrefix("100.64.0.0/10") // RFC 6598 shared address space
	thisNet   = netip.MustParsePrefix("0.0.0.0/8")     // RFC 791 "this network"
	broadcast = netip.MustParseAddr("255.255.255.255") // RFC 919 limited broadcast
	reserved4 = netip.MustParsePrefix("240.0.0.0/4")   // RFC 1112 reserved
	nat64wkp  = netip.MustParsePrefix("64:ff9b::/96")  // RFC 6052: checked by its embedded IPv4
	v4compat  = netip.MustParsePrefix("::ffff:0:0/96") // mapped: checked unmapped
	teredo    = netip.MustParsePrefix("2001::/32")     // RFC 4380: embeds a client address
	sixToFour = netip.MustParsePrefix("2002::/16")     // RFC 3056: embeds an IPv4 address
	discard6  = netip.MustParsePrefix("100::/64")      // RFC 6666 discard prefix
	docs6     = netip.MustParsePrefix("2001:db8::/32") // RFC 3849 documentation
	_         = v4compat
)

// Guard decides which destination addresses the proxy may dial. Its zero
// value refuses loopback, private (RFC 1918, RFC 4193), link-local, shared
// CGN (RFC 6598 100.64.0.0/10), multicast, unspecified, broadcast and
// reserved addresses; Own adds the proxy's own addresses, Allow makes
// exceptions and Deny refuses more (Deny wins over Allow).
type Guard struct {
	Allow []netip.Prefix
	Deny  []netip.Prefix
	Own   []netip.Addr
}

// Check returns None when dst may be dialed, or why it may not. It
// checks the address itself (after unmapping IPv4-mapped IPv6, and looking
// through NAT64 and 6to4 embeddings), never a name.
func (g *Guard) Check(dst netip.Addr) Reason {
	a := dst.Unmap()
	for _, p := range g.Deny {
		if p.Contains(a) {
			return Denied
		}
	}
	for _, p := range g.Allow {
		if p.Contains(a) {
			return None
		}
	}
	r := builtin(a)
	if r == None {
		for _, o := range g.Own {
			if o.Unmap() == a {
				return Own
			}
		}
	}
	return r
}

func builtin(a netip.Addr) Reason {
	if !a.IsValid() || a.IsUnspecified() {
		return Unspecified
	}
	switch {
	case a.IsLoopback():
		return Loopback
	case a.IsPrivate():
		return Private
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return LinkLocal
	case a.IsMulticast(), a.IsInterfaceLocalMulticast():
		return Multicast
	}
	if a.Is4() {
		switch {
		case cgn.Contains(a):
			return SharedCGN
		case thisNet.Contains(a):
			return Unspecified
		case a == broadcast, reserved4.Contains(a):
			return Reserved
		}
		return None
	}
	// IPv6 forms that embed an IPv4 address are judged by it.
	b := a.As16()
	switch {
	case nat64wkp.Contains(a):
		return builtin(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}))
	case sixToFour.Contains(a):
		return builtin(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}))
	case teredo.Contains(a), discard6.Contains(a), docs6.Contains(a):
		return Reserved
	case b[0]&0xe0 != 0x20: // outside 2000::/3, the global unicast space
		return Reserved
	}
	return None
}
