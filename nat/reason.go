package nat

import "github.com/portspace/portspace/packet"

// Reason says why the engine dropped a packet (or answered it with an ICMP
// error instead of translating it). Like packet.Reason it is a comparable
// small integer that indexes counter arrays (Stats.Drops, length
// NumReasons) and an error. The values below packet.NumReasons are the
// packet.Reason values of malformed packets (FromPacket); the engine's own
// reasons follow. The zero Reason (ReasonNone) means "not dropped".
type Reason uint8

// The reasons of Verdict.Reason and Stats.Drops.
const (
	// ReasonNone: not dropped (Forward and Hairpin verdicts).
	ReasonNone = Reason(packet.ReasonNone)
	// ReasonFragment: a fragment that cannot be translated (a fragmented
	// ICMP error, or a non-first fragment of an unknown datagram while the
	// hold is off); the same value as packet.ReasonFragment.
	ReasonFragment = Reason(packet.ReasonFragment)
)

// The engine's own reasons.
const (
	ReasonNotInternal     Reason = Reason(packet.NumReasons) + iota // outbound source outside Config.Internal
	ReasonNotExternal                                               // inbound destination is not an external address
	ReasonNoMapping                                                 // inbound packet matches no mapping (RFC 4787 §5)
	ReasonFiltered                                                  // inbound packet refused by the filtering behaviour (RFC 4787 §5)
	ReasonSYNHeld                                                   // unsolicited SYN held (RFC 5382 REQ-4)
	ReasonSYNDropped                                                // unsolicited SYN dropped (no hold, hold full, or a retransmission)
	ReasonTCPNoSession                                              // TCP segment other than SYN with no session
	ReasonPortsExhausted                                            // no external port left (RFC 4787 REQ-3)
	ReasonPortLimit                                                 // the subscriber's port limit (RFC 6888 REQ-3, REQ-4)
	ReasonSessionLimit                                              // MaxSessions or MaxSessionsPerSubscriber (RFC 6888 REQ-5)
	ReasonICMPChecksum                                              // ICMP error failing its checksum (RFC 5508 REQ-3)
	ReasonICMPNoSession                                             // ICMP error about no known flow (RFC 5508 REQ-4)
	ReasonICMPUnsolicited                                           // ICMP query that may not create a session
	ReasonNoHairpin                                                 // Config.NoHairpinning (RFC 4787 REQ-9)
	ReasonUnsupported                                               // packet the engine does not translate
	ReasonFragmentHeld                                              // non-first fragment held until its first fragment (Engine.Released, RFC 4787 REQ-14)
	ReasonFragmentTimeout                                           // held fragment whose first fragment did not come within Config.FragmentHold
	ReasonFragmentFull                                              // fragment over a hold cap (Config.MaxHeldFragments...), or a duplicate
	// NumReasons is the number of Reason values, for counter arrays.
	NumReasons
)

// reasonInfo is the one list of the engine's reasons: the name (String)
// and the description (Error) of each, keyed by its constant.
var reasonInfo = [NumReasons]struct{ name, text string }{
	ReasonNotInternal:     {"not-internal", "source is not an internal address"},
	ReasonNotExternal:     {"not-external", "destination is not an external address"},
	ReasonNoMapping:       {"no-mapping", "no mapping for the destination"},
	ReasonFiltered:        {"filtered", "refused by the filtering behaviour"},
	ReasonSYNHeld:         {"syn-held", "unsolicited SYN held"},
	ReasonSYNDropped:      {"syn-dropped", "unsolicited SYN dropped"},
	ReasonTCPNoSession:    {"tcp-no-session", "TCP segment without a session"},
	ReasonPortsExhausted:  {"ports-exhausted", "no external port left"},
	ReasonPortLimit:       {"subscriber-port-limit", "subscriber port limit reached"},
	ReasonSessionLimit:    {"session-limit", "session limit reached"},
	ReasonICMPChecksum:    {"icmp-checksum", "ICMP error with a bad checksum"},
	ReasonICMPNoSession:   {"icmp-no-session", "ICMP error about no known flow"},
	ReasonICMPUnsolicited: {"icmp-unsolicited", "ICMP query that may not create a session"},
	ReasonNoHairpin:       {"hairpin-disabled", "hairpinning is disabled"},
	ReasonUnsupported:     {"unsupported", "packet not translated"},
	ReasonFragmentHeld:    {"fragment-held", "fragment held until its first fragment"},
	ReasonFragmentTimeout: {"fragment-timeout", "held fragment timed out"},
	ReasonFragmentFull:    {"fragment-hold-full", "fragment hold full"},
}

// FromPacket returns the Reason of a packet the packet package rejected with
// r (RFC 791 §3.1 and the transport headers' checks; see packet.Reason).
func FromPacket(r packet.Reason) Reason {
	if r >= packet.NumReasons {
		return Reason(packet.ReasonNone)
	}
	return Reason(r)
}

// Packet returns the packet.Reason r stands for and true, or false when r is
// one of the engine's own reasons.
func (r Reason) Packet() (packet.Reason, bool) {
	if r < Reason(packet.NumReasons) {
		return packet.Reason(r), true
	}
	return 0, false
}

// String returns the reason's name: the packet.Reason name ("truncated",
// "ip_checksum") for malformed packets, else the engine's ("no-mapping",
// "subscriber-port-limit"); "" for ReasonNone, so that a verdict without a
// reason prints as before.
func (r Reason) String() string {
	if r == ReasonNone {
		return ""
	}
	if p, ok := r.Packet(); ok {
		return p.String()
	}
	if r < NumReasons {
		return reasonInfo[r].name
	}
	return "unknown"
}

// Error returns "nat: " and a description of r ("packet: ..." for a
// malformed packet's reason), so that a Reason can be returned as an error
// and matched with errors.Is.
func (r Reason) Error() string {
	if p, ok := r.Packet(); ok {
		return p.Error()
	}
	if r < NumReasons {
		return "nat: " + reasonInfo[r].text
	}
	return "nat: unknown reason"
}
