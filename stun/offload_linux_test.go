package stun

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/udpbatch"
)

// gsoSender is a test client whose batched writes coalesce runs into UDP
// GSO messages (so that a server socket with UDP_GRO receives them as one
// run), reading answers one datagram per recvmmsg entry, or with UDP_GRO
// when gro is set.
type gsoSender struct {
	c *net.UDPConn
	w *udpbatch.Writer
	r *udpbatch.Reader
}

func newGSOSender(t testing.TB, gro bool) *gsoSender {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetReadBuffer(1 << 20)
	w, err := udpbatch.NewWriter(c, 128, 2048)
	if err != nil {
		t.Skip(err)
	}
	if !w.SetGSO(true) {
		t.Skip("no UDP_SEGMENT")
	}
	size := 2048
	if gro {
		if err := udpbatch.EnableGRO(c); err != nil {
			t.Skip(err)
		}
		size = udpbatch.MaxCoalesced
	}
	r, _ := udpbatch.NewReader(c, 64, size)
	return &gsoSender{c: c, w: w, r: r}
}

// read reads datagrams (runs split) until want came or none came for
// wait, and passes each with its source to f.
func (g *gsoSender) read(want int, wait time.Duration, f func([]byte, netip.AddrPort)) int {
	got := 0
	for got < want {
		_ = g.c.SetReadDeadline(time.Now().Add(wait))
		n, err := g.r.Read()
		if err != nil {
			break
		}
		for i := 0; i < n; i++ {
			d, src := g.r.Msg(i)
			seg := g.r.Seg(i)
			for len(d) > 0 {
				var a []byte
				a, d = udpbatch.Next(d, seg)
				if f != nil {
					f(a, src)
				}
				got++
			}
		}
	}
	return got
}

func idOf(i int) TransactionID {
	id := testID(false)
	binary.BigEndian.PutUint32(id[12:], uint32(i))
	return id
}

// TestServerOffload sends one burst of mixed requests (a run of 40
// Binding requests coalesced into one GSO message, then CHANGE-REQUESTs,
// PADDING of several sizes, RESPONSE-PORT to another socket, RFC 3489
// requests and requests with an unknown comprehension-required attribute)
// to a server with its offloads on and off, and checks every answer by its
// transaction ID: where it came from and went to, and what it says. With
// the offloads on, the run of 40 is read as one and answered as one GSO
// message (Stats.Sends), so the answers must be the same as without.
func TestServerOffload(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(map[bool]string{false: "on", true: "off"}[off], func(t *testing.T) {
			s := startServer(t, Options{Unlimited: true, NoOffload: off})
			socks := s.Addrs()
			g := newGSOSender(t, false)
			y, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			defer y.Close()
			self := g.c.LocalAddr().(*net.UDPAddr).AddrPort()
			yPort := y.LocalAddr().(*net.UDPAddr).AddrPort().Port()
			type want struct {
				from, to netip.AddrPort
				code     int // 0: success
				padding  int
				legacy   bool
			}
			wants := map[TransactionID]want{}
			send := func(i int, legacy bool, add func(*Builder), w want) {
				var b Builder
				id := idOf(i)
				if legacy {
					binary.BigEndian.PutUint32(id[:4], 0x01020304)
				}
				b.Start(g.w.Next(), BindingRequest, id)
				if add != nil {
					add(&b)
				}
				g.w.Commit(b.Bytes(), socks[0])
				w.legacy = legacy
				wants[id] = w
			}
			plain := want{from: socks[0], to: self}
			for i := 0; i < 40; i++ {
				send(i, false, nil, plain)
			}
			for i := 40; i < 48; i++ {
				send(i, false, func(b *Builder) { b.AddChangeRequest(ChangeIP | ChangePort) }, want{from: socks[3], to: self})
			}
			for i := 48; i < 54; i++ {
				n := 4 * (i - 46)
				send(i, false, func(b *Builder) { b.AddZeros(AttrPadding, n) }, want{from: socks[0], to: self, padding: n})
			}
			for i := 54; i < 59; i++ {
				send(i, false, func(b *Builder) { b.AddResponsePort(yPort) }, want{from: socks[0], to: netip.AddrPortFrom(self.Addr(), yPort)})
			}
			for i := 59; i < 63; i++ {
				send(i, true, nil, plain)
			}
			for i := 63; i < 66; i++ {
				send(i, false, func(b *Builder) { b.AddUint32(0x7f01, 1) }, want{from: socks[0], to: self, code: CodeUnknownAttribute})
			}
			if g.w.Messages() > 11 {
				t.Fatalf("the client's burst is %d messages: no GSO run", g.w.Messages())
			}
			if n, err := g.w.Flush(); err != nil || n != len(wants) {
				t.Fatalf("Flush = %d, %v", n, err)
			}
			check := func(to netip.AddrPort) func([]byte, netip.AddrPort) {
				return func(a []byte, from netip.AddrPort) {
					var m Message
					if err := Parse(a, &m); err != nil {
						t.Errorf("answer does not parse: %v", err)
						return
					}
					w, ok := wants[m.ID]
					if !ok {
						t.Errorf("answer to no request (or twice): %x", m.ID)
						return
					}
					delete(wants, m.ID)
					i := binary.BigEndian.Uint32(m.ID[12:])
					if from != w.from || to != w.to {
						t.Errorf("answer %d: from %v to %v, want from %v to %v", i, from, to, w.from, w.to)
					}
					if w.code != 0 {
						if c, _, err := m.ErrorCode(); err != nil || c != w.code || m.Type != BindingError {
							t.Errorf("answer %d: %v error %d (%v), want %d", i, m.Type, c, err, w.code)
						}
						return
					}
					if m.Type != BindingSuccess {
						t.Errorf("answer %d: %v", i, m.Type)
						return
					}
					mapped := AttrXORMappedAddress
					if w.legacy {
						mapped = AttrMappedAddress
					}
					if got, err := m.Addr(mapped); err != nil || got != self {
						t.Errorf("answer %d: mapped %v (%v), want %v", i, got, err, self)
					}
					if p, _ := m.Get(AttrPadding); len(p) != w.padding {
						t.Errorf("answer %d: PADDING of %d bytes, want %d", i, len(p), w.padding)
					}
				}
			}
			total := len(wants)
			got := g.read(total-5, 2*time.Second, check(self))
			yr := &gsoSender{c: y}
			yr.r, _ = udpbatch.NewReader(y, 8, 2048)
			got += yr.read(5, 2*time.Second, check(netip.AddrPortFrom(self.Addr(), yPort)))
			if got != total || len(wants) != 0 {
				t.Fatalf("%d answers to %d requests; %d unanswered", got, total, len(wants))
			}
			st := s.Stats()
			if st.Requests != uint64(total) || st.Responses+st.Errors != uint64(total) {
				t.Errorf("stats %+v, want %d requests answered", st, total)
			}
			// With the offloads the run of 40 plain answers (at least)
			// went out as one message.
			if !off && st.Sends > uint64(total-39) {
				t.Errorf("offload on: %d messages for %d answers", st.Sends, total)
			}
			if off && st.Sends != uint64(total) {
				t.Errorf("offload off: %d messages for %d answers", st.Sends, total)
			}
		})
	}
}

