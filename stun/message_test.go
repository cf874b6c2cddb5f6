package stun

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

func testID(legacy bool) TransactionID {
	var id TransactionID
	for i := range id {
		id[i] = byte(i*7 + 1)
	}
	if !legacy {
		binary.BigEndian.PutUint32(id[:4], MagicCookie)
	}
	return id
}

func TestTypeRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		t      Type
		method uint16
		class  Class
	}{
		{BindingRequest, MethodBinding, ClassRequest},
		{BindingIndication, MethodBinding, ClassIndication},
		{BindingSuccess, MethodBinding, ClassSuccess},
		{BindingError, MethodBinding, ClassError},
		{0x0003, 0x003, ClassRequest}, // TURN Allocate
		{0x0113, 0x003, ClassError},   // Allocate error
		{0x3fff, 0xfff, ClassError},   // every method bit
		{0x000b, 0x00b, ClassRequest}, // low bits
		{0x0020, 0x010, ClassRequest}, // bit M4
	} {
		if tc.t.Method() != tc.method || tc.t.Class() != tc.class {
			t.Errorf("%#04x: method %#x class %d, want %#x %d", uint16(tc.t), tc.t.Method(), tc.t.Class(), tc.method, tc.class)
		}
		if got := NewType(tc.method, tc.class); got != tc.t {
			t.Errorf("NewType(%#x, %d) = %#04x, want %#04x", tc.method, tc.class, uint16(got), uint16(tc.t))
		}
	}
}

func TestBuildParseRoundTrip(t *testing.T) {
	id := testID(false)
	v4 := netip.MustParseAddrPort("192.0.2.1:32853")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:4444")
	var b Builder
	b.Start(nil, BindingSuccess, id)
	b.AddXORAddr(AttrXORMappedAddress, v4)
	b.AddAddr(AttrMappedAddress, v4)
	b.AddAddr(AttrOtherAddress, v6)
	b.AddXORAddr(AttrXORMappedAddrOld, v6)
	b.AddChangeRequest(ChangeIP | ChangePort)
	b.AddResponsePort(3479)
	b.AddString(AttrSoftware, "abc")
	b.AddZeros(AttrPadding, 5)
	b.AddErrorCode(420, "Unknown Attribute")
	b.AddUnknownAttributes([]AttrType{0x0002, 0x0024, 0x0025})
	b.AddFingerprint()
	pkt := b.Bytes()
	if len(pkt)%4 != 0 {
		t.Fatalf("length %d not a multiple of 4", len(pkt))
	}
	var m Message
	if err := Parse(pkt, &m); err != nil {
		t.Fatal(err)
	}
	if m.Type != BindingSuccess || m.ID != id || m.Legacy() {
		t.Fatalf("header: %#x %v legacy=%v", m.Type, m.ID, m.Legacy())
	}
	for _, c := range []struct {
		t    AttrType
		want netip.AddrPort
	}{{AttrXORMappedAddress, v4}, {AttrMappedAddress, v4}, {AttrOtherAddress, v6}, {AttrXORMappedAddrOld, v6}} {
		got, err := m.Addr(c.t)
		if err != nil || got != c.want {
			t.Errorf("Addr(%#x) = %v, %v; want %v", c.t, got, err, c.want)
		}
	}
	// The XOR encoding really is XORed: the raw value differs from the plain one.
	x, _ := m.Get(AttrXORMappedAddress)
	p, _ := m.Get(AttrMappedAddress)
	if string(x) == string(p) {
		t.Error("XOR-MAPPED-ADDRESS is stored in the clear")
	}
	if f, err := m.ChangeRequest(); err != nil || f != ChangeIP|ChangePort {
		t.Errorf("ChangeRequest = %#x, %v", f, err)
	}
	if rp, err := m.ResponsePort(); err != nil || rp != 3479 {
		t.Errorf("ResponsePort = %d, %v", rp, err)
	}
	if v, _ := m.Get(AttrSoftware); string(v) != "abc" {
		t.Errorf("SOFTWARE = %q", v)
	}
	if v, _ := m.Get(AttrPadding); len(v) != 5 {
		t.Errorf("PADDING length %d", len(v))
	}
	if code, reason, err := m.ErrorCode(); err != nil || code != 420 || string(reason) != "Unknown Attribute" {
		t.Errorf("ErrorCode = %d %q %v", code, reason, err)
	}
	if u, err := m.UnknownAttributes(nil); err != nil || len(u) != 3 || u[1] != 0x0024 {
		t.Errorf("UnknownAttributes = %v, %v", u, err)
	}
	if _, err := m.Addr(AttrResponseOrigin); !errors.Is(err, ErrNoAttribute) {
		t.Errorf("absent attribute: %v", err)
	}
}

// TestFingerprintKnownVector checks FINGERPRINT against the sample request
// of RFC 5769 section 2.1 (the Binding request with SOFTWARE, PRIORITY,
// ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY and FINGERPRINT).
func TestFingerprintKnownVector(t *testing.T) {
	const hexmsg = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf"
	b := make([]byte, len(hexmsg)/2)
	for i := range b {
		var v byte
		for _, c := range hexmsg[2*i : 2*i+2] {
			v <<= 4
			switch {
			case c >= '0' && c <= '9':
				v |= byte(c - '0')
			default:
				v |= byte(c-'a') + 10
			}
		}
		b[i] = v
	}
	var m Message
	if err := Parse(b, &m); err != nil {
		t.Fatalf("RFC 5769 sample: %v", err)
	}
	b[len(b)-1] ^= 1
	if err := Parse(b, &m); !errors.Is(err, ErrBadFingerprint) {
		t.Fatalf("corrupted FINGERPRINT: %v", err)
	}
}

