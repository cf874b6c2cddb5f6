// Package steer computes and applies the return path of a Linux gateway in
// front of hosts that share an egress address by port slices (package
// lease). Each host dials only from the ports of the slices it holds; the
// replies come back to the shared address, and the gateway must hand each
// one to the host that holds its destination port.
//
// A Plan is built from the store's leases (NewPlan) and has two forms:
//
//   - FormIP: per held slice and protocol one routing rule, "to ADDR ipproto
//     tcp dport LO-HI lookup TABLE" (FRA_DPORT_RANGE, Linux 4.17), where each
//     host's table holds one route to the host. The kernel walks the rules in
//     order, so the per-packet cost grows with the number of slices.
//   - FormNFT: one nftables table whose verdict map per shared address maps
//     destination-port intervals to a per-host chain that sets the packet
//     mark, and one "fwmark" rule per host to the same tables. The map is an
//     interval tree, or where the slices align on blocks of 2^k ports a
//     hash map keyed by the port's block, so the per-packet cost does not
//     grow with the slices. The fwmark rules form a two-level tree (FR_ACT_GOTO): one rule per
//     group of 2^k consecutive marks jumps to that group's priority, where
//     its hosts' rules sit, so a packet walks at most groups + 2^k rules
//     (79 for 999 hosts, instead of 999); see Options.MarkShift.
//
// Both forms end with a rule that sends every other packet to the shared
// address to an unreachable route, so a reply for a port nobody holds is
// dropped at the gateway instead of following the default route. Everything
// steer installs lies in ranges it owns (Options): rule priorities
// Priority..Priority+99, tables TableBase..TableBase+MaxHosts, marks
// MarkBase+1..MarkBase+MaxHosts and the nftables table NFTable; Apply never
// touches anything else.
//
// Render writes a plan as ip(8) commands or an nft -f file; HostPlan says
// what each host needs to hold the shared address without answering ARP or
// neighbour solicitations for it (a NOARP dummy interface, arp_ignore=1,
// arp_announce=2).
package steer

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/portspace/portspace/lease"
	"github.com/portspace/portspace/tuple"
)

// Defaults of the ranges steer owns; see Options.
const (
	DefaultPriority  = 23000
	DefaultTableBase = 23000
	DefaultMarkBase  = 0x70730000 // "ps" in the upper 16 bits
	DefaultMaxHosts  = 999
	DefaultNFTable   = "portspace_steer"
	DefaultHostLink  = "lo"
)

// Offsets inside the owned priority range.
const (
	sliceOffset = 10 // slice rules (FormIP); fwmark rules or group gotos (FormNFT)
	groupOffset = 11 // FormNFT: the first mark group's priority
	missOffset  = 90 // the catch-all rule per shared address
	// markGroups is the number of priorities between groupOffset and
	// missOffset, the most mark groups FormNFT can have.
	markGroups = missOffset - groupOffset
	// PriorityRange is the number of priorities steer owns from Priority.
	PriorityRange = 100
)

// Errors of NewPlan and Apply; test them with errors.Is.
var (
	// ErrOverlap means two held leases cover the same address and port.
	ErrOverlap = errors.New("steer: two held slices overlap")
	// ErrTooManyHosts means more distinct hosts hold slices than
	// Options.MaxHosts allows tables for.
	ErrTooManyHosts = errors.New("steer: more hosts than tables")
	// ErrFamily means a lease's host address and shared address are of
	// different IP families.
	ErrFamily = errors.New("steer: host and shared address families differ")
	// ErrUnsupported means the platform cannot apply a plan (not Linux).
	ErrUnsupported = errors.New("steer: applying needs Linux")
)

// Form selects how the gateway steers: per-slice routing rules or one
// nftables verdict map.
type Form uint8

// The forms of a plan.
const (
	FormIP Form = iota + 1
	FormNFT
)

