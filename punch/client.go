package punch

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/portspace/portspace/internal/netsys"
)

// Method says how a connection was made.
type Method string

// The ways a connection comes about.
const (
	// MethodDirect: one side's SYN reached the other's listener (that side
	// is reachable: no NAT, or a NAT that let the SYN in).
	MethodDirect Method = "direct"
	// MethodSimultaneousOpen: both SYNs crossed toward each other's
	// reflexive endpoints (RFC 793 section 3.4 simultaneous open, RFC 5382
	// REQ-2).
	MethodSimultaneousOpen Method = "simultaneous-open"
	// MethodPredicted: as MethodSimultaneousOpen, but toward a port
	// predicted from the peer NAT's allocation pattern.
	MethodPredicted Method = "predicted"
	// MethodRelay: the rendezvous relays the bytes.
	MethodRelay Method = "relay"
)

// ErrNoPath is wrapped when no connection could be made (punching failed
// and the relay was not allowed or failed); the error says why.
var ErrNoPath = errors.New("punch: no connection")

// ErrPeerAbsent is wrapped when the peer did not register in time.
var ErrPeerAbsent = errors.New("punch: the peer did not show up")

// Defaults for the zero values of Options' fields.
const (
	DefaultTimeout      = 30 * time.Second
	DefaultRounds       = 3
	DefaultRoundTimeout = time.Second
	DefaultDoorTTL      = 2
	DefaultDoorWait     = 30 * time.Millisecond
)

// Options configures Dial. ID, Peer and Rendezvous are required.
type Options struct {
	// Rendezvous is the rendezvous's host:port.
	Rendezvous string
	// ID names this peer, Peer the one to connect to.
	ID, Peer string
	// Secret binds the registration of ID; empty: a random one.
	Secret string
	// Local is the local endpoint to punch from; zero: any address and a
	// free port.
	Local netip.AddrPort
	// NoRelay makes Dial fail instead of falling back to the relay.
	NoRelay bool
	// Timeout bounds the whole dial, the peer's registration included;
	// zero means DefaultTimeout.
	Timeout time.Duration
	// Rounds of punching before the relay; zero means DefaultRounds.
	Rounds int
	// RoundTimeout is one round's length; zero means DefaultRoundTimeout.
	RoundTimeout time.Duration
	// Window is how many predicted ports of a sequential NAT are tried;
	// zero means 4.
	Window int
	// DoorTTL is the TTL of the first SYN toward each candidate in every
	// round: high enough to pass this side's own NAT, which then holds a
	// mapping and lets the peer's SYN in, too low to reach the peer's NAT,
	// which would answer with a RST (and the RST, passing back, would
	// close the mapping again). Zero means DefaultDoorTTL; negative sends
	// no such SYN.
	DoorTTL int
	// DoorWait is how long after the low-TTL SYNs the real ones start;
	// zero means DefaultDoorWait.
	DoorWait time.Duration
	// Logger receives progress; nil discards it.
	Logger *slog.Logger

	// Test hooks, for experiments that isolate one mechanism: candidates
	// replaces the endpoints to aim at; startDelay holds this side's SYNs
	// back in every round; noRetry sends one SYN per candidate and round
	// (a SYN answered by RST or ICMP is not retried); noListen accepts
	// nothing, so only a simultaneous open can connect.
	candidates func([]netip.AddrPort) []netip.AddrPort
	startDelay time.Duration
	noRetry    bool
	noListen   bool
}

// Result says how a connection was made, and why punching failed when it
// did.
type Result struct {
	Method Method         `json:"method"`
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote"`
	// MS is the time from both peers being registered (the rendezvous's
	// pairing message) to the connection, in milliseconds.
	MS float64 `json:"ms"`
	// TotalMS is the whole dial, probes and registration included.
	TotalMS float64 `json:"total_ms"`
	Rounds  int     `json:"rounds"`
	// Guessed is the predicted peer port that worked (MethodPredicted).
	Guessed uint16 `json:"guessed,omitempty"`
	// Reason says why punching failed, when it fell back or failed.
	Reason string `json:"reason,omitempty"`
	// NAT and PeerNAT are the two sides' measured TCP behaviours.
	NAT     *Behavior `json:"nat,omitempty"`
	PeerNAT *Behavior `json:"peer_nat,omitempty"`
}

