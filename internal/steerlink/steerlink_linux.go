//go:build linux

package steerlink

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sort"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	mnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Handle is a netlink connection to one network namespace.
type Handle struct {
	nl   *netlink.Handle
	ns   netns.NsHandle // -1 for the current namespace
	path string
}

// Open connects to the network namespace at netnsPath (such as
// /run/netns/NAME), or to the calling process's namespace when netnsPath is
// empty.
func Open(netnsPath string) (*Handle, error) {
	h := &Handle{ns: -1, path: netnsPath}
	var err error
	if netnsPath != "" {
		h.ns, err = netns.GetFromPath(netnsPath)
		if err != nil {
			return nil, fmt.Errorf("steerlink: namespace %s: %w", netnsPath, err)
		}
		h.nl, err = netlink.NewHandleAt(h.ns, unix.NETLINK_ROUTE)
	} else {
		h.nl, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("steerlink: rtnetlink: %w", err)
	}
	return h, nil
}

// Close releases the handle's sockets.
func (h *Handle) Close() error {
	if h.nl != nil {
		h.nl.Close()
	}
	if h.ns >= 0 {
		return h.ns.Close()
	}
	return nil
}

func (h *Handle) nft() (*nftables.Conn, error) {
	// Every message of a batch is acknowledged; acks that repeat the whole
	// request (without NETLINK_CAP_ACK) or a small buffer would overflow
	// it for a thousand slices (ENOBUFS).
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *mnl.Conn) error {
		if err := c.SetOption(mnl.CapAcknowledge, true); err != nil {
			return err
		}
		return c.SetReadBuffer(4 << 20)
	})}
	if h.ns >= 0 {
		opts = append(opts, nftables.WithNetNSFd(int(h.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("steerlink: nftables: %w", err)
	}
	return c, nil
}

func family(v6 bool) int {
	if v6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// ruleKey is a comparable form of a rule, used to diff the namespace's
// rules against the wanted ones.
type ruleKey struct {
	v6          bool
	prio, table uint32
	dst         netip.Prefix
	proto       uint8
	hasDport    bool
	dlo, dhi    uint16
	mark, mask  uint32
	hasMark     bool
	invert      bool
	goto_       uint32
}

func keyOf(r Rule) ruleKey {
	k := ruleKey{v6: r.V6, prio: r.Priority, table: r.Table, dst: r.Dst, proto: r.Proto,
		hasDport: r.HasDport, dlo: r.DportLo, dhi: r.DportHi, goto_: r.Goto}
	if r.Mark != 0 || r.Mask != 0 {
		k.mark, k.mask, k.hasMark = r.Mark, r.Mask, true
		if r.Mask == 0 {
			k.mask = 0xffffffff
		}
	}
	return k
}

func listedKey(r netlink.Rule, v6 bool) ruleKey {
	k := ruleKey{v6: v6, prio: uint32(r.Priority), table: uint32(r.Table), proto: uint8(r.IPProto),
		invert: r.Invert}
	if r.Goto > 0 {
		k.goto_ = uint32(r.Goto)
	}
	if r.Dst != nil {
		if a, ok := netip.AddrFromSlice(r.Dst.IP); ok {
			ones, _ := r.Dst.Mask.Size()
			k.dst = netip.PrefixFrom(a.Unmap(), ones)
		}
	}
	if r.Dport != nil {
		k.hasDport, k.dlo, k.dhi = true, r.Dport.Start, r.Dport.End
	}
	if r.Mark != 0 || r.Mask != nil {
		k.hasMark, k.mark, k.mask = true, r.Mark, 0xffffffff
		if r.Mask != nil {
			k.mask = *r.Mask
		}
	}
	return k
}

func toNetlinkRule(r Rule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = family(r.V6)
	nr.Priority = int(r.Priority)
	nr.Table = int(r.Table)
	if r.Dst.IsValid() {
		nr.Dst = &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())}
	}
	if r.Proto != 0 {
		nr.IPProto = int(r.Proto)
	}
	if r.HasDport {
		nr.Dport = netlink.NewRulePortRange(r.DportLo, r.DportHi)
	}
	if r.Mark != 0 || r.Mask != 0 {
		m := r.Mask
		if m == 0 {
			m = 0xffffffff
		}
		nr.Mark, nr.Mask = r.Mark, &m
	}
	if r.Goto != 0 {
		nr.Goto, nr.Table = int(r.Goto), 0
	}
	return nr
}

// ownedRules lists the namespace's rules in the owned priority range.
func (h *Handle) ownedRules(o Owned) (map[ruleKey]netlink.Rule, error) {
	have := map[ruleKey]netlink.Rule{}
	for _, v6 := range []bool{false, true} {
		rs, err := h.nl.RuleList(family(v6))
		if err != nil {
			if v6 && errors.Is(err, unix.EAFNOSUPPORT) {
				continue
			}
			return nil, fmt.Errorf("steerlink: list rules: %w", err)
		}
		for _, r := range rs {
			if r.Priority < 0 || uint32(r.Priority) < o.PrioLo || uint32(r.Priority) > o.PrioHi {
				continue
			}
			have[listedKey(r, v6)] = r
		}
	}
	return have, nil
}

type routeKey struct {
	v6    bool
	table uint32
	via   netip.Addr
	unr   bool
	other int
}

// ownedRoutes lists the namespace's routes in the owned tables.
func (h *Handle) ownedRoutes(o Owned) (map[routeKey]netlink.Route, error) {
	have := map[routeKey]netlink.Route{}
	for _, v6 := range []bool{false, true} {
		rs, err := h.nl.RouteListFiltered(family(v6), &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			if v6 && errors.Is(err, unix.EAFNOSUPPORT) {
				continue
			}
			return nil, fmt.Errorf("steerlink: list routes: %w", err)
		}
		for _, r := range rs {
			if uint32(r.Table) < o.TableLo || uint32(r.Table) > o.TableHi {
				continue
			}
			k := routeKey{v6: v6, table: uint32(r.Table), unr: r.Type == unix.RTN_UNREACHABLE}
			if r.Gw != nil {
				if a, ok := netip.AddrFromSlice(r.Gw); ok {
					k.via = a.Unmap()
				}
			}
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					// Not a route steer makes: a unique key, so Apply
					// deletes it.
					k = routeKey{v6: v6, table: uint32(r.Table), other: len(have) + 1}
				}
			}
			have[k] = r
		}
	}
	return have, nil
}