// String returns "ip" or "nft".
func (f Form) String() string {
	switch f {
	case FormIP:
		return "ip"
	case FormNFT:
		return "nft"
	}
	return fmt.Sprintf("form(%d)", uint8(f))
}

// ParseForm parses "ip" or "nft".
func ParseForm(s string) (Form, error) {
	switch s {
	case "ip":
		return FormIP, nil
	case "nft":
		return FormNFT, nil
	}
	return 0, fmt.Errorf("steer: unknown form %q (want ip or nft)", s)
}

// Options are the ranges a plan lives in. The zero value uses the defaults
// above.
type Options struct {
	// Priority is the first of the PriorityRange rule priorities steer owns
	// (zero: 23000). Slice and fwmark rules sit at Priority+10, the
	// catch-all rules at Priority+90; it must leave room below 32766 (main).
	Priority uint32
	// TableBase is the table of the catch-all unreachable route; host
	// tables are TableBase+1..TableBase+MaxHosts (zero: 23000).
	TableBase uint32
	// MaxHosts bounds the number of distinct hosts (zero: 999).
	MaxHosts int
	// MarkBase is added to a host's table offset to give its packet mark
	// in FormNFT (zero: 0x70730000).
	MarkBase uint32
	// NFTable names the inet nftables table of FormNFT (zero:
	// "portspace_steer").
	NFTable string
	// HostLink names the interface a host holds shared addresses on (zero:
	// "lo", where steer labels its IPv4 addresses "lo:portspace"); any other
	// name is a dummy link with ARP off that steer creates and owns.
	HostLink string
}

func (o Options) withDefaults() Options {
	if o.Priority == 0 {
		o.Priority = DefaultPriority
	}
	if o.TableBase == 0 {
		o.TableBase = DefaultTableBase
	}
	if o.MaxHosts <= 0 {
		o.MaxHosts = DefaultMaxHosts
	}
	if o.MarkBase == 0 {
		o.MarkBase = DefaultMarkBase
	}
	if o.NFTable == "" {
		o.NFTable = DefaultNFTable
	}
	if o.HostLink == "" {
		o.HostLink = DefaultHostLink
	}
	return o
}

// Validate reports whether the owned ranges are usable: the priority range
// below main's 32766, the tables clear of the reserved 0 and 253-255, and
// the nftables and link names short and plain.
func (o Options) Validate() error {
	o = o.withDefaults()
	if o.Priority+PriorityRange > 32766 {
		return fmt.Errorf("steer: priority %d: the range %d-%d must end below 32766 (main)", o.Priority, o.Priority, o.Priority+PriorityRange-1)
	}
	lo, hi := uint64(o.TableBase), uint64(o.TableBase)+uint64(o.MaxHosts)
	if hi > 0xffffffff || (lo <= 255 && hi >= 253) {
		return fmt.Errorf("steer: tables %d-%d overlap the reserved tables 253-255 or overflow", lo, hi)
	}
	if uint64(o.MarkBase)+uint64(o.MaxHosts) > 0xffffffff {
		return fmt.Errorf("steer: marks from %#x overflow", o.MarkBase)
	}
	if !plainName(o.NFTable, 64) {
		return fmt.Errorf("steer: nftables table name %q: want letters, digits, _ and -, at most 64", o.NFTable)
	}
	if !plainName(o.HostLink, 15) {
		return fmt.Errorf("steer: link name %q: want letters, digits, _ and -, at most 15", o.HostLink)
	}
	return nil
}

// MarkShift returns k, the size (2^k marks) of FormNFT's mark groups: the
// least k for which the owned marks MarkBase+1..MarkBase+MaxHosts fall in
// at most 79 groups of marks that agree in all but their low k bits (4, 16
// marks a group, for the default 999 hosts). Zero means no groups: every
// host's fwmark rule sits at Priority+10, as with at most 79 hosts a flat
// walk is no longer than the tree's.
func (o Options) MarkShift() uint {
	o = o.withDefaults()
	lo, hi := o.MarkBase+1, o.MarkBase+uint32(o.MaxHosts)
	for k := uint(0); k < 32; k++ {
		if (hi>>k)-(lo>>k) < markGroups {
			return k
		}
	}
	return 32
}

