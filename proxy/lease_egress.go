package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/portspace/portspace/dial"
	"github.com/portspace/portspace/lease"
)

// Defaults of LeaseEgress's zero fields.
const (
	DefaultLeaseTTL    = 30 * time.Second
	DefaultIdleRelease = time.Minute
)

// LeaseEgress is an Egress that dials from port slices it claims from a
// lease.Store: for a request it dials from the slices it holds of pools
// offering the request's traits (the first one until it has no free port
// toward the destination, then the next), claims another slice of a
// matching pool when none has one (up to MaxSlices per pool), and answers
// ErrExhausted when every matching pool is exhausted. Each slice has its
// own dial.Dialer (Sources: the slice's address, Ports: its port set), so
// each source port serves many destinations and UDP 4-tuples stay unique.
//
// Tick renews the grants and releases surplus slices that stayed idle for
// IdleRelease (never a pool's last slice); a slice whose renew reports
// lease.ErrLost is dropped at once: no dial uses it afterwards. Run calls
// Tick every TTL/3. Set the fields before the first Dial.
type LeaseEgress struct {
	// Store grants the slices; required.
	Store lease.Store
	// Holder names this host in the store; required.
	Holder string
	// Host is the holder's address as the steering gateway reaches it
	// (lease.Request.Host); optional.
	Host netip.Addr
	// Pools are the store's pools (for Offered and for counting slices per
	// pool); nil: Offered reports nil and any claimed pool counts.
	Pools []lease.Pool
	// TTL of each grant; zero: DefaultLeaseTTL.
	TTL time.Duration
	// MaxSlices per pool; zero: DefaultMaxSlices.
	MaxSlices int
	// IdleRelease is how long a surplus slice with no connection is kept;
	// zero: DefaultIdleRelease.
	IdleRelease time.Duration
	// SessionIdle is how long a sticky session without connections keeps
	// its address; zero: DefaultSessionIdle.
	SessionIdle time.Duration
	// Strategy is passed to each slice's dial.Dialer (Auto chooses).
	Strategy dial.Strategy
	// Now is the clock for idle times; nil: time.Now.
	Now func() time.Time
	// Logger; nil discards.
	Logger *slog.Logger
	// Metrics, if set, gets leases held and slice occupancy.
	Metrics *Metrics

	mu       sync.Mutex
	slices   []*heldSlice
	sessions map[string]*session
	claimMu  sync.Mutex
}

type heldSlice struct {
	l        lease.Lease
	traits   map[string]string // the pool's traits (or the claim's, when Pools is nil)
	d        *dial.Dialer
	active   atomic.Int64
	lost     atomic.Bool
	idleFrom atomic.Int64 // unix nanos when active last fell to 0
	gauge    interface{ Set(float64) }
}

type session struct {
	addr     netip.Addr
	active   int
	lastUsed time.Time
}

func (e *LeaseEgress) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *LeaseEgress) log() *slog.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (e *LeaseEgress) ttl() time.Duration         { return orDur(e.TTL, DefaultLeaseTTL) }
func (e *LeaseEgress) idleRelease() time.Duration { return orDur(e.IdleRelease, DefaultIdleRelease) }
func (e *LeaseEgress) maxSlices() int {
	if e.MaxSlices > 0 {
		return e.MaxSlices
	}
	return DefaultMaxSlices
}

// Offered implements Egress: the traits of Pools.
func (e *LeaseEgress) Offered() map[string]map[string]bool {
	if e.Pools == nil {
		return nil
	}
	m := map[string]map[string]bool{}
	for _, p := range e.Pools {
		mergeOffered(m, p.Traits)
	}
	return m
}

