// Package steerlink applies package steer's plans to a Linux network
// namespace through netlink: routing rules and routes (rtnetlink, with
// vishvananda/netlink) and one nftables table (nf_tables, with
// google/nftables). It changes only what lies in the ranges it is given
// (Owned): rules in a priority range, routes in a table range, one nftables
// table, and on hosts one dummy link, so it can share a namespace with
// other routing configuration. Apply is idempotent: it compares the
// namespace's state with the wanted one and changes only the difference,
// and it replaces the nftables table in one transaction.
//
// It is one of the packages under internal/ that may import netlink and
// x/sys/unix (see internal/doccheck); on other systems every function
// returns ErrUnsupported.
package steerlink

import (
	"errors"
	"net/netip"
)

// ErrUnsupported is returned on systems other than Linux.
var ErrUnsupported = errors.New("steerlink: routing rules and nftables need Linux")

// Rule is one routing rule (RTM_NEWRULE).
type Rule struct {
	V6       bool
	Priority uint32
	Table    uint32
	// Dst is the destination prefix matched; invalid for any.
	Dst netip.Prefix
	// Proto is the IP protocol matched (FRA_IP_PROTO); zero for any.
	Proto uint8
	// DportLo..DportHi is the destination-port range (FRA_DPORT_RANGE);
	// HasDport false for any.
	HasDport         bool
	DportLo, DportHi uint16
	// Mark is matched under Mask (FRA_FWMARK, FRA_FWMASK) when either is
	// not zero; a zero Mask with a Mark means 0xffffffff (exact).
	Mark, Mask uint32
	// Goto, when not zero, makes the rule jump to the first rule of that
	// priority (FR_ACT_GOTO, which must be higher than Priority) instead of
	// looking Table up; Table is then zero.
	Goto uint32
}

// Route is one route: a default route via Via in Table, or, when Via is
// invalid, an unreachable default route in Table.
type Route struct {
	V6    bool
	Table uint32
	Via   netip.Addr
}

// NFT is the contents of the owned inet nftables table: verdict maps over
// destination ports, one per shared address, chains that set a mark, and a
// prerouting chain (filter hook, mangle priority) that looks the ports of
// TCP and UDP packets to each address up in its map.
type NFT struct {
	Maps   []NFTMap
	Chains []NFTChain
}

// NFTMap is one verdict map: inet_service intervals to a goto chain, or,
// when Hash, ports to a goto chain in a hash map that the rule looks the
// destination port ANDed with Mask up in (each element's Lo is the key; Hi
// is not used).
type NFTMap struct {
	Name  string
	Addr  netip.Addr
	Hash  bool
	Mask  uint16
	Elems []NFTElem
}

// NFTElem maps Lo..Hi to a goto of Chain. Comment must name the chain
// (Apply compares comments, as the library does not decode verdicts), and
// may say more, such as the host.
type NFTElem struct {
	Lo, Hi  uint16
	Chain   string
	Comment string
}

// NFTChain is a regular chain that sets the packet mark.
type NFTChain struct {
	Name string
	Mark uint32
}

// State is what Apply makes a namespace's owned ranges hold.
type State struct {
	Rules  []Rule
	Routes []Route
	// NFT is the owned table's contents; nil means the table must not exist.
	NFT *NFT
}

// Owned are the ranges Apply may change: rule priorities PrioLo..PrioHi,
// tables TableLo..TableHi (both inclusive) and the inet table NFTable.
type Owned struct {
	PrioLo, PrioHi   uint32
	TableLo, TableHi uint32
	NFTable          string
}

// Stats counts what an Apply changed; the zero Stats means the namespace
// already held the wanted state.
type Stats struct {
	RulesAdded, RulesDeleted   int
	RoutesAdded, RoutesDeleted int
	// NFT reports whether the nftables table was replaced or deleted.
	NFT bool
}

// Changed reports whether the Apply changed anything.
func (s Stats) Changed() bool { return s != Stats{} }
