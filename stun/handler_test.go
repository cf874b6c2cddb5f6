package stun

import (
	"net/netip"
	"testing"
)

var (
	hPrimary   = netip.MustParseAddrPort("192.0.2.10:3478")
	hAlternate = netip.MustParseAddrPort("192.0.2.11:3479")
	hClient    = netip.MustParseAddrPort("198.51.100.7:40001")
)

func request(legacy bool, add func(*Builder)) []byte {
	var b Builder
	b.Start(nil, BindingRequest, testID(legacy))
	if add != nil {
		add(&b)
	}
	return append([]byte(nil), b.Bytes()...)
}

func mustHandler(t testing.TB, alt netip.AddrPort) *Handler {
	t.Helper()
	h, err := NewHandler(hPrimary, alt, "")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func parseReply(t *testing.T, r Reply) *Message {
	t.Helper()
	m := new(Message)
	if err := Parse(r.Data, m); err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	return m
}

func addr(t *testing.T, m *Message, at AttrType) netip.AddrPort {
	t.Helper()
	a, err := m.Addr(at)
	if err != nil {
		t.Fatalf("attribute %#x: %v", at, err)
	}
	return a
}

// TestHandleTable1 checks RFC 5780 section 6, table 1: which socket answers
// for each CHANGE-REQUEST, from whichever socket the request arrived on,
// and that OTHER-ADDRESS is the receiving socket's (Ca, Cp), except from
// (alternate address, primary port), where it is the alternate address and
// port (coturn's answer, which natdiscovery's test III relies on).
func TestHandleTable1(t *testing.T) {
	h := mustHandler(t, hAlternate)
	socks := h.Sockets()
	want := []netip.AddrPort{hPrimary, netip.MustParseAddrPort("192.0.2.10:3479"), netip.MustParseAddrPort("192.0.2.11:3478"), hAlternate}
	for i := range want {
		if socks[i] != want[i] {
			t.Fatalf("socket %d = %v, want %v", i, socks[i], want[i])
		}
	}
	for at := Socket(0); at < 4; at++ {
		for _, f := range []uint32{0, ChangePort, ChangeIP, ChangeIP | ChangePort} {
			req := request(false, func(b *Builder) { b.AddChangeRequest(f) })
			r, ok := h.Handle(nil, req, hClient, at, false)
			if !ok {
				t.Fatalf("socket %d flags %#x: dropped", at, f)
			}
			wantVia := at
			if f&ChangeIP != 0 {
				wantVia ^= 2
			}
			if f&ChangePort != 0 {
				wantVia ^= 1
			}
			if r.Via != wantVia || r.To != hClient {
				t.Errorf("socket %d flags %#x: via %d to %v, want via %d to %v", at, f, r.Via, r.To, wantVia, hClient)
			}
			m := parseReply(t, r)
			if m.Type != BindingSuccess || m.ID != testID(false) {
				t.Fatalf("type %#x id %x", m.Type, m.ID)
			}
			if got := addr(t, m, AttrXORMappedAddress); got != hClient {
				t.Errorf("XOR-MAPPED-ADDRESS %v", got)
			}
			if got := addr(t, m, AttrMappedAddress); got != hClient {
				t.Errorf("MAPPED-ADDRESS %v", got)
			}
			if got := addr(t, m, AttrResponseOrigin); got != socks[wantVia] {
				t.Errorf("socket %d flags %#x: RESPONSE-ORIGIN %v, want %v", at, f, got, socks[wantVia])
			}
			wantOther := socks[at^3]
			if at == SocketAltAddr {
				wantOther = hAlternate
			}
			if got := addr(t, m, AttrOtherAddress); got != wantOther {
				t.Errorf("socket %d: OTHER-ADDRESS %v, want %v", at, got, wantOther)
			}
		}
	}
}

func TestHandleResponsePortAndPadding(t *testing.T) {
	h := mustHandler(t, hAlternate)
	r, _ := h.Handle(nil, request(false, func(b *Builder) { b.AddResponsePort(5555) }), hClient, 0, false)
	if r.To != netip.AddrPortFrom(hClient.Addr(), 5555) || r.Via != 0 {
		t.Errorf("RESPONSE-PORT: to %v via %d", r.To, r.Via)
	}
	req := request(false, func(b *Builder) { b.AddZeros(AttrPadding, 1400) })
	r, _ = h.Handle(nil, req, hClient, 0, false)
	m := parseReply(t, r)
	if p, _ := m.Get(AttrPadding); len(p) != 1400 {
		t.Errorf("PADDING mirrored at %d bytes, want 1400", len(p))
	}
	// No amplification: the response exceeds the request only by its
	// four fixed address attributes (4 x 12 bytes) less what the
	// request carried besides PADDING.
	if len(r.Data) > len(req)+48 {
		t.Errorf("response %d bytes for a %d-byte request", len(r.Data), len(req))
	}
	r, _ = h.Handle(nil, request(false, nil), hClient, 0, false)
	if len(r.Data) > HeaderSize+48 {
		t.Errorf("plain response is %d bytes", len(r.Data))
	}
}

func wantError(t *testing.T, name string, r Reply, ok bool, code int, unknown ...AttrType) {
	t.Helper()
	if !ok {
		t.Fatalf("%s: dropped, want a %d", name, code)
	}
	m := parseReply(t, r)
	c, reason, err := m.ErrorCode()
	if m.Type != BindingError || err != nil || c != code {
		t.Fatalf("%s: type %#x code %d (%v), want error %d", name, m.Type, c, err, code)
	}
	if len(reason) == 0 {
		t.Errorf("%s: empty reason", name)
	}
	if r.To != hClient {
		t.Errorf("%s: error sent to %v, want the source %v", name, r.To, hClient)
	}
	if len(unknown) > 0 {
		u, err := m.UnknownAttributes(nil)
		if err != nil || len(u) != len(unknown) {
			t.Fatalf("%s: UNKNOWN-ATTRIBUTES %v %v, want %v", name, u, err, unknown)
		}
		for i := range u {
			if u[i] != unknown[i] {
				t.Errorf("%s: UNKNOWN-ATTRIBUTES %v, want %v", name, u, unknown)
			}
		}
	}
}

func TestHandleErrors(t *testing.T) {
	h := mustHandler(t, hAlternate)
	single := mustHandler(t, netip.AddrPort{})
	r, ok := h.Handle(nil, request(false, func(b *Builder) { b.AddZeros(AttrPadding, 8); b.AddResponsePort(9) }), hClient, 0, false)
	wantError(t, "PADDING with RESPONSE-PORT", r, ok, 400)
	r, ok = h.Handle(nil, request(false, func(b *Builder) { b.Add(AttrChangeRequest, []byte{0, 6}) }), hClient, 0, false)
	wantError(t, "short CHANGE-REQUEST", r, ok, 400)
	r, ok = h.Handle(nil, request(false, func(b *Builder) { b.AddResponsePort(0) }), hClient, 0, false)
	wantError(t, "RESPONSE-PORT 0", r, ok, 400)
	r, ok = h.Handle(nil, request(false, func(b *Builder) { b.AddChangeRequest(ChangeIP) }), hClient, 0, true)
	wantError(t, "CHANGE-REQUEST over TCP", r, ok, 400)
	r, ok = h.Handle(nil, request(false, func(b *Builder) { b.AddResponsePort(7) }), hClient, 0, true)
	wantError(t, "RESPONSE-PORT over TCP", r, ok, 400)
	var b Builder
	b.Start(nil, NewType(0x003, ClassRequest), testID(false))
	r, ok = h.Handle(nil, append([]byte(nil), b.Bytes()...), hClient, 0, false)
	wantError(t, "Allocate", r, ok, 400)
	r, ok = h.Handle(nil, request(false, func(b *Builder) {
		b.AddUint32(0x0024, 1) // ICE PRIORITY
		b.AddAddr(AttrResponseAddress, hPrimary)
		b.AddUint32(0x0024, 2)
		b.AddUint32(0xC057, 3) // comprehension-optional: ignored
	}), hClient, 0, false)
	wantError(t, "unknown attributes", r, ok, 420, 0x0024, AttrResponseAddress)
	r, ok = single.Handle(nil, request(false, func(b *Builder) { b.AddChangeRequest(ChangePort) }), hClient, 0, false)
	wantError(t, "CHANGE-REQUEST without an alternate", r, ok, 420, AttrChangeRequest)
	r, ok = single.Handle(nil, request(false, func(b *Builder) { b.AddChangeRequest(0) }), hClient, 0, false)
	if m := parseReply(t, r); !ok || m.Type != BindingSuccess || m.Has(AttrOtherAddress) {
		t.Errorf("single-homed, empty CHANGE-REQUEST: ok=%v type %#x OTHER-ADDRESS=%v", ok, m.Type, m.Has(AttrOtherAddress))
	}
	for _, typ := range []Type{BindingIndication, BindingSuccess, BindingError} {
		var b Builder
		b.Start(nil, typ, testID(false))
		if _, ok := h.Handle(nil, b.Bytes(), hClient, 0, false); ok {
			t.Errorf("type %#x answered", typ)
		}
	}
	if _, ok := h.Handle(nil, []byte("GET / HTTP/1.1\r\n\r\n"), hClient, 0, false); ok {
		t.Error("non-STUN bytes answered")
	}
	if _, ok := single.Handle(nil, request(false, nil), hClient, 2, false); ok {
		t.Error("a single-homed handler answered for a socket it does not have")
	}
}

// TestHandleRFC3489 checks the answer to a request without the magic
// cookie: MAPPED-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS (RFC 3489 section
// 11.2), the whole 16-byte ID echoed, and no XOR-MAPPED-ADDRESS.
func TestHandleRFC3489(t *testing.T) {
	h := mustHandler(t, hAlternate)
	r, ok := h.Handle(nil, request(true, func(b *Builder) { b.AddChangeRequest(ChangeIP) }), hClient, 1, false)
	if !ok || r.Via != 3 {
		t.Fatalf("ok=%v via %d", ok, r.Via)
	}
	m := parseReply(t, r)
	if m.ID != testID(true) || !m.Legacy() {
		t.Fatalf("ID %x not echoed", m.ID)
	}
	if got := addr(t, m, AttrMappedAddress); got != hClient {
		t.Errorf("MAPPED-ADDRESS %v", got)
	}
	if got := addr(t, m, AttrSourceAddress); got != hAlternate {
		t.Errorf("SOURCE-ADDRESS %v, want %v", got, hAlternate)
	}
	if got := addr(t, m, AttrChangedAddress); got != h.Sockets()[2] {
		t.Errorf("CHANGED-ADDRESS %v, want %v (the receiving socket's opposite)", got, h.Sockets()[2])
	}
	if m.Has(AttrXORMappedAddress) || m.Has(AttrResponseOrigin) {
		t.Error("RFC 3489 response carries RFC 5389 attributes")
	}
}

func TestNewHandlerRejects(t *testing.T) {
	for _, c := range [][2]string{
		{"0.0.0.0:3478", ""},
		{"192.0.2.1:0", ""},
		{"192.0.2.1:3478", "192.0.2.1:3479"},
		{"192.0.2.1:3478", "192.0.2.2:3478"},
		{"192.0.2.1:3478", "[2001:db8::1]:3479"},
		{"192.0.2.1:3478", "0.0.0.0:3479"},
	} {
		var alt netip.AddrPort
		if c[1] != "" {
			alt = netip.MustParseAddrPort(c[1])
		}
		if _, err := NewHandler(netip.MustParseAddrPort(c[0]), alt, ""); err == nil {
			t.Errorf("NewHandler(%s, %s) accepted", c[0], c[1])
		}
	}
}

func TestHandleAllocatesNothing(t *testing.T) {
	h := mustHandler(t, hAlternate)
	req := request(false, func(b *Builder) { b.AddChangeRequest(ChangePort); b.AddFingerprint() })
	legacy := request(true, nil)
	bad := request(false, func(b *Builder) { b.AddUint32(0x0024, 1) })
	out := make([]byte, 0, 2048)
	if n := testing.AllocsPerRun(200, func() {
		h.Handle(out, req, hClient, 0, false)
		h.Handle(out, legacy, hClient, 0, false)
		h.Handle(out, bad, hClient, 0, false)
	}); n != 0 {
		t.Fatalf("Handle allocates %.1f times per call", n)
	}
}

func TestLimiter(t *testing.T) {
	l := newLimiter(10, 3, 1)
	a := netip.MustParseAddr("198.51.100.1")
	b := netip.MustParseAddr("198.51.100.2")
	now := int64(1e12)
	got := 0
	for i := 0; i < 10; i++ {
		if l.allow(a, now) {
			got++
		}
	}
	if got != 3 {
		t.Fatalf("burst of 3 allowed %d", got)
	}
	if l.slot(a) != l.slot(b) && !l.allow(b, now) {
		t.Fatal("another client was limited")
	}
	if l.allow(a, now+50e6) {
		t.Fatal("a token after 50 ms at 10/s")
	}
	if !l.allow(a, now+100e6) {
		t.Fatal("no token after 100 ms at 10/s")
	}
	if n := testing.AllocsPerRun(100, func() { l.allow(a, now) }); n != 0 {
		t.Fatalf("allow allocates %.1f", n)
	}
}

func BenchmarkHandle(b *testing.B) {
	h := mustHandler(b, hAlternate)
	req := request(false, func(b *Builder) { b.AddChangeRequest(0) })
	out := make([]byte, 0, 2048)
	b.ReportAllocs()
	for b.Loop() {
		h.Handle(out, req, hClient, 0, false)
	}
}

// FuzzHandle feeds arbitrary requests to the server's handler over UDP and
// TCP: it must not panic, every answer must parse, and no answer may exceed
// its request by more than the fixed attributes and the longest error
// (the server is no amplifier).
func FuzzHandle(f *testing.F) {
	f.Add(request(false, func(b *Builder) { b.AddChangeRequest(ChangeIP | ChangePort) }), uint8(0), false)
	f.Add(request(true, func(b *Builder) { b.AddResponsePort(9) }), uint8(2), false)
	f.Add(request(false, func(b *Builder) { b.AddZeros(AttrPadding, 40); b.AddFingerprint() }), uint8(3), true)
	f.Add(request(false, func(b *Builder) { b.AddUint32(0x0024, 1); b.AddUint32(0x0025, 1) }), uint8(1), false)
	h := mustHandler(f, hAlternate)
	f.Fuzz(func(t *testing.T, req []byte, at uint8, tcp bool) {
		r, ok := h.Handle(nil, req, hClient, Socket(at%4), tcp)
		if !ok {
			return
		}
		var m Message
		if err := Parse(r.Data, &m); err != nil {
			t.Fatalf("answer does not parse: %v", err)
		}
		if len(r.Data) > len(req)+80 {
			t.Fatalf("%d-byte answer to a %d-byte request", len(r.Data), len(req))
		}
		if r.To.Addr() != hClient.Addr() {
			t.Fatalf("answer aimed at %v", r.To)
		}
	})
}
