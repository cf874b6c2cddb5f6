package natprobe

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"syscall"
	"time"

	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/stun"
)

// TCPOptions configures ProbeTCP. The zero value of every field but Server
// is a documented default.
type TCPOptions struct {
	// Server is the STUN server's primary TCP transport address.
	Server netip.AddrPort
	// Other is the server's other address, used when its TCP answers
	// carry no OTHER-ADDRESS; zero means "from the answers only".
	Other netip.AddrPort
	// Local is the local endpoint every mapping connection is made from
	// (with SO_REUSEADDR, so that the same port reaches several
	// destinations at once). A zero address means the one the routing
	// table picks; a zero port lets the kernel choose one for the first
	// connection and reuses it for the others.
	Local netip.AddrPort
	// Series is the number of connections from fresh local ports toward
	// Server for the allocation pattern; 0 means 2.
	Series int
	// Timeout bounds each connection and its answer; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// Logger receives debug lines; nil discards them.
	Logger *slog.Logger
}

// TCPResult is the outcome of ProbeTCP: the TCP mapping behaviour seen from
// one reused local port (RFC 5780 section 3.1: the mapping tests apply to
// TCP; filtering cannot be tested), port preservation and the allocation
// pattern.
type TCPResult struct {
	Local        netip.AddrPort // the reused local endpoint
	Mapped       netip.AddrPort // its mapping toward Server
	Mapping      Behavior       // RFC 4787 terms, as for UDP (RFC 5382 section 4.1 for TCP)
	Preservation *bool
	Allocation   Allocation
	Delta        int
	Samples      []Sample
	Skipped      []string
	Elapsed      time.Duration
}

// ProbeTCP runs the RFC 5780 section 4.3 mapping tests over TCP: Binding
// requests on connections from one local port to the primary address, the
// alternate address and the alternate address and port (all kept open
// until the end), plus connections from fresh ports for the allocation
// pattern. The error is non-nil when the first connection gets no answer.
func ProbeTCP(ctx context.Context, o TCPOptions) (TCPResult, error) {
	po := Options{Server: o.Server, Timeout: o.Timeout, Logger: o.Logger}
	if err := po.defaults(); err != nil {
		return TCPResult{}, err
	}
	p := &prober{o: po, log: po.Logger, start: time.Now()}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if !o.Local.Addr().IsValid() {
		a, err := localToward(o.Server)
		if err != nil {
			return TCPResult{}, err
		}
		o.Local = netip.AddrPortFrom(a, o.Local.Port())
	}
	o.Timeout = po.Timeout
	res, err := probeTCP(ctx, p, o)
	res.Elapsed = time.Since(p.start)
	return res, err
}

// tcpExchange connects from local (SO_REUSEADDR) to dst, sends one Binding
// request and reads the answer; the connection stays open for the caller.
func tcpExchange(ctx context.Context, p *prober, local, dst netip.AddrPort, timeout time.Duration) (net.Conn, *stun.Message, time.Duration, error) {
	if err := p.pace(ctx, nil); err != nil {
		return nil, nil, 0, err
	}
	sent := time.Since(p.start)
	d := net.Dialer{
		Timeout:   timeout,
		LocalAddr: net.TCPAddrFromAddrPort(local),
		Control: func(_, _ string, c syscall.RawConn) error {
			return netsys.Control(c, func(fd int) error { return netsys.SetReuseAddr(fd, true) })
		},
	}
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return nil, nil, sent, fmt.Errorf("natprobe: tcp %v -> %v: %w", local, dst, err)
	}
	var b stun.Builder
	b.Start(nil, stun.BindingRequest, newID())
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(b.Bytes()); err != nil {
		c.Close()
		return nil, nil, sent, fmt.Errorf("natprobe: tcp write to %v: %w", dst, err)
	}
	buf := make([]byte, 2048)
	if _, err := io.ReadFull(c, buf[:stun.HeaderSize]); err != nil {
		c.Close()
		return nil, nil, sent, fmt.Errorf("%w: tcp %v: %v", ErrTimeout, dst, err)
	}
	l, err := stun.MessageLength(buf[:stun.HeaderSize])
	if err != nil || l > len(buf) {
		c.Close()
		return nil, nil, sent, fmt.Errorf("%w: tcp %v: not a STUN answer", ErrServer, dst)
	}
	if _, err := io.ReadFull(c, buf[stun.HeaderSize:l]); err != nil {
		c.Close()
		return nil, nil, sent, fmt.Errorf("%w: tcp %v: %v", ErrTimeout, dst, err)
	}
	m := new(stun.Message)
	if err := stun.Parse(buf[:l], m); err != nil || m.Type != stun.BindingSuccess {
		c.Close()
		return nil, nil, sent, fmt.Errorf("%w: tcp %v: no Binding success (%v)", ErrServer, dst, err)
	}
	return c, m, sent, nil
}

