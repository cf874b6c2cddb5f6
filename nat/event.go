package nat

import (
	"net/netip"
	"time"

	"github.com/portspace/portspace/tuple"
)

// EventKind says what an Event records.
type EventKind uint8

// The events an Engine reports to its EventSink. Mapping and block events are
// what RFC 6888 §4 REQ-12 and RFC 7422 expect a CGN to log; session events
// carry a destination and are only emitted when Config.LogDestinations is set.
const (
	// MappingCreated: an internal endpoint was given an external endpoint
	// (RFC 4787 §4 "mapping").
	MappingCreated EventKind = iota + 1
	// MappingDeleted: the mapping expired or was removed; its external port
	// is released (possibly into the reuse quarantine, RFC 6888 REQ-8).
	MappingDeleted
	// BlockAllocated: a subscriber was given a block of external ports
	// (RFC 6888 REQ-4 port blocks, "bulk port allocation").
	BlockAllocated
	// BlockFreed: a subscriber's port block was returned to the pool.
	BlockFreed
	// SessionCreated: a new flow (5-tuple) through a mapping. Only emitted
	// when destination logging is enabled (RFC 6888 REQ-12 says not to log
	// destinations by default).
	SessionCreated
	// SessionDeleted: a flow's state was retired. Only emitted with
	// destination logging.
	SessionDeleted
)

// String returns the lower-case, hyphenated name of k ("mapping-created").
func (k EventKind) String() string {
	switch k {
	case MappingCreated:
		return "mapping-created"
	case MappingDeleted:
		return "mapping-deleted"
	case BlockAllocated:
		return "block-allocated"
	case BlockFreed:
		return "block-freed"
	case SessionCreated:
		return "session-created"
	case SessionDeleted:
		return "session-deleted"
	}
	return "unknown"
}

// Event is one record of translation state changing. It is a plain value
// (no pointers into engine memory) and may be retained by the sink.
type Event struct {
	// Time is the now passed to the Engine call that caused the event.
	Time time.Time
	// Kind says what happened.
	Kind EventKind
	// Proto is the transport protocol of the mapping or block (tuple.ICMP
	// for ICMP query identifiers).
	Proto tuple.Proto
	// Subscriber is the internal (inside) address.
	Subscriber netip.Addr
	// Internal is the internal endpoint of a mapping or session (the ICMP
	// identifier stands in for the port). Zero for block events.
	Internal netip.AddrPort
	// External is the external endpoint of a mapping or session. For block
	// events only its address is set.
	External netip.AddrPort
	// Block is the port block of a block event, or, for mapping events in
	// a port-block or deterministic configuration, the block the external
	// port belongs to. Invalid (zero) otherwise.
	Block tuple.PortRange
	// Remote is the remote (destination) endpoint of a session event. It is
	// zero unless Config.LogDestinations is set (RFC 6888 REQ-12).
	Remote netip.AddrPort
	// Reason says why a mapping or session was deleted: one of the
	// Reason* constants ("idle-timeout", "tcp-closed", "tcp-rst", ...).
	Reason string
}

// Reasons carried by deletion events.
const (
	ReasonIdle      = "idle-timeout" // the inactivity timer ran out
	ReasonTCPClosed = "tcp-closed"   // both FINs seen and the closing timer ran out
	ReasonTCPRst    = "tcp-rst"      // RST seen and the 4-minute timer ran out (RFC 7857 §2.2)
	ReasonLastFlow  = "last-session" // the mapping's last session ended
	ReasonFlush     = "flush"        // removed by Engine.Flush
)

// EventSink receives the events of an Engine. The engine calls Record
// synchronously, from the goroutine that called Outbound, Inbound, Expire or
// Flush, never concurrently for one Engine (see the package doc). Record
// must not call back into the Engine and should be quick: buffer and write
// elsewhere. A nil EventSink in Config disables events.
type EventSink interface {
	// Record is called once per event, in the order the changes happened.
	Record(ev Event)
}

// EventFunc adapts a function to EventSink.
type EventFunc func(ev Event)

// Record calls f(ev).
func (f EventFunc) Record(ev Event) { f(ev) }
