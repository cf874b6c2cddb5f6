package natprobe

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/portspace/portspace/stun"
)

// reply is a response (or, for the hairpin test, a request) received on a
// probe socket.
type reply struct {
	m    *stun.Message
	from netip.AddrPort
	at   *sock // the socket it arrived on
}

// sock is one probe socket with a reader goroutine that hands responses to
// the transaction waiting for their ID and requests to the hairpin test.
type sock struct {
	c       *net.UDPConn
	local   netip.AddrPort
	mu      sync.Mutex
	wait    map[stun.TransactionID]chan reply
	request chan stun.TransactionID
}

func (p *prober) open(local netip.Addr) (*sock, error) {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		return nil, fmt.Errorf("natprobe: listen udp %v: %w", local, err)
	}
	s := &sock{c: c, wait: map[stun.TransactionID]chan reply{}, request: make(chan stun.TransactionID, 8)}
	la := c.LocalAddr().(*net.UDPAddr).AddrPort()
	s.local = netip.AddrPortFrom(la.Addr().Unmap(), la.Port())
	p.socks = append(p.socks, s)
	go s.read()
	return s, nil
}

func (s *sock) read() {
	buf := make([]byte, 2048)
	for {
		n, from, err := s.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ICMP errors surface as read errors: keep listening
		}
		m := new(stun.Message)
		if stun.Parse(append([]byte(nil), buf[:n]...), m) != nil {
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if m.Type.Class() == stun.ClassRequest {
			select {
			case s.request <- m.ID:
			default:
			}
			continue
		}
		s.mu.Lock()
		ch := s.wait[m.ID]
		s.mu.Unlock()
		if ch != nil {
			select {
			case ch <- reply{m: m, from: from, at: s}:
			default:
			}
		}
	}
}

// prober holds one run's sockets, pacing and options.
type prober struct {
	o     Options
	log   *slog.Logger
	start time.Time
	socks []*sock

	paceMu sync.Mutex
	next   time.Time
}

func (p *prober) close() {
	for _, s := range p.socks {
		s.c.Close()
	}
}

// pace waits until a new transaction may start and then runs send, its
// first packet, under the pace's lock: new transactions go out at least
// Pace apart however the goroutines are scheduled (RFC 5780 section 5: 10
// per second). send may be nil (a TCP connect follows at once).
func (p *prober) pace(ctx context.Context, send func()) error {
	p.paceMu.Lock()
	defer p.paceMu.Unlock()
	if d := time.Until(p.next); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	if send != nil {
		send()
	}
	if p.o.onFirstSend != nil {
		p.o.onFirstSend(now)
	}
	p.next = now.Add(p.o.Pace)
	return nil
}

func newID() stun.TransactionID {
	var id stun.TransactionID
	_, _ = rand.Read(id[4:])
	binary.BigEndian.PutUint32(id[:4], stun.MagicCookie)
	return id
}

// txn is one request: sent from `from`, answered on `on` (the same socket
// unless RESPONSE-PORT sends it elsewhere).
type txn struct {
	name    string
	from    *sock
	on      *sock
	to      netip.AddrPort
	mayFail bool // decided at Decide (sent at 0 and RTO); else retransmitted until Timeout
	build   func(*stun.Builder)
}

// result of a transaction: the reply and when the first request went out
// (relative to the run's start).
type answer struct {
	reply
	sent time.Duration
}