// TestServerRateLimitRun: the per-client limit counts each request of a
// run read as one (UDP_GRO), not the run.
func TestServerRateLimitRun(t *testing.T) {
	now := time.Unix(1e6, 0)
	s := startServer(t, Options{Rate: 1, Burst: 5, Now: func() time.Time { return now }})
	g := newGSOSender(t, true)
	req := request(false, nil)
	for i := 0; i < 20; i++ {
		g.w.Commit(append(g.w.Next(), req...), s.Addrs()[0])
	}
	if g.w.Messages() != 1 {
		t.Fatalf("%d messages, want one GSO run", g.w.Messages())
	}
	g.w.Flush()
	if got := g.read(20, 300*time.Millisecond, nil); got != 5 {
		t.Fatalf("answered %d of 20 requests with a burst of 5", got)
	}
	if st := s.Stats(); st.Limited != 15 || st.Requests != 20 {
		t.Fatalf("limited %d of %d, want 15 of 20", st.Limited, st.Requests)
	}
}

// TestServerAllocatesNothingOffload pins the offloaded hot path: a run of
// 64 requests sent as one GSO message, read by the server as one run and
// answered as one, read back with UDP_GRO, allocates nothing in the
// process.
func TestServerAllocatesNothingOffload(t *testing.T) {
	s := startServer(t, Options{Unlimited: true})
	g := newGSOSender(t, true)
	req := request(false, nil)
	dst := s.Addrs()[0]
	round := func() int {
		for i := 0; i < 64; i++ {
			g.w.Commit(append(g.w.Next(), req...), dst)
		}
		if _, err := g.w.Flush(); err != nil {
			return 0
		}
		return g.read(64, 200*time.Millisecond, nil)
	}
	round()
	lost := 0
	if n := testing.AllocsPerRun(50, func() { lost += 64 - round() }); n != 0 {
		t.Fatalf("%.1f allocations per round of 64 requests (%d responses lost)", n, lost)
	}
	if lost > 0 {
		t.Logf("%d responses lost", lost)
	}
	if st := s.Stats(); st.Sends*8 > st.Responses {
		t.Errorf("%d messages for %d answers: the runs were not answered as GSO messages", st.Sends, st.Responses)
	}
}