func reuseControl(_, _ string, c syscall.RawConn) error {
	return netsys.Control(c, netsys.SetReusePort)
}

// peerInfo is what the rendezvous said of the peer.
type peerInfo struct {
	id        string
	session   string
	reflexive netip.AddrPort
	local     []netip.AddrPort
	predicted []netip.AddrPort
	nat       *Behavior
	delay     time.Duration
}

// Dial connects to o.Peer through the rendezvous: it measures its NAT's TCP
// mapping from the port it punches from, registers, waits for the peer, and
// tries simultaneous open toward the peer's reflexive and predicted
// endpoints for up to o.Rounds rounds; then, unless o.NoRelay, it asks the
// rendezvous to relay. The connection supports CloseWrite (half-close).
func Dial(ctx context.Context, o Options) (net.Conn, Result, error) {
	start := time.Now()
	var res Result
	if o.ID == "" || o.Peer == "" || o.Rendezvous == "" {
		return nil, res, fmt.Errorf("punch: dial: id, peer and rendezvous are required")
	}
	if o.ID == o.Peer {
		return nil, res, fmt.Errorf("punch: dial: id and peer are both %q", o.ID)
	}
	if o.Secret == "" {
		var b [16]byte
		rand.Read(b[:])
		o.Secret = hex.EncodeToString(b[:])
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, orDefault(o.Timeout, DefaultTimeout))
	defer cancel()

	local := "0.0.0.0:0"
	if o.Local.IsValid() {
		local = o.Local.String()
	} else if strings.HasPrefix(o.Rendezvous, "[") {
		local = "[::]:0"
	}
	lc := net.ListenConfig{Control: reuseControl}
	ln, err := lc.Listen(ctx, "tcp", local)
	if err != nil {
		return nil, res, fmt.Errorf("punch: dial: listen %s: %w", local, err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	bindIP := net.IP(nil)
	if o.Local.IsValid() {
		bindIP = o.Local.Addr().AsSlice()
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: bindIP, Port: port}, Control: reuseControl}

	ctrl, err := d.DialContext(ctx, "tcp", o.Rendezvous)
	if err != nil {
		return nil, res, fmt.Errorf("punch: dial: rendezvous %s: %w", o.Rendezvous, err)
	}
	ctrlOK := false
	defer func() {
		if !ctrlOK {
			ctrl.Close()
		}
	}()
	stopCtrl := context.AfterFunc(ctx, func() { ctrl.SetDeadline(time.Now()) })
	defer stopCtrl()
	br := bufio.NewReaderSize(ctrl, MaxMessage)
	me := addrPortOf(ctrl.LocalAddr())
	server := addrPortOf(ctrl.RemoteAddr())

	// Round trips and the reflexive endpoint, then the mapping probes.
	var rtt time.Duration
	var pong Message
	for i := range 3 {
		t := time.Now()
		if err := writeMessage(ctrl, Message{Op: OpPing, Seq: uint64(i + 1)}); err != nil {
			return nil, res, fmt.Errorf("punch: dial: rendezvous %s: %w", o.Rendezvous, err)
		}
		m, err := expect(br, OpPong)
		if err != nil {
			return nil, res, fmt.Errorf("punch: dial: rendezvous %s: %w", o.Rendezvous, err)
		}
		if r := time.Since(t); i == 0 || r < rtt {
			rtt = r
		}
		pong = m
	}
	obs := []Observation{{Server: server, Mapped: pong.Observed}}
	for _, ep := range probeOrder(server, pong.Endpoints) {
		mapped, err := probe(ctx, d, ep)
		if err != nil {
			log.Info("punch: probe failed", "server", ep, "err", err)
			continue
		}
		obs = append(obs, Observation{Server: ep, Mapped: mapped})
	}
	nat, _ := Learn(me, obs)
	res.NAT = &nat
	predicted := nat.Predict(me, pong.Observed, o.Window)
	log.Info("punch: learned the NAT", "local", me, "reflexive", pong.Observed, "mapping", nat.Mapping, "allocation", nat.Allocation, "delta", nat.Delta, "rtt", rtt)

	reg := Message{Op: OpRegister, ID: o.ID, Secret: o.Secret, Peer: o.Peer, Local: []netip.AddrPort{me},
		Predicted: predicted, RTT: rtt.Microseconds(), NAT: &nat}
	if err := writeMessage(ctrl, reg); err != nil {
		return nil, res, fmt.Errorf("punch: dial: register: %w", err)
	}
	if _, err := expect(br, OpRegistered); err != nil {
		return nil, res, fmt.Errorf("punch: dial: register as %q: %w", o.ID, err)
	}
	pm, err := expect(br, OpPeer)
	if err != nil {
		if ctx.Err() != nil {
			return nil, res, fmt.Errorf("%w: %q did not register within %v", ErrPeerAbsent, o.Peer, orDefault(o.Timeout, DefaultTimeout))
		}
		if strings.Contains(err.Error(), "did not register") {
			return nil, res, fmt.Errorf("%w: %v", ErrPeerAbsent, err)
		}
		return nil, res, fmt.Errorf("punch: dial: waiting for %q: %w", o.Peer, err)
	}
	paired := time.Now()
	peer := peerInfo{id: pm.ID, session: pm.Session, reflexive: pm.Reflexive, local: pm.Local,
		predicted: pm.Predicted, nat: pm.NAT, delay: time.Duration(pm.Delay) * time.Microsecond}
	res.PeerNAT = peer.nat
	log.Info("punch: paired", "peer", peer.id, "reflexive", peer.reflexive, "predicted", peer.predicted, "delay", peer.delay)

	p := &puncher{o: o, d: d, ln: ln.(*net.TCPListener), me: me, reflexive: pong.Observed, peer: peer,
		rtt: rtt, nat: nat, log: log, errs: map[netip.AddrPort]*candErr{}}
	cands := p.candidates()
	if o.candidates != nil {
		cands = o.candidates(cands)
	}
	if peer.delay > 0 {
		select {
		case <-time.After(peer.delay):
		case <-ctx.Done():
		}
	}
	t0 := time.Now()
	roundLen := orDefault(o.RoundTimeout, DefaultRoundTimeout)
	rounds := orDefault(o.Rounds, DefaultRounds)
	if peer.nat != nil && !nat.Predictable() && !peer.nat.Predictable() {
		// Neither side can aim at the other: no SYN can meet a mapping, so
		// go to the relay at once (both sides decide this alike).
		rounds = 0
	}
	for round := 1; round <= rounds && ctx.Err() == nil; round++ {
		res.Rounds = round
		rctx, rcancel := context.WithDeadline(ctx, t0.Add(time.Duration(round)*roundLen))
		c, info, ok := p.round(rctx, round, cands)
		rcancel()
		if ok {
			res.Method, res.Guessed = info.method, info.guessed
			res.Local, res.Remote = addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())
			res.MS = ms(time.Since(paired))
			res.TotalMS = ms(time.Since(start))
			return c, res, nil
		}
	}
	res.Reason = p.failure(nat)
	if o.NoRelay {
		return nil, res, fmt.Errorf("%w to %q: %s", ErrNoPath, o.Peer, res.Reason)
	}
	if err := writeMessage(ctrl, Message{Op: OpRelay, Session: peer.session}); err != nil {
		return nil, res, fmt.Errorf("%w to %q: relay: %v (punching: %s)", ErrNoPath, o.Peer, err, res.Reason)
	}
	if _, err := expect(br, OpRelayed); err != nil {
		return nil, res, fmt.Errorf("%w to %q: relay: %v (punching: %s)", ErrNoPath, o.Peer, err, res.Reason)
	}
	stopCtrl()
	ctrl.SetDeadline(time.Time{})
	ctrlOK = true
	res.Method = MethodRelay
	res.Local, res.Remote = me, server
	res.MS, res.TotalMS = ms(time.Since(paired)), ms(time.Since(start))
	return &bufConn{Conn: ctrl, r: br}, res, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// addrPortOf returns a TCP address as an unmapped netip.AddrPort (IPv4
// peers of a dual-stack socket as plain IPv4), or the zero AddrPort.
func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a != nil {
		ap, _ := netip.ParseAddrPort(a.String())
		return ap
	}
	return netip.AddrPort{}
}

