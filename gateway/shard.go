package gateway

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"sync"

	"github.com/portspace/portspace/nat"
)

// A shard is one NAT engine and its lock. Shard k owns the external
// addresses External[k], External[k+n], ... with all their ports, and the
// subscribers (inside addresses) that ShardOf assigns it: a subscriber's
// flows all meet one engine, so endpoint-independent mapping (RFC 4787
// REQ-1), paired pooling (REQ-2) and the per-subscriber limits (RFC 6888
// REQ-4) hold as they do with one engine, and port preservation (REQ-3)
// has every port of the shard's addresses to choose from.
type shard struct {
	mu  sync.Mutex // guards eng
	eng *nat.Engine
	_   [64]byte // keep the shards' locks off each other's cache lines
}

// ShardOf returns the shard (0 to n-1) that serves the subscriber with
// inside address a when the gateway runs n shards (Options.Shards): a
// multiplicative hash of the address, so that consecutive addresses
// spread over the shards. It is a pure function, so a test or an operator
// can say which external addresses a subscriber's mappings use:
// External[ShardOf(a, n)+k*n] for k = 0, 1, ....
func ShardOf(a netip.Addr, n int) int {
	if n <= 1 || !a.Is4() {
		return 0
	}
	b := a.As4()
	return shardOf(binary.BigEndian.Uint32(b[:]), n)
}

func shardOf(a uint32, n int) int {
	return int(uint64(a*0x9e3779b1) * uint64(n) >> 32)
}

// shardConfigs splits cfg into n engine configurations: shard k gets the
// external addresses k, k+n, ..., and its share of the global session
// limit and of the expected table size; every other setting is the same.
func shardConfigs(cfg nat.Config, n int) ([]nat.Config, error) {
	if n <= 1 {
		return []nat.Config{cfg}, nil
	}
	if len(cfg.External) < n {
		return nil, fmt.Errorf("gateway: %d shards need at least %d external addresses (--external has %d): each shard owns whole addresses", n, n, len(cfg.External))
	}
	out := make([]nat.Config, n)
	var sink nat.EventSink
	if cfg.Events != nil {
		sink = &lockedSink{s: cfg.Events}
	}
	for k := range out {
		c := cfg
		c.External = nil
		for i := k; i < len(cfg.External); i += n {
			c.External = append(c.External, cfg.External[i])
		}
		if cfg.MaxSessions > 0 {
			c.MaxSessions = (cfg.MaxSessions + n - 1) / n
		}
		if cfg.ExpectedSessions > 0 {
			c.ExpectedSessions = (cfg.ExpectedSessions + n - 1) / n
		}
		c.Events = sink
		out[k] = c
	}
	return out, nil
}

// lockedSink serializes the events of several engines into one sink (a
// natlog.LogWriter is not safe for concurrent use).
type lockedSink struct {
	mu sync.Mutex
	s  nat.EventSink
}

// Record passes ev on under the sink's lock.
func (l *lockedSink) Record(ev nat.Event) {
	l.mu.Lock()
	l.s.Record(ev)
	l.mu.Unlock()
}

// newShards builds the engines of o.
func newShards(o Options) ([]*shard, map[uint32]uint8, error) {
	cfgs, err := shardConfigs(o.Engine, o.Shards)
	if err != nil {
		return nil, nil, err
	}
	owner := map[uint32]uint8{}
	var out []*shard
	for k, c := range cfgs {
		e, err := nat.New(c)
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: %w", err)
		}
		out = append(out, &shard{eng: e})
		for _, a := range c.External {
			b := a.As4()
			owner[binary.BigEndian.Uint32(b[:])] = uint8(k + 1)
		}
	}
	return out, owner, nil
}

// addStats adds every counter of b to a (the numeric fields and arrays of
// nat.Stats, whatever they are).
func addStats(a *nat.Stats, b nat.Stats) {
	addValue(reflect.ValueOf(a).Elem(), reflect.ValueOf(b))
}

func addValue(a, b reflect.Value) {
	switch a.Kind() {
	case reflect.Struct:
		for i := 0; i < a.NumField(); i++ {
			if a.Field(i).CanSet() {
				addValue(a.Field(i), b.Field(i))
			}
		}
	case reflect.Array:
		for i := 0; i < a.Len(); i++ {
			addValue(a.Index(i), b.Index(i))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		a.SetInt(a.Int() + b.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		a.SetUint(a.Uint() + b.Uint())
	case reflect.Float32, reflect.Float64:
		a.SetFloat(a.Float() + b.Float())
	}
}

// scratch is a worker's working space for one batch (allocated once).
type scratch struct {
	shard []uint8 // the shard each packet of the batch goes to
	inb   []bool  // whether it goes to Engine.Inbound
	// again marks the hairpinned packets to another shard's external
	// address whose source the sender's shard translated: the owner's
	// shard translates their destination in a second pass.
	again []bool
}

func newScratch(n int) *scratch {
	return &scratch{shard: make([]uint8, n), inb: make([]bool, n), again: make([]bool, n)}
}
