// Package gateway runs the NAT engine (package nat) as a real datapath on a
// Linux router: a TUN device with virtio-net offloads (TCP and UDP
// segmentation on read, receive coalescing on write, batched reads and
// writes, golang.zx2c4.com/wireguard/tun) receives the traffic of the inside
// networks and the traffic addressed to the external addresses, the engine
// translates each packet in place (RFC 4787, RFC 5382, RFC 5508, RFC 7857,
// RFC 6888 behaviours as nat.Config settings), and the packets are written
// back for the kernel to forward. The kernel plumbing (routes, policy rules,
// proxy ARP, sysctls) is set up and removed by internal/tunnet, also after a
// SIGKILL on the next start.
//
// The TUN device has one queue per worker (IFF_MULTI_QUEUE); each worker
// reads, segments, coalesces and writes its own queue, and the workers share
// one engine, locked once per batch: see docs/gateway.md for the design and
// its figures.
package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portspace/portspace/nat"
)

// Options configure a Gateway. The zero value of each field other than
// Engine is a documented default.
type Options struct {
	// Engine configures the NAT engine; Engine.External and
	// Engine.Internal are required (the external addresses and the inside
	// networks).
	Engine nat.Config
	// Passthrough forwards every packet through the TUN path untranslated
	// (a baseline for benchmarks; routing alone must work on the topology).
	Passthrough bool
	// TUN names the TUN device (default "psnat0").
	TUN string
	// MTU of the TUN device (default 1500).
	MTU int
	// Workers is the number of TUN queues and of goroutines serving them
	// (default GOMAXPROCS, at most 8).
	Workers int
	// StateDir holds the state file listing the kernel configuration the
	// gateway added (default /run/portspace).
	StateDir string
	// Table and Priority are the routing table and the policy rules'
	// priority (default 7300 each).
	Table, Priority int
	// SplitGSO splits super-packets into segments on read and coalesces
	// them again on write (the wireguard/tun offload code) instead of
	// translating each super-packet once and writing it back whole (the
	// default); for comparison.
	SplitGSO bool
	// ExpireEvery is the period of the engine's timer sweep (default 100 ms).
	ExpireEvery time.Duration
	// Logger receives start, stop and error logs; nil discards.
	Logger *slog.Logger
}

// Errors returned by New.
var (
	// ErrOverlap: an inside network contains an external address.
	ErrOverlap = errors.New("gateway: an inside network contains an external address")
	// ErrAddressConfigured: an external address is configured on an
	// interface of this host (the kernel would then deliver its traffic
	// locally instead of to the gateway).
	ErrAddressConfigured = errors.New("gateway: external address is configured on this host")
)

// Counters are the gateway's own packet counters, by direction and verdict
// (the engine's drop reasons are in EngineStats.Drops).
type Counters struct {
	// Packets and bytes read from the TUN.
	RxPackets, RxBytes uint64
	// Packets and bytes written back, by verdict.
	OutForwarded, OutForwardedBytes uint64 // outbound, translated
	InForwarded, InForwardedBytes   uint64 // inbound, translated
	Hairpinned, HairpinnedBytes     uint64
	Replies                         uint64 // ICMP messages the engine built (Reply verdicts, held-SYN answers)
	Released                        uint64 // held fragments released
	Passed                          uint64 // --passthrough packets
	// Drops by the engine (all reasons; see EngineStats.Drops).
	OutDropped, InDropped uint64
	// ReadErrors and WriteErrors count failed TUN reads (including
	// super-packets that could not be split) and writes.
	ReadErrors, WriteErrors uint64
	// Batches is the number of TUN reads; RxPackets/Batches is the mean
	// batch size.
	Batches uint64
}

// Stats is a snapshot of a running gateway.
type Stats struct {
	Counters
	Engine nat.Stats
	// Drops are the engine's drops by reason name (Engine.Drops by index).
	Drops map[string]uint64
	// PortsInUse counts the ports allocated (or quarantined, RFC 6888
	// REQ-8) per external address, TCP, UDP and ICMP identifiers together.
	PortsInUse map[netip.Addr]int
	Started    time.Time
	Workers    int
	TUN        string
}

// counters is Counters with atomic fields, one per worker to keep the
// workers off each other's cache lines.
type counters struct {
	c [numCounters]atomic.Uint64
	_ [64]byte
}