// do runs one transaction (RFC 8489 section 6.2.1: retransmit after RTO,
// doubling). A transaction that may fail returns ok=false and no error
// when nothing came by its deadline; one that must be answered returns
// ErrTimeout.
func (p *prober) do(ctx context.Context, t txn) (answer, bool, error) {
	id := newID()
	ch := make(chan reply, 2)
	on := t.on
	if on == nil {
		on = t.from
	}
	for _, s := range []*sock{t.from, on} {
		s.mu.Lock()
		s.wait[id] = ch
		s.mu.Unlock()
	}
	defer func() {
		for _, s := range []*sock{t.from, on} {
			s.mu.Lock()
			delete(s.wait, id)
			s.mu.Unlock()
		}
	}()
	var b stun.Builder
	b.Start(nil, stun.BindingRequest, id)
	if t.build != nil {
		t.build(&b)
	}
	pkt := b.Bytes()
	var first time.Time
	send := func() {
		first = time.Now()
		if _, err := t.from.c.WriteToUDPAddrPort(pkt, t.to); err != nil {
			p.log.Debug("natprobe: send", "test", t.name, "err", err)
		}
	}
	if err := p.pace(ctx, send); err != nil {
		return answer{}, false, err
	}
	deadline := p.o.Timeout
	if t.mayFail {
		deadline = p.o.Decide
	}
	sent := first.Sub(p.start)
	end := first.Add(deadline)
	rto := p.o.RTO
	nextSend := first.Add(rto) // the first request went out in pace
	rto *= 2
	if t.mayFail && rto > p.o.RTO*2 {
		nextSend = end
	}
	for {
		now := time.Now()
		if !now.Before(end) {
			p.log.Debug("natprobe: no answer", "test", t.name, "to", t.to, "after", deadline)
			if t.mayFail {
				return answer{sent: sent}, false, nil
			}
			return answer{sent: sent}, false, fmt.Errorf("%w: %s: no answer from %v within %v", ErrTimeout, t.name, t.to, deadline)
		}
		if !now.Before(nextSend) {
			if _, err := t.from.c.WriteToUDPAddrPort(pkt, t.to); err != nil {
				p.log.Debug("natprobe: send", "test", t.name, "err", err)
			}
			nextSend = nextSend.Add(rto)
			rto *= 2
			if t.mayFail && rto > p.o.RTO*2 {
				nextSend = end // sent at 0 and RTO only
			}
		}
		wake := nextSend
		if end.Before(wake) {
			wake = end
		}
		timer := time.NewTimer(time.Until(wake))
		select {
		case r := <-ch:
			timer.Stop()
			if r.m.Type.Class() == stun.ClassError {
				code, reason, _ := r.m.ErrorCode()
				return answer{reply: r, sent: sent}, false, fmt.Errorf("%w: %s: %v answered %d %s", ErrServer, t.name, r.from, code, reason)
			}
			p.log.Debug("natprobe: answer", "test", t.name, "to", t.to, "from", r.from, "rtt", time.Since(first))
			return answer{reply: r, sent: sent}, true, nil
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return answer{}, false, ctx.Err()
		}
	}
}

