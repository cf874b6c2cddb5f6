package stun

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/udpbatch"
	"golang.org/x/sys/unix"
)

// benchServeEnv makes a copy of this test binary run a server (for
// BenchmarkServerProcess) instead of the tests.
const benchServeEnv = "PORTSPACE_STUN_BENCH_SERVE"

func TestMain(m *testing.M) {
	if p := os.Getenv(benchServeEnv); p != "" {
		os.Exit(benchServe(p))
	}
	os.Exit(m.Run())
}

func benchServe(primary string) int {
	pa, err := netip.ParseAddrPort(primary)
	if err != nil {
		return 2
	}
	workers, _ := strconv.Atoi(os.Getenv(benchWorkersEnv))
	s, err := Listen(Options{Primary: pa, Alternate: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), pa.Port()+1), Unlimited: true, Workers: workers})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("ready")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	_ = s.Serve(ctx)
	return 0
}

// procCPU returns a process's user plus system CPU time from
// /proc/PID/stat (fields 14 and 15, in clock ticks of 1/100 s).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+k) * 10 * time.Millisecond
}

// benchWorkersEnv passes Options.Workers to the server process.
const benchWorkersEnv = "PORTSPACE_STUN_BENCH_WORKERS"

// startServerProcess runs a server (127.0.0.1 and 127.0.0.2, ports p and
// p+1) in a copy of this test binary and returns its process and sockets.
func startServerProcess(b *testing.B, workers int) (*exec.Cmd, []netip.AddrPort) {
	var cmd *exec.Cmd
	var addr netip.AddrPort
	for try := 0; try < 10 && cmd == nil; try++ {
		addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(20000+try*997+os.Getpid()%7000))
		c := exec.Command(os.Args[0])
		c.Env = append(os.Environ(), benchServeEnv+"="+addr.String(), benchWorkersEnv+"="+strconv.Itoa(workers))
		out, _ := c.StdoutPipe()
		if err := c.Start(); err != nil {
			b.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if strings.HasPrefix(line, "ready") {
			cmd = c
			break
		}
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	if cmd == nil {
		b.Fatal("server process did not start")
	}
	b.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	socks := []netip.AddrPort{addr, netip.AddrPortFrom(addr.Addr(), addr.Port()+1),
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), addr.Port()), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), addr.Port()+1)}
	return cmd, socks
}

// gsoClient is a cheaper load client than loadClient: a socket connected
// to its server socket that sends each round of requests as one UDP GSO
// datagram (UDP_SEGMENT) which the kernel splits into one datagram per
// request before the server's socket sees them, so the server still reads
// and answers every request on its own; pipeClient reads the answers with
// recvmmsg.
type gsoClient struct {
	c   *net.UDPConn
	r   *udpbatch.Reader
	req int
	buf []byte
}

func newGSOClient(tb testing.TB, dst netip.AddrPort, batch int) *gsoClient {
	c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, net.UDPAddrFromAddrPort(dst))
	if err != nil {
		tb.Fatal(err)
	}
	_ = c.SetReadBuffer(4 << 20)
	tb.Cleanup(func() { c.Close() })
	req := request(false, nil)
	rc, _ := c.SyscallConn()
	var serr error
	_ = rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, len(req)) })
	if serr != nil {
		tb.Skipf("UDP_SEGMENT: %v", serr)
	}
	r, err := udpbatch.NewReader(c, batch, 256)
	if err != nil {
		tb.Skip(err)
	}
	return &gsoClient{c: c, r: r, req: len(req), buf: bytes.Repeat(req, batch)}
}

