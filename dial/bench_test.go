package dial

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/tuple"
)

// The benchmarks run on loopback in the current namespace (no root needed):
// the client source is 127.0.0.1, destinations are listeners on 127.0.0.x.

// benchRanges returns a 1000-port range inside the namespace's ephemeral
// range (Auto picks Kernel for TCP) and one outside it (Search).
func benchRanges(b *testing.B) (inside, outside tuple.PortSet) {
	eph, err := netsys.EphemeralRange()
	if err != nil {
		b.Skip(err)
	}
	if int(eph.Hi)-int(eph.Lo) < 3000 {
		b.Skipf("ephemeral range %d-%d is too small", eph.Lo, eph.Hi)
	}
	inside = tuple.PortSetOf(tuple.PortRangeFrom(eph.Hi-1999, eph.Hi-1000))
	if eph.Hi <= 64000 {
		outside = tuple.PortSetOf(tuple.PortRangeFrom(eph.Hi+1, eph.Hi+1000))
	} else {
		outside = tuple.PortSetOf(tuple.PortRangeFrom(eph.Lo-1000, eph.Lo-1))
	}
	return inside, outside
}

// closeRST closes a TCP conn with an RST, leaving no TIME_WAIT behind, so
// that a benchmark's churn does not fill the port space.
func closeRST(c net.Conn) {
	switch c := c.(type) {
	case *net.TCPConn:
		c.SetLinger(0)
	case *TCPConn:
		c.SetLinger(0)
	}
	c.Close()
}

var loopback = netip.MustParseAddr("127.0.0.1")

// BenchmarkDialTCP measures the Dialer's connect rate against a plain
// net.Dialer bound to the same source with port 0, interleaved in the same
// loop (alternating which goes first) so that both see the same machine
// load. rate-vs-plain is plain time
// over Dialer time (target >= 0.9 for the Auto strategy).
func BenchmarkDialTCP(b *testing.B) {
	inside, outside := benchRanges(b)
	for _, bc := range []struct {
		name  string
		ports tuple.PortSet
		s     Strategy
	}{
		{"auto-kernel-range", inside, Auto},
		{"auto-no-ports", tuple.PortSet{}, Auto},
		{"search", outside, Auto},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dst := holdListener(b, "tcp4", "127.0.0.1:0").String()
			plain := &net.Dialer{LocalAddr: &net.TCPAddr{IP: loopback.AsSlice()}}
			d := &Dialer{Sources: []netip.Addr{loopback}, Ports: bc.ports, Strategy: bc.s}
			warmUp(b, plain, d, "tcp4", dst)
			tPlain, tOurs := interleave(b, plain.Dial, d.Dial, "tcp4", dst)
			reportRate(b, tPlain, tOurs)
		})
	}
}

// reportRate reports the Dialer's and the plain dialer's median dial times
// and rate-vs-plain, the plain median over the Dialer's (medians, because
// on a shared machine a few descheduled dials dominate a mean), and the
// same ratio from the means (mean-rate-vs-plain).
func reportRate(b *testing.B, plain, ours []time.Duration) {
	pp, po := median(plain), median(ours)
	b.ReportMetric(float64(po.Nanoseconds()), "p50-dial-ns")
	b.ReportMetric(float64(pp.Nanoseconds()), "p50-plain-dial-ns")
	b.ReportMetric(float64(pp)/float64(po), "rate-vs-plain")
	b.ReportMetric(float64(sum(plain))/float64(sum(ours)), "mean-rate-vs-plain")
}

// warmUp dials once with each dialer before timing, so that the Dialer's
// first-dial work (capability probes, sysctl reads) is not measured.
func warmUp(b *testing.B, plain *net.Dialer, d *Dialer, network, dst string) {
	for _, dial := range []func(string, string) (net.Conn, error){plain.Dial, d.Dial} {
		c, err := dial(network, dst)
		if err != nil {
			b.Fatal(err)
		}
		closeRST(c)
	}
}

func sum(ds []time.Duration) (t time.Duration) {
	for _, d := range ds {
		t += d
	}
	return t
}

