package lease

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/portspace/portspace/tuple"
	"go.yaml.in/yaml/v3"
)

// DefaultQuarantine is a pool's quarantine when its file leaves it out:
// twice Linux's 60 s TIME_WAIT, so that a new holder of a slice never meets
// the old holder's connections still in the network.
const DefaultQuarantine = 120 * time.Second

// MaxSlices bounds the slices of all pools together, so that a typo in a
// pools file (a slice of 1 port over 1000 addresses) cannot make a store
// write millions of records.
const MaxSlices = 1 << 20

// ErrPools is wrapped by every error ParsePools and Apply return for pools
// that cannot be used (overlaps, a slice size that does not divide the
// ports, a PSID layout that does not fit).
var ErrPools = errors.New("lease: bad pools")

var (
	nameRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
)

// ParsePools reads pools from YAML: a mapping with one key, pools, holding a
// sequence of pools with the keys name, addresses, traits, ports, slice or
// psid, and quarantine (see the package README for an example). Errors name
// file:line of the offending item and wrap ErrPools. The pools are checked
// as Apply checks them: names unique and made of letters, digits, '.', '_'
// and '-'; no address and port in two pools; a slice size that divides the
// port count; every PSID port set inside the pool's ports.
func ParsePools(file string, data []byte) ([]Pool, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		// yaml.v3 says "yaml: line N: msg"; put it in file:line form.
		if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
			return nil, fmt.Errorf("%w: %s:%s: YAML: %s", ErrPools, file, m[1], m[2])
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrPools, file, err)
	}
	d := pdec{file: file}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, fmt.Errorf("%w: %s: no pools (want a mapping with the key pools)", ErrPools, file)
	}
	top := d.mapping(root.Content[0], "the document", "pools")
	if d.err != nil {
		return nil, d.err
	}
	pn, ok := top["pools"]
	if !ok {
		return nil, d.fail(root.Content[0], "no pools key")
	}
	if pn.Kind != yaml.SequenceNode {
		return nil, d.fail(pn, "pools: want a sequence of pools")
	}
	var pools []Pool
	lines := map[string]int{}
	for _, n := range pn.Content {
		p, ok := d.pool(n)
		if !ok {
			return nil, d.err
		}
		if prev, dup := lines[p.Name]; dup {
			return nil, d.fail(n, "pool %q defined twice (first at line %d)", p.Name, prev)
		}
		lines[p.Name] = n.Line
		pools = append(pools, p)
	}
	if len(pools) == 0 {
		return nil, d.fail(pn, "pools: empty")
	}
	if err := checkPools(pools); err != nil {
		var pe *poolErr
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%w: %s:%d: pool %s: %s", ErrPools, file, lines[pe.pool], pe.pool, pe.msg)
		}
		return nil, err
	}
	return pools, nil
}

// pdec decodes pools from yaml nodes, keeping the first error.
type pdec struct {
	file string
	err  error
}

func (d *pdec) fail(n *yaml.Node, format string, args ...any) error {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s:%d: %s", ErrPools, d.file, n.Line, fmt.Sprintf(format, args...))
	}
	return d.err
}

func (d *pdec) mapping(n *yaml.Node, what string, keys ...string) map[string]*yaml.Node {
	if n.Kind != yaml.MappingNode {
		d.fail(n, "%s: want a mapping", what)
		return nil
	}
	out := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !slices.Contains(keys, k.Value) {
			d.fail(k, "%s: unknown key %q (want one of %s)", what, k.Value, strings.Join(keys, ", "))
			return nil
		}
		if _, dup := out[k.Value]; dup {
			d.fail(k, "%s: key %q given twice", what, k.Value)
			return nil
		}
		out[k.Value] = v
	}
	return out
}

func (d *pdec) scalar(n *yaml.Node, what string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, "%s: want a single value", what)
		return "", false
	}
	return n.Value, true
}