// expect reads the next message and requires op; an error message from
// the rendezvous becomes an error with its reason.
func expect(br *bufio.Reader, op Op) (Message, error) {
	m, err := readMessage(br)
	if err != nil {
		return m, err
	}
	if m.Op == OpError {
		return m, fmt.Errorf("rendezvous: %s", m.Reason)
	}
	if m.Op != op {
		return m, fmt.Errorf("%w: got %s, want %s", ErrBadMessage, m.Op, op)
	}
	return m, nil
}

// probeOrder returns up to three of the rendezvous's other endpoints: the
// same address on another port first (port dependence), then other
// addresses (address dependence).
func probeOrder(server netip.AddrPort, eps []netip.AddrPort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ep := range eps {
		if ep != server && ep.Addr().Is4() == server.Addr().Is4() {
			out = append(out, ep)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		return out[i].Addr() == server.Addr() && out[j].Addr() != server.Addr()
	})
	return out[:min(len(out), 3)]
}

// probe connects from the punching port to ep and reads the endpoint the
// rendezvous saw; it closes with a reset, so no TIME_WAIT holds the port's
// 4-tuple.
func probe(ctx context.Context, d *net.Dialer, ep netip.AddrPort) (netip.AddrPort, error) {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := d.DialContext(pctx, "tcp", ep.String())
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer func() {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if err := writeMessage(c, Message{Op: OpProbe}); err != nil {
		return netip.AddrPort{}, err
	}
	m, err := expect(bufio.NewReaderSize(c, MaxMessage), OpObserved)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return m.Observed, nil
}

// bufConn is a connection whose first bytes may already sit in a reader.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// CloseWrite half-closes the connection.
func (c *bufConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// candErr counts how one candidate's SYNs failed, by what answered them.
type candErr struct {
	counts map[string]int
	order  []string
}

// puncher runs the rounds.
type puncher struct {
	o         Options
	d         *net.Dialer
	ln        *net.TCPListener
	me        netip.AddrPort
	reflexive netip.AddrPort
	peer      peerInfo
	rtt       time.Duration
	nat       Behavior
	log       *slog.Logger

	mu   sync.Mutex
	errs map[netip.AddrPort]*candErr
}

// candidates orders the peer endpoints to aim at. A sequential NAT gives a
// new port per destination, so toward one its predicted ports are tried in
// order (which is the order its own SYNs use ports in); otherwise its
// reflexive endpoint. The peer's local endpoints only when both sides sit
// behind the same NAT (same reflexive address): elsewhere they would cost
// a mapping on a sequential NAT and reach nobody.
func (p *puncher) candidates() []netip.AddrPort {
	var out []netip.AddrPort
	add := func(ap netip.AddrPort) {
		for _, x := range out {
			if x == ap {
				return
			}
		}
		out = append(out, ap)
	}
	if p.peer.reflexive.Addr() == p.reflexive.Addr() {
		for _, l := range p.peer.local {
			add(l)
		}
	}
	seq := p.peer.nat != nil && p.peer.nat.Mapping != MappingEI && p.peer.nat.Allocation == AllocSequential
	if !seq {
		add(p.peer.reflexive)
	}
	for _, c := range p.peer.predicted {
		add(c)
	}
	return out
}

// punched is a connection that came up, and how.
type punched struct {
	c    net.Conn
	how  string // accepted or connected
	cand netip.AddrPort
}

type pickInfo struct {
	method  Method
	guessed uint16
}

// round tries every candidate and the listener until rctx ends, then keeps
// one connection by the tie-break: the side with the smaller ID picks the
// first connection on which the peer's hello arrived and says so; the other
// side keeps the connection the pick arrives on and acknowledges it, and
// the chooser keeps it only once the acknowledgement is back.
func (p *puncher) round(rctx context.Context, round int, cands []netip.AddrPort) (net.Conn, pickInfo, bool) {
	rctx, stopRound := context.WithCancel(rctx)
	defer stopRound()
	deadline, _ := rctx.Deadline()
	roundStart := time.Now()
	up := make(chan punched, 16)
	var wg sync.WaitGroup
	p.ln.SetDeadline(deadline)
	if p.o.noListen {
		p.ln.SetDeadline(time.Now())
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := p.ln.Accept()
			if err != nil {
				return
			}
			select {
			case up <- punched{c: c, how: "accepted"}:
			case <-rctx.Done():
				closeRST(c)
				return
			}
		}
	}()
	attempt := max(250*time.Millisecond, 4*p.rtt)
	chooser := p.o.ID < p.peer.id
	// Roles: in round 1 the chooser only opens doors and listens while the
	// other side sends the real SYNs; in round 2 the roles swap; from round
	// 3 both sides send them (a plain simultaneous open). When only one
	// side's port is predictable, the other side is active in every round. A passive side's
	// NAT never sees a RST from the peer's NAT, so its open door stays
	// open until the active side's SYN arrives, however late.
	active := round >= 3 || (round == 1) != chooser
	if self, peer := p.nat.Predictable(), p.peer.nat != nil && p.peer.nat.Predictable(); self != peer {
		// Only the unpredictable side's SYN can find its way (through a
		// NAT that filters by address or not at all); the predictable side
		// keeps its doors open toward the peer's address.
		active = !self
	}
	ttl := orDefault(p.o.DoorTTL, DefaultDoorTTL)
	door := !active && ttl > 0
	wait := orDefault(p.o.DoorWait, DefaultDoorWait)
	for i, cand := range cands {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The passive side's doors go first; the active side's SYNs
			// after DoorWait. Stagger the SYNs so that a sequential NAT maps
			// them in candidate order.
			delay := time.Duration(i)*2*time.Millisecond + p.o.startDelay
			if active && ttl > 0 {
				delay += wait
			}
			select {
			case <-time.After(delay):
			case <-rctx.Done():
				return
			}
			for rctx.Err() == nil {
				var c net.Conn
				var err error
				if door {
					c, err = dialTCP(rctx, p.me, cand, ttl)
					if err != nil && timeExceeded(err) {
						// The door did its work and its SYN died on the
						// way, as meant; the socket with it (an ICMP error
						// ends a connect). The peer's SYN will then reach
						// the listener, whose SYN-ACK carries a fresh
						// initial sequence number; a NAT that tracks TCP
						// windows (Linux conntrack) passes it only if it
						// lies within a window (64 KiB, about 4 ms of
						// sequence-number clock) of the last door's SYN.
						// So reopen the door every 2 ms while the peer's
						// SYN is due, every 10 ms after that.
						pause := 10 * time.Millisecond
						if time.Since(roundStart) < 250*time.Millisecond {
							pause = 2 * time.Millisecond
						}
						select {
						case <-time.After(pause):
						case <-rctx.Done():
						}
						continue
					}
				} else {
					timeout := attempt
					if p.o.noRetry {
						timeout = time.Until(deadline)
					}
					actx, cancel := context.WithTimeout(rctx, timeout)
					c, err = p.dial(actx, cand)
					cancel()
				}
				if err == nil {
					select {
					case up <- punched{c: c, how: "connected", cand: cand}:
					case <-rctx.Done():
						closeRST(c)
					}
					return
				}
				if p.record(cand, err, rctx) && !p.o.noRetry {
					select {
					case <-time.After(10 * time.Millisecond):
					case <-rctx.Done():
					}
				}
				if p.o.noRetry {
					return
				}
			}
		}()
	}
	type verified struct {
		punched
		br    *bufio.Reader
		hello Message
		err   error
	}
	done := make(chan verified, 16)
	var open []net.Conn
	var result verified
	found := false
	pending := 0
	stopAt := time.After(time.Until(deadline) + 500*time.Millisecond)
	roundOver := rctx.Done()
loop:
	for {
		select {
		case pc := <-up:
			open = append(open, pc.c)
			pending++
			go func() {
				pc.c.SetDeadline(deadline.Add(500 * time.Millisecond))
				hello := Message{Op: OpHello, ID: p.o.ID, Session: p.peer.session, How: pc.how}
				if remote := addrPortOf(pc.c.RemoteAddr()); p.guessed(remote) {
					hello.Predicted = []netip.AddrPort{remote}
				}
				v := verified{punched: pc, br: bufio.NewReaderSize(pc.c, MaxMessage)}
				if err := writeMessage(pc.c, hello); err != nil {
					v.err = err
					done <- v
					return
				}
				m, err := readMessage(v.br)
				if err == nil && (m.Op != OpHello || m.ID != p.peer.id || m.Session != p.peer.session) {
					err = fmt.Errorf("%w: not the peer's hello", ErrBadMessage)
				}
				v.hello, v.err = m, err
				if err == nil && !chooser {
					var pm Message
					pm, v.err = readMessage(v.br)
					if v.err == nil && (pm.Op != OpPick || pm.Session != p.peer.session) {
						v.err = fmt.Errorf("%w: expected the pick", ErrBadMessage)
					}
					if v.err == nil {
						// Acknowledge, so that the chooser keeps the
						// connection only if this side does too.
						v.err = writeMessage(pc.c, Message{Op: OpPick, Session: p.peer.session})
					}
				}
				done <- v
			}()
		case v := <-done:
			pending--
			if v.err != nil {
				p.log.Info("punch: connection failed its handshake", "how", v.how, "err", v.err)
				continue
			}
			if chooser {
				if err := writeMessage(v.c, Message{Op: OpPick, Session: p.peer.session}); err != nil {
					continue
				}
				ack, err := readMessage(v.br)
				if err != nil || ack.Op != OpPick || ack.Session != p.peer.session {
					// The peer never took this connection (its round
					// ended first): try another.
					p.log.Info("punch: the pick was not acknowledged", "err", err)
					continue
				}
			}
			result, found = v, true
			break loop
		case <-stopAt:
			break loop
		case <-roundOver:
			if pending == 0 {
				break loop
			}
			roundOver = nil // keep waiting for handshakes under way, until stopAt
		}
	}
	p.ln.SetDeadline(time.Now())
	for _, c := range open {
		if !found || c != result.c {
			closeRST(c)
		}
	}
	// Stop every connect of the round and close what still comes up, so
	// that no socket of this round holds a 4-tuple the next round needs.
	stopRound()
	go func() {
		wg.Wait()
		close(up)
	}()
	for pc := range up {
		closeRST(pc.c)
	}
	// The kernel completes handshakes for SYNs that reach the listener
	// after Accept stopped; such a connection holds the peer's 4-tuple, so
	// the next round's connect to the peer would fail (EADDRNOTAVAIL), and
	// the peer would think itself connected. Reset them.
	p.ln.SetDeadline(time.Now().Add(5 * time.Millisecond))
	for {
		c, err := p.ln.Accept()
		if err != nil {
			break
		}
		closeRST(c)
	}
	if !found {
		return nil, pickInfo{}, false
	}
	result.c.SetDeadline(time.Time{})
	info := pickInfo{method: MethodSimultaneousOpen}
	switch {
	case result.how == "accepted" && p.nat.Mapping == MappingNone,
		result.hello.How == "accepted" && p.peer.nat != nil && p.peer.nat.Mapping == MappingNone:
		// The accepting side has no NAT: it is reachable.
		info.method = MethodDirect
	case p.guessed(addrPortOf(result.c.RemoteAddr())):
		info.method, info.guessed = MethodPredicted, addrPortOf(result.c.RemoteAddr()).Port()
	case len(result.hello.Predicted) > 0:
		info.method, info.guessed = MethodPredicted, result.hello.Predicted[0].Port()
	}
	return &bufConn{Conn: result.c, r: result.br}, info, true
}