func wantRouteKey(r Route) routeKey {
	return routeKey{v6: r.V6, table: r.Table, via: r.Via, unr: !r.Via.IsValid()}
}

func toNetlinkRoute(r Route) *netlink.Route {
	nr := &netlink.Route{Family: family(r.V6), Table: int(r.Table)}
	bits := 32
	if r.V6 {
		bits = 128
	}
	nr.Dst = &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)}
	if r.Via.IsValid() {
		nr.Gw = r.Via.AsSlice()
	} else {
		nr.Type = unix.RTN_UNREACHABLE
	}
	return nr
}

// HostTables returns the host of each owned table's default route, as a
// running gateway has them, so that a new plan keeps each host's table.
func (h *Handle) HostTables(o Owned) (map[netip.Addr]uint32, error) {
	have, err := h.ownedRoutes(o)
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]uint32{}
	for k := range have {
		if k.via.IsValid() && !k.unr && k.other == 0 {
			out[k.via] = k.table
		}
	}
	return out, nil
}

// Apply makes the owned ranges of the namespace hold want: it adds the
// routes and rules that are missing, replaces the nftables table when its
// contents differ, then deletes the owned rules and routes that are not
// wanted. Everything outside o is left alone.
func (h *Handle) Apply(o Owned, want State) (Stats, error) {
	var st Stats
	for _, r := range want.Rules {
		if r.Goto != 0 {
			if r.Priority < o.PrioLo || r.Goto <= r.Priority || r.Goto > o.PrioHi || r.Table != 0 {
				return st, fmt.Errorf("steerlink: rule priority %d goto %d table %d: want a goto forward inside the owned priorities and no table", r.Priority, r.Goto, r.Table)
			}
			continue
		}
		if r.Priority < o.PrioLo || r.Priority > o.PrioHi || r.Table < o.TableLo || r.Table > o.TableHi {
			return st, fmt.Errorf("steerlink: rule priority %d table %d lies outside the owned ranges", r.Priority, r.Table)
		}
	}
	for _, r := range want.Routes {
		if r.Table < o.TableLo || r.Table > o.TableHi {
			return st, fmt.Errorf("steerlink: route table %d lies outside the owned range", r.Table)
		}
	}
	haveRoutes, err := h.ownedRoutes(o)
	if err != nil {
		return st, err
	}
	wantRoutes := map[routeKey]bool{}
	for _, r := range want.Routes {
		k := wantRouteKey(r)
		wantRoutes[k] = true
		if _, ok := haveRoutes[k]; ok {
			continue
		}
		if err := h.nl.RouteReplace(toNetlinkRoute(r)); err != nil {
			return st, fmt.Errorf("steerlink: route table %d via %v: %w", r.Table, r.Via, err)
		}
		st.RoutesAdded++
	}
	if changed, err := h.applyNFT(o, want.NFT); err != nil {
		return st, err
	} else if changed {
		st.NFT = true
	}
	haveRules, err := h.ownedRules(o)
	if err != nil {
		return st, err
	}
	wantRules := map[ruleKey]bool{}
	for _, r := range want.Rules {
		k := keyOf(r)
		if wantRules[k] {
			continue
		}
		wantRules[k] = true
		if _, ok := haveRules[k]; ok {
			continue
		}
		if err := h.nl.RuleAdd(toNetlinkRule(r)); err != nil && !errors.Is(err, unix.EEXIST) {
			return st, fmt.Errorf("steerlink: add rule priority %d to %v dport %d-%d fwmark %#x/%#x table %d goto %d: %w", r.Priority, r.Dst, r.DportLo, r.DportHi, r.Mark, r.Mask, r.Table, r.Goto, err)
		}
		st.RulesAdded++
	}
	for k, r := range haveRules {
		if wantRules[k] {
			continue
		}
		if err := h.nl.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			return st, fmt.Errorf("steerlink: delete rule priority %d table %d: %w", r.Priority, r.Table, err)
		}
		st.RulesDeleted++
	}
	for k, r := range haveRoutes {
		if wantRoutes[k] {
			continue
		}
		if err := h.nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return st, fmt.Errorf("steerlink: delete route table %d: %w", r.Table, err)
		}
		st.RoutesDeleted++
	}
	return st, nil
}