func probeTCP(ctx context.Context, p *prober, o TCPOptions) (TCPResult, error) {
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Series == 0 {
		o.Series = 2
	}
	var res TCPResult
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	P := o.Server
	c1, m, sent, err := tcpExchange(ctx, p, o.Local, P, o.Timeout)
	if err != nil {
		return res, err
	}
	conns = append(conns, c1)
	la := c1.LocalAddr().(*net.TCPAddr).AddrPort()
	L := netip.AddrPortFrom(la.Addr().Unmap(), la.Port())
	m1, err := mapped(m)
	if err != nil {
		return res, err
	}
	res.Local, res.Mapped = L, m1
	res.Preservation = ptr(m1.Port() == L.Port())
	samples := []Sample{{Local: L, Server: P, Mapped: m1, Sent: sent}}
	add := func(s Sample) {
		for _, x := range samples {
			if x.Local == s.Local && x.Mapped == s.Mapped {
				return
			}
		}
		samples = append(samples, s)
	}
	oth, _ := other(m)
	if !oth.IsValid() {
		oth = o.Other
	}
	if !oth.IsValid() || oth.Addr() == P.Addr() || oth.Port() == P.Port() {
		res.Skipped = append(res.Skipped, "tcp mapping: the server's TCP answer has no usable OTHER-ADDRESS")
	} else if m1 == L {
		res.Mapping = EndpointIndependent
	} else {
		A := netip.AddrPortFrom(oth.Addr(), P.Port())
		c2, m, sent, err := tcpExchange(ctx, p, L, A, o.Timeout)
		if err != nil {
			res.Skipped = append(res.Skipped, "tcp mapping: "+err.Error())
		} else {
			conns = append(conns, c2)
			m2, _ := mapped(m)
			add(Sample{Local: L, Server: A, Mapped: m2, Sent: sent})
			if m2 == m1 {
				res.Mapping = EndpointIndependent
			} else if c3, m, sent, err := tcpExchange(ctx, p, L, oth, o.Timeout); err != nil {
				res.Skipped = append(res.Skipped, "tcp mapping: "+err.Error())
			} else {
				conns = append(conns, c3)
				m3, _ := mapped(m)
				add(Sample{Local: L, Server: oth, Mapped: m3, Sent: sent})
				if m3 == m2 {
					res.Mapping = AddressDependent
				} else {
					res.Mapping = AddressAndPortDependent
				}
			}
		}
	}
	firsts := []Sample{samples[0]}
	for i := 0; i < o.Series; i++ {
		c, m, sent, err := tcpExchange(ctx, p, netip.AddrPortFrom(L.Addr(), 0), P, o.Timeout)
		if err != nil {
			res.Skipped = append(res.Skipped, "tcp allocation: "+err.Error())
			break
		}
		conns = append(conns, c)
		la := c.LocalAddr().(*net.TCPAddr).AddrPort()
		mm, _ := mapped(m)
		s := Sample{Local: netip.AddrPortFrom(la.Addr().Unmap(), la.Port()), Server: P, Mapped: mm, Sent: sent}
		add(s)
		firsts = append(firsts, s)
	}
	sort.SliceStable(samples, func(i, j int) bool { return samples[i].Sent < samples[j].Sent })
	res.Samples = samples
	var pres *bool
	pres, _, _, res.Allocation, res.Delta = analyse(samples, firsts)
	if pres != nil && !*pres {
		res.Preservation = pres
	}
	return res, nil
}