// BenchmarkDialUDP compares a Search-strategy UDP dial with a plain
// net.Dialer bound to the same source with port 0, for each UDPLock: the
// cooperative lock (bind, sock_diag lookup, connect) with lock files or
// with the in-flight dump, and the registry (a byte lock per 4-tuple, no
// sock_diag). Each conn is closed before the next dial, so file and dump
// find their port free and bind exclusively (exclusive/dial near 1); in
// file-shared and dump-shared every port already carries a conn toward
// another destination, so every dial runs the cooperative lock
// (exclusive/dial 0). owner is the port-ownership lock: its exclusive bind
// on a free port, and in owner-shared its SO_REUSEPORT window beside the
// port's other socket.
func BenchmarkDialUDP(b *testing.B) {
	_, outside := benchRanges(b)
	if !netsys.Probe().UDPDiag {
		b.Skip("no sock_diag UDP lookup")
	}
	sink, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	dst := sink.LocalAddr().String()
	other, err := net.ListenPacket("udp4", "127.0.0.2:0")
	if err != nil {
		b.Fatal(err)
	}
	defer other.Close()
	for _, bc := range []struct {
		lock   UDPLock
		shared bool
	}{
		{UDPLockFile, false}, {UDPLockFile, true}, {UDPLockDump, false}, {UDPLockDump, true}, {UDPLockRegistry, false},
		{UDPLockOwner, false}, {UDPLockOwner, true},
	} {
		name := bc.lock.String()
		if bc.shared {
			name += "-shared"
		}
		b.Run(name, func(b *testing.B) {
			plain := &net.Dialer{LocalAddr: &net.UDPAddr{IP: loopback.AsSlice()}}
			d := &Dialer{Sources: []netip.Addr{loopback}, Ports: outside, UDPLock: bc.lock, LockDir: b.TempDir()}
			if bc.shared {
				// Every port already carries a conn toward another
				// destination, so each measured dial shares its port
				// (the cooperative lock, not the exclusive bind).
				// Until exhausted: on a shared host a few ports of the set
				// may be held by other programs (the search skips them).
				var held []net.Conn
				for range outside.Len() + 1 {
					c, err := d.Dial("udp4", other.LocalAddr().String())
					if errors.Is(err, ErrExhausted) {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					held = append(held, c)
				}
				if len(held) < outside.Len()/2 {
					b.Fatalf("only %d of %d ports usable", len(held), outside.Len())
				}
				defer closeAll(held)
			}
			warmUp(b, plain, d, "udp4", dst)
			excl := d.st.exclusive.Load()
			tPlain, tOurs := interleave(b, plain.Dial, d.Dial, "udp4", dst)
			reportRate(b, tPlain, tOurs)
			b.ReportMetric(float64(d.st.exclusive.Load()-excl)/float64(len(tOurs)), "exclusive/dial")
		})
	}
}

// interleave times one dial with each dialer per iteration, alternating
// which goes first, and closes each conn with closeRST.
func interleave(b *testing.B, plain, ours func(string, string) (net.Conn, error), network, dst string) (tPlain, tOurs []time.Duration) {
	timed := func(dial func(string, string) (net.Conn, error)) time.Duration {
		t0 := time.Now()
		c, err := dial(network, dst)
		dt := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		closeRST(c)
		return dt
	}
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			tPlain = append(tPlain, timed(plain))
			tOurs = append(tOurs, timed(ours))
		} else {
			tOurs = append(tOurs, timed(ours))
			tPlain = append(tPlain, timed(plain))
		}
	}
	return tPlain, tOurs
}