// dialTCP connects from local to remote on a raw socket whose first SYN
// leaves with TTL first (64 for a plain connect). A low first TTL is the
// open door: high enough to pass this side's own NAT, which then holds a
// mapping and lets the peer's SYN in, too low to reach the peer's NAT,
// which would answer it with a RST. Every later packet goes at full TTL. It
// waits until the connection is up or ctx ends; a failed connect's error is
// a *synError that says whether an ICMP error, and from whom, answered it.
func dialTCP(ctx context.Context, local, remote netip.AddrPort, first int) (net.Conn, error) {
	fd, err := netsys.ConnectTCP(local, remote, first, 64)
	if err != nil {
		return nil, err
	}
	c, err := netsys.FileConn(fd, "punch")
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("punch: not a TCP connection")
	}
	if d, ok := ctx.Deadline(); ok {
		tc.SetWriteDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { tc.SetWriteDeadline(time.Now()) })
	defer stop()
	rc, err := tc.SyscallConn()
	if err != nil {
		tc.Close()
		return nil, err
	}
	var se *synError
	waited := false
	werr := rc.Write(func(fd uintptr) bool {
		if !waited {
			waited = true
			return false // wait until the connect completes (writable)
		}
		if err := netsys.SockError(int(fd)); err != nil {
			se = &synError{err: err}
			se.icmp, se.hasICMP = netsys.ICMPError(int(fd))
		}
		return true
	})
	if werr != nil || se != nil {
		if se == nil {
			se = &synError{err: werr}
		}
		tc.Close()
		return nil, se
	}
	tc.SetWriteDeadline(time.Time{})
	return &remoteConn{TCPConn: tc, remote: net.TCPAddrFromAddrPort(remote)}, nil
}

