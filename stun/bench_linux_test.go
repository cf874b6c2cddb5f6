package stun

import (
	"bufio"
	"context"
	"encoding/binary"
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
	s, err := Listen(Options{Primary: pa, Alternate: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), pa.Port()+1), Unlimited: true, Workers: workers,
		NoOffload: os.Getenv(benchOffloadEnv) == "off"})
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

// benchWorkersEnv passes Options.Workers to the server process,
// benchOffloadEnv Options.NoOffload ("off").
const (
	benchWorkersEnv = "PORTSPACE_STUN_BENCH_WORKERS"
	benchOffloadEnv = "PORTSPACE_STUN_BENCH_OFFLOAD"
)

// startServerProcess runs a server (127.0.0.1 and 127.0.0.2, ports p and
// p+1) in a copy of this test binary and returns its process and sockets.
func startServerProcess(b *testing.B, workers int, offload string) (*exec.Cmd, []netip.AddrPort) {
	var cmd *exec.Cmd
	var addr netip.AddrPort
	for try := 0; try < 10 && cmd == nil; try++ {
		addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(20000+try*997+os.Getpid()%7000))
		c := exec.Command(os.Args[0])
		c.Env = append(os.Environ(), benchServeEnv+"="+addr.String(), benchWorkersEnv+"="+strconv.Itoa(workers), benchOffloadEnv+"="+offload)
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

// BenchmarkServerProcess runs the server in a process of its own and load
// clients in this one, so that it can report the server's own CPU time per
// response (server-cpu-ns/resp) and what that makes per CPU core
// (server-resp/cpu-s), beside the wall-clock rate of responses the clients
// received (resp/s), which the clients, sharing the machine's two cores,
// hold down. Each of 8 clients keeps 192 requests in flight (pipeClient),
// each with a transaction ID of its own, and counts an answer only when
// it is a Binding success response to one of its requests still
// outstanding; lost counts the requests never answered.
//
// Sub-benchmarks: client=mmsg sends each batch of up to 64 requests with
// sendmmsg (64 datagrams) and reads the answers one datagram per recvmmsg
// entry, as a client without offloads; client=gso sends the batch as one
// UDP GSO message on a connected socket, which the kernel splits into 64
// datagrams (or, to a server socket with UDP_GRO, hands over as one run),
// and reads with UDP_GRO, so that a run of answers the server sent as one
// GSO message arrives as one entry. to=4 spreads the 8 clients over the
// four sockets, to=1 sends them all to the primary (what a public server
// sees); workers is Options.Workers; offload=off is Options.NoOffload.
func BenchmarkServerProcess(b *testing.B) {
	for _, c := range []struct {
		client  string
		to      int
		workers int
	}{{"mmsg", 4, 1}, {"mmsg", 4, 2}, {"gso", 4, 1}, {"gso", 1, 1}, {"gso", 1, 2}, {"gso", 4, 2}} {
		for _, off := range []string{"on", "off"} {
			b.Run(fmt.Sprintf("client=%s/to=%d/workers=%d/offload=%s", c.client, c.to, c.workers, off), func(b *testing.B) {
				benchServerProcess(b, c.client, c.to, c.workers, off)
			})
		}
	}
}

// pipeClient keeps a window of requests in flight from one client socket:
// it sends more as answers arrive, so the server never waits for a
// client's round trip. Every request has a transaction ID of its own: the
// client's tag and a sequence number. A read that waits 50 ms for nothing
// is a stall (on a loaded machine, mostly a server not scheduled for that
// long): the requests still out are taken as lost, an answer to one of
// them that comes later is not counted, and the window is sent again.
type pipeClient struct {
	c    *net.UDPConn
	r    *udpbatch.Reader
	send func(reqs []byte, k int) error // k (at most 64) requests of reqSize bytes in reqs
	reqs []byte
	tag  uint32
	seq  uint64
	out  [pipeRing]uint64 // seq+1 of each request outstanding, at seq%pipeRing
}

const (
	pipeRing = 1024 // more than the window
	reqSize  = HeaderSize
)

func (p *pipeClient) fill(k int) {
	for i := 0; i < k; i++ {
		q := p.reqs[i*reqSize : (i+1)*reqSize]
		binary.BigEndian.PutUint16(q[0:], uint16(BindingRequest))
		binary.BigEndian.PutUint16(q[2:], 0)
		binary.BigEndian.PutUint32(q[4:], MagicCookie)
		binary.BigEndian.PutUint32(q[8:], p.tag)
		binary.BigEndian.PutUint64(q[12:], p.seq)
		p.out[p.seq%pipeRing] = p.seq + 1
		p.seq++
	}
}

// Answers as check sorts them.
const (
	answerOK   = iota // to a request outstanding
	answerLate        // to a request of this client no longer outstanding: taken as lost, or answered before
	answerBad         // not a Binding success response to a request of this client
)

// check sorts one answer: a Binding success response whose transaction
// ID is one of this client's requests still outstanding counts.
func (p *pipeClient) check(a []byte) int {
	if len(a) < HeaderSize || Type(binary.BigEndian.Uint16(a)) != BindingSuccess ||
		binary.BigEndian.Uint32(a[4:]) != MagicCookie || binary.BigEndian.Uint32(a[8:]) != p.tag {
		return answerBad
	}
	if l := int(binary.BigEndian.Uint16(a[2:])); l+HeaderSize != len(a) {
		return answerBad
	}
	seq := binary.BigEndian.Uint64(a[12:])
	if seq >= p.seq {
		return answerBad
	}
	if p.out[seq%pipeRing] != seq+1 {
		return answerLate
	}
	p.out[seq%pipeRing] = 0
	return answerOK
}

// run sends n more requests and returns the answers counted, the stalls,
// and the answers that did not count: late (to requests taken as lost, or
// answered twice; also the warm-up's) and bad.
func (p *pipeClient) run(n, window int) (got, stalls, late, bad int) {
	out := 0
	progress := time.Now()
	end := int(p.seq) + n
	for int(p.seq) < end || out > 0 {
		if time.Since(progress) > 5*time.Second { // a dead server ends it
			break
		}
		// Whole batches of 64 (fewer only for the last): small sends
		// would cost the client a system call for a few requests.
		for k := min(64, end-int(p.seq)); k > 0 && out+k <= window; k = min(64, end-int(p.seq)) {
			p.fill(k)
			if p.send(p.reqs, k) != nil {
				break
			}
			out += k
		}
		_ = p.c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		m, err := p.r.Read()
		if err != nil {
			stalls++
			for s := p.seq - min(p.seq, pipeRing); s < p.seq; s++ {
				p.out[s%pipeRing] = 0 // lost
			}
			out = 0
			continue
		}
		for i := 0; i < m; i++ {
			d, _ := p.r.Msg(i)
			seg := p.r.Seg(i)
			for len(d) > 0 {
				var a []byte
				a, d = udpbatch.Next(d, seg)
				switch p.check(a) {
				case answerOK:
					got++
					out--
				case answerLate:
					late++
				default:
					bad++
				}
			}
		}
		progress = time.Now()
	}
	return got, stalls, late, bad
}

func newPipeClient(b *testing.B, kind string, dst netip.AddrPort, tag uint32) *pipeClient {
	p := &pipeClient{reqs: make([]byte, 64*reqSize), tag: tag}
	if kind == "gso" {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			b.Fatal(err)
		}
		_ = c.SetReadBuffer(4 << 20)
		b.Cleanup(func() { c.Close() })
		rc, _ := c.SyscallConn()
		var serr error
		_ = rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, reqSize) })
		if serr != nil {
			b.Skipf("UDP_SEGMENT: %v", serr)
		}
		if err := udpbatch.EnableGRO(c); err != nil {
			b.Skip(err)
		}
		if p.r, err = udpbatch.NewReader(c, 16, udpbatch.MaxCoalesced); err != nil {
			b.Skip(err)
		}
		p.c = c
		p.send = func(reqs []byte, k int) error { _, err := c.Write(reqs[:k*reqSize]); return err }
		return p
	}
	l := newLoadClient(b)
	p.c, p.r = l.c, l.r
	p.send = func(reqs []byte, k int) error {
		for i := 0; i < k; i++ {
			l.w.Commit(append(l.w.Next(), reqs[i*reqSize:(i+1)*reqSize]...), dst)
		}
		_, err := l.w.Flush()
		return err
	}
	return p
}