// elemChunk is the number of set elements per netlink message.
const elemChunk = 128

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// applyNFT replaces the owned table with want (deletes it when want is
// nil), unless it already holds exactly want.
func (h *Handle) applyNFT(o Owned, want *NFT) (bool, error) {
	c, err := h.nft()
	if err != nil {
		return false, err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: o.NFTable}
	same, exists, err := h.nftSame(c, t, want)
	if err != nil {
		return false, err
	}
	if same {
		return false, nil
	}
	if want == nil {
		if !exists {
			return false, nil
		}
		c.DelTable(t)
		if err := c.Flush(); err != nil {
			return false, fmt.Errorf("steerlink: delete nftables table inet %s: %w", o.NFTable, err)
		}
		return true, nil
	}
	// One transaction: create (if absent), delete, create, fill.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	for _, ch := range want.Chains {
		chain := c.AddChain(&nftables.Chain{Name: ch.Name, Table: t})
		c.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: []expr.Any{
			&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, ch.Mark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		}})
	}
	policy := nftables.ChainPolicyAccept
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &policy})
	for _, m := range want.Maps {
		set := &nftables.Set{Table: t, Name: m.Name, KeyType: nftables.TypeInetService, DataType: nftables.TypeVerdict,
			IsMap: true, Interval: !m.Hash}
		if err := c.AddSet(set, nil); err != nil {
			return false, fmt.Errorf("steerlink: nftables map %s: %w", m.Name, err)
		}
		// Elements go in messages of at most elemChunk, in the same
		// transaction: one message for thousands of elements exceeds what
		// the kernel takes in one netlink message, and the excess was lost.
		els := elements(m)
		for len(els) > 0 {
			n := min(len(els), elemChunk)
			if err := c.SetAddElements(set, els[:n]); err != nil {
				return false, fmt.Errorf("steerlink: nftables map %s: %w", m.Name, err)
			}
			els = els[n:]
		}
		nfproto, off, alen := byte(unix.NFPROTO_IPV4), uint32(16), uint32(4)
		if m.Addr.Is6() {
			nfproto, off, alen = unix.NFPROTO_IPV6, 24, 16
		}
		for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			exprs := []expr.Any{
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: alen},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: m.Addr.AsSlice()},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			}
			if m.Hash && m.Mask != 0xffff {
				exprs = append(exprs, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 2, Mask: be16(m.Mask), Xor: []byte{0, 0}})
			}
			exprs = append(exprs, &expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: set.Name, SetID: set.ID})
			c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: exprs})
		}
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("steerlink: replace nftables table inet %s: %w", o.NFTable, err)
	}
	return true, nil
}