// dial connects from the punching port to cand with the Dialer, keeping a
// duplicate of the socket so that a failed connect's ICMP error (queued by
// IP_RECVERR) can still be read after the runtime closed the socket: a
// *synError then says whether a RST or an ICMP error, and from whom,
// answered the SYN.
func (p *puncher) dial(ctx context.Context, cand netip.AddrPort) (net.Conn, error) {
	d := *p.d
	dup := -1
	v6 := cand.Addr().Is6()
	d.Control = func(_, _ string, c syscall.RawConn) error {
		return netsys.Control(c, func(fd int) error {
			if err := netsys.SetReusePort(fd); err != nil {
				return err
			}
			if err := netsys.SetRecvErr(fd, v6); err != nil {
				return err
			}
			var err error
			dup, err = netsys.Dup(fd)
			return err
		})
	}
	c, err := d.DialContext(ctx, "tcp", cand.String())
	if dup >= 0 {
		defer netsys.Close(dup)
	}
	if err != nil && dup >= 0 {
		se := &synError{err: err}
		se.icmp, se.hasICMP = netsys.ICMPError(dup)
		return nil, se
	}
	return c, err
}

// synError is a failed connect and the ICMP error that caused it, if any.
type synError struct {
	err     error
	icmp    netsys.ICMP
	hasICMP bool
}

