package punch

import (
	"bufio"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestMessageRoundTrip(t *testing.T) {
	m := Message{Op: OpRegister, ID: "alice", Secret: "s", Peer: "bob", Local: []netip.AddrPort{local},
		Predicted: []netip.AddrPort{ext(5001)}, RTT: 120, NAT: &Behavior{Mapping: MappingAPD, Allocation: AllocSequential, Delta: 1, Last: ext(5000)}}
	b, err := AppendMessage(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readMessage(bufio.NewReader(strings.NewReader(string(b))))
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != m.ID || got.Predicted[0] != m.Predicted[0] || *got.NAT != *m.NAT || got.Reflexive.IsValid() {
		t.Fatalf("round trip: %+v", got)
	}
}

func TestMessageRejects(t *testing.T) {
	for _, in := range []string{
		``, `{}`, `{"op":"nope"}`, `{"op":"register","id":"a"}`, `{"op":"register","id":"a","secret":"s","peer":"a"}`,
		`{"op":"ping","extra":1}`, `{"op":"ping"} {"op":"ping"}`, `{"op":"ping","id":"a b"}`,
		`{"op":"ping","local":["10.0.0.1:0"]}`, `{"op":"ping","delay_us":-1}`, `[1,2]`,
		`{"op":"ping","id":"` + strings.Repeat("x", 200) + `"}`,
	} {
		if _, err := ParseMessage([]byte(in)); !errors.Is(err, ErrBadMessage) {
			t.Errorf("ParseMessage(%.40q) = %v, want ErrBadMessage", in, err)
		}
	}
	long := `{"op":"ping","reason":"` + strings.Repeat("x", MaxMessage) + `"}` + "\n"
	if _, err := readMessage(bufio.NewReaderSize(strings.NewReader(long), 16)); !errors.Is(err, ErrBadMessage) {
		t.Errorf("over-long line: %v", err)
	}
	if _, err := readMessage(bufio.NewReader(strings.NewReader(`{"op":"ping"`))); !errors.Is(err, ErrBadMessage) {
		t.Errorf("truncated line: %v", err)
	}
}

func FuzzParseMessage(f *testing.F) {
	for _, s := range []string{`{"op":"ping","seq":1}`, `{"op":"register","id":"a","secret":"s","peer":"b","local":["10.0.0.2:1"]}`,
		`{"op":"peer","nat":{"mapping":"endpoint-independent","allocation":"preserving"}}`, `{"op":"hello","how":"accepted"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			return
		}
		out, err := AppendMessage(nil, m)
		if err != nil {
			return // a valid message may re-encode longer (escapes); that is refused, not a crash
		}
		if _, err := ParseMessage(out[:len(out)-1]); err != nil {
			t.Fatalf("re-encoded message does not parse: %v\n%s", err, out)
		}
	})
}