// BenchmarkServerProcess runs the server in a process of its own and load
// clients in this one, so that it can report the server's own CPU time per
// response (server-cpu-ns/resp) and what that makes per CPU core
// (server-resp/cpu-s), beside the wall-clock rate of responses the clients
// received (resp/s), which the clients, sharing the machine's two cores,
// hold down. Each of 8 clients keeps 192 requests in flight (pipeClient).
// Sub-benchmarks: client=mmsg sends them as loadClient does (sendmmsg of
// up to 64 addressed requests), client=gso as gsoClient (one GSO send of up
// to 64 requests on a connected socket: a cheaper client, the same
// datagrams for the server); to=4 spreads the 8 clients over the four sockets, to=1 sends
// them all to the primary (what a public server sees); workers is
// Options.Workers.
func BenchmarkServerProcess(b *testing.B) {
	for _, c := range []struct {
		client  string
		to      int
		workers int
	}{{"mmsg", 4, 1}, {"gso", 4, 1}, {"gso", 1, 1}, {"gso", 1, 2}, {"gso", 4, 2}} {
		b.Run(fmt.Sprintf("client=%s/to=%d/workers=%d", c.client, c.to, c.workers), func(b *testing.B) {
			benchServerProcess(b, c.client, c.to, c.workers)
		})
	}
}

// pipeClient keeps a window of requests in flight from one client socket:
// it sends more as answers arrive, so the server never waits for a
// client's round trip. A read that waits 50 ms for nothing is a stall (on a
// loaded machine, mostly a server not scheduled for that long): the
// requests still out are taken as lost and the window is sent again.
type pipeClient struct {
	c    *net.UDPConn
	r    *udpbatch.Reader
	send func(k int) error // k (at most 64) more requests
}

func (p *pipeClient) run(n, window int) (got, stalls int) {
	out := 0
	progress := time.Now()
	for got < n && time.Since(progress) < 5*time.Second { // a dead server ends it

		// Whole batches of 64 (fewer only for the last): small sends
		// would cost the client a system call for a few requests.
		for k := min(64, n-got-out); k > 0 && out+k <= window; k = min(64, n-got-out) {
			if p.send(k) != nil {
				break
			}
			out += k
		}
		_ = p.c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		k, err := p.r.Read()
		if err != nil {
			stalls++
			out = 0
			continue
		}
		got += k
		out = max(0, out-k)
		progress = time.Now()
	}
	return got, stalls
}

func newPipeClient(b *testing.B, kind string, dst netip.AddrPort) *pipeClient {
	if kind == "gso" {
		g := newGSOClient(b, dst, 64)
		return &pipeClient{c: g.c, r: g.r, send: func(k int) error { _, err := g.c.Write(g.buf[:k*g.req]); return err }}
	}
	l := newLoadClient(b)
	return &pipeClient{c: l.c, r: l.r, send: func(k int) error {
		for i := 0; i < k; i++ {
			l.w.Commit(append(l.w.Next(), l.req...), dst)
		}
		_, err := l.w.Flush()
		return err
	}}
}

func benchServerProcess(b *testing.B, client string, to, workers int) {
	cmd, socks := startServerProcess(b, workers)
	const clients, window = 8, 192
	ps := make([]*pipeClient, clients)
	for i := range ps {
		ps[i] = newPipeClient(b, client, socks[i%to])
	}
	ps[0].run(64, 64) // warm-up
	b.ResetTimer()
	start := time.Now()
	cpu0 := procCPU(cmd.Process.Pid)
	ccpu0 := cpuTime()
	var wg sync.WaitGroup
	var total, stalls atomic.Int64
	per := (b.N + clients - 1) / clients
	for _, p := range ps {
		wg.Add(1)
		go func(p *pipeClient) {
			defer wg.Done()
			got, st := p.run(per, window)
			total.Add(int64(got))
			stalls.Add(int64(st))
		}(p)
	}
	wg.Wait()
	el := time.Since(start)
	cpu := procCPU(cmd.Process.Pid) - cpu0
	ccpu := cpuTime() - ccpu0
	n := float64(total.Load())
	b.ReportMetric(n/el.Seconds(), "resp/s")
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/n, "server-cpu-ns/resp")
		b.ReportMetric(n/cpu.Seconds(), "server-resp/cpu-s")
	}
	b.ReportMetric(float64(ccpu.Nanoseconds())/n, "client-cpu-ns/resp")
	// Each stall cost its client 50 ms without answers.
	b.ReportMetric(float64(stalls.Load()), "stalls")
}
