// Package portalloc chooses external ports: the port-selection policy that a
// NAT (package nat) and a dialer share.
//
// It implements the five ephemeral-port selection algorithms of RFC 6056 §3.3
// (simple random, random alternative, keyed hash F(local, remote, secret),
// double hash, random increments), port preservation, port parity
// preservation (RFC 4787 §4.1 REQ-4), port classes 0-1023 and 1024-65535
// (RFC 4787 REQ-3a), paired and arbitrary IP pooling (RFC 4787 REQ-2,
// RFC 6888 REQ-2), per-subscriber port limits and port blocks (RFC 6888
// REQ-3 and REQ-4), a reuse quarantine for freed ports (RFC 6888 REQ-8),
// RFC 7422 deterministic port blocks with forward and reverse functions, and
// probing for shared ports when ports overlap (RFC 7857 §3).
//
// The RFC 6056 algorithms are specified as "pick a start, then try the next
// port until one is free". An Allocator keeps a bitmap of used ports per
// address with a summary level, so "the next free port from here" is a word
// scan and Get costs O(1) amortised even when the pool is nearly full.
// Get and Put do not allocate (once a subscriber is known).
//
// An Allocator is not safe for concurrent use; the caller serialises. Time
// is passed in.
package portalloc
