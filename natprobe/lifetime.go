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
		ok, err := p.check(ctx, x, y, mx)
		p.log.Debug("natprobe: lifetime trial", "idle", T, "alive", ok)
		return ok, err
	}
	lt, atLeast, err := searchLifetime(p.o.LifetimeMax, p.o.LifetimeResolution, alive)
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("after %v: %w", lt, err)
	}
	res.Lifetime, res.LifetimeAtLeast = lt, atLeast
	if err != nil || atLeast {
		return err
	}
	if lt < 2*p.o.LifetimeResolution {
		return fmt.Errorf("refresh behaviour: a lifetime of %v is too short to test at a resolution of %v", lt, p.o.LifetimeResolution)
	}
	ir, err := refreshBehavior(lt, p.sleep(ctx), func() (netip.AddrPort, error) {
		a, _, err := p.do(ctx, txn{name: "refresh test refresh", from: x, to: P})
		if err != nil {
			return netip.AddrPort{}, err
		}
		return mapped(a.m)
	}, func(mx netip.AddrPort) (bool, error) { return p.check(ctx, x, y, mx) })
	if err != nil {
		return fmt.Errorf("refresh behaviour: %w", err)
	}
	res.InboundRefresh = ir
	return nil
}

// check asks the server, from y, to answer to x's mapping mx
// (RESPONSE-PORT, RFC 5780 section 4.6) and reports whether the answer
// arrived on x. An answer on y means the old binding expired and the NAT
// gave y's new binding the same external port: expired too.
func (p *prober) check(ctx context.Context, x, y *sock, mx netip.AddrPort) (bool, error) {
	a, ok, err := p.do(ctx, txn{name: "lifetime check", from: y, on: x, to: p.o.Server, mayFail: true,
		build: func(b *stun.Builder) { b.AddResponsePort(mx.Port()) }})
	if err != nil {
		return false, err
	}
	return ok && a.at == x, nil
}

// sleep returns a function that waits d or until ctx is done.
func (p *prober) sleep(ctx context.Context) func(time.Duration) error {
	return func(d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// refreshChecks is the number of checks refreshBehavior sends, at half
// the lifetime apart: the last comes twice the lifetime after the
// refresh.
const refreshChecks = 4

// refreshBehavior tells whether inbound traffic refreshes a binding whose
// lifetime (refreshed by outbound traffic) is lt, the last paragraph of
// RFC 5780 section 4.6: one outbound refresh, then refreshChecks answers
// sent to the binding alone (check, from the second port), lt/2 apart.
// Every one delivered means inbound traffic refreshes it (true, RFC 4787
// REQ-6's "inbound refresh"); the first delivered and a later one not
// means only outbound traffic does (false). The first lost (lt/2 after the
// refresh, well inside the lifetime just measured) decides nothing: an
// error. Time passes through sleep, so a test can drive it with a fake
// binding.
func refreshBehavior(lt time.Duration, sleep func(time.Duration) error, refresh func() (netip.AddrPort, error),
	check func(netip.AddrPort) (bool, error)) (*bool, error) {
	mx, err := refresh()
	if err != nil {
		return nil, err
	}
	for i := 1; i <= refreshChecks; i++ {
		if err := sleep(lt / 2); err != nil {
			return nil, err
		}
		ok, err := check(mx)
		if err != nil {
			return nil, err
		}
		switch {
		case !ok && i == 1:
			return nil, fmt.Errorf("the binding expired %v after its refresh, inside its measured lifetime %v", lt/2, lt)
		case !ok:
			return ptr(false), nil
		}
	}
	return ptr(true), nil
}