// elements encodes a map's elements: for a hash map one element per key;
// for an interval map a start element carrying the verdict and the
// comment, and, unless the interval ends at 65535, an end element at Hi+1.
func elements(m NFTMap) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, 2*len(m.Elems))
	for _, e := range m.Elems {
		out = append(out, nftables.SetElement{Key: be16(e.Lo), Comment: e.Comment,
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: e.Chain}})
		if !m.Hash && e.Hi != 65535 {
			out = append(out, nftables.SetElement{Key: be16(e.Hi + 1), IntervalEnd: true})
		}
	}
	return out
}

// nftSame reports whether the owned table exists and holds want's maps
// (elements included), chains and rule count.
func (h *Handle) nftSame(c *nftables.Conn, t *nftables.Table, want *NFT) (same, exists bool, err error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, false, fmt.Errorf("steerlink: list nftables tables: %w", err)
	}
	for _, x := range tables {
		if x.Name == t.Name {
			exists = true
		}
	}
	if !exists || want == nil {
		return !exists && want == nil, exists, nil
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return false, true, fmt.Errorf("steerlink: list nftables sets: %w", err)
	}
	if len(sets) != len(want.Maps) {
		return false, true, nil
	}
	byName := map[string]*nftables.Set{}
	for _, s := range sets {
		byName[s.Name] = s
	}
	for _, m := range want.Maps {
		s := byName[m.Name]
		if s == nil || !s.IsMap || s.Interval == m.Hash {
			return false, true, nil
		}
		got, err := c.GetSetElements(s)
		if err != nil {
			return false, true, fmt.Errorf("steerlink: list nftables map %s: %w", m.Name, err)
		}
		if !sameElements(got, elements(m)) {
			return false, true, nil
		}
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, true, fmt.Errorf("steerlink: list nftables chains: %w", err)
	}
	var names []string
	for _, ch := range chains {
		if ch.Table.Name == t.Name {
			names = append(names, ch.Name)
		}
	}
	wantNames := []string{"prerouting"}
	for _, ch := range want.Chains {
		wantNames = append(wantNames, ch.Name)
	}
	sort.Strings(names)
	sort.Strings(wantNames)
	if !slices.Equal(names, wantNames) {
		return false, true, nil
	}
	// The host chains' marks and the prerouting rules follow from the maps
	// and chains; a changed mark base changes the chains' rule, so compare
	// those marks too.
	for _, ch := range want.Chains {
		rs, err := c.GetRules(t, &nftables.Chain{Name: ch.Name, Table: t})
		if err != nil || len(rs) != 1 || len(rs[0].Exprs) != 2 {
			return false, true, nil
		}
		imm, ok := rs[0].Exprs[0].(*expr.Immediate)
		if !ok || !bytes.Equal(imm.Data, binary.NativeEndian.AppendUint32(nil, ch.Mark)) {
			return false, true, nil
		}
	}
	rs, err := c.GetRules(t, &nftables.Chain{Name: "prerouting", Table: t})
	if err != nil || len(rs) != 2*len(want.Maps) {
		return false, true, nil
	}
	// The maps' port masks: a hash map's keys can stay while its mask
	// changes (one block of 1,024 ports or of 64 at the same key).
	masks := map[string]string{}
	for _, r := range rs {
		var mask []byte
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Bitwise:
				mask = e.Mask
			case *expr.Lookup:
				masks[e.SetName] = string(mask)
			}
		}
	}
	for _, m := range want.Maps {
		var mask []byte
		if m.Hash && m.Mask != 0xffff {
			mask = be16(m.Mask)
		}
		if got, ok := masks[m.Name]; !ok || got != string(mask) {
			return false, true, nil
		}
	}
	return true, true, nil
}

