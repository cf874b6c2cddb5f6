package nat

import "github.com/portspace/portspace/packet"

// TCP connection states, after the RFC 6146 §3.5.2 state machine that
// RFC 7857 §2.1 recommends (with "inside" for its IPv6 side and "outside"
// for its IPv4 side).
const (
	tcpNone        uint8 = iota // not TCP
	tcpOutSYN                   // SYN from inside seen (RFC 6146 V6 INIT)
	tcpInSYN                    // SYN from outside seen (RFC 6146 V4 INIT)
	tcpEstablished              // both SYNs seen (ESTABLISHED)
	tcpFinOut                   // FIN from inside seen (V6 FIN RCV)
	tcpFinIn                    // FIN from outside seen (V4 FIN RCV)
	tcpFinBoth                  // both FINs seen (V4 FIN + V6 FIN RCV)
	tcpRst                      // RST seen (TRANS, RFC 7857 §2.2)
)

var tcpStateNames = [...]string{"none", "syn-out", "syn-in", "established", "fin-out", "fin-in", "fin-both", "rst"}

// tcpNext returns the state after a segment with flags travelling outbound
// (from inside) or inbound.
func tcpNext(s, flags uint8, outbound bool) uint8 {
	if flags&packet.TCPRst != 0 {
		switch s {
		case tcpEstablished, tcpFinOut, tcpFinIn:
			return tcpRst // RFC 7857 §2.2: translate the RST, keep state 4 min
		}
		// RFC 6146 §3.5.2.2: before establishment (and after both FINs) a
		// RST is forwarded and the state and its timer stay.
		return s
	}
	syn := flags&packet.TCPSyn != 0
	fin := flags&packet.TCPFin != 0
	switch s {
	case tcpOutSYN:
		if !outbound && syn {
			return tcpEstablished // SYN-ACK, or a crossing SYN (simultaneous open, RFC 5382 REQ-2)
		}
	case tcpInSYN:
		if outbound && syn {
			return tcpEstablished
		}
	case tcpEstablished:
		if fin {
			if outbound {
				return tcpFinOut
			}
			return tcpFinIn
		}
	case tcpFinOut:
		if fin && !outbound {
			return tcpFinBoth
		}
	case tcpFinIn:
		if fin && outbound {
			return tcpFinBoth
		}
	case tcpFinBoth:
		// A new SYN reopens the connection on the same 5-tuple (RFC 1122
		// §4.2.2.13 allows it in TIME-WAIT; VPP calls this REOPEN).
		if syn && flags&packet.TCPAck == 0 {
			if outbound {
				return tcpOutSYN
			}
			return tcpInSYN
		}
	case tcpRst:
		// RFC 6146: any non-RST segment in TRANS brings the connection back.
		return tcpEstablished
	}
	return s
}

// tcpRefreshes reports whether a segment that leaves the state s unchanged
// restarts the timer: not after both FINs or a RST (RFC 7857 §2.1, §2.2 and
// the N-REF rule that RSTs answering inbound packets do not refresh).
func tcpRefreshes(s uint8) bool { return s != tcpFinBoth && s != tcpRst }
