package packet

import "errors"

// Reason says why a packet was rejected. It implements error, is comparable
// (errors.Is works on it directly) and is a small integer, so a caller can
// count drops in an array indexed by Reason (length [NumReasons]). The zero
// Reason means "no reason" and is never returned as an error.
type Reason uint8

// The reasons Parse and VerifyChecksums return, and ReasonFragment, which this
// package never returns but a NAT engine uses for fragments it cannot match.
const (
	ReasonNone              Reason = iota // not an error
	ReasonTruncated                       // buffer shorter than the headers or the IPv4 total length (RFC 791 §3.1)
	ReasonVersion                         // IP version field is not 4
	ReasonHeaderLength                    // IPv4 IHL below 5 (RFC 791 §3.1)
	ReasonTotalLength                     // IPv4 total length smaller than the header
	ReasonIPChecksum                      // IPv4 header checksum does not verify (RFC 791 §3.1, RFC 1071)
	ReasonProtocol                        // transport protocol other than TCP, UDP, ICMP
	ReasonTinyFragment                    // first fragment too short for the transport header, or TCP offset-1 fragment (RFC 1858, RFC 3128)
	ReasonTCPHeader                       // TCP data offset below 5 or beyond the packet (RFC 9293 §3.1)
	ReasonUDPLength                       // UDP length below 8 or beyond the packet (RFC 768)
	ReasonICMPType                        // ICMP type that is neither a known query nor a known error
	ReasonEmbeddedTruncated               // ICMP error whose embedded packet lacks the IPv4 header + 8 bytes (RFC 792)
	ReasonEmbeddedInvalid                 // ICMP error whose embedded packet is not IPv4 TCP/UDP/ICMP-query with a transport header
	ReasonChecksum                        // transport (TCP/UDP/ICMP) checksum does not verify
	ReasonFragment                        // non-first fragment the caller cannot match to a flow (used by NAT engines)
	NumReasons                            // number of Reason values, for counter arrays
)

var reasonText = [NumReasons]string{
	ReasonNone:              "ok",
	ReasonTruncated:         "truncated packet",
	ReasonVersion:           "not IPv4",
	ReasonHeaderLength:      "bad IPv4 header length",
	ReasonTotalLength:       "bad IPv4 total length",
	ReasonIPChecksum:        "bad IPv4 header checksum",
	ReasonProtocol:          "unsupported transport protocol",
	ReasonTinyFragment:      "fragment too small for the transport header",
	ReasonTCPHeader:         "bad TCP data offset",
	ReasonUDPLength:         "bad UDP length",
	ReasonICMPType:          "unsupported ICMP type",
	ReasonEmbeddedTruncated: "ICMP error: embedded packet truncated",
	ReasonEmbeddedInvalid:   "ICMP error: embedded packet unusable",
	ReasonChecksum:          "bad transport checksum",
	ReasonFragment:          "unmatched non-first fragment",
}

var reasonName = [NumReasons]string{
	"none", "truncated", "version", "header_length", "total_length", "ip_checksum",
	"protocol", "tiny_fragment", "tcp_header", "udp_length", "icmp_type",
	"embedded_truncated", "embedded_invalid", "checksum", "fragment",
}

// String returns a short snake_case name for r ("truncated", "ip_checksum"),
// suitable as a metric label.
func (r Reason) String() string {
	if r < NumReasons {
		return reasonName[r]
	}
	return "unknown"
}

// Error returns "packet: " followed by a description of r.
func (r Reason) Error() string {
	if r < NumReasons {
		return "packet: " + reasonText[r]
	}
	return "packet: unknown reason"
}

// ReasonOf returns the Reason inside err, following single Unwrap chains
// (fmt.Errorf with one %w), or ReasonNone for nil and for errors that hold
// no Reason. It does not allocate.
func ReasonOf(err error) Reason {
	for err != nil {
		if r, ok := err.(Reason); ok {
			return r
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			break
		}
		err = u.Unwrap()
	}
	return ReasonNone
}

// Errors of the rewrite and build functions (programming errors rather than
// properties of a packet).
var (
	// ErrNotIPv4 is returned when an address given to a Set method or a
	// builder is not IPv4 (or IPv4-mapped IPv6).
	ErrNotIPv4 = errors.New("packet: address is not IPv4")
	// ErrNoEmbedded is returned by SetInnerSrc/SetInnerDst on a packet that is
	// not a parsed ICMP error.
	ErrNoEmbedded = errors.New("packet: not an ICMP error with an embedded packet")
	// ErrShortBuffer is returned by BuildICMPError when the destination buffer
	// (or MaxLen) cannot hold the error with the original header + 8 bytes.
	ErrShortBuffer = errors.New("packet: buffer too short")
	// ErrNoICMPError is returned by BuildICMPError for an original packet that
	// must not trigger an ICMP error (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7).
	ErrNoICMPError = errors.New("packet: original packet must not trigger an ICMP error")
)
