package steer

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/portspace/portspace/lease"
)

// Lister is the part of a lease.Store that steering reads.
type Lister interface {
	List(ctx context.Context) ([]lease.Lease, error)
}

// Reconciler keeps a gateway's steering equal to a store's held slices.
type Reconciler struct {
	// Store is listed on every reconcile; if it implements lease.Watcher,
	// Run reconciles on its change notifications.
	Store Lister
	// Gateway is where plans are applied.
	Gateway *Gateway
	// Form is FormIP or FormNFT (zero: FormNFT).
	Form Form
	// Options are the owned ranges.
	Options Options
	// Logger receives a record per change and per error; nil discards.
	Logger *slog.Logger
}

func (r *Reconciler) form() Form {
	if r.Form == 0 {
		return FormNFT
	}
	return r.Form
}

func (r *Reconciler) log() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

// Reconcile lists the store, builds the plan for time now (keeping each
// host's current table), and applies it. It returns the plan and what
// changed. A slice that moved to another host or whose grant ended (by
// release or by expiry before now) loses its rules in this call.
func (r *Reconciler) Reconcile(ctx context.Context, now time.Time) (Plan, Stats, error) {
	ls, err := r.Store.List(ctx)
	if err != nil {
		return Plan{}, Stats{}, fmt.Errorf("steer: list the store: %w", err)
	}
	keep, err := r.Gateway.Tables(r.Options)
	if err != nil {
		return Plan{}, Stats{}, err
	}
	p, err := NewPlan(ls, now, r.Options, keep)
	if err != nil {
		return Plan{}, Stats{}, err
	}
	st, err := r.Gateway.Apply(p, r.form())
	if err != nil {
		return p, st, err
	}
	if st.Changed() {
		r.log().Info("steer: reconciled", "form", r.form().String(), "slices", len(p.Slices), "hosts", len(p.Hosts),
			"rules_added", st.RulesAdded, "rules_deleted", st.RulesDeleted,
			"routes_added", st.RoutesAdded, "routes_deleted", st.RoutesDeleted, "nft", st.NFT)
	}
	return p, st, nil
}

// WatchOptions configures Run. The zero value is the defaults.
type WatchOptions struct {
	// Resync is the longest time between two reconciles, whatever the
	// store reports (zero: 10 s); it also repairs changes made to the
	// owned ranges by others.
	Resync time.Duration
	// Now is the clock plans are built for (nil: time.Now).
	Now func() time.Time
	// OnReconcile, if not nil, is called after each reconcile.
	OnReconcile func(Plan, Stats, error)
}

// Run reconciles now and then whenever the store reports a change (if it
// implements lease.Watcher), when the earliest held grant expires, and at
// least every Resync, until ctx ends. Errors are logged and retried at
// the next occasion; Run returns ctx's error.
func (r *Reconciler) Run(ctx context.Context, o WatchOptions) error {
	if o.Resync <= 0 {
		o.Resync = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	var changes <-chan struct{}
	if w, ok := r.Store.(lease.Watcher); ok {
		ch, err := w.Watch(ctx)
		if err != nil {
			r.log().Warn("steer: watch the store; polling instead", "err", err)
		} else {
			changes = ch
		}
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-changes:
			if !ok {
				changes = nil // store closed its watch: resync only
			}
		case <-timer.C:
		}
		now := o.Now()
		p, st, err := r.Reconcile(ctx, now)
		if err != nil {
			r.log().Warn("steer: reconcile", "err", err)
		}
		if o.OnReconcile != nil {
			o.OnReconcile(p, st, err)
		}
		wait := o.Resync
		if err == nil && !p.NextExpiry.IsZero() && p.NextExpiry.Sub(now) < wait {
			wait = p.NextExpiry.Sub(now) + time.Millisecond
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}