// markGroup returns the index (0..78) of mark m's group under shift k.
func (o Options) markGroup(m uint32, k uint) uint32 {
	return m>>k - (o.MarkBase+1)>>k
}

func plainName(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return c0Letter(s)
}

func c0Letter(s string) bool {
	c := s[0]
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// Host is a holder's host as the gateway reaches it, with the table (and
// FormNFT mark) its slices' replies are routed by.
type Host struct {
	Addr  netip.Addr
	Table uint32
	Mark  uint32
	// Shared are the shared addresses the host holds slices of, sorted.
	Shared []netip.Addr
}

// Slice is one held slice that the plan steers.
type Slice struct {
	ID    string
	Addr  netip.Addr
	Ports tuple.PortSet
	Host  netip.Addr
	Table uint32
}

// Plan is the desired steering state of a gateway: the held slices, their
// hosts, and the owned ranges. Build it with NewPlan.
type Plan struct {
	// Slices are sorted by shared address, then first port.
	Slices []Slice
	// Hosts are sorted by table.
	Hosts []Host
	// Shared are the shared addresses of the store's pools (of every
	// listed lease, held or not), sorted; each gets a catch-all rule.
	Shared []netip.Addr
	// Skipped names held leases that cannot be steered (no host address).
	Skipped []string
	// NextExpiry is the earliest expiry of a steered slice's grant (zero
	// when none): the plan is out of date from then on.
	NextExpiry time.Time
	opts       Options
}

// Options returns the plan's options with defaults filled in.
func (p Plan) Options() Options { return p.opts }

// NewPlan builds the plan for the leases as List returns them at time now:
// a lease is steered when it is held, its expiry is after now, and it names
// its holder's host. keep, if not nil, maps host addresses to the tables
// they already have (as a running gateway reports them), so that a host
// keeps its table while others come and go; new hosts get the lowest free
// table. Overlapping held slices are an error (ErrOverlap).
func NewPlan(leases []lease.Lease, now time.Time, opts Options, keep map[netip.Addr]uint32) (Plan, error) {
	if err := opts.Validate(); err != nil {
		return Plan{}, err
	}
	opts = opts.withDefaults()
	p := Plan{opts: opts}
	shared := map[netip.Addr]bool{}
	hostSet := map[netip.Addr]map[netip.Addr]bool{}
	for _, l := range leases {
		if !l.Addr.IsValid() {
			return Plan{}, fmt.Errorf("steer: lease %q has no shared address", l.ID)
		}
		addr := l.Addr.Unmap()
		shared[addr] = true
		if l.State != lease.Held || !l.Expires.After(now) || !l.Ports.IsValid() {
			continue
		}
		if !l.Host.IsValid() {
			p.Skipped = append(p.Skipped, l.ID)
			continue
		}
		host := l.Host.Unmap()
		if host.Is4() != addr.Is4() {
			return Plan{}, fmt.Errorf("%w: lease %q: host %s, address %s", ErrFamily, l.ID, host, addr)
		}
		p.Slices = append(p.Slices, Slice{ID: l.ID, Addr: addr, Ports: l.Ports, Host: host})
		if p.NextExpiry.IsZero() || l.Expires.Before(p.NextExpiry) {
			p.NextExpiry = l.Expires
		}
		if hostSet[host] == nil {
			hostSet[host] = map[netip.Addr]bool{}
		}
		hostSet[host][addr] = true
	}
	sort.Slice(p.Slices, func(i, j int) bool {
		a, b := p.Slices[i], p.Slices[j]
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c < 0
		}
		return a.Ports.Bounds().First() < b.Ports.Bounds().First()
	})
	// Overlap: slices of one address, sorted by first port; PSID sets
	// interleave, so compare every pair of one address whose bounds meet.
	for i := range p.Slices {
		for j := i + 1; j < len(p.Slices) && p.Slices[j].Addr == p.Slices[i].Addr; j++ {
			a, b := p.Slices[i], p.Slices[j]
			if b.Ports.Bounds().First() > a.Ports.Bounds().Last() {
				break
			}
			if a.Ports.Intersect(b.Ports).IsValid() {
				return Plan{}, fmt.Errorf("%w: %q and %q on %s", ErrOverlap, a.ID, b.ID, a.Addr)
			}
		}
	}
	if len(hostSet) > opts.MaxHosts {
		return Plan{}, fmt.Errorf("%w: %d hosts, %d tables", ErrTooManyHosts, len(hostSet), opts.MaxHosts)
	}
	hosts := make([]netip.Addr, 0, len(hostSet))
	for h := range hostSet {
		hosts = append(hosts, h)
	}
	slices.SortFunc(hosts, netip.Addr.Compare)
	used := map[uint32]bool{}
	table := map[netip.Addr]uint32{}
	for _, h := range hosts {
		if t, ok := keep[h]; ok && t > opts.TableBase && t <= opts.TableBase+uint32(opts.MaxHosts) && !used[t] {
			table[h], used[t] = t, true
		}
	}
	next := opts.TableBase + 1
	for _, h := range hosts {
		if _, ok := table[h]; ok {
			continue
		}
		for used[next] {
			next++
		}
		table[h], used[next] = next, true
	}
	for _, h := range hosts {
		t := table[h]
		var sh []netip.Addr
		for a := range hostSet[h] {
			sh = append(sh, a)
		}
		slices.SortFunc(sh, netip.Addr.Compare)
		p.Hosts = append(p.Hosts, Host{Addr: h, Table: t, Mark: opts.MarkBase + (t - opts.TableBase), Shared: sh})
	}
	sort.Slice(p.Hosts, func(i, j int) bool { return p.Hosts[i].Table < p.Hosts[j].Table })
	for i := range p.Slices {
		p.Slices[i].Table = table[p.Slices[i].Host]
	}
	for a := range shared {
		p.Shared = append(p.Shared, a)
	}
	slices.SortFunc(p.Shared, netip.Addr.Compare)
	return p, nil
}

