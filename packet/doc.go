// Package packet parses IPv4 packets carrying TCP, UDP or ICMP and rewrites
// their addresses, ports and ICMP identifiers in place, updating every
// affected checksum incrementally (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
//
// A [Packet] is a view over a caller-owned []byte: [Packet.Parse] fills it
// without copying or allocating, accessors read header fields straight from
// the buffer, and the Set methods write into it. ICMP error messages (RFC 792)
// carry the offending packet's IPv4 header and at least 8 bytes of its
// transport header; [Packet.Inner] reads that embedded packet and
// [Packet.SetInnerSrc]/[Packet.SetInnerDst] rewrite it as RFC 5508 §4
// requires (embedded IP checksum, embedded transport checksum where the bytes
// are present, and the outer ICMP checksum).
//
// Parse rejects a truncated or malformed packet with a [Reason], a small
// comparable error value that doubles as an index for drop counters
// (see [NumReasons]). [BuildICMPError] writes the ICMP errors a NAT sends
// (RFC 792, RFC 1812 §4.3.2, RFC 5508 REQ-8) into a caller buffer.
//
// Nothing in this package allocates on the parse or rewrite paths; tests pin
// this with testing.AllocsPerRun, and an independent decoder
// (github.com/gopacket/gopacket, tests only) checks every checksum.
package packet
