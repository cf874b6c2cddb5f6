// Package lease hands out slices of shared egress addresses' port space to
// hosts, so that several hosts can share one IPv4 (or IPv6) address without a
// stateful NAT: each host dials only from the ports of the slices it holds,
// and a gateway steers replies to the holder by destination port (package
// steer). A slice has at most one holder at a time, comes back when its
// holder stops renewing, and goes to nobody for its pool's quarantine after a
// release or an expiry, so that a new holder never meets the old holder's
// connections (RFC 6056 section 3.2's TIME_WAIT concern, twice Linux's 60 s by
// default).
//
// Stores are opened by URL (see Open): "bolt:PATH" for one machine, safe for
// several processes at once, and "etcd://HOST:PORT,..." for a fleet. Both
// implement Store and pass the same contract tests.
package lease

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/portspace/portspace/tuple"
)

// Errors a Store returns; test them with errors.Is.
var (
	// ErrNoSlice means every slice of every pool that matches the request's
	// traits is held or in quarantine.
	ErrNoSlice = errors.New("lease: no free slice")
	// ErrLost means a renew or release came after the lease expired, or with
	// a token other than the slice's current grant: the caller no longer
	// holds the slice and must stop dialing from it.
	ErrLost = errors.New("lease: lease lost")
	// ErrNoPool means no pool offers every requested trait.
	ErrNoPool = errors.New("lease: no pool matches the traits")
)

// Pool is a set of shared addresses with the same traits, each address's
// port set cut the same way into slices.
type Pool struct {
	// Name identifies the pool; it is part of every slice's ID.
	Name string
	// Addrs are the shared addresses; each is cut into the same slices.
	Addrs []netip.Addr
	// Traits describe the addresses (for example geo=de,
	// category=residential); a request matches a pool whose traits include
	// all the requested ones.
	Traits map[string]string
	// Ports is the part of each address's port space that the pool hands out.
	Ports tuple.PortSet
	// Slice is the number of ports per contiguous slice (it divides
	// Ports.Len()); zero when PSID is used.
	Slice int
	// PSID, when set, cuts Ports into RFC 7597 section 5.1 port sets, one
	// PSID per slice, instead of contiguous ranges.
	PSID *PSIDLayout
	// Quarantine is how long a released or expired slice goes to nobody.
	// ParsePools fills in the 120 s default when the file leaves it out.
	Quarantine time.Duration
}

// PSIDLayout is an RFC 7597 section 5.1 port-set layout: Offset (a) bits
// before the PSID, Length (k) bits of PSID.
type PSIDLayout struct {
	Offset uint8
	Length uint8
}

// Request asks a Store for one more slice.
type Request struct {
	// Holder names the claimant (a host name); required.
	Holder string
	// Traits the slice's pool must offer; none matches any pool.
	Traits map[string]string
	// TTL is how long the grant lasts without a renew; required, positive.
	TTL time.Duration
	// Host is the holder's address as the steering gateway reaches it
	// (optional; package steer routes the slice's replies to it).
	Host netip.Addr
}

// Lease is one slice and, when held, its grant.
type Lease struct {
	// ID is stable per slice and has no spaces: pool/address/index.
	ID string
	// Pool is the name of the slice's pool.
	Pool string
	// Addr is the shared address.
	Addr netip.Addr
	// Ports is the slice's port set (a range, or a PSID port set).
	Ports tuple.PortSet
	// Holder is the current holder, empty when the slice is not held.
	Holder string
	// Host is the holder's host address as given in its Request.
	Host netip.Addr
	// Token is a fencing token that increases with every grant of the slice.
	Token uint64
	// Expires is when the grant ends without a renew, or when the quarantine
	// of a released or expired slice ends.
	Expires time.Time
	// State is held, quarantined or free (as List reports it).
	State State
}

// State is a slice's state in List.
type State uint8

// The states of a slice.
const (
	Free State = iota
	Held
	Quarantined
)

// String returns "free", "held" or "quarantined".
func (s State) String() string {
	switch s {
	case Held:
		return "held"
	case Quarantined:
		return "quarantined"
	default:
		return "free"
	}
}

// Store is the interface both stores implement. Arguments and results are
// values; every method is safe for concurrent use, and for use by several
// processes (bolt) or hosts (etcd) at once.
type Store interface {
	// Apply makes the store's pools these; it is idempotent, and changing or
	// removing a pool never takes a held slice from its holder before the
	// grant expires.
	Apply(ctx context.Context, pools []Pool) error
	// Claim grants one more free slice of a pool whose traits include the
	// request's, or returns ErrNoSlice (ErrNoPool when no pool matches).
	Claim(ctx context.Context, req Request) (Lease, error)
	// Renew extends a grant by its TTL, or returns ErrLost.
	Renew(ctx context.Context, l Lease) (Lease, error)
	// Release ends a grant now (the slice enters quarantine), or returns
	// ErrLost.
	Release(ctx context.Context, l Lease) error
	// List returns every slice of every pool, held, quarantined or free.
	List(ctx context.Context) ([]Lease, error)
	// Close releases the store's resources (not its grants).
	Close() error
}

// Watcher is implemented by stores that report changes; both stores do
// (BoltStore.Watch, EtcdStore.Watch). Watch returns a channel that receives
// a value, coalesced, whenever slices or pools may have changed (a claim,
// renew, release or apply by anyone, a grant's expiry, a quarantine's
// end); the reader then calls List. The channel is closed when ctx ends or
// the store is closed.
type Watcher interface {
	Watch(ctx context.Context) (<-chan struct{}, error)
}