func (d *pdec) pool(n *yaml.Node) (Pool, bool) {
	m := d.mapping(n, "pool", "name", "addresses", "traits", "ports", "slice", "psid", "quarantine")
	if d.err != nil {
		return Pool{}, false
	}
	var p Pool
	nn, ok := m["name"]
	if !ok {
		d.fail(n, "pool: no name")
		return p, false
	}
	if p.Name, ok = d.scalar(nn, "name"); !ok {
		return p, false
	}
	if !nameRE.MatchString(p.Name) {
		d.fail(nn, "pool name %q: use letters, digits, '.', '_' and '-'", p.Name)
		return p, false
	}
	what := fmt.Sprintf("pool %s", p.Name)
	an, ok := m["addresses"]
	if !ok {
		d.fail(n, "%s: no addresses", what)
		return p, false
	}
	var addrNodes []*yaml.Node
	switch an.Kind {
	case yaml.SequenceNode:
		addrNodes = an.Content
	case yaml.ScalarNode:
		addrNodes = []*yaml.Node{an}
	default:
		d.fail(an, "%s: addresses: want a list of IP addresses", what)
		return p, false
	}
	for _, x := range addrNodes {
		s, ok := d.scalar(x, what+": addresses")
		if !ok {
			return p, false
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			d.fail(x, "%s: address %q: not an IP address", what, s)
			return p, false
		}
		a = a.Unmap()
		if slices.Contains(p.Addrs, a) {
			d.fail(x, "%s: address %s listed twice", what, a)
			return p, false
		}
		p.Addrs = append(p.Addrs, a)
	}
	if len(p.Addrs) == 0 {
		d.fail(an, "%s: addresses: empty", what)
		return p, false
	}
	if tn, ok := m["traits"]; ok {
		if tn.Kind == yaml.ScalarNode && tn.Tag == "!!null" {
			// traits: (empty) is no traits.
		} else if tn.Kind != yaml.MappingNode {
			d.fail(tn, "%s: traits: want a mapping such as {geo: de}", what)
			return p, false
		} else {
			p.Traits = map[string]string{}
			for i := 0; i+1 < len(tn.Content); i += 2 {
				k, v := tn.Content[i], tn.Content[i+1]
				vs, ok := d.scalar(v, what+": trait "+k.Value)
				if !ok {
					return p, false
				}
				if err := checkTrait(k.Value, vs); err != nil {
					d.fail(k, "%s: %v", what, err)
					return p, false
				}
				if _, dup := p.Traits[k.Value]; dup {
					d.fail(k, "%s: trait %q given twice", what, k.Value)
					return p, false
				}
				p.Traits[k.Value] = vs
			}
		}
	}
	pn, ok := m["ports"]
	if !ok {
		d.fail(n, "%s: no ports (for example ports: 1024-65535)", what)
		return p, false
	}
	ps, ok := d.scalar(pn, what+": ports")
	if !ok {
		return p, false
	}
	set, err := tuple.ParsePortSet(ps)
	if err != nil {
		d.fail(pn, "%s: ports %q: %v", what, ps, err)
		return p, false
	}
	if _, _, _, isPSID := set.PSID(); isPSID {
		d.fail(pn, "%s: ports %q: give ranges here and the layout under psid", what, ps)
		return p, false
	}
	p.Ports = set
	sn, hasSlice := m["slice"]
	psn, hasPSID := m["psid"]
	switch {
	case hasSlice && hasPSID:
		d.fail(psn, "%s: give slice or psid, not both", what)
		return p, false
	case !hasSlice && !hasPSID:
		d.fail(n, "%s: no slice size (slice: 1024) or psid layout (psid: {offset: 6, length: 6})", what)
		return p, false
	case hasSlice:
		s, ok := d.scalar(sn, what+": slice")
		if !ok {
			return p, false
		}
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			d.fail(sn, "%s: slice %q: want a positive number of ports", what, s)
			return p, false
		}
		if set.Len()%v != 0 {
			d.fail(sn, "%s: slice %d does not divide the %d ports of %s (%d left over)", what, v, set.Len(), ps, set.Len()%v)
			return p, false
		}
		p.Slice = v
	default:
		pm := d.mapping(psn, what+": psid", "offset", "length")
		if d.err != nil {
			return p, false
		}
		var lay PSIDLayout
		for _, k := range []string{"offset", "length"} {
			x, ok := pm[k]
			if !ok {
				d.fail(psn, "%s: psid: no %s", what, k)
				return p, false
			}
			s, ok := d.scalar(x, what+": psid "+k)
			if !ok {
				return p, false
			}
			v, err := strconv.ParseUint(s, 10, 8)
			if err != nil || v > 16 {
				d.fail(x, "%s: psid %s %q: want 0 to 16 bits", what, k, s)
				return p, false
			}
			if k == "offset" {
				lay.Offset = uint8(v)
			} else {
				lay.Length = uint8(v)
			}
		}
		p.PSID = &lay
		if err := checkPSID(p); err != nil {
			d.fail(psn, "%s: %v", what, err)
			return p, false
		}
	}
	p.Quarantine = DefaultQuarantine
	if qn, ok := m["quarantine"]; ok {
		s, ok := d.scalar(qn, what+": quarantine")
		if !ok {
			return p, false
		}
		q, err := time.ParseDuration(s)
		if s == "0" {
			q, err = 0, nil
		}
		if err != nil || q < 0 {
			d.fail(qn, "%s: quarantine %q: want a duration such as 120s (0 for none)", what, s)
			return p, false
		}
		p.Quarantine = q
	}
	return p, true
}

