package portalloc

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/portspace/portspace/tuple"
)

// Deterministic is an RFC 7422 deterministic NAT mapping: every inside
// address owns one fixed block of ports on one outside address, computed by
// formula, so an operator logs the parameters instead of every mapping.
//
// With N_in inside addresses and N_out outside addresses the ratio is
// R = ⌈N_in / N_out⌉ subscribers per outside address and the block size is
// ⌊len(Ports) / R⌋ (the formula of Juniper's deterministic NAPT, RFC 7422
// §2). Inside address number i (counting through the prefixes in the order
// given) maps to outside address ⌊i / R⌋ and block i mod R, which starts at
// Ports.First() + (i mod R) × blocksize.
//
// Forward and Reverse do not allocate. A Deterministic is immutable and safe
// for concurrent use.
type Deterministic struct {
	inside  []netip.Prefix
	starts  []uint64 // starts[j] = index of the first address of inside[j]
	total   uint64
	outside []netip.Addr
	ports   tuple.PortRange
	ratio   uint64
	block   int
}

// ErrNotInside is returned (wrapped) when an address is not covered by a
// Deterministic mapping's inside prefixes.
var ErrNotInside = errors.New("portalloc: address not in the deterministic inside prefixes")

// NewDeterministic builds the RFC 7422 mapping of the IPv4 inside prefixes
// onto the outside addresses, using ports (zero PortRange = 1024-65535).
// Prefixes must be IPv4 and must not overlap; every subscriber must get at
// least one port.
func NewDeterministic(inside []netip.Prefix, outside []netip.Addr, ports tuple.PortRange) (*Deterministic, error) {
	if !ports.IsValid() {
		ports = tuple.PortRangeFrom(1024, 65535)
	}
	if len(inside) == 0 {
		return nil, errors.New("portalloc: deterministic: no inside prefixes")
	}
	if len(outside) == 0 {
		return nil, errors.New("portalloc: deterministic: no outside addresses")
	}
	d := &Deterministic{ports: ports}
	for i, p := range inside {
		if !p.IsValid() || !p.Addr().Is4() {
			return nil, fmt.Errorf("portalloc: deterministic: inside prefix %d (%v) is not IPv4", i, p)
		}
		p = p.Masked()
		for _, q := range d.inside {
			if q.Overlaps(p) {
				return nil, fmt.Errorf("portalloc: deterministic: inside prefixes %v and %v overlap", q, p)
			}
		}
		d.inside = append(d.inside, p)
		d.starts = append(d.starts, d.total)
		d.total += 1 << (32 - p.Bits())
	}
	seen := map[netip.Addr]bool{}
	for i, a := range outside {
		if !a.Is4() {
			return nil, fmt.Errorf("portalloc: deterministic: outside address %d (%v) is not IPv4", i, a)
		}
		if seen[a] {
			return nil, fmt.Errorf("portalloc: deterministic: outside address %v listed twice", a)
		}
		seen[a] = true
		d.outside = append(d.outside, a)
	}
	n := uint64(len(outside))
	d.ratio = (d.total + n - 1) / n
	d.block = int(uint64(ports.Len()) / d.ratio)
	if d.block < 1 {
		return nil, fmt.Errorf("portalloc: deterministic: %d inside addresses over %d outside addresses leave less than one port of %v each", d.total, n, ports)
	}
	return d, nil
}

// BlockSize returns the number of ports each inside address owns.
func (d *Deterministic) BlockSize() int { return d.block }

// Ratio returns the number of inside addresses per outside address.
func (d *Deterministic) Ratio() int { return int(d.ratio) }

// Ports returns the port range the blocks are cut from.
func (d *Deterministic) Ports() tuple.PortRange { return d.ports }

// Outside returns the outside addresses (do not modify).
func (d *Deterministic) Outside() []netip.Addr { return d.outside }

// Inside returns the inside prefixes (do not modify).
func (d *Deterministic) Inside() []netip.Prefix { return d.inside }

func (d *Deterministic) index(in netip.Addr) (uint64, bool) {
	if !in.Is4() {
		return 0, false
	}
	for j, p := range d.inside {
		if p.Contains(in) {
			a := in.As4()
			b := p.Addr().As4()
			off := uint64(be32(a) - be32(b))
			return d.starts[j] + off, true
		}
	}
	return 0, false
}

func be32(a [4]byte) uint32 {
	return uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
}

// Forward returns the outside address and port block of inside address in
// (RFC 7422 §2, "det44 forward"); ok is false when in is not inside.
func (d *Deterministic) Forward(in netip.Addr) (out netip.Addr, block tuple.PortRange, ok bool) {
	i, ok := d.index(in)
	if !ok {
		return netip.Addr{}, tuple.PortRange{}, false
	}
	// The ratio is rounded up (⌈N_in / N_out⌉), so i / ratio < N_out even
	// when the inside addresses do not divide evenly over the outside ones;
	// the check keeps a wrong ratio from indexing past the outside list.
	j := i / d.ratio
	if j >= uint64(len(d.outside)) {
		return netip.Addr{}, tuple.PortRange{}, false
	}
	slot := i % d.ratio
	lo := uint64(d.ports.First()) + slot*uint64(d.block)
	return d.outside[j], tuple.PortRangeFrom(uint16(lo), uint16(lo+uint64(d.block)-1)), true
}

// Reverse returns the inside address that owns the external endpoint ext
// ("det44 reverse", what `nat whois` answers); ok is false when no inside
// address owns it (unknown address, port outside the blocks, or a block
// beyond the last subscriber).
func (d *Deterministic) Reverse(ext netip.AddrPort) (in netip.Addr, ok bool) {
	j := -1
	for k, a := range d.outside {
		if a == ext.Addr() {
			j = k
			break
		}
	}
	p := ext.Port()
	if j < 0 || !d.ports.Contains(p) {
		return netip.Addr{}, false
	}
	slot := uint64(p-d.ports.First()) / uint64(d.block)
	if slot >= d.ratio {
		return netip.Addr{}, false
	}
	i := uint64(j)*d.ratio + slot
	if i >= d.total {
		return netip.Addr{}, false
	}
	for k := len(d.starts) - 1; k >= 0; k-- {
		if i >= d.starts[k] {
			b := d.inside[k].Addr().As4()
			v := be32(b) + uint32(i-d.starts[k])
			return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
		}
	}
	return netip.Addr{}, false
}
