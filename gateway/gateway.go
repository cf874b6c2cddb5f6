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
// reads, translates and writes its own queue. The engine is one by default,
// locked once per batch, or Options.Shards engines that each own whole
// external addresses and the subscribers ShardOf assigns them, each with
// its own lock: see docs/gateway.md for the design and its figures.
package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
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
	// Shards is the number of NAT engines (default 1). Shard k owns the
	// external addresses External[k], External[k+Shards], ... with all
	// their ports, and the subscribers (inside addresses) ShardOf assigns
	// it; every worker locks, per batch, only the shards its packets
	// belong to. It needs at least Shards external addresses. A hairpinned
	// packet to another shard's address is translated by its sender's
	// shard (source) and then, in the same batch, by the owner's
	// (destination), as RFC 4787 REQ-9 has it. Engine.MaxSessions
	// and Engine.ExpectedSessions are divided among the shards.
	Shards int
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
	// NoHairpin counts packets to another shard's external address dropped
	// because hairpinning is off (Engine.NoHairpinning; with one shard the
	// engine counts them in its drops as no-hairpin).
	NoHairpin uint64
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
	Shards     int
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
	cNoHairpin
	numCounters
)

// Gateway is a running NAT datapath. Create it with New, run it with Run,
// and stop it by cancelling Run's context.
type Gateway struct {
	opts    Options
	shards  []*shard
	ext     map[uint32]uint8 // external address -> owning shard + 1
	local   map[uint32]bool  // the router's own addresses
	inside  []netip.Prefix
	log     *slog.Logger
	started time.Time
	per     []counters
	sc      *scratch // translate's scratch space in tests (the workers have their own)
	sys     *system  // the OS part (gateway_linux.go)
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
	if o.Shards <= 0 {
		o.Shards = 1
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
	if o.Shards > 255 {
		return fmt.Errorf("gateway: --shards %d: at most 255", o.Shards)
	}
	if o.Shards > len(o.Engine.External) {
		return fmt.Errorf("gateway: --shards %d needs at least %d external addresses (--external has %d): each shard owns whole addresses", o.Shards, o.Shards, len(o.Engine.External))
	}
	return nil
}

// Stats returns a snapshot of the counters and the engine's statistics.
func (g *Gateway) Stats() Stats {
	var c [numCounters]uint64
	for i := range g.per {
		for j := range c {
			c[j] += g.per[i].c[j].Load()
		}
	}
	s := Stats{Started: g.started, Workers: len(g.per), Shards: len(g.shards), TUN: g.opts.TUN, PortsInUse: map[netip.Addr]int{}}
	s.Counters = Counters{
		RxPackets: c[cRxPackets], RxBytes: c[cRxBytes],
		OutForwarded: c[cOutFwd], OutForwardedBytes: c[cOutFwdBytes],
		InForwarded: c[cInFwd], InForwardedBytes: c[cInFwdBytes],
		Hairpinned: c[cHairpin], HairpinnedBytes: c[cHairpinBytes],
		Replies: c[cReplies], Released: c[cReleased], Passed: c[cPassed],
		OutDropped: c[cOutDropped], InDropped: c[cInDropped],
		ReadErrors: c[cReadErr], WriteErrors: c[cWriteErr], Batches: c[cBatches],
		NoHairpin: c[cNoHairpin],
	}
	for _, sh := range g.shards {
		sh.mu.Lock()
		addStats(&s.Engine, sh.eng.Stats())
		for _, a := range sh.eng.Config().External {
			tcp, udp, icmp := sh.eng.PortsUsed(a)
			s.PortsInUse[a] = tcp + udp + icmp
		}
		sh.mu.Unlock()
	}
	s.Drops = map[string]uint64{}
	for r, n := range s.Engine.Drops {
		if n > 0 {
			s.Drops[nat.Reason(r).String()] = n
		}
	}
	if s.NoHairpin > 0 {
		s.Drops[nat.ReasonNoHairpin.String()] += s.NoHairpin
	}
	return s
}

// Sessions returns the live sessions (like conntrack -L), shard by shard.
// It holds each shard's lock while it copies its sessions: the datapath
// of that shard waits meanwhile.
func (g *Gateway) Sessions() []nat.Session {
	var out []nat.Session
	for _, sh := range g.shards {
		sh.mu.Lock()
		for s := range sh.eng.Sessions() {
			out = append(out, s)
		}
		sh.mu.Unlock()
	}
	return out
}

// Config returns the engine's configuration with defaults filled in (with
// shards, the first shard's, with the external addresses, the session
// limit, the expected sessions and the event sink as configured).
func (g *Gateway) Config() nat.Config {
	sh := g.shards[0]
	sh.mu.Lock()
	c := sh.eng.Config()
	sh.mu.Unlock()
	if len(g.shards) > 1 {
		o := g.opts.Engine
		c.External, c.MaxSessions, c.ExpectedSessions, c.Events = o.External, o.MaxSessions, o.ExpectedSessions, o.Events
	}
	return c
}

// Options returns the options the gateway runs with.
func (g *Gateway) Options() Options { return g.opts }

// Reload applies the settings of cfg that can change on a running engine
// (nat.Reloadable: timers, refresh, ICMP answers, session limits) without
// dropping sessions. External and Internal must stay as they are (the
// kernel set-up follows them); any other difference is refused with the
// engine's *nat.ConfigError naming the field, and nothing changes.
//
// With shards, the external addresses must be as the gateway started
// (each shard owns some of them); the shards then differ only in their
// share of the addresses and limits, so the first shard's engine refuses
// what any would, before any changes.
func (g *Gateway) Reload(cfg nat.Config) error {
	if len(g.shards) > 1 && !slices.Equal(cfg.External, g.opts.Engine.External) {
		return fmt.Errorf("gateway: reload: %w", &nat.ConfigError{Field: "External", YAML: "external",
			Err: errors.New("cannot change on a running gateway")})
	}
	cfgs, err := shardConfigs(cfg, len(g.shards))
	if err != nil {
		return fmt.Errorf("gateway: reload: %w", err)
	}
	for k, sh := range g.shards {
		sh.mu.Lock()
		err := sh.eng.Reload(cfgs[k])
		sh.mu.Unlock()
		if err != nil {
			return fmt.Errorf("gateway: reload: %w", err)
		}
	}
	return nil
}