// mapped returns the reflexive address of a response: XOR-MAPPED-ADDRESS,
// else the pre-standard 0x8020, else MAPPED-ADDRESS (RFC 3489 servers).
func mapped(m *stun.Message) (netip.AddrPort, error) {
	for _, t := range []stun.AttrType{stun.AttrXORMappedAddress, stun.AttrXORMappedAddrOld, stun.AttrMappedAddress} {
		if a, err := m.Addr(t); err == nil {
			return a, nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("%w: response without a mapped address", ErrServer)
}

// other returns OTHER-ADDRESS (RFC 5780 section 7.4) or, from an RFC 3489
// server, CHANGED-ADDRESS, and whether it was the former.
func other(m *stun.Message) (netip.AddrPort, bool) {
	if a, err := m.Addr(stun.AttrOtherAddress); err == nil && a.Addr().IsValid() && !a.Addr().IsUnspecified() {
		return a, true
	}
	if a, err := m.Addr(stun.AttrChangedAddress); err == nil && a.Addr().IsValid() && !a.Addr().IsUnspecified() {
		return a, false
	}
	return netip.AddrPort{}, false
}

func (o *Options) defaults() error {
	if !o.Server.IsValid() || o.Server.Port() == 0 || o.Server.Addr().IsUnspecified() {
		return fmt.Errorf("%w: server %v must be an address and a port", ErrBadOptions, o.Server)
	}
	o.Server = netip.AddrPortFrom(o.Server.Addr().Unmap(), o.Server.Port())
	for _, d := range []*time.Duration{&o.RTO, &o.Timeout, &o.Decide, &o.Pace, &o.LifetimeMax, &o.LifetimeResolution} {
		if *d < 0 {
			return fmt.Errorf("%w: durations must not be negative", ErrBadOptions)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.RTO, DefaultRTO)
	def(&o.Timeout, DefaultTimeout)
	def(&o.Decide, DefaultDecide)
	def(&o.Pace, DefaultPace)
	def(&o.LifetimeMax, DefaultLifetimeMax)
	def(&o.LifetimeResolution, DefaultLifetimeResolution)
	if o.Series < 0 {
		return fmt.Errorf("%w: Series must not be negative", ErrBadOptions)
	}
	if o.Series == 0 {
		o.Series = 3
	}
	return nil
}

// localToward returns the source address the routing table picks toward
// dst (a UDP "connect" sends nothing).
func localToward(dst netip.AddrPort) (netip.Addr, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("natprobe: no route to %v: %w", dst, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// Probe runs the UDP behaviour tests against o.Server (and ProbeTCP with
// o.TCP) and returns what it found. Tests run in parallel, paced at
// o.Pace: mapping (RFC 5780 section 4.3) from one socket, filtering
// (section 4.4) from a second, an allocation series from o.Series more,
// then hairpinning (section 3.4) toward the first socket's mapping, and
// with o.Lifetime the lifetime search (section 4.6). The error is non-nil
// when the first test got no answer (Result.RFC3489 is then Blocked) or the
// options are wrong; a test that could not run is listed in Skipped.
func Probe(ctx context.Context, o Options) (Result, error) {
	if err := o.defaults(); err != nil {
		return Result{}, err
	}
	p := &prober{o: o, log: o.Logger, start: time.Now()}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	defer p.close()
	local := o.Local
	if !local.IsValid() {
		var err error
		if local, err = localToward(o.Server); err != nil {
			return Result{}, err
		}
	}
	res := Result{Server: o.Server}
	err := p.udp(ctx, local, &res)
	res.Elapsed = time.Since(p.start)
	if o.TCP && ctx.Err() == nil {
		// After the UDP tests, so that both share the pace without
		// slowing the UDP run.
		start := time.Now()
		tr, terr := probeTCP(ctx, p, TCPOptions{Server: o.Server, Other: res.Other, Local: netip.AddrPortFrom(local, o.TCPLocalPort), Timeout: o.Timeout})
		if terr != nil {
			tr.Skipped = append(tr.Skipped, terr.Error())
		}
		tr.Elapsed = time.Since(start)
		res.TCP = &tr
	}
	return res, err
}

type state struct {
	mu      sync.Mutex
	samples []Sample
	firsts  []Sample
	skipped []string
	algSeen bool
	alg     bool
	// RESPONSE-ORIGIN (or SOURCE-ADDRESS) against where the answer came
	// from and where the request went (RFC 5780 section 7.3).
	originSeen bool
	originBad  []string
	overlap    *bool // from the two-address test
}

func (st *state) sample(a answer, from *sock, to netip.AddrPort, first bool) netip.AddrPort {
	m, err := mapped(a.m)
	if err != nil {
		return netip.AddrPort{}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if x, err1 := a.m.Addr(stun.AttrXORMappedAddress); err1 == nil {
		if y, err2 := a.m.Addr(stun.AttrMappedAddress); err2 == nil {
			st.algSeen = true
			if x != y {
				st.alg = true
			}
		}
	}
	st.origin(a, to, to)
	s := Sample{Local: from.local, Server: to, Mapped: m, Sent: a.sent}
	dup := false
	for _, o := range st.samples {
		if o.Local == s.Local && o.Mapped == s.Mapped {
			dup = true
		}
	}
	if !dup {
		st.samples = append(st.samples, s)
	}
	if first {
		st.firsts = append(st.firsts, s)
	}
	return m
}

// origin checks an answer's RESPONSE-ORIGIN (RFC 5780 section 7.3): the
// server names the address it sent from, which must be the address the answer
// came from and, as the request asked, want (the address the request was
// sent to, or the socket its CHANGE-REQUEST names). A difference means
// something between rewrote addresses: the server is behind a NAT of its
// own (a double NAT on the path) or an ALG rewrote the attribute. RFC
// 3489's SOURCE-ADDRESS is not used: Debian's stund names the wrong port in
// it for requests to its (alternate address, primary port) socket. The
// caller holds st.mu.
func (st *state) origin(a answer, to, want netip.AddrPort) {
	o, err := a.m.Addr(stun.AttrResponseOrigin)
	if err != nil {
		return
	}
	o = netip.AddrPortFrom(o.Addr().Unmap(), o.Port())
	if o.Addr().IsUnspecified() {
		return // a server on a wildcard address cannot name its origin
	}
	st.originSeen = true
	note := ""
	switch {
	case o != a.from:
		note = fmt.Sprintf("the answer to %v came from %v but names %v as its origin", to, a.from, o)
	case want.IsValid() && o != want:
		note = fmt.Sprintf("the answer to %v came from %v, not %v", to, o, want)
	}
	if note != "" && !slices.Contains(st.originBad, note) {
		st.originBad = append(st.originBad, note)
	}
}

// checkOrigin is origin for an answer that gives no sample.
func (st *state) checkOrigin(a answer, to, want netip.AddrPort) {
	st.mu.Lock()
	st.origin(a, to, want)
	st.mu.Unlock()
}

func (st *state) skip(format string, args ...any) {
	st.mu.Lock()
	st.skipped = append(st.skipped, fmt.Sprintf(format, args...))
	st.mu.Unlock()
}

func (p *prober) udp(ctx context.Context, local netip.Addr, res *Result) error {
	st := &state{}
	s1, err := p.open(local)
	if err != nil {
		return err
	}
	s2, err := p.open(local)
	if err != nil {
		return err
	}
	series := make([]*sock, p.o.Series)
	for i := range series {
		if series[i], err = p.open(local); err != nil {
			return err
		}
	}
	P := p.o.Server

	// Filtering (RFC 5780 section 4.4) from s2: test I makes the binding
	// toward P alone, then tests II and III in parallel.
	// It starts first, so that its two tests that wait for silence are
	// decided early; it reads the other address from its own test I.
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	var fwg sync.WaitGroup
	fwg.Add(1)
	go func() {
		defer fwg.Done()
		f1, _, err := p.do(fctx, txn{name: "filtering test I", from: s2, to: P})
		if err != nil {
			if fctx.Err() == nil {
				st.skip("filtering: %v", err)
			}
			return
		}
		st.sample(f1, s2, P, true)
		oth, _ := other(f1.m)
		if !oth.IsValid() || oth.Addr() == P.Addr() || oth.Port() == P.Port() {
			return // reported by mapping test I
		}
		func() {
			var both, port answer
			var gotBoth, gotPort bool
			var errBoth, errPort error
			var fw sync.WaitGroup
			fw.Add(2)
			go func() {
				defer fw.Done()
				both, gotBoth, errBoth = p.do(ctx, txn{name: "filtering test II", from: s2, to: P, mayFail: true,
					build: func(b *stun.Builder) { b.AddChangeRequest(stun.ChangeIP | stun.ChangePort) }})
			}()
			go func() {
				defer fw.Done()
				port, gotPort, errPort = p.do(ctx, txn{name: "filtering test III", from: s2, to: P, mayFail: true,
					build: func(b *stun.Builder) { b.AddChangeRequest(stun.ChangePort) }})
			}()
			fw.Wait()
			if errBoth != nil || errPort != nil {
				st.skip("filtering: %v", errors.Join(errBoth, errPort))
				return
			}
			if gotBoth {
				st.checkOrigin(both, P, oth)
			}
			wantPort := netip.AddrPortFrom(P.Addr(), oth.Port())
			if gotPort {
				st.checkOrigin(port, P, wantPort)
			}
			if gotBoth && both.from != oth {
				st.skip("filtering: the change-IP-and-port answer came from %v, not the other address %v", both.from, oth)
				return
			}
			if gotPort && port.from != wantPort {
				st.skip("filtering: the change-port answer came from %v, not %v", port.from, wantPort)
				return
			}
			switch {
			case gotBoth:
				res.Filtering = EndpointIndependent
			case gotPort:
				res.Filtering = AddressDependent
			default:
				res.Filtering = AddressAndPortDependent
			}
		}()
	}()
	// Mapping test I (RFC 5780 section 4.3) gates everything else.
	a1, _, err := p.do(ctx, txn{name: "mapping test I", from: s1, to: P})
	if err != nil {
		fcancel()
		fwg.Wait()
		if errors.Is(err, ErrTimeout) {
			res.RFC3489 = Blocked
		}
		res.Skipped = append(res.Skipped, err.Error())
		return err
	}
	m1 := st.sample(a1, s1, P, true)
	if !m1.IsValid() {
		fcancel()
		fwg.Wait()
		err := fmt.Errorf("%w: mapping test I: %v answered without a usable mapped address", ErrServer, a1.from)
		res.Skipped = append(res.Skipped, err.Error())
		return err
	}
	res.Local, res.Mapped = s1.local, m1
	res.NAT = ptr(m1 != s1.local)
	oth, is5780 := other(a1.m)
	res.Other, res.RFC5780 = oth, is5780
	if !oth.IsValid() {
		st.skip("mapping tests II and III, filtering: the server sent neither OTHER-ADDRESS nor CHANGED-ADDRESS")
	} else if oth.Addr() == P.Addr() || oth.Port() == P.Port() {
		st.skip("mapping tests II and III, filtering: the server's other address %v does not differ from %v in both address and port", oth, P)
		oth = netip.AddrPort{}
	}
	if !*res.NAT {
		res.Mapping = EndpointIndependent
	}

	var wg sync.WaitGroup
	// Mapping tests II and III, from s1.
	if oth.IsValid() && *res.NAT {
		wg.Add(1)
		go func() {
			defer wg.Done()
			A := netip.AddrPortFrom(oth.Addr(), P.Port())
			a2, _, err := p.do(ctx, txn{name: "mapping test II", from: s1, to: A})
			if err != nil {
				st.skip("mapping: %v", err)
				return
			}
			m2 := st.sample(a2, s1, A, false)
			if !m2.IsValid() {
				st.skip("mapping: test II's answer has no usable mapped address")
				return
			}
			if m2 == m1 {
				res.Mapping = EndpointIndependent
				return
			}
			a3, _, err := p.do(ctx, txn{name: "mapping test III", from: s1, to: oth})
			if err != nil {
				st.skip("mapping: %v", err)
				return
			}
			m3 := st.sample(a3, s1, oth, false)
			switch {
			case !m3.IsValid():
				st.skip("mapping: test III's answer has no usable mapped address")
			case m3 == m2:
				res.Mapping = AddressDependent
			default:
				res.Mapping = AddressAndPortDependent
			}
		}()
	}
	// Overlapping, with a second local address: the same port from both
	// toward two server addresses; one external port for both is
	// overlapping (RFC 7857 section 3).
	if alt := p.o.AltLocal; alt.IsValid() && oth.IsValid() && *res.NAT {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ov, err := p.overlap(ctx, local, alt, netip.AddrPortFrom(oth.Addr(), P.Port())); err != nil {
				st.skip("overlapping: %v", err)
			} else {
				st.mu.Lock()
				st.overlap = ov
				st.mu.Unlock()
			}
		}()
	}
	// The allocation series: one new mapping per socket toward P. Once
	// the first has its mapping, hairpinning (RFC 5780 section 3.4) runs
	// between it and s1.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i, s := range series {
			a, _, err := p.do(ctx, txn{name: "allocation series", from: s, to: P})
			if err != nil {
				st.skip("allocation: %v", err)
				return
			}
			ms := st.sample(a, s, P, true)
			if i == 0 && *res.NAT && ms.IsValid() {
				// The hairpin test takes the next slot: it waits for
				// silence, so it must not start last.
				started := make(chan struct{})
				wg.Add(1)
				go func() {
					defer wg.Done()
					res.Hairpinning = ptr(p.hairpin(ctx, s1, s, m1, ms, started))
				}()
				<-started
			}
		}
	}()
	wg.Wait()
	fwg.Wait()

	st.mu.Lock()
	sort.SliceStable(st.samples, func(i, j int) bool { return st.samples[i].Sent < st.samples[j].Sent })
	res.Samples = st.samples
	res.Preservation, res.Parity, res.Overlapping, res.Allocation, res.Delta = analyse(st.samples, st.firsts)
	if st.overlap != nil {
		res.Overlapping = st.overlap
	}
	if st.algSeen {
		res.ALG = ptr(st.alg)
	}
	if st.originSeen {
		res.OriginRewritten = ptr(len(st.originBad) > 0)
		res.OriginNotes = st.originBad
	}
	res.Skipped = append(res.Skipped, st.skipped...)
	st.mu.Unlock()
	res.RFC3489 = class(res.NAT, res.Mapping, res.Filtering)

	if p.o.Lifetime {
		if !res.RFC5780 {
			res.Skipped = append(res.Skipped, "lifetime: needs RESPONSE-PORT, which only RFC 5780 servers (with OTHER-ADDRESS) offer")
		} else if err := p.lifetime(ctx, local, res); err != nil {
			res.Skipped = append(res.Skipped, "lifetime: "+err.Error())
		}
	}
	return nil
}

// hairpin sends Binding requests between two sockets through the NAT: a
// to b's mapped address mb and b to a's mapped address ma, at 0 and RTO,
// and reports whether either arrived by Decide. Each direction's first
// request opens the sender's own filter toward the other's mapping, so a
// NAT that hairpins is seen as doing so whatever its filtering (RFC 5780
// section 3.4; RFC 4787 section 6, REQ-9).
func (p *prober) hairpin(ctx context.Context, a, b *sock, ma, mb netip.AddrPort, started chan<- struct{}) bool {
	idA, idB := newID(), newID()
	var ba, bb stun.Builder
	ba.Start(nil, stun.BindingRequest, idA)
	bb.Start(nil, stun.BindingRequest, idB)
	pa, pb := ba.Bytes(), bb.Bytes()
	var start time.Time
	err := p.pace(ctx, func() {
		start = time.Now()
		_, _ = a.c.WriteToUDPAddrPort(pa, mb)
		_, _ = b.c.WriteToUDPAddrPort(pb, ma)
	})
	close(started)
	if err != nil {
		return false
	}
	end := start.Add(p.o.Decide)
	sends := []time.Time{start.Add(p.o.RTO)}
	for {
		now := time.Now()
		if !now.Before(end) {
			return false
		}
		wake := end
		if len(sends) > 0 {
			if !now.Before(sends[0]) {
				_, _ = a.c.WriteToUDPAddrPort(pa, mb)
				_, _ = b.c.WriteToUDPAddrPort(pb, ma)
				sends = sends[1:]
				continue
			}
			wake = sends[0]
		}
		t := time.NewTimer(time.Until(wake))
		select {
		case got := <-b.request:
			if got == idA {
				t.Stop()
				return true
			}
		case got := <-a.request:
			if got == idB {
				t.Stop()
				return true
			}
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false
		}
		t.Stop()
	}
}

// overlap binds one port on local and the same port on alt, sends from
// the first to the primary address and from the second to A (another
// server address), and compares the mappings: the same external endpoint
// is overlapping; different ones, when the first kept its port (so the
// second could have had it), is not; otherwise it cannot tell (nil).
func (p *prober) overlap(ctx context.Context, local, alt netip.Addr, A netip.AddrPort) (*bool, error) {
	a, err := p.open(local)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(alt, a.local.Port())))
	if err != nil {
		return nil, fmt.Errorf("natprobe: the second local address %v: %w", alt, err)
	}
	b := &sock{c: c, local: netip.AddrPortFrom(alt, a.local.Port()), wait: map[stun.TransactionID]chan reply{}, request: make(chan stun.TransactionID, 8)}
	p.socks = append(p.socks, b)
	go b.read()
	ra, _, err := p.do(ctx, txn{name: "overlapping (first address)", from: a, to: p.o.Server})
	if err != nil {
		return nil, err
	}
	rb, _, err := p.do(ctx, txn{name: "overlapping (second address)", from: b, to: A})
	if err != nil {
		return nil, err
	}
	ma, err1 := mapped(ra.m)
	mb, err2 := mapped(rb.m)
	if err1 != nil || err2 != nil {
		return nil, errors.Join(err1, err2)
	}
	switch {
	case ma == mb:
		return ptr(true), nil
	case ma.Port() == a.local.Port():
		return ptr(false), nil
	}
	return nil, nil
}
