package netsys

import "net/netip"

// UDPOwner is the socket an exact UDP lookup (Diag.LookupUDPOn) names: its
// cookie, and its connected peer (the zero AddrPort when it is not
// connected).
type UDPOwner struct {
	Cookie uint64
	Peer   netip.AddrPort
}
