package proxy

import (
	"bytes"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netsys"
	"golang.org/x/sys/unix"
)

// TestRelayUnpacesBulkShortHop: a tunnel whose origin sends a bulk stream
// over loopback has its sending socket toward the client switched from BBR
// to reno and its receiving socket's buffer capped at shortRcvbuf, and
// carries every byte; a tunnel that moves only a small reply, and one with
// the switch turned off, keep BBR and autotuning.
func TestRelayUnpacesBulkShortHop(t *testing.T) {
	for _, c := range []struct {
		name   string
		cc     string
		size   int
		want   string
		capped bool
	}{
		{"bulk", "reno", 4 << 20, "reno", true},
		{"small", "reno", 64 << 10, "bbr", false},
		{"off", "", 4 << 20, "bbr", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			in, src := tcpPair(t)
			dst, out := tcpPair(t)
			fd, fs := connFD(t, dst), connFD(t, src)
			if err := unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, "bbr"); err != nil {
				t.Skipf("no bbr here: %v", err)
			}
			done := make(chan int64, 1)
			var switched atomic.Int64
			relayAsync(src, dst, time.Minute, time.Now, nil, nil, shortHop{cc: c.cc, switched: func() { switched.Add(1) }}, func(n, _ int64, _ error) {
				done <- n
			})
			msg := bytes.Repeat([]byte("0123456789abcdef"), c.size/16)
			go func() {
				in.Write(msg)
				in.CloseWrite()
			}()
			got, err := io.ReadAll(out)
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("read %d bytes (%v), want the %d sent", len(got), err, len(msg))
			}
			cc, err := netsys.CongestionControl(fd)
			if err != nil {
				t.Fatal(err)
			}
			if cc != c.want {
				t.Errorf("congestion control %q, want %q", cc, c.want)
			}
			if n, want := switched.Load(), map[bool]int64{true: 1, false: 0}[c.want != "bbr"]; n != want {
				t.Errorf("%d sockets counted as switched, want %d", n, want)
			}
			// The kernel reports twice the size set.
			rb, err := unix.GetsockoptInt(int(fs), unix.SOL_SOCKET, unix.SO_RCVBUF)
			if err != nil {
				t.Fatal(err)
			}
			// The cap is left out where net.core.rmem_max would clamp it.
			want := c.capped && netsys.RmemMax() >= shortRcvbuf
			if capped := rb == 2*shortRcvbuf; capped != want {
				t.Errorf("SO_RCVBUF of the relay's receiving socket %d, capped %v, want %v (rmem_max %d)", rb, capped, want, netsys.RmemMax())
			}
			out.Close()
			in.Close()
			if n := <-done; n != int64(len(msg)) {
				t.Errorf("relay counted %d bytes, want %d", n, len(msg))
			}
		})
	}
}

// TestRelayCopiesBulkShortHop: a bulk direction between two loopback hops
// leaves splicing for copying (modeCopy) after its first big chunk and
// carries every byte in order, counts them, and passes the EOF on; a small
// reply, and the short-hop tuning turned off, keep splicing.
func TestRelayCopiesBulkShortHop(t *testing.T) {
	for _, c := range []struct {
		name string
		cc   string
		size int
		want int
		full bool // every copy slot taken: the direction keeps splicing
	}{
		{"bulk", "reno", 8 << 20, modeCopy, false},
		{"small", "reno", 64 << 10, modeSplice, false},
		{"off", "", 8 << 20, modeSplice, false},
		{"no-slot", "reno", 8 << 20, modeSplice, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			before, bufs0 := copyDirs.Load(), bufsOut.Load()
			if c.full {
				copyDirs.Store(int32(cap(bulkBufs)))
				defer copyDirs.Store(before)
			}
			in, src := tcpPair(t)
			dst, out := tcpPair(t)
			tun := &tunnel{idle: time.Minute, now: time.Now, hop: shortHop{cc: c.cc}}
			tun.touch()
			var counted atomic.Int64
			d := newDirection(tun, src, dst, func(n int) { counted.Add(int64(n)) })
			msg := make([]byte, c.size)
			for i := range msg {
				msg[i] = byte(i ^ i>>8 ^ i>>16)
			}
			go func() {
				in.Write(msg)
				in.CloseWrite()
			}()
			got := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(out) // until the FIN the direction passes on
				got <- b
			}()
			if err := d.run(); err != nil {
				t.Fatal(err)
			}
			if b := <-got; !bytes.Equal(b, msg) {
				t.Fatalf("read %d bytes, want the %d sent, in order", len(b), len(msg))
			}
			if d.n != int64(len(msg)) || counted.Load() != d.n {
				t.Errorf("direction counted %d bytes (metric %d), want %d", d.n, counted.Load(), len(msg))
			}
			if d.mode != c.want {
				t.Errorf("mode %d at the end, want %d", d.mode, c.want)
			}
			if held := bufsOut.Load() - bufs0; held != 0 {
				t.Errorf("%d buffers still taken after the run, want 0", held)
			}
			if !c.full && copyDirs.Load() != before {
				t.Errorf("%d directions copying after the run, want the %d before it: the slot is not given back", copyDirs.Load(), before)
			}
		})
	}
}