// checkTrait checks one trait's key and value.
func checkTrait(k, v string) error {
	if !nameRE.MatchString(k) {
		return fmt.Errorf("trait key %q: use letters, digits, '.', '_' and '-'", k)
	}
	if v == "" || strings.ContainsAny(v, "=, \t\n") {
		return fmt.Errorf("trait %s=%q: want a non-empty value without spaces, '=' or ','", k, v)
	}
	return nil
}

// checkPSID checks that p's PSID layout fits 16 bits and that every PSID's
// port set lies inside p.Ports.
func checkPSID(p Pool) error {
	a, k := p.PSID.Offset, p.PSID.Length
	if k == 0 {
		return fmt.Errorf("psid length 0: want at least one PSID bit")
	}
	if int(a)+int(k) > 16 {
		return fmt.Errorf("psid offset %d + length %d exceeds the 16 bits of a port", a, k)
	}
	for id := range 1 << k {
		s, err := tuple.PSIDPortSet(a, k, uint16(id))
		if err != nil {
			return fmt.Errorf("psid offset %d length %d: %v", a, k, err)
		}
		if !p.Ports.ContainsSet(s) {
			return fmt.Errorf("psid offset %d length %d: the port set of PSID %d (%s) is not inside ports %s", a, k, id, s.Bounds(), p.Ports)
		}
	}
	return nil
}

// poolErr is a problem with one named pool.
type poolErr struct {
	pool string
	msg  string
}

func (e *poolErr) Error() string {
	return fmt.Sprintf("%v: pool %s: %s", ErrPools, e.pool, e.msg)
}

func (e *poolErr) Unwrap() error { return ErrPools }

// checkPools checks pools as Apply needs them: valid fields, unique names,
// no address and port in two pools, at most MaxSlices slices.
func checkPools(pools []Pool) error {
	names := map[string]bool{}
	type owner struct {
		pool  string
		ports tuple.PortSet
	}
	byAddr := map[netip.Addr][]owner{}
	total := 0
	for _, p := range pools {
		bad := func(format string, args ...any) error {
			return &poolErr{p.Name, fmt.Sprintf(format, args...)}
		}
		if !nameRE.MatchString(p.Name) {
			return bad("name %q: use letters, digits, '.', '_' and '-'", p.Name)
		}
		if names[p.Name] {
			return bad("defined twice")
		}
		names[p.Name] = true
		if len(p.Addrs) == 0 {
			return bad("no addresses")
		}
		for k, v := range p.Traits {
			if err := checkTrait(k, v); err != nil {
				return bad("%v", err)
			}
		}
		if !p.Ports.IsValid() {
			return bad("no ports")
		}
		switch {
		case p.PSID != nil && p.Slice != 0:
			return bad("give slice or psid, not both")
		case p.PSID != nil:
			if err := checkPSID(p); err != nil {
				return bad("%v", err)
			}
		case p.Slice <= 0:
			return bad("no slice size or psid layout")
		case p.Ports.Len()%p.Slice != 0:
			return bad("slice %d does not divide the %d ports of %s", p.Slice, p.Ports.Len(), p.Ports)
		}
		if p.Quarantine < 0 {
			return bad("negative quarantine %v", p.Quarantine)
		}
		seen := map[netip.Addr]bool{}
		for _, a := range p.Addrs {
			if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
				return bad("address %v: want a plain IPv4 or IPv6 address", a)
			}
			if seen[a] {
				return bad("address %s listed twice", a)
			}
			seen[a] = true
			for _, o := range byAddr[a] {
				if in := o.ports.Intersect(p.Ports); in.IsValid() {
					return bad("address %s ports %s are also in pool %s", a, in, o.pool)
				}
			}
			byAddr[a] = append(byAddr[a], owner{p.Name, p.Ports})
		}
		total += numSlices(p) * len(p.Addrs)
		if total > MaxSlices {
			return bad("more than %d slices in all", MaxSlices)
		}
	}
	return nil
}

// numSlices returns the number of slices per address of p.
func numSlices(p Pool) int {
	if p.PSID != nil {
		return 1 << p.PSID.Length
	}
	if p.Slice <= 0 {
		return 0
	}
	return p.Ports.Len() / p.Slice
}