// Rule is one routing rule of a plan, as "ip rule" shows it.
type Rule struct {
	Priority uint32
	// Dst is the shared address as a host prefix.
	Dst netip.Prefix
	// Proto is TCP or UDP for slice rules, zero for catch-all and fwmark
	// rules.
	Proto tuple.Proto
	// Dport is the destination-port range; invalid for no port match.
	Dport tuple.PortRange
	// Mark is matched under Mask (fwmark MARK/MASK) when Mask is not zero.
	Mark, Mask uint32
	// Table is the table looked up, unless Goto is not zero: then the rule
	// jumps to the first rule of priority Goto instead (FR_ACT_GOTO) and
	// Table is zero.
	Table, Goto uint32
	// V6 reports whether the rule is an IPv6 rule.
	V6 bool
}

// Route is one route of a plan: a host table's default route to the host,
// or (Via invalid) the catch-all table's unreachable default route.
type Route struct {
	Table uint32
	Via   netip.Addr
	V6    bool
}

// Rules returns the routing rules of the plan's form, in the order ip(8)
// would list them.
func (p Plan) Rules(f Form) []Rule {
	var rs []Rule
	o := p.opts
	switch f {
	case FormIP:
		for _, iv := range p.intervals() {
			for _, e := range iv.elems {
				for _, proto := range []tuple.Proto{tuple.TCP, tuple.UDP} {
					rs = append(rs, Rule{Priority: o.Priority + sliceOffset, Dst: netip.PrefixFrom(iv.addr, iv.addr.BitLen()),
						Proto: proto, Dport: e.ports, Table: e.table, V6: iv.addr.Is6()})
				}
			}
		}
	case FormNFT:
		rs = append(rs, p.markRules()...)
	}
	for _, a := range p.Shared {
		rs = append(rs, Rule{Priority: o.Priority + missOffset, Dst: netip.PrefixFrom(a, a.BitLen()), Table: o.TableBase, V6: a.Is6()})
	}
	return rs
}

