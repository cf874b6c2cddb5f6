// Package punch connects two peers behind NATs by TCP simultaneous open,
// predicting each side's external port from its NAT's measured TCP
// behaviour, and relays their bytes through the rendezvous when no direct
// path works.
//
// A peer learns its NAT's TCP mapping from the rendezvous (RFC 5780 section
// 3.1's mapping test over TCP: connections from one reused local port to two
// of the rendezvous's endpoints), registers under an ID bound to a secret,
// and names the peer it wants. When both have asked for each other, the
// rendezvous hands each the other's candidates (local, reflexive and
// predicted endpoints) and a start delay that makes both sides' SYNs leave
// at the same moment, as libp2p's DCUtR synchronises them to half the
// round-trip time. Every socket involved (to the rendezvous, the probes, the
// punching connects and a listener) shares one local port with SO_REUSEADDR
// and SO_REUSEPORT, so the NAT's mapping for that port is the one the peer
// aims at. RFC 5382 REQ-2 (simultaneous open) and REQ-4 (the six-second hold
// of an unsolicited inbound SYN) are what make this work through a NAT.
//
// The Result says how the connection was made (direct, simultaneous-open,
// predicted or relay) and, when punching failed, why.
package punch