func (e *synError) Error() string {
	if e.hasICMP {
		return fmt.Sprintf("%v (%s)", e.err, icmpName(e.icmp))
	}
	return e.err.Error()
}

func (e *synError) Unwrap() error { return e.err }

// icmpName names an ICMP or ICMPv6 error (RFC 792, RFC 4443) and its sender.
func icmpName(m netsys.ICMP) string {
	v6 := m.From.Is6()
	var what string
	switch {
	case !v6 && m.Type == 3 && m.Code == 3, v6 && m.Type == 1 && m.Code == 4:
		what = "port unreachable"
	case !v6 && m.Type == 3 && m.Code == 1, v6 && m.Type == 1 && m.Code == 3:
		what = "host unreachable"
	case !v6 && m.Type == 3 && m.Code == 0, v6 && m.Type == 1 && m.Code == 0:
		what = "network unreachable"
	case !v6 && m.Type == 3 && (m.Code == 9 || m.Code == 10 || m.Code == 13), v6 && m.Type == 1 && m.Code == 1:
		what = "administratively prohibited"
	case !v6 && m.Type == 11, v6 && m.Type == 3:
		what = "time exceeded"
	default:
		what = fmt.Sprintf("type %d code %d", m.Type, m.Code)
	}
	return fmt.Sprintf("ICMP %s from %v", what, m.From)
}

