package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/portspace/portspace/lease"
)

// BenchmarkSOCKSSetup is the setup phase of "portspace bench proxy" in one
// process: each operation opens a SOCKS5 CONNECT tunnel through a server
// dialing from a leased slice of 127.0.0.1 (in the ephemeral range, as the
// command's pool) to an origin that writes one byte and closes, reads the
// byte and the end of stream, and closes. Its CPU profile (-cpuprofile) and
// allocation counts (-benchmem) include the client and the origin; the
// server's share is under (*Server).worker and relayAsync.
func BenchmarkSOCKSSetup(b *testing.B) {
	pools := []lease.Pool{{Name: "bench", Addrs: []netip.Addr{lo1}, Ports: rangePorts(33000, 52999), Slice: 5000, Quarantine: time.Second}}
	st, err := lease.OpenBolt(context.Background(), filepath.Join(b.TempDir(), "leases.db"), lease.BoltOptions{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if err := st.Apply(context.Background(), pools); err != nil {
		b.Fatal(err)
	}
	cfg, err := ParseConfig("bench.yaml", []byte("destinations: {allow: [127.0.0.10/32]}\ntimeouts: {idle: 10m}\n"))
	if err != nil {
		b.Fatal(err)
	}
	eg := &LeaseEgress{Store: st, Holder: "bench", Pools: pools}
	srv, err := NewServer(cfg, eg, Options{})
	if err != nil {
		b.Fatal(err)
	}
	lc := net.ListenConfig{KeepAlive: -1} // as Server.Listen
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	oln, err := net.Listen("tcp", "127.0.0.10:0")
	if err != nil {
		b.Fatal(err)
	}
	defer oln.Close()
	go func() {
		for {
			c, err := oln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte{'x'})
			c.Close()
		}
	}()
	dst := oln.Addr().(*net.TCPAddr).AddrPort().Addr().As4()
	port := oln.Addr().(*net.TCPAddr).AddrPort().Port()
	req := []byte{5, 1, 0, 1, dst[0], dst[1], dst[2], dst[3], byte(port >> 8), byte(port)}
	proxyAddr := ln.Addr().String()
	b.SetParallelism(8)
	cpu0 := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var buf [10]byte
		for pb.Next() {
			c, err := net.Dial("tcp", proxyAddr)
			if err != nil {
				b.Error(err)
				return
			}
			c.Write([]byte{5, 1, 0})
			if _, err := io.ReadFull(c, buf[:2]); err != nil {
				b.Error(err)
				c.Close()
				return
			}
			c.Write(req)
			if _, err := io.ReadFull(c, buf[:10]); err != nil || buf[1] != 0 {
				b.Error("reply", buf, err)
				c.Close()
				return
			}
			if _, err := io.ReadFull(c, buf[:1]); err != nil {
				b.Error(err)
			}
			c.Read(buf[:1])
			c.Close()
		}
	})
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}

// processCPU is the process's user and system time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
