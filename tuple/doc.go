// Package tuple defines the value types portspace is built on: transport
// protocols, 4-tuples, inclusive port ranges and port sets.
//
// Every type is a comparable value (usable with == and as a map key) built on
// net/netip, and every accessor is free of allocations. A connection is
// identified by its 4-tuple (RFC 9293 §3.1 "connection" and RFC 768 for UDP):
// one local port may serve many remote endpoints at once, which is the fact
// the rest of portspace exploits.
//
// Port sets are unions of inclusive ranges, or the RFC 7597 §5.1 form given by
// the offset bits a, the PSID length k and the PSID value.
package tuple