const (
	cRxPackets = iota
	cRxBytes
	cOutFwd
	cOutFwdBytes
	cInFwd
	cInFwdBytes
	cHairpin
	cHairpinBytes
	cReplies
	cReleased
	cPassed
	cOutDropped
	cInDropped
	cReadErr
	cWriteErr
	cBatches
	numCounters
)

// Gateway is a running NAT datapath. Create it with New, run it with Run,
// and stop it by cancelling Run's context.
type Gateway struct {
	opts    Options
	mu      sync.Mutex // guards eng
	eng     *nat.Engine
	ext     map[uint32]bool
	local   map[uint32]bool // the router's own addresses
	inside  []netip.Prefix
	log     *slog.Logger
	started time.Time
	per     []counters
	sys     *system // the OS part (gateway_linux.go)
}

func (o Options) withDefaults() Options {
	if o.TUN == "" {
		o.TUN = "psnat0"
	}
	if o.MTU == 0 {
		o.MTU = 1500
	}
	if o.Workers <= 0 {
		o.Workers = min(runtime.GOMAXPROCS(0), 8)
	}
	if o.ExpireEvery <= 0 {
		o.ExpireEvery = 100 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// check validates the addresses of opts (portable part of New).
func (o Options) check() error {
	if len(o.Engine.External) == 0 {
		return errors.New("gateway: no external addresses (--external)")
	}
	if len(o.Engine.Internal) == 0 {
		return errors.New("gateway: no inside networks (--inside)")
	}
	for _, p := range o.Engine.Internal {
		for _, a := range o.Engine.External {
			if p.Contains(a) {
				return fmt.Errorf("%w: %v contains %v", ErrOverlap, p, a)
			}
		}
	}
	return nil
}

// newEngine builds the engine of opts (also used by Reload checks).
func newEngine(o Options) (*nat.Engine, error) {
	e, err := nat.New(o.Engine)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	return e, nil
}

// Stats returns a snapshot of the counters and the engine's statistics.
func (g *Gateway) Stats() Stats {
	var c [numCounters]uint64
	for i := range g.per {
		for j := range c {
			c[j] += g.per[i].c[j].Load()
		}
	}
	s := Stats{Started: g.started, Workers: len(g.per), TUN: g.opts.TUN, PortsInUse: map[netip.Addr]int{}}
	s.Counters = Counters{
		RxPackets: c[cRxPackets], RxBytes: c[cRxBytes],
		OutForwarded: c[cOutFwd], OutForwardedBytes: c[cOutFwdBytes],
		InForwarded: c[cInFwd], InForwardedBytes: c[cInFwdBytes],
		Hairpinned: c[cHairpin], HairpinnedBytes: c[cHairpinBytes],
		Replies: c[cReplies], Released: c[cReleased], Passed: c[cPassed],
		OutDropped: c[cOutDropped], InDropped: c[cInDropped],
		ReadErrors: c[cReadErr], WriteErrors: c[cWriteErr], Batches: c[cBatches],
	}
	g.mu.Lock()
	s.Engine = g.eng.Stats()
	s.Drops = map[string]uint64{}
	for r, n := range s.Engine.Drops {
		if n > 0 {
			s.Drops[nat.Reason(r).String()] = n
		}
	}
	for _, a := range g.opts.Engine.External {
		tcp, udp, icmp := g.eng.PortsUsed(a)
		s.PortsInUse[a] = tcp + udp + icmp
	}
	g.mu.Unlock()
	return s
}

// Sessions returns the live sessions (like conntrack -L). It holds the
// engine's lock while it copies them: the datapath waits meanwhile.
func (g *Gateway) Sessions() []nat.Session {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []nat.Session
	for s := range g.eng.Sessions() {
		out = append(out, s)
	}
	return out
}

// Config returns the engine's configuration with defaults filled in.
func (g *Gateway) Config() nat.Config {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.eng.Config()
}

// Options returns the options the gateway runs with.
func (g *Gateway) Options() Options { return g.opts }

// Reload applies the settings of cfg that can change on a running engine
// (nat.Reloadable: timers, refresh, ICMP answers, session limits) without
// dropping sessions. External and Internal must stay as they are (the
// kernel set-up follows them); any other difference is refused with the
// engine's *nat.ConfigError naming the field, and nothing changes.
func (g *Gateway) Reload(cfg nat.Config) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.eng.Reload(cfg); err != nil {
		return fmt.Errorf("gateway: reload: %w", err)
	}
	return nil
}