// BenchmarkConnectLatencyFill measures the p50 connect latency toward a
// destination whose port set is 95% held (950 of 1000 ports, or of those
// not held by other programs; the free ones scattered at random) against a
// destination with none held, in the same loop. full/empty is the ratio of
// the two medians (target <= 1.5 for Search, the strategy the Dialer
// implements itself). In search and kernel the measuring Dialer holds the
// 950 connections itself; in search-other-holder another Dialer (as another
// process would) holds them, so the search learns them as it meets them
// (one bind and connect each) and its taken-port memo then skips them
// without a syscall; its MaxAttempts covers the set so that no dial of the
// cold start ends exhausted.
func BenchmarkConnectLatencyFill(b *testing.B) {
	inside, outside := benchRanges(b)
	for _, bc := range []struct {
		name  string
		ports tuple.PortSet
		s     Strategy
		other bool
	}{
		{"search", outside, Search, false},
		{"kernel", inside, Kernel, false},
		{"search-other-holder", outside, Search, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			full := holdListener(b, "tcp4", "127.0.0.2:0").String()
			empty := holdListener(b, "tcp4", "127.0.0.3:0").String()
			d := &Dialer{Sources: []netip.Addr{loopback}, Ports: bc.ports, Strategy: bc.s}
			holder := d
			if bc.other {
				d.MaxAttempts = bc.ports.Len()
				holder = &Dialer{Sources: []netip.Addr{loopback}, Ports: bc.ports, Strategy: bc.s}
			}
			// Fill until exhausted: on a shared host a few ports of the set
			// may be held by other programs' listeners.
			fill := make([]net.Conn, 0, bc.ports.Len())
			for range bc.ports.Len() + 1 {
				c, err := holder.Dial("tcp4", full)
				if errors.Is(err, ErrExhausted) {
					break
				}
				if err != nil {
					b.Fatalf("filling: %v", err)
				}
				fill = append(fill, c)
			}
			n := len(fill)
			if n < bc.ports.Len()/2 {
				b.Fatalf("only %d of %d ports usable", n, bc.ports.Len())
			}
			rng := rand.New(rand.NewPCG(1, 2))
			rng.Shuffle(len(fill), func(i, j int) { fill[i], fill[j] = fill[j], fill[i] })
			for _, c := range fill[:n/20] {
				closeRST(c)
			}
			defer closeAll(fill[n/20:])
			var tFull, tEmpty []time.Duration
			for b.Loop() {
				t0 := time.Now()
				c, err := d.Dial("tcp4", empty)
				t1 := time.Now()
				if err != nil {
					b.Fatal(err)
				}
				closeRST(c)
				t2 := time.Now()
				c, err = d.Dial("tcp4", full)
				t3 := time.Now()
				if err != nil {
					b.Fatal(err)
				}
				closeRST(c)
				tEmpty = append(tEmpty, t1.Sub(t0))
				tFull = append(tFull, t3.Sub(t2))
			}
			pe, pf := median(tEmpty), median(tFull)
			b.ReportMetric(float64(pe.Nanoseconds()), "p50-empty-ns")
			b.ReportMetric(float64(pf.Nanoseconds()), "p50-full-ns")
			b.ReportMetric(float64(pf)/float64(pe), "full/empty")
		})
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkSelect measures the port-selection step alone (pick and settle
// toward a destination with ports held); it must not allocate.
func BenchmarkSelect(b *testing.B) {
	s := newSelector()
	k := holdKey{proto: tuple.TCP, src: loopback, dst: netip.MustParseAddrPort("127.0.0.2:443")}
	const size = 1000
	for range 950 {
		sr := search{key: k, size: size}
		idx, _ := s.pick(&sr)
		s.settle(&sr, idx, true)
	}
	b.ReportAllocs()
	for b.Loop() {
		sr := search{key: k, size: size}
		idx, ok := s.pick(&sr)
		if !ok {
			b.Fatal("no free index")
		}
		s.settle(&sr, idx, false)
	}
}

// BenchmarkConnCleanup is a Search conn's wrapper made and released as a
// Close releases it (no socket): with the dropped-conn cleanup stopped at
// release, 0.7-1.1 µs per conn; left armed (before releaser.release
// stopped it), 2.0-2.8 µs.
func BenchmarkConnCleanup(b *testing.B) {
	sel := newSelector()
	tc := &net.TCPConn{}
	b.ReportAllocs()
	for b.Loop() {
		c := newTCPConn(tc, sel, holdKey{}, 0)
		c.rel.release()
	}
}