func hasTraits(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// matchingPools returns the names of Pools offering want (nil when Pools
// is nil).
func (e *LeaseEgress) matchingPools(want map[string]string) []string {
	var out []string
	for _, p := range e.Pools {
		if hasTraits(p.Traits, want) {
			out = append(out, p.Name)
		}
	}
	return out
}

// Held returns the leases held now, in claim order.
func (e *LeaseEgress) Held() []lease.Lease {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []lease.Lease
	for _, h := range e.slices {
		out = append(out, h.l)
	}
	return out
}

// anyPoolOffers reports whether one of Pools offers want (true when Pools
// is nil).
func (e *LeaseEgress) anyPoolOffers(want map[string]string) bool {
	if e.Pools == nil {
		return true
	}
	for _, p := range e.Pools {
		if hasTraits(p.Traits, want) {
			return true
		}
	}
	return false
}

// candidates appends the held slices that may serve req to out, in claim
// order (a caller's array keeps the common case off the heap).
func (e *LeaseEgress) candidates(req EgressRequest, out []*heldSlice) []*heldSlice {
	e.mu.Lock()
	defer e.mu.Unlock()
	var pin netip.Addr
	if s := e.sessions[req.Session]; req.Session != "" && s != nil {
		if s.active > 0 || e.now().Sub(s.lastUsed) < orDur(e.SessionIdle, DefaultSessionIdle) {
			pin = s.addr
		} else {
			delete(e.sessions, req.Session)
		}
	}
	for _, h := range e.slices {
		if h.lost.Load() || !hasTraits(h.traits, req.Traits) {
			continue
		}
		if pin.IsValid() && h.l.Addr != pin {
			continue
		}
		out = append(out, h)
	}
	return out
}

// Dial implements Egress.
func (e *LeaseEgress) Dial(ctx context.Context, network string, dst netip.AddrPort, req EgressRequest) (net.Conn, error) {
	if !e.anyPoolOffers(req.Traits) {
		return nil, fmt.Errorf("%w: %s (pools offer %s)", ErrNoEgress, TraitsString(req.Traits), offeredString(e.Offered()))
	}
	c, err := e.dialHeld(ctx, network, dst, req)
	if c != nil || !errors.Is(err, errNoHeldPort) {
		return c, err
	}
	// No held slice has a free port toward dst: claim one more, one claim
	// at a time (a concurrent dial may have claimed meanwhile).
	e.claimMu.Lock()
	defer e.claimMu.Unlock()
	if c, err := e.dialHeld(ctx, network, dst, req); c != nil || !errors.Is(err, errNoHeldPort) {
		return c, err
	}
	h, err := e.claim(ctx, req)
	if err != nil {
		return nil, err
	}
	c, err = e.dialFrom(ctx, h, network, dst, req)
	if errors.Is(err, dial.ErrExhausted) {
		return nil, fmt.Errorf("%w: %s toward %s: %w", ErrExhausted, h.l.ID, dst, err)
	}
	return c, err
}

// Claim claims one slice for traits now (before any request needs it), so
// that the steering gateway can route its replies by the time clients
// come; it is the claim a dial would make.
func (e *LeaseEgress) Claim(ctx context.Context, traits map[string]string) (lease.Lease, error) {
	e.claimMu.Lock()
	defer e.claimMu.Unlock()
	h, err := e.claim(ctx, EgressRequest{Traits: traits})
	if err != nil {
		return lease.Lease{}, err
	}
	return h.l, nil
}

var errNoHeldPort = errors.New("proxy: no held slice has a free port toward the destination")

func (e *LeaseEgress) dialHeld(ctx context.Context, network string, dst netip.AddrPort, req EgressRequest) (net.Conn, error) {
	var buf [8]*heldSlice
	for _, h := range e.candidates(req, buf[:0]) {
		c, err := e.dialFrom(ctx, h, network, dst, req)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, dial.ErrExhausted) {
			return nil, err
		}
	}
	return nil, errNoHeldPort
}

