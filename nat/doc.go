// Package nat is a configurable, allocation-free IPv4 NAPT engine (NAT44)
// that implements, as orthogonal settings, the behaviours of RFC 4787 (UDP),
// RFC 5382 (TCP), RFC 5508 (ICMP), RFC 7857 (updates: TCP state tracking,
// port overlapping) and RFC 6888 (CGN: paired pooling, per-subscriber port
// limits and blocks, reuse quarantine, no destination logging) plus RFC 7422
// deterministic mapping.
//
// An Engine translates IPv4 packets in place: Outbound for packets from the
// internal side, Inbound for packets from the external side. Time is passed
// in; the engine starts no goroutines and never sleeps. Named presets
// (Preset) configure the classic NAT types ("full-cone", "symmetric", ...),
// an RFC-recommended NAT, Linux masquerade and carrier-grade NAT.
//
// Concurrency: an Engine is not safe for concurrent use. A datapath with
// several goroutines either serialises calls with one lock, or shards flows
// over several Engines with disjoint External addresses, steering each packet
// by its internal address outbound and by its external address inbound, so
// that both directions of a flow (and all flows of a subscriber, for paired
// pooling) reach the same shard; traffic between subscribers of different
// shards then hairpins through the outside. See docs/nat.md for the design.
package nat
