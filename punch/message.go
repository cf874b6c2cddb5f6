package punch

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// MaxMessage is the largest rendezvous message in bytes, newline included
// (DCUtR bounds its messages at 4 KiB as well).
const MaxMessage = 4096

// ErrBadMessage is wrapped by every error for a malformed rendezvous
// message.
var ErrBadMessage = errors.New("punch: bad message")

// Op names a rendezvous message.
type Op string

// The rendezvous messages. A client sends probe, ping, register and relay;
// the rendezvous answers observed, pong, registered, peer, relayed and
// error. Peers send hello and pick to each other on a punched connection.
const (
	OpProbe      Op = "probe"      // client: report my reflexive endpoint
	OpObserved   Op = "observed"   // server: Observed, Endpoints
	OpPing       Op = "ping"       // client: Seq
	OpPong       Op = "pong"       // server: Seq
	OpRegister   Op = "register"   // client: ID, Secret, Peer, candidates, RTT, NAT
	OpRegistered Op = "registered" // server: Observed
	OpPeer       Op = "peer"       // server: the peer's ID, candidates, NAT, Session, Delay
	OpRelay      Op = "relay"      // client: Session; relay my bytes to the peer
	OpRelayed    Op = "relayed"    // server: from here on the connection is the relay
	OpError      Op = "error"      // server: Reason
	OpHello      Op = "hello"      // peer: ID, Session, How
	OpPick       Op = "pick"       // peer: Session; this connection is the one kept
)

var knownOps = map[Op]bool{
	OpProbe: true, OpObserved: true, OpPing: true, OpPong: true, OpRegister: true,
	OpRegistered: true, OpPeer: true, OpRelay: true, OpRelayed: true, OpError: true,
	OpHello: true, OpPick: true,
}

// Message is one rendezvous or peer message: a JSON object on one line of
// at most MaxMessage bytes. Which fields a message carries depends on Op.
type Message struct {
	Op        Op               `json:"op"`
	ID        string           `json:"id,omitempty"`
	Secret    string           `json:"secret,omitempty"`
	Peer      string           `json:"peer,omitempty"`
	Session   string           `json:"session,omitempty"`
	Seq       uint64           `json:"seq,omitempty"`
	Local     []netip.AddrPort `json:"local,omitempty"`
	Reflexive netip.AddrPort   `json:"reflexive,omitzero"`
	Predicted []netip.AddrPort `json:"predicted,omitempty"`
	Observed  netip.AddrPort   `json:"observed,omitzero"`
	Endpoints []netip.AddrPort `json:"endpoints,omitempty"`
	// RTT is the sender's round-trip time to the rendezvous in
	// microseconds; Delay how long the receiver waits before its first SYN.
	RTT   int64     `json:"rtt_us,omitempty"`
	Delay int64     `json:"delay_us,omitempty"`
	NAT   *Behavior `json:"nat,omitempty"`
	// How says how a punched connection came about: "accepted" (the
	// peer's SYN reached our listener) or "connected" (our connect
	// completed).
	How    string `json:"how,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// maxIDLen bounds peer IDs and secrets.
const maxIDLen = 128

// Validate checks the message's shape: a known Op, bounded printable IDs,
// valid endpoints.
func (m *Message) Validate() error {
	if !knownOps[m.Op] {
		return fmt.Errorf("%w: unknown op %q", ErrBadMessage, m.Op)
	}
	for _, f := range []struct{ name, v string }{{"id", m.ID}, {"secret", m.Secret}, {"peer", m.Peer}, {"session", m.Session}} {
		if len(f.v) > maxIDLen {
			return fmt.Errorf("%w: %s longer than %d bytes", ErrBadMessage, f.name, maxIDLen)
		}
		if strings.IndexFunc(f.v, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
			return fmt.Errorf("%w: %s has spaces or control characters", ErrBadMessage, f.name)
		}
	}
	if m.Op == OpRegister && (m.ID == "" || m.Secret == "" || m.Peer == "") {
		return fmt.Errorf("%w: register needs id, secret and peer", ErrBadMessage)
	}
	if m.Op == OpRegister && m.ID == m.Peer {
		return fmt.Errorf("%w: register: id and peer are the same", ErrBadMessage)
	}
	if len(m.Local)+len(m.Predicted)+len(m.Endpoints) > 64 {
		return fmt.Errorf("%w: more than 64 endpoints", ErrBadMessage)
	}
	for _, list := range [][]netip.AddrPort{m.Local, m.Predicted, m.Endpoints} {
		for _, ap := range list {
			if !ap.IsValid() || ap.Port() == 0 {
				return fmt.Errorf("%w: endpoint %v", ErrBadMessage, ap)
			}
		}
	}
	if m.RTT < 0 || m.Delay < 0 || m.Delay > 10e6 {
		return fmt.Errorf("%w: rtt or delay out of range", ErrBadMessage)
	}
	return nil
}

// ParseMessage decodes one message (without its newline).
func ParseMessage(line []byte) (Message, error) {
	var m Message
	if len(line) >= MaxMessage {
		return m, fmt.Errorf("%w: longer than %d bytes", ErrBadMessage, MaxMessage)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Message{}, fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
	if dec.More() {
		return Message{}, fmt.Errorf("%w: trailing data", ErrBadMessage)
	}
	if err := m.Validate(); err != nil {
		return Message{}, err
	}
	return m, nil
}

// AppendMessage appends m and a newline to b.
func AppendMessage(b []byte, m Message) ([]byte, error) {
	j, err := json.Marshal(m)
	if err != nil {
		return b, fmt.Errorf("punch: encode %s: %w", m.Op, err)
	}
	if len(j)+1 > MaxMessage {
		return b, fmt.Errorf("punch: encode %s: %d bytes, over %d", m.Op, len(j)+1, MaxMessage)
	}
	return append(append(b, j...), '\n'), nil
}

// writeMessage writes m on w as one line.
func writeMessage(w io.Writer, m Message) error {
	b, err := AppendMessage(nil, m)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// readMessage reads one line of at most MaxMessage bytes from r and parses
// it. A line that does not end within MaxMessage bytes is an error, so a
// peer cannot make the reader buffer without bound.
func readMessage(r *bufio.Reader) (Message, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > MaxMessage {
			return Message{}, fmt.Errorf("%w: longer than %d bytes", ErrBadMessage, MaxMessage)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF && len(line) > 0 {
			return Message{}, fmt.Errorf("%w: truncated", ErrBadMessage)
		}
		return Message{}, err
	}
	return ParseMessage(bytes.TrimRight(line, "\r\n"))
}