// dialFrom dials from one held slice and tracks the connection.
func (e *LeaseEgress) dialFrom(ctx context.Context, h *heldSlice, network string, dst netip.AddrPort, req EgressRequest) (net.Conn, error) {
	if h.lost.Load() {
		return nil, dial.ErrExhausted
	}
	c, err := h.d.DialContext(ctx, network, dst.String())
	if err != nil {
		return nil, err
	}
	h.active.Add(1)
	e.gauge(h)
	if req.Session != "" {
		e.mu.Lock()
		if e.sessions == nil {
			e.sessions = map[string]*session{}
		}
		s := e.sessions[req.Session]
		if s == nil || s.addr != h.l.Addr {
			s = &session{addr: h.l.Addr}
			e.sessions[req.Session] = s
		}
		s.active++
		s.lastUsed = e.now()
		e.mu.Unlock()
	}
	return &leaseConn{Conn: c, e: e, h: h, session: req.Session}, nil
}

func (e *LeaseEgress) gauge(h *heldSlice) {
	if h.gauge != nil {
		h.gauge.Set(float64(h.active.Load()))
	}
}

// leaseConn gives its slice back its count on Close.
type leaseConn struct {
	net.Conn
	e       *LeaseEgress
	h       *heldSlice
	session string
	once    sync.Once
}

// Close closes the connection and updates its slice's occupancy.
func (c *leaseConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.h.active.Add(-1) == 0 {
			c.h.idleFrom.Store(c.e.now().UnixNano())
		}
		c.e.gauge(c.h)
		if c.session != "" {
			c.e.mu.Lock()
			if s := c.e.sessions[c.session]; s != nil && s.addr == c.h.l.Addr {
				s.active--
				s.lastUsed = c.e.now()
			}
			c.e.mu.Unlock()
		}
	})
	return err
}