// sliceID returns the ID of slice index of addr in pool.
func sliceID(pool string, addr netip.Addr, index int) string {
	return pool + "/" + addr.String() + "/" + strconv.Itoa(index)
}

// parseSliceID splits an ID into pool, address and index.
func parseSliceID(id string) (pool string, addr netip.Addr, index int, err error) {
	i := strings.IndexByte(id, '/')
	j := strings.LastIndexByte(id, '/')
	if i <= 0 || j <= i {
		return "", netip.Addr{}, 0, fmt.Errorf("lease: slice ID %q: want pool/address/index", id)
	}
	addr, err = netip.ParseAddr(id[i+1 : j])
	if err != nil {
		return "", netip.Addr{}, 0, fmt.Errorf("lease: slice ID %q: %v", id, err)
	}
	index, err = strconv.Atoi(id[j+1:])
	if err != nil || index < 0 {
		return "", netip.Addr{}, 0, fmt.Errorf("lease: slice ID %q: bad index", id)
	}
	return id[:i], addr, index, nil
}

// slicePorts returns the ports of slice index of p.
func slicePorts(p Pool, index int) tuple.PortSet {
	if p.PSID != nil {
		s, _ := tuple.PSIDPortSet(p.PSID.Offset, p.PSID.Length, uint16(index))
		return s
	}
	first, _ := p.Ports.Nth(index * p.Slice)
	last, _ := p.Ports.Nth((index+1)*p.Slice - 1)
	// A slice of a pool whose ports have gaps may span several ranges.
	return p.Ports.Intersect(tuple.PortSetOf(tuple.PortRangeFrom(first, last)))
}

// slicesOf returns every slice of p as a free Lease, in address then index
// order.
func slicesOf(p Pool) []Lease {
	n := numSlices(p)
	out := make([]Lease, 0, n*len(p.Addrs))
	ports := make([]tuple.PortSet, n)
	for i := range n {
		ports[i] = slicePorts(p, i)
	}
	for _, a := range p.Addrs {
		for i := range n {
			out = append(out, Lease{ID: sliceID(p.Name, a, i), Pool: p.Name, Addr: a, Ports: ports[i]})
		}
	}
	return out
}

// matches reports whether pool traits include every requested trait.
func matches(pool, req map[string]string) bool {
	for k, v := range req {
		if pv, ok := pool[k]; !ok || pv != v {
			return false
		}
	}
	return true
}

// clonePool returns a deep copy of p.
func clonePool(p Pool) Pool {
	p.Addrs = slices.Clone(p.Addrs)
	p.Traits = maps.Clone(p.Traits)
	if p.PSID != nil {
		l := *p.PSID
		p.PSID = &l
	}
	return p
}

// sameLayout reports whether a and b cut the same slices (traits and
// quarantine may differ).
func sameLayout(a, b Pool) bool {
	if a.Name != b.Name || a.Slice != b.Slice || a.Ports != b.Ports {
		return false
	}
	if (a.PSID == nil) != (b.PSID == nil) || (a.PSID != nil && *a.PSID != *b.PSID) {
		return false
	}
	return true
}

// removedSlices returns the IDs of the slices of old that next no longer
// has with the same ports (a pool removed or re-cut, an address removed).
func removedSlices(old, next []Pool) []string {
	byName := map[string]Pool{}
	for _, p := range next {
		byName[p.Name] = p
	}
	var out []string
	for _, o := range old {
		n, ok := byName[o.Name]
		keep := ok && sameLayout(o, n)
		for _, s := range slicesOf(o) {
			if !keep || !slices.Contains(n.Addrs, s.Addr) {
				out = append(out, s.ID)
			}
		}
	}
	return out
}

// unmatchedTraitsError explains ErrNoPool with the traits pools offer.
func unmatchedTraitsError(req map[string]string, pools []Pool) error {
	var offered []string
	for _, p := range pools {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(p.Traits)) {
			kv = append(kv, k+"="+p.Traits[k])
		}
		offered = append(offered, p.Name+" {"+strings.Join(kv, ",")+"}")
	}
	if len(offered) == 0 {
		return fmt.Errorf("%w %s: the store has no pools (run apply first)", ErrNoPool, traitString(req))
	}
	return fmt.Errorf("%w %s (pools: %s)", ErrNoPool, traitString(req), strings.Join(offered, "; "))
}

// traitString formats traits as {k=v,...} in key order.
func traitString(t map[string]string) string {
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(t)) {
		kv = append(kv, k+"="+t[k])
	}
	return "{" + strings.Join(kv, ",") + "}"
}
