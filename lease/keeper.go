package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"time"
)

// Clock is the time source of a Keeper: Now, and a timer. Tests pass a
// fake; nil is the real clock (whose Now carries the monotonic reading
// that validity checks use).
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has passed, and a
	// function that stops the timer.
	After(d time.Duration) (<-chan time.Time, func())
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) After(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}

// KeeperOptions configures a Keeper. The zero value is the defaults.
type KeeperOptions struct {
	// Clock is the keeper's time source; nil is the real clock.
	Clock Clock
	// Logger receives a record per failed renew and per loss; nil
	// discards them.
	Logger *slog.Logger
	// OnRenew, if not nil, is called after every renew attempt with its
	// result (for metrics and tests).
	OnRenew func(Lease, error)
}

// Keeper renews one lease in the background: every third of the TTL, and
// after a failure again with jittered retries (a tenth of the TTL, ±50 %)
// until the grant's expiry passes. It reports the loss, once, on Lost: the
// store said ErrLost, or the expiry passed without a successful renew (an
// unreachable store included). Validity is judged by the local monotonic
// clock: the grant counts from when the renew request was sent, not from
// the store's reply, so the holder stops before the store frees the slice.
type Keeper struct {
	s           Store
	ttl         time.Duration
	clk         Clock
	log         *slog.Logger
	onRen       func(Lease, error)
	lost        chan error
	stopc       chan struct{}
	done        chan struct{}
	ctx         context.Context // canceled by Stop, so a renew in flight ends
	cancelRenew context.CancelFunc

	mu       sync.Mutex
	l        Lease
	deadline time.Time // local clock: the grant ends
	err      error     // set once lost
	stopped  bool
}

// Keep starts renewing l (claimed with TTL ttl) in s. Stop or Release it
// when done.
func Keep(s Store, l Lease, ttl time.Duration, o KeeperOptions) *Keeper {
	k := &Keeper{s: s, ttl: ttl, clk: o.Clock, log: o.Logger, onRen: o.OnRenew, l: l,
		lost: make(chan error, 1), stopc: make(chan struct{}), done: make(chan struct{})}
	if k.clk == nil {
		k.clk = realClock{}
	}
	k.ctx, k.cancelRenew = context.WithCancel(context.Background())
	if k.log == nil {
		k.log = slog.New(slog.DiscardHandler)
	}
	now := k.clk.Now()
	// The claim's expiry, in local clock terms, capped at one TTL.
	k.deadline = now.Add(min(ttl, l.Expires.Sub(now)))
	if ttl <= 0 {
		k.deadline = now
	}
	go k.run()
	return k
}

// Lease returns the lease as last renewed.
func (k *Keeper) Lease() Lease {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.l
}

// Lost returns a channel that receives the reason (wrapping ErrLost) once
// when the lease is lost; it is closed after that, and when the keeper is
// stopped.
func (k *Keeper) Lost() <-chan error { return k.lost }

// Valid returns nil while the lease is held by local reckoning, or an
// error wrapping ErrLost from the moment it was lost or its expiry passed
// without a renew, even if the keeper has not yet noticed.
func (k *Keeper) Valid() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.validLocked(k.clk.Now())
}

func (k *Keeper) validLocked(now time.Time) error {
	if k.err != nil {
		return k.err
	}
	if !now.Before(k.deadline) {
		return fmt.Errorf("%w: slice %s token %d: expired without a renew", ErrLost, k.l.ID, k.l.Token)
	}
	if k.stopped {
		return fmt.Errorf("%w: slice %s token %d: keeper stopped", ErrLost, k.l.ID, k.l.Token)
	}
	return nil
}

// Stop stops renewing; the grant runs out at its expiry (it is not
// released). Valid reports ErrLost from now on.
func (k *Keeper) Stop() {
	k.mu.Lock()
	if !k.stopped {
		k.stopped = true
		close(k.stopc)
		k.cancelRenew()
	}
	k.mu.Unlock()
	<-k.done
}

// Release stops the keeper and releases the grant now.
func (k *Keeper) Release(ctx context.Context) error {
	k.Stop()
	k.mu.Lock()
	l, err := k.l, k.err
	k.mu.Unlock()
	if err != nil {
		return err
	}
	return k.s.Release(ctx, l)
}

func (k *Keeper) setLost(err error) {
	k.mu.Lock()
	first := k.err == nil
	if first {
		k.err = err
	}
	k.mu.Unlock()
	if first {
		k.log.Warn("lease: lost", "slice", k.l.ID, "token", k.l.Token, "err", err)
		k.lost <- err
	}
}

func (k *Keeper) run() {
	defer close(k.done)
	defer close(k.lost)
	next := k.ttl / 3
	for {
		k.mu.Lock()
		untilEnd := k.deadline.Sub(k.clk.Now())
		k.mu.Unlock()
		wait := min(next, untilEnd)
		ch, stop := k.clk.After(max(wait, 0))
		select {
		case <-k.stopc:
			stop()
			return
		case <-ch:
		}
		now := k.clk.Now()
		k.mu.Lock()
		verr := k.validLocked(now)
		l := k.l
		k.mu.Unlock()
		if verr != nil {
			if !k.isStopped() {
				k.setLost(verr)
			}
			return
		}
		sent := k.clk.Now()
		k.mu.Lock()
		remaining := k.deadline.Sub(sent)
		k.mu.Unlock()
		// A renew that cannot finish before the expiry is no use: bound it
		// there, so that a hung store call does not delay the loss report.
		ctx, cancel := context.WithTimeout(k.ctx, max(remaining, 50*time.Millisecond))
		r, err := k.s.Renew(ctx, l)
		cancel()
		if k.onRen != nil {
			k.onRen(r, err)
		}
		switch {
		case err == nil:
			k.mu.Lock()
			k.l = r
			if d := sent.Add(min(k.ttl, r.Expires.Sub(sent))); d.After(k.deadline) {
				k.deadline = d
			}
			k.mu.Unlock()
			next = k.ttl / 3
		case errors.Is(err, ErrLost):
			k.setLost(err)
			return
		case k.isStopped():
			return
		default:
			k.log.Debug("lease: renew failed", "slice", l.ID, "err", err)
			base := k.ttl / 10
			next = max(base/2+time.Duration(mrand.Int64N(int64(base)+1)), 50*time.Millisecond)
		}
	}
}

func (k *Keeper) isStopped() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stopped
}
