package proxy

import (
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkRelayBulk is the bulk phase of "portspace bench proxy" in one
// process: an origin writes 256 KiB chunks into one loopback TCP
// connection, the relay splices them into another, and a client reads them
// into a 256 KiB buffer, as the bench's client does. One operation is one
// MiB carried. cpu-ns/MiB is the whole process's user and system time per
// MiB (origin, relay and client: a direct connection costs the origin and
// client part alone), the figure to compare between builds; kthr-ns/MiB is
// the machine's kworker and ksoftirqd threads' CPU meanwhile (work the
// kernel defers out of the process: BenchmarkRelayBulkSockmap's relay runs
// there); MiB/s moves with the machine's load.
func BenchmarkRelayBulk(b *testing.B) {
	benchRelayBulk(b, func(src, dst *net.TCPConn) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, _, err := relay(src, dst, time.Minute, time.Now, nil, nil)
			done <- err
		}()
		return done
	})
}

// benchRelayBulk runs the bulk benchmark with the relay that start sets up
// between src (fed by the origin) and dst (read by the client); start's
// channel reports the relay's end.
func benchRelayBulk(b *testing.B, start func(src, dst *net.TCPConn) <-chan error) {
	in, src := tcpPair(b)
	dst, out := tcpPair(b)
	done := start(src, dst)
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
	cpu0, k0 := processCPU(), kthreadCPU()
	begin := time.Now()
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
	el := time.Since(begin)
	if got != total {
		b.Fatalf("read %d bytes, want %d", got, total)
	}
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/MiB")
	b.ReportMetric(float64((kthreadCPU()-k0).Nanoseconds())/float64(b.N), "kthr-ns/MiB")
	b.ReportMetric(float64(b.N)/el.Seconds(), "MiB/s")
	in.Close()
	out.Close()
	<-done
}

// kthreadCPU sums the user and system time of the machine's kworker and
// ksoftirqd threads (/proc/PID/stat, in clock ticks of 10 ms); 0 where there
// is no /proc. The figure includes other processes' deferred work: compare
// it between interleaved runs only.
func kthreadCPU() time.Duration {
	ents, _ := os.ReadDir("/proc")
	var ticks int64
	for _, e := range ents {
		if c := e.Name()[0]; c < '0' || c > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if i < 0 || j < i || j+2 > len(s) {
			continue
		}
		if comm := s[i+1 : j]; !strings.HasPrefix(comm, "kworker") && !strings.HasPrefix(comm, "ksoftirqd") {
			continue
		}
		f := strings.Fields(s[j+2:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
