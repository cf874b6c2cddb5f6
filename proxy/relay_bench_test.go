package proxy

import (
	"io"
	"testing"
	"time"
)

// BenchmarkRelayBulk is the bulk phase of "portspace bench proxy" in one
// process: an origin writes 256 KiB chunks into one loopback TCP
// connection, the relay splices them into another, and a client reads them
// into a 256 KiB buffer, as the bench's client does. One operation is one
// MiB carried. cpu-ns/MiB is the whole process's user and system time per
// MiB (origin, relay and client: a direct connection costs the origin and
// client part alone), the figure to compare between builds; MiB/s moves
// with the machine's load.
func BenchmarkRelayBulk(b *testing.B) {
	in, src := tcpPair(b)
	dst, out := tcpPair(b)
	done := make(chan error, 1)
	go func() {
		_, _, err := relay(src, dst, time.Minute, time.Now, nil, nil)
		done <- err
	}()
	total := int64(b.N) << 20
	go func() {
		chunk := make([]byte, 256<<10)
		for left := total; left > 0; {
			n := min(left, int64(len(chunk)))
			if _, err := in.Write(chunk[:n]); err != nil {
				return
			}
			left -= n
		}
		in.CloseWrite()
	}()
	buf := make([]byte, 256<<10)
	cpu0 := processCPU()
	start := time.Now()
	b.ResetTimer()
	var got int64
	for got < total {
		n, err := out.Read(buf)
		got += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	el := time.Since(start)
	if got != total {
		b.Fatalf("read %d bytes, want %d", got, total)
	}
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/MiB")
	b.ReportMetric(float64(b.N)/el.Seconds(), "MiB/s")
	in.Close()
	out.Close()
	<-done
}