func sameElements(got, want []nftables.SetElement) bool {
	// The library does not decode an element's verdict, so the start
	// element's comment (which names the chain) stands for it.
	type el struct {
		key     string
		end     bool
		comment string
	}
	norm := func(es []nftables.SetElement) []el {
		var out []el
		for _, e := range es {
			x := el{key: string(e.Key), end: e.IntervalEnd}
			if !e.IntervalEnd {
				x.comment = e.Comment
			}
			if x.end && string(e.Key) == "\x00\x00" {
				continue // the kernel's implicit start of an interval set
			}
			out = append(out, x)
		}
		sort.Slice(out, func(i, j int) bool {
			if out[i].key != out[j].key {
				return out[i].key < out[j].key
			}
			return !out[i].end && out[j].end
		})
		return out
	}
	return slices.Equal(norm(got), norm(want))
}

// LoLabel is the label of the IPv4 addresses HoldShared puts on lo; only
// addresses with it are removed there.
const LoLabel = "lo:portspace"

// HoldShared makes the namespace hold addrs (as host prefixes) without
// answering ARP for them, on link: on "lo" (IPv4 addresses labelled
// LoLabel), or on a dummy link of that name with ARP off, created if
// needed. Owned addresses not in addrs are removed (on lo: the labelled
// IPv4 ones; IPv6 addresses on lo are only added). It sets the namespace's
// net.ipv4.conf.all.arp_ignore=1 and arp_announce=2, so that the host's
// other interfaces neither answer for nor announce the shared addresses.
func (h *Handle) HoldShared(link string, addrs []netip.Addr) error {
	onLo := link == "lo"
	l, err := h.nl.LinkByName(link)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if onLo || !errors.As(err, &nf) {
			return fmt.Errorf("steerlink: link %s: %w", link, err)
		}
		d := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: link}}
		if err := h.nl.LinkAdd(d); err != nil {
			return fmt.Errorf("steerlink: add dummy link %s: %w", link, err)
		}
		if l, err = h.nl.LinkByName(link); err != nil {
			return fmt.Errorf("steerlink: link %s: %w", link, err)
		}
	}
	if !onLo {
		if l.Type() != "dummy" {
			return fmt.Errorf("steerlink: link %s is a %s, not a dummy link", link, l.Type())
		}
		if err := h.nl.LinkSetARPOff(l); err != nil {
			return fmt.Errorf("steerlink: arp off on %s: %w", link, err)
		}
	}
	if err := h.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("steerlink: up %s: %w", link, err)
	}
	have, err := h.nl.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("steerlink: addresses of %s: %w", link, err)
	}
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		want[a.Unmap()] = true
	}
	got := map[netip.Addr]bool{}
	for _, a := range have {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if want[ip] {
			got[ip] = true
			continue
		}
		owned := !onLo && !(ip.Is6() && ip.IsLinkLocalUnicast()) || onLo && ip.Is4() && a.Label == LoLabel
		if !owned {
			continue
		}
		if err := h.nl.AddrDel(l, &a); err != nil {
			return fmt.Errorf("steerlink: delete %s from %s: %w", ip, link, err)
		}
	}
	for a := range want {
		if got[a] {
			continue
		}
		na := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
		if a.Is6() {
			na.Flags = unix.IFA_F_NODAD
		} else if onLo {
			na.Label = LoLabel
		}
		if err := h.nl.AddrAdd(l, na); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("steerlink: add %s to %s: %w", a, link, err)
		}
	}
	return h.inNS(func() error {
		for _, kv := range [][2]string{{"arp_ignore", "1"}, {"arp_announce", "2"}} {
			p := "/proc/sys/net/ipv4/conf/all/" + kv[0]
			if err := os.WriteFile(p, []byte(kv[1]), 0o644); err != nil {
				return fmt.Errorf("steerlink: %s: %w", p, err)
			}
		}
		return nil
	})
}

// inNS runs f on a thread inside the handle's namespace (/proc/sys/net is
// per namespace).
func (h *Handle) inNS(f func() error) error {
	if h.ns < 0 {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is not unlocked: if restoring the namespace failed it
		// must not run other goroutines, and the runtime ends it when this
		// goroutine returns.
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("steerlink: current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(h.ns); err != nil {
			errc <- fmt.Errorf("steerlink: enter %s: %w", h.path, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