// markRules returns FormNFT's fwmark rules. With mark groups (MarkShift
// k > 0), per family: at Priority+10 one rule per group that has hosts,
// "fwmark GROUP/MASK goto Priority+11+g", in group order, then at
// Priority+11+g the group's hosts' exact fwmark rules to their tables. A
// packet whose mark is in no group, or whose rule's table has no route,
// walks on through the later groups to the catch-all rules, as with flat
// rules; every goto jumps forward past only rules of other groups, so a
// host's rule is reached whatever the order of the rules of one priority
// (Apply adds rules in any order).
func (p Plan) markRules() []Rule {
	o := p.opts
	k := o.MarkShift()
	var rs []Rule
	for _, v6 := range []bool{false, true} {
		var leaves []Rule
		last := ^uint32(0)
		for _, h := range p.Hosts { // sorted by table, so by mark and group
			if h.Addr.Is6() != v6 {
				continue
			}
			prio := o.Priority + sliceOffset
			if k > 0 {
				g := o.markGroup(h.Mark, k)
				prio = o.Priority + groupOffset + g
				if g != last {
					rs = append(rs, Rule{Priority: o.Priority + sliceOffset, Mark: h.Mark >> k << k, Mask: ^uint32(0) << k,
						Goto: prio, V6: v6})
					last = g
				}
			}
			leaves = append(leaves, Rule{Priority: prio, Mark: h.Mark, Mask: 0xffffffff, Table: h.Table, V6: v6})
		}
		rs = append(rs, leaves...)
	}
	return rs
}

// Routes returns the plan's routes: each host table's default route via
// the host, and the catch-all table's unreachable default route for each
// family of shared address.
func (p Plan) Routes() []Route {
	var rs []Route
	for _, h := range p.Hosts {
		rs = append(rs, Route{Table: h.Table, Via: h.Addr, V6: h.Addr.Is6()})
	}
	var v4, v6 bool
	for _, a := range p.Shared {
		v4, v6 = v4 || a.Is4(), v6 || a.Is6()
	}
	if v4 {
		rs = append(rs, Route{Table: p.opts.TableBase})
	}
	if v6 {
		rs = append(rs, Route{Table: p.opts.TableBase, V6: true})
	}
	return rs
}

// NFTMap is one shared address's verdict map in FormNFT: ports to the
// chain of the host that holds them.
//
// When every interval of the map starts and ends on a multiple of 2^k
// ports and the map then needs at most MaxHashBlocks blocks of 2^k ports,
// the map is a hash map (Hash): the rule looks "dport & (0xffff << Shift)"
// up (Shift = k, at most 15), an O(1) lookup, and each element is one such
// block. Otherwise it is an interval map ("flags interval", an O(log n)
// tree), one element per interval.
type NFTMap struct {
	Name  string
	Addr  netip.Addr
	Hash  bool
	Shift uint
	Elems []NFTElem
}

// MaxHashBlocks bounds the elements of a hash-keyed FormNFT map; a map that
// would need more is an interval map.
const MaxHashBlocks = 4096

// Mask returns the port mask a hash map's rule applies before the lookup.
func (m NFTMap) Mask() uint16 { return uint16(0xffff << m.Shift) }

// NFTElem maps the ports First..Last to a host chain; Comment ("host_1
// 10.0.1.2") names the chain and the host.
type NFTElem struct {
	Ports   tuple.PortRange
	Chain   string
	Comment string
}

// NFTChain is a host's chain in FormNFT: it sets the host's mark.
type NFTChain struct {
	Name string
	Host netip.Addr
	Mark uint32
}