// CloseWrite half-closes a TCP connection.
func (c *leaseConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// SyscallConn returns the raw connection of the dialer's socket, so the
// relay can wait for readability without a buffer.
func (c *leaseConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("proxy: connection has no raw socket")
}

// NetConn returns the dialer's connection.
func (c *leaseConn) NetConn() net.Conn { return c.Conn }

// claim asks the store for one more slice of a pool that offers req's
// traits and is below MaxSlices.
func (e *LeaseEgress) claim(ctx context.Context, req EgressRequest) (*heldSlice, error) {
	counts := map[string]int{}
	e.mu.Lock()
	for _, h := range e.slices {
		counts[h.l.Pool]++
	}
	e.mu.Unlock()
	if e.Pools != nil {
		room := false
		for _, p := range e.matchingPools(req.Traits) {
			room = room || counts[p] < e.maxSlices()
		}
		if !room {
			return nil, fmt.Errorf("%w: every pool offering %q holds max-slices %d slices, all without a free port toward the destination", ErrExhausted, TraitsString(req.Traits), e.maxSlices())
		}
	}
	l, err := e.Store.Claim(ctx, lease.Request{Holder: e.Holder, Traits: req.Traits, TTL: e.ttl(), Host: e.Host})
	switch {
	case errors.Is(err, lease.ErrNoSlice):
		return nil, fmt.Errorf("%w: %w", ErrExhausted, err)
	case errors.Is(err, lease.ErrNoPool):
		return nil, fmt.Errorf("%w: %w", ErrNoEgress, err)
	case err != nil:
		return nil, fmt.Errorf("proxy: claim a slice: %w", err)
	}
	if counts[l.Pool] >= e.maxSlices() {
		// The store chose a pool that is already at its bound.
		_ = e.Store.Release(ctx, l)
		return nil, fmt.Errorf("%w: pool %s holds max-slices %d slices", ErrExhausted, l.Pool, e.maxSlices())
	}
	traits := req.Traits
	for _, p := range e.Pools {
		if p.Name == l.Pool {
			traits = p.Traits
		}
	}
	// No TCP keep-alive: the proxy's idle timeout ends dead tunnels.
	h := &heldSlice{l: l, traits: traits, d: &dial.Dialer{Sources: []netip.Addr{l.Addr}, Ports: l.Ports, Strategy: e.Strategy, Logger: e.Logger, KeepAlive: -1}}
	h.idleFrom.Store(e.now().UnixNano())
	if e.Metrics != nil {
		h.gauge = e.Metrics.SlicePorts.WithLabelValues(l.Pool, l.ID)
		h.gauge.Set(0)
	}
	e.mu.Lock()
	e.slices = append(e.slices, h)
	e.mu.Unlock()
	e.held(l.Pool)
	e.log().Info("proxy: claimed a slice", "slice", l.ID, "ports", l.Ports.String(), "traits", TraitsString(req.Traits))
	return h, nil
}

func (e *LeaseEgress) held(pool string) {
	if e.Metrics == nil {
		return
	}
	n := 0
	e.mu.Lock()
	for _, h := range e.slices {
		if h.l.Pool == pool {
			n++
		}
	}
	e.mu.Unlock()
	e.Metrics.LeasesHeld.WithLabelValues(pool).Set(float64(n))
}

// drop forgets a slice: no dial uses it from now on.
func (e *LeaseEgress) drop(h *heldSlice) {
	h.lost.Store(true)
	e.mu.Lock()
	for i, x := range e.slices {
		if x == h {
			e.slices = append(e.slices[:i:i], e.slices[i+1:]...)
			break
		}
	}
	e.mu.Unlock()
	e.held(h.l.Pool)
	if e.Metrics != nil {
		e.Metrics.SlicePorts.DeleteLabelValues(h.l.Pool, h.l.ID)
	}
}

// Tick renews every held grant (dropping lost ones at once) and releases
// surplus slices idle since before now-IdleRelease; the first slice held of
// each pool is kept.
func (e *LeaseEgress) Tick(ctx context.Context) {
	e.mu.Lock()
	slices := append([]*heldSlice(nil), e.slices...)
	e.mu.Unlock()
	now := e.now()
	first := map[string]bool{}
	for _, h := range slices {
		if !first[h.l.Pool] {
			first[h.l.Pool] = true
		} else if h.active.Load() == 0 && now.Sub(time.Unix(0, h.idleFrom.Load())) >= e.idleRelease() {
			h.lost.Store(true) // no new dial from it while it goes
			if h.active.Load() == 0 {
				e.drop(h)
				if err := e.Store.Release(ctx, h.l); err != nil && !errors.Is(err, lease.ErrLost) {
					e.log().Warn("proxy: release an idle slice", "slice", h.l.ID, "err", err)
				} else {
					e.log().Info("proxy: released an idle surplus slice", "slice", h.l.ID)
				}
				continue
			}
			h.lost.Store(false)
		}
		nl, err := e.Store.Renew(ctx, h.l)
		if errors.Is(err, lease.ErrLost) {
			e.drop(h)
			e.log().Warn("proxy: lease lost; no more dials from its slice", "slice", h.l.ID, "err", err)
			continue
		}
		if err != nil {
			e.log().Warn("proxy: renew", "slice", h.l.ID, "err", err)
			continue
		}
		e.mu.Lock()
		h.l = nl
		e.mu.Unlock()
	}
}

// Run calls Tick every TTL/3 until ctx ends, then releases every slice.
func (e *LeaseEgress) Run(ctx context.Context) {
	t := time.NewTicker(e.ttl() / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			e.ReleaseAll(context.Background())
			return
		case <-t.C:
			e.Tick(ctx)
		}
	}
}

// ReleaseAll releases every held slice.
func (e *LeaseEgress) ReleaseAll(ctx context.Context) {
	e.mu.Lock()
	slices := append([]*heldSlice(nil), e.slices...)
	e.mu.Unlock()
	for _, h := range slices {
		e.drop(h)
		_ = e.Store.Release(ctx, h.l)
	}
}