func TestParseRejects(t *testing.T) {
	var b Builder
	b.Start(nil, BindingRequest, testID(false))
	b.AddChangeRequest(0)
	good := append([]byte(nil), b.Bytes()...)
	mod := func(f func(p []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name string
		pkt  []byte
		want error
	}{
		{"empty", nil, ErrNotSTUN},
		{"short header", good[:19], ErrNotSTUN},
		{"top bits", mod(func(p []byte) []byte { p[0] |= 0x80; return p }), ErrNotSTUN},
		{"length not multiple of 4", mod(func(p []byte) []byte { p[3] = 7; return p }), ErrNotSTUN},
		{"length too long", mod(func(p []byte) []byte { p[3] = 12; return p }), ErrTruncated},
		{"trailing bytes", append(mod(func(p []byte) []byte { return p }), 0, 0, 0, 0), ErrTruncated},
		{"attribute past end", mod(func(p []byte) []byte { p[23] = 8; return p }), ErrTruncated},
		{"fingerprint not last", func() []byte {
			var b Builder
			b.Start(nil, BindingRequest, testID(false))
			b.AddFingerprint()
			b.AddChangeRequest(0)
			return b.Bytes()
		}(), ErrBadFingerprint},
		{"too many attributes", func() []byte {
			var b Builder
			b.Start(nil, BindingRequest, testID(false))
			for i := 0; i <= MaxAttributes; i++ {
				b.AddZeros(AttrPadding, 0)
			}
			return b.Bytes()
		}(), ErrTooManyAttributes},
	} {
		var m Message
		if err := Parse(tc.pkt, &m); !errors.Is(err, tc.want) {
			t.Errorf("%s: Parse = %v, want %v", tc.name, err, tc.want)
		}
	}
	var m Message
	if err := Parse(good, &m); err != nil {
		t.Fatalf("good message: %v", err)
	}
}

func TestAddrRejectsBadValues(t *testing.T) {
	for _, v := range [][]byte{{0, 1, 0}, {0, 1, 0, 1, 1, 2, 3}, {0, 3, 0, 1, 1, 2, 3, 4}, {0, 2, 0, 1, 1, 2, 3, 4}} {
		var b Builder
		b.Start(nil, BindingSuccess, testID(false))
		b.Add(AttrMappedAddress, v)
		var m Message
		if err := Parse(b.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Addr(AttrMappedAddress); !errors.Is(err, ErrBadAttribute) {
			t.Errorf("value %x: %v, want ErrBadAttribute", v, err)
		}
	}
}

func TestLegacyID(t *testing.T) {
	if !testID(true).Legacy() || testID(false).Legacy() {
		t.Fatal("Legacy misreads the magic cookie")
	}
}

func TestParseAllocatesNothing(t *testing.T) {
	var b Builder
	b.Start(nil, BindingSuccess, testID(false))
	b.AddXORAddr(AttrXORMappedAddress, netip.MustParseAddrPort("192.0.2.1:1"))
	b.AddFingerprint()
	pkt := b.Bytes()
	var m Message
	if n := testing.AllocsPerRun(100, func() {
		_ = Parse(pkt, &m)
		_, _ = m.Addr(AttrXORMappedAddress)
	}); n != 0 {
		t.Fatalf("Parse allocates %.1f times", n)
	}
}

// FuzzParse feeds arbitrary bytes to Parse and every accessor, and
// re-encodes what parsed: nothing may panic, and a message that parses
// re-encodes to bytes that parse to the same attributes.
func FuzzParse(f *testing.F) {
	var b Builder
	b.Start(nil, BindingRequest, testID(false))
	b.AddChangeRequest(ChangeIP)
	b.AddResponsePort(1)
	b.AddZeros(AttrPadding, 3)
	b.AddFingerprint()
	f.Add(append([]byte(nil), b.Bytes()...)) // a modern request with FINGERPRINT
	b.Start(nil, BindingSuccess, testID(true))
	b.AddAddr(AttrMappedAddress, netip.MustParseAddrPort("10.0.0.1:5"))
	b.AddAddr(AttrChangedAddress, netip.MustParseAddrPort("[::1]:5"))
	f.Add(append([]byte(nil), b.Bytes()...))                                                             // an RFC 3489 response
	f.Add([]byte{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})             // empty request
	f.Add([]byte{0, 1, 0, 4, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 3, 0, 9}) // attribute overruns
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Message
		if Parse(data, &m) != nil {
			return
		}
		for _, at := range []AttrType{AttrMappedAddress, AttrXORMappedAddress, AttrOtherAddress, AttrResponseOrigin} {
			_, _ = m.Addr(at)
		}
		_, _ = m.ChangeRequest()
		_, _ = m.ResponsePort()
		_, _, _ = m.ErrorCode()
		_, _ = m.UnknownAttributes(nil)
		var b Builder
		b.Start(nil, m.Type, m.ID)
		for _, a := range m.Attributes() {
			if a.Type != AttrFingerprint {
				b.Add(a.Type, a.Value)
			}
		}
		var m2 Message
		if err := Parse(b.Bytes(), &m2); err != nil {
			t.Fatalf("re-encoded message does not parse: %v", err)
		}
		want := 0
		for _, a := range m.Attributes() {
			if a.Type != AttrFingerprint {
				want++
			}
		}
		if len(m2.Attributes()) != want {
			t.Fatalf("re-encoded %d attributes, want %d", len(m2.Attributes()), want)
		}
	})
}
