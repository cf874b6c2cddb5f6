package udpbatch

import (
	"bytes"
	"testing"
)

// TestGSOCaps: a run to one destination is cut into GSO messages of at
// most maxSegs datagrams and maxGSOBytes bytes, so the kernel takes each
// (GSO stays on) and every datagram arrives whole: 65 datagrams of 20
// bytes make two messages (64 + 1), 64 of maxSegSize bytes make two (48
// fit in 60,000 bytes).
func TestGSOCaps(t *testing.T) {
	for _, c := range []struct{ n, size, msgs int }{{maxSegs + 1, 20, 2}, {maxSegs, maxSegSize, 2}} {
		a, b := pair(t, "udp4", "127.0.0.1")
		_ = b.SetReadBuffer(1 << 20)
		w, _ := NewWriter(a, 128, 2048)
		if !w.SetGSO(true) {
			t.Skip("no UDP_SEGMENT")
		}
		for i := 0; i < c.n; i++ {
			w.Commit(append(w.Next(), datagram(i, c.size)...), localAddr(b))
		}
		if w.Messages() != c.msgs {
			t.Errorf("%d datagrams of %d bytes: %d messages, want %d", c.n, c.size, w.Messages(), c.msgs)
		}
		if n, err := w.Flush(); n != c.n || err != nil {
			t.Fatalf("Flush = %d, %v; want %d", n, err, c.n)
		}
		if !w.GSO() {
			t.Errorf("%d datagrams of %d bytes: the kernel refused a GSO message (GSO off)", c.n, c.size)
		}
		r, _ := NewReader(b, 64, 2048)
		got, _, _ := readAll(t, b, r, c.n)
		for i, g := range got {
			if !bytes.Equal(g, datagram(i, c.size)) {
				t.Errorf("%d-byte datagram %d: %d bytes, first % x", c.size, i, len(g), g[:min(4, len(g))])
			}
		}
	}
}
