package natprobe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/portspace/portspace/stun"
)

// searchLifetime finds the binding lifetime by binary search (RFC 5780
// section 4.6 step 3): alive(T) reports whether a binding refreshed and
// then left idle for T still delivers. It returns the longest T seen alive
// (to within res) and whether even max was survived.
func searchLifetime(max, res time.Duration, alive func(time.Duration) (bool, error)) (time.Duration, bool, error) {
	ok, err := alive(max)
	if err != nil {
		return 0, false, err
	}
	if ok {
		return max, true, nil
	}
	lo, hi := time.Duration(0), max
	for hi-lo > res {
		mid := lo + (hi-lo)/2
		ok, err := alive(mid)
		if err != nil {
			return lo, false, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, false, nil
}

// lifetime runs the RFC 5780 section 4.6 test: socket X refreshes its
// binding toward the server, waits T, and then socket Y asks the server
// (RESPONSE-PORT = X's mapped port) to answer to X's mapping; an answer on
// X means the binding lived T.
func (p *prober) lifetime(ctx context.Context, local netip.Addr, res *Result) error {
	x, err := p.open(local)
	if err != nil {
		return err
	}
	y, err := p.open(local)
	if err != nil {
		return err
	}
	P := p.o.Server
	alive := func(T time.Duration) (bool, error) {
		a, _, err := p.do(ctx, txn{name: "lifetime refresh", from: x, to: P})
		if err != nil {
			return false, err
		}
		mx, err := mapped(a.m)
		if err != nil {
			return false, err
		}
		t := time.NewTimer(T)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		}
		_, ok, err := p.do(ctx, txn{name: "lifetime check", from: y, on: x, to: P, mayFail: true,
			build: func(b *stun.Builder) { b.AddResponsePort(mx.Port()) }})
		if err != nil {
			return false, err
		}
		p.log.Debug("natprobe: lifetime trial", "idle", T, "alive", ok)
		return ok, nil
	}
	lt, atLeast, err := searchLifetime(p.o.LifetimeMax, p.o.LifetimeResolution, alive)
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("after %v: %w", lt, err)
	}
	res.Lifetime, res.LifetimeAtLeast = lt, atLeast
	return err
}
