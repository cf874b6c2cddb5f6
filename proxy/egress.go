package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/portspace/portspace/dial"
)

// Errors an Egress returns (wrapped); the proxy maps them to replies.
var (
	// ErrExhausted means no egress port is free toward the destination in
	// any egress that offers the request's traits: SOCKS X'01', HTTP 503.
	ErrExhausted = errors.New("proxy: no egress port free")
	// ErrNoEgress means no egress offers the request's traits: SOCKS X'02'
	// (not allowed by ruleset), HTTP 403.
	ErrNoEgress = errors.New("proxy: no egress offers the traits")
)

// EgressRequest says what a connection needs from its egress.
type EgressRequest struct {
	// Traits the egress address must offer (all of them).
	Traits map[string]string
	// Session, if not empty, names a sticky session: dials of one session
	// keep their egress address while the session lives.
	Session string
}

// TraitsString renders traits as sorted k=v pairs joined by commas.
func TraitsString(t map[string]string) string {
	keys := sortedMapKeys(t)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + t[k])
	}
	return b.String()
}

// Egress dials outgoing connections for the proxy: "tcp" for CONNECT and
// HTTP, "udp" (a connected socket, one per destination) for UDP ASSOCIATE.
// It is the seam where the lease store plugs in (LeaseEgress); Dial must be
// safe for concurrent use.
type Egress interface {
	Dial(ctx context.Context, network string, dst netip.AddrPort, req EgressRequest) (net.Conn, error)
	// Offered returns the traits the egress can offer (name to values), or
	// nil when it cannot tell.
	Offered() map[string]map[string]bool
}

// DialerEgress is an Egress with one dial.Dialer and fixed traits: a
// request whose traits it lacks gets ErrNoEgress; dial.ErrExhausted becomes
// ErrExhausted.
type DialerEgress struct {
	Dialer *dial.Dialer
	Traits map[string]string
}

// Dial implements Egress.
func (e *DialerEgress) Dial(ctx context.Context, network string, dst netip.AddrPort, req EgressRequest) (net.Conn, error) {
	for k, v := range req.Traits {
		if e.Traits[k] != v {
			return nil, fmt.Errorf("%w: %s=%s (this egress offers %s)", ErrNoEgress, k, v, TraitsString(e.Traits))
		}
	}
	c, err := e.Dialer.DialContext(ctx, network, dst.String())
	if errors.Is(err, dial.ErrExhausted) {
		return nil, fmt.Errorf("%w: %w", ErrExhausted, err)
	}
	return c, err
}

// Offered implements Egress.
func (e *DialerEgress) Offered() map[string]map[string]bool {
	m := map[string]map[string]bool{}
	for k, v := range e.Traits {
		m[k] = map[string]bool{v: true}
	}
	return m
}

func mergeOffered(dst map[string]map[string]bool, traits map[string]string) {
	for k, v := range traits {
		if dst[k] == nil {
			dst[k] = map[string]bool{}
		}
		dst[k][v] = true
	}
}

func offeredString(m map[string]map[string]bool) string {
	var s []string
	for k, vs := range m {
		for v := range vs {
			s = append(s, k+"="+v)
		}
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}
