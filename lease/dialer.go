package lease

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"

	"github.com/portspace/portspace/dial"
)

// Dialer returns a dial.Dialer that dials from k's slice (Sources: the
// shared address, Ports: the slice's ports) and refuses every socket, with
// an error wrapping ErrLost, from the moment the lease is not Valid. The
// check runs in the socket's ControlContext, before bind, on the local
// clock, so it holds while the store is unreachable. configure, if not
// nil, sets other fields first (Timeout, Strategy, Logger, Control...);
// Sources, Ports and ControlContext are then set from the lease, the
// user's ControlContext or Control running after the check.
func (k *Keeper) Dialer(configure func(*dial.Dialer)) *dial.Dialer {
	d := &dial.Dialer{}
	if configure != nil {
		configure(d)
	}
	l := k.Lease()
	d.Sources = []netip.Addr{l.Addr}
	d.Ports = l.Ports
	userCC, userC := d.ControlContext, d.Control
	d.Control = nil
	d.ControlContext = func(ctx context.Context, network, address string, c syscall.RawConn) error {
		if err := k.Valid(); err != nil {
			return err
		}
		if userCC != nil {
			return userCC(ctx, network, address, c)
		}
		if userC != nil {
			return userC(network, address, c)
		}
		return nil
	}
	return d
}

// Dialer dials from the slices of several kept leases: each dial goes to
// the next lease (round robin) that is Valid and has a source of the
// destination's family, and moves on when that lease's ports toward the
// destination are exhausted. When no lease is valid it refuses with a
// *net.OpError whose Err wraps ErrLost. Make one with NewDialer.
type Dialer struct {
	keepers []*Keeper
	dialers []*dial.Dialer
	rr      atomic.Uint32
}

// NewDialer returns a Dialer over the kept leases; configure is passed to
// each Keeper.Dialer.
func NewDialer(configure func(*dial.Dialer), keepers ...*Keeper) *Dialer {
	d := &Dialer{keepers: keepers}
	for _, k := range keepers {
		d.dialers = append(d.dialers, k.Dialer(configure))
	}
	return d
}

// Dial is DialContext with a background context.
func (d *Dialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

// DialContext dials address from the slice of a valid kept lease (see
// Dialer).
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	n := len(d.keepers)
	start := int(d.rr.Add(1) - 1)
	// With an address literal, skip leases of the other family; a name is
	// left to each lease's dial.Dialer to resolve.
	literal, dstIs4 := false, false
	if ap, err := netip.ParseAddrPort(address); err == nil {
		literal, dstIs4 = true, ap.Addr().Unmap().Is4()
	}
	var last error
	var src net.Addr
	for i := range n {
		j := (start + i) % n
		k := d.keepers[j]
		if err := k.Valid(); err != nil {
			if last == nil {
				last = err
			}
			continue
		}
		l := k.Lease()
		if literal && l.Addr.Is4() != dstIs4 {
			continue
		}
		c, err := d.dialers[j].DialContext(ctx, network, address)
		if err == nil {
			return c, nil
		}
		if verr := k.Valid(); verr != nil {
			// Lost during the dial: say so rather than what the socket saw.
			err = verr
		}
		last = err
		src = &net.TCPAddr{IP: l.Addr.AsSlice()}
		if ctx.Err() != nil || !(errors.Is(err, dial.ErrExhausted) || errors.Is(err, ErrLost)) {
			return nil, err
		}
	}
	if last == nil {
		last = fmt.Errorf("%w: no kept lease for %s", ErrLost, address)
	}
	var oe *net.OpError
	if errors.As(last, &oe) {
		return nil, last
	}
	var dst net.Addr
	if ap, err := netip.ParseAddrPort(address); err == nil {
		dst = net.TCPAddrFromAddrPort(ap)
	}
	return nil, &net.OpError{Op: "dial", Net: network, Source: src, Addr: dst, Err: last}
}