// timeExceeded reports whether err is a connect killed by ICMP time
// exceeded: what a door's low-TTL SYN is expected to meet.
func timeExceeded(err error) bool {
	var se *synError
	if !errors.As(err, &se) || !se.hasICMP {
		return false
	}
	v6 := se.icmp.From.Is6()
	return (!v6 && se.icmp.Type == 11) || (v6 && se.icmp.Type == 3)
}

// remoteConn is a connection made from a raw socket, whose peer address Go
// could not read when it adopted the socket mid-connect.
type remoteConn struct {
	*net.TCPConn
	remote net.Addr
}

func (c *remoteConn) RemoteAddr() net.Addr { return c.remote }

// guessed reports whether remote, the peer's end of a connection, is one of
// its predicted endpoints rather than its reflexive one: the connection
// exists because the prediction was right.
func (p *puncher) guessed(remote netip.AddrPort) bool {
	if remote == p.peer.reflexive {
		return false
	}
	for _, c := range p.peer.predicted {
		if c == remote {
			return true
		}
	}
	return false
}

// record counts a failed SYN and reports whether to pause before retrying.
func (p *puncher) record(cand netip.AddrPort, err error, rctx context.Context) bool {
	var what string
	pause := true
	var se *synError
	switch {
	case errors.As(err, &se) && se.hasICMP:
		what = "answered by " + icmpName(se.icmp)
	case netsys.IsConnRefused(err):
		what = "refused by RST"
	case netsys.IsUnreachable(err):
		what = "unreachable"
	case netsys.IsAddrNotAvail(err):
		what = "not sent: the 4-tuple is in use on this host"
	case rctx.Err() != nil:
		return false
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		what, pause = "unanswered", false
	default:
		what = fmt.Sprintf("failed (%v)", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.errs[cand]
	if e == nil {
		e = &candErr{counts: map[string]int{}}
		p.errs[cand] = e
	}
	if e.counts[what] == 0 {
		e.order = append(e.order, what)
	}
	e.counts[what]++
	return pause
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// failure explains why no round succeeded: what theory says of the two
// NATs, then what each candidate's SYNs met.
func (p *puncher) failure(nat Behavior) string {
	var parts []string
	if p.peer.nat != nil {
		if ok, why := Feasible(nat, *p.peer.nat); !ok {
			parts = append(parts, why)
		}
	}
	if p.peer.nat != nil && !p.peer.nat.Predictable() && len(p.peer.predicted) == 0 {
		parts = append(parts, "the peer's NAT gave no predictable port")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var cands []netip.AddrPort
	for c := range p.errs {
		cands = append(cands, c)
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].Port() < cands[j].Port() })
	for _, c := range cands {
		e := p.errs[c]
		var what []string
		for _, w := range e.order {
			what = append(what, fmt.Sprintf("%s %d times", w, e.counts[w]))
		}
		parts = append(parts, fmt.Sprintf("SYNs to %v %s", c, strings.Join(what, ", ")))
	}
	if len(parts) == 0 {
		parts = append(parts, "no SYN got through and none came in")
	}
	return "punching failed: " + strings.Join(parts, "; ")
}

// closeRST closes a connection that is not kept with a reset, so that no
// TIME_WAIT holds its 4-tuple: the next round reuses the same local port
// toward the same peer endpoint (as libp2p closes with SO_LINGER 0).
func closeRST(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		l.SetLinger(0)
	}
	c.Close()
}
