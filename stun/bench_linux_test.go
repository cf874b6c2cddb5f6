package stun

import (
	"bufio"
	"context"
	"fmt"
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
	s, err := Listen(Options{Primary: pa, Alternate: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), pa.Port()+1), Unlimited: true})
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

// BenchmarkServerProcess runs the server in a process of its own and the
// load clients of BenchmarkServerUDP in this one, so that it can report
// the server's own CPU time per response (server-cpu-ns/resp) and what
// that makes per CPU core (server-resp/cpu-s), beside the wall-clock rate
// (resp/s) that the clients, sharing the machine, hold down.
func BenchmarkServerProcess(b *testing.B) {
	var cmd *exec.Cmd
	var addr netip.AddrPort
	for try := 0; try < 10 && cmd == nil; try++ {
		addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(20000+try*997+os.Getpid()%7000))
		c := exec.Command(os.Args[0])
		c.Env = append(os.Environ(), benchServeEnv+"="+addr.String())
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
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	socks := []netip.AddrPort{addr, netip.AddrPortFrom(addr.Addr(), addr.Port()+1),
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), addr.Port()), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), addr.Port()+1)}
	const clients = 8
	ls := make([]*loadClient, clients)
	for i := range ls {
		ls[i] = newLoadClient(b)
	}
	ls[0].round(64, addr) // warm-up
	b.ResetTimer()
	start := time.Now()
	cpu0 := procCPU(cmd.Process.Pid)
	var wg sync.WaitGroup
	var total atomic.Int64
	per := (b.N + clients - 1) / clients
	for i, l := range ls {
		wg.Add(1)
		go func(l *loadClient, dst netip.AddrPort) {
			defer wg.Done()
			got := 0
			for got < per {
				got += l.round(min(64, per-got), dst)
			}
			total.Add(int64(got))
		}(l, socks[i%len(socks)])
	}
	wg.Wait()
	el := time.Since(start)
	cpu := procCPU(cmd.Process.Pid) - cpu0
	n := float64(total.Load())
	b.ReportMetric(n/el.Seconds(), "resp/s")
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/n, "server-cpu-ns/resp")
		b.ReportMetric(n/cpu.Seconds(), "server-resp/cpu-s")
	}
}