// NFT returns the FormNFT table's contents: one verdict map per shared
// address that has held slices (sorted by address; adjacent intervals of
// one host merged; hash-keyed by aligned blocks where NFTMap says), and one
// chain per host.
func (p Plan) NFT() (maps []NFTMap, chains []NFTChain) {
	hostOf := map[uint32]netip.Addr{}
	for _, h := range p.Hosts {
		chains = append(chains, NFTChain{Name: fmt.Sprintf("host_%d", h.Table-p.opts.TableBase), Host: h.Addr, Mark: h.Mark})
		hostOf[h.Table] = h.Addr
	}
	for i, iv := range p.intervals() {
		m := NFTMap{Name: fmt.Sprintf("ports_%d", i), Addr: iv.addr}
		k := uint(15)
		for _, e := range iv.elems {
			k = min(k, uint(bits.TrailingZeros32(uint32(e.ports.First()))), uint(bits.TrailingZeros32(uint32(e.ports.Last())+1)))
		}
		blocks := 0
		for _, e := range iv.elems {
			blocks += (int(e.ports.Last()) + 1 - int(e.ports.First())) >> k
		}
		m.Hash = blocks <= MaxHashBlocks
		if m.Hash {
			m.Shift = k
		}
		for _, e := range iv.elems {
			chain := fmt.Sprintf("host_%d", e.table-p.opts.TableBase)
			el := NFTElem{Ports: e.ports, Chain: chain, Comment: chain + " " + hostOf[e.table].String()}
			if !m.Hash {
				m.Elems = append(m.Elems, el)
				continue
			}
			for lo := int(e.ports.First()); lo <= int(e.ports.Last()); lo += 1 << k {
				el.Ports = tuple.PortRangeFrom(uint16(lo), uint16(lo+1<<k-1))
				m.Elems = append(m.Elems, el)
			}
		}
		maps = append(maps, m)
	}
	return maps, chains
}

type interval struct {
	ports tuple.PortRange
	table uint32
}

type addrIntervals struct {
	addr  netip.Addr
	elems []interval
}

// intervals returns, per shared address with held slices (sorted), the
// port ranges of its slices in ascending order with the host table each
// goes to; adjacent ranges of one host are merged, so both forms carry one
// entry per run of a host's slices.
func (p Plan) intervals() []addrIntervals {
	var out []addrIntervals
	for _, s := range p.Slices { // sorted by address
		if n := len(out); n == 0 || out[n-1].addr != s.Addr {
			out = append(out, addrIntervals{addr: s.Addr})
		}
		iv := &out[len(out)-1]
		for r := range s.Ports.Ranges() {
			iv.elems = append(iv.elems, interval{ports: r, table: s.Table})
		}
	}
	for k := range out {
		es := out[k].elems
		sort.Slice(es, func(i, j int) bool { return es[i].ports.First() < es[j].ports.First() })
		merged := es[:0]
		for _, e := range es {
			if n := len(merged); n > 0 && merged[n-1].table == e.table && merged[n-1].ports.Last() != 65535 &&
				merged[n-1].ports.Last()+1 == e.ports.First() {
				merged[n-1].ports = tuple.PortRangeFrom(merged[n-1].ports.First(), e.ports.Last())
				continue
			}
			merged = append(merged, e)
		}
		out[k].elems = merged
	}
	return out
}

// HostPlan returns, for each host, the shared addresses it must hold; see
// RenderHosts for the commands.
func (p Plan) HostPlan() []Host { return p.Hosts }

// sysctlFamily returns "ipv4" or "ipv6".
func familyWord(v6 bool) string {
	if v6 {
		return "-6 "
	}
	return ""
}

// hexMark formats a mark as nft and ip(8) print it.
func hexMark(m uint32) string { return fmt.Sprintf("0x%08x", m) }

// joinAddrs returns the addresses space-separated.
func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}