func benchServerProcess(b *testing.B, client string, to, workers int, offload string) {
	cmd, socks := startServerProcess(b, workers, offload)
	const clients, window = 8, 192
	ps := make([]*pipeClient, clients)
	for i := range ps {
		ps[i] = newPipeClient(b, client, socks[i%to], uint32(i+1))
	}
	ps[0].run(64, 64) // warm-up
	b.ResetTimer()
	start := time.Now()
	cpu0 := procCPU(cmd.Process.Pid)
	ccpu0 := cpuTime()
	var wg sync.WaitGroup
	var total, stalls, late, bad atomic.Int64
	per := (b.N + clients - 1) / clients
	for _, p := range ps {
		wg.Add(1)
		go func(p *pipeClient) {
			defer wg.Done()
			got, st, lt, bd := p.run(per, window)
			total.Add(int64(got))
			stalls.Add(int64(st))
			late.Add(int64(lt))
			bad.Add(int64(bd))
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
	// Requests without an answer within the 50 ms of a stall (late:
	// those answered after it).
	b.ReportMetric(float64(per*clients)-n, "lost")
	b.ReportMetric(float64(late.Load()), "late")
	if bad.Load() > 0 {
		b.Errorf("%d answers that are no Binding success response to a request of their client", bad.Load())
	}
}
