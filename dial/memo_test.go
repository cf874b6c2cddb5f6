package dial

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/tuple"
)

// fakeClock is the memo's clock in tests: it moves only when told.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock           { return &fakeClock{t: time.Unix(1e9, 0)} }
func markTaken(s *selector, k holdKey, idx, size uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.markTakenLocked(k, idx, size)
}

// walk runs one search to its end, calling fail on each picked index (the
// attempt fails), and returns the picked indices in order.
func walk(s *selector, k holdKey, size uint32) []uint32 {
	sr := search{key: k, size: size}
	var got []uint32
	for {
		idx, ok := s.pick(&sr)
		if !ok {
			return got
		}
		got = append(got, idx)
		s.settleTaken(&sr, idx)
	}
}

func sorted(xs []uint32) []uint32 { s := slices.Clone(xs); slices.Sort(s); return s }

// TestMemoOrder checks the three passes of a search: unmemoised indices
// first, then the older memo generation, then the newer one; and that a
// search that finds nothing has tried every index.
func TestMemoOrder(t *testing.T) {
	s := newSelector()
	clk := newFakeClock()
	s.now = clk.now
	k := holdKey{proto: tuple.TCP, src: netip.MustParseAddr("127.0.0.1"), dst: netip.MustParseAddrPort("127.0.1.1:80")}
	const size = 10
	for i := range uint32(8) {
		markTaken(s, k, i, size)
	}
	clk.add(memoTTL / 2) // 0..7 move to the older generation
	markTaken(s, k, 8, size)
	got := walk(s, k, size)
	if len(got) != 10 {
		t.Fatalf("search picked %v, want each of 10 indices once (9; 0-7; 8)", got)
	}
	if got[0] != 9 {
		t.Fatalf("first pick %d, want the only unmemoised index 9", got[0])
	}
	if !slices.Equal(sorted(got[1:9]), []uint32{0, 1, 2, 3, 4, 5, 6, 7}) {
		t.Fatalf("picks 2-9 are %v, want the older generation 0-7", got[1:9])
	}
	if got[9] != 8 {
		t.Fatalf("last pick %d, want the newer generation's 8", got[9])
	}
	if s.holding(k) != 0 || len(s.held) != 0 {
		t.Fatal("failed attempts left reservations behind")
	}
	for i := range uint32(size) {
		if !s.memoised(k, i) {
			t.Fatalf("index %d found taken is not memoised", i)
		}
	}
}

// TestMemoExpiry checks that a mark lives more than memoTTL/2 and at most
// memoTTL, and that a success on a memoised index clears it.
func TestMemoExpiry(t *testing.T) {
	s := newSelector()
	clk := newFakeClock()
	s.now = clk.now
	k := holdKey{proto: tuple.UDP, src: netip.MustParseAddr("127.0.0.1"), dst: netip.MustParseAddrPort("127.0.1.1:53")}
	markTaken(s, k, 3, 10)
	clk.add(memoTTL/2 + time.Millisecond)
	if !s.memoised(k, 3) {
		t.Fatal("mark expired before memoTTL/2")
	}
	sr := search{key: k, size: 10}
	idx, _ := s.pick(&sr)
	if idx == 3 {
		t.Fatal("first pick is the memoised index")
	}
	s.settle(&sr, idx, false)
	clk.add(memoTTL / 2)
	if s.memoised(k, 3) {
		t.Fatal("mark lives longer than memoTTL")
	}

	markTaken(s, k, 5, 10)
	sr = search{key: k, size: 10}
	if !s.reserve(&sr, 5) {
		t.Fatal("reserve failed")
	}
	s.settle(&sr, 5, true)
	if s.memoised(k, 5) {
		t.Fatal("index held by this Dialer is still memoised as taken by others")
	}
}

// TestMemoReprobe checks that a search re-probes at most memoReprobe
// stale indices in its first pass, retries the rest before giving up, and
// tries no index twice.
func TestMemoReprobe(t *testing.T) {
	s := newSelector()
	clk := newFakeClock()
	s.now = clk.now
	k := holdKey{proto: tuple.TCP, src: netip.MustParseAddr("127.0.0.1"), dst: netip.MustParseAddrPort("127.0.1.1:80")}
	const size = 20
	for i := range uint32(size) {
		markTaken(s, k, i, size)
	}
	clk.add(memoTTL)
	sr := search{key: k, size: size}
	var first, all []uint32
	for {
		idx, ok := s.pick(&sr)
		if !ok {
			break
		}
		if sr.pass == 0 {
			first = append(first, idx)
		}
		all = append(all, idx)
		s.settleTaken(&sr, idx)
	}
	if len(first) != memoReprobe {
		t.Fatalf("first pass re-probed %v, want %d stale indices", first, memoReprobe)
	}
	if got := slices.Compact(sorted(all)); len(all) != size || len(got) != size {
		t.Fatalf("search tried %v, want each of %d indices once", all, size)
	}
}

// TestMemoBounded checks that the memo keeps at most its budget of
// destinations.
func TestMemoBounded(t *testing.T) {
	s := newSelector()
	const size = 1 << 16
	limit := memoBudget / (24 * (size / 64))
	for i := range 4 * limit {
		k := holdKey{proto: tuple.TCP, src: netip.MustParseAddr("127.0.0.1"), dst: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), 80)}
		markTaken(s, k, uint32(i), size)
	}
	if len(s.taken) > limit {
		t.Fatalf("%d destinations memoised, budget %d", len(s.taken), limit)
	}
}

// TestMemoSelectAllocs pins the selection step toward a destination with a
// memo at zero allocations.
func TestMemoSelectAllocs(t *testing.T) {
	s := newSelector()
	for _, size := range []uint32{1000, 60000} {
		k := holdKey{proto: tuple.TCP, src: netip.MustParseAddr("127.0.0.1"), dst: netip.AddrPortFrom(netip.MustParseAddr("127.0.1.1"), uint16(size))}
		for i := range uint32(900) {
			markTaken(s, k, i*size/1000, size)
		}
		first := search{key: k, size: size} // a held index keeps the hold set
		held, _ := s.pick(&first)
		s.settle(&first, held, true)
		allocs := testing.AllocsPerRun(1000, func() {
			sr := search{key: k, size: size}
			idx, ok := s.pick(&sr)
			if !ok {
				panic("no index")
			}
			s.settle(&sr, idx, false)
		})
		if allocs != 0 {
			t.Errorf("size %d: port selection with a memo allocates %.1f times per dial", size, allocs)
		}
		s.release(k, held)
	}
}

// TestSearchOtherHolder runs the Search strategy against a port set that
// another Dialer (as another process would) holds toward the destination:
// the memo makes later dials skip the taken ports without a syscall,
// exhaustion stays exact, a port the other holder releases is found again,
// and an expired memo lets the ports be tried again.
func TestSearchOtherHolder(t *testing.T) {
	for _, network := range []string{"tcp", "udp"} {
		t.Run(network, func(t *testing.T) {
			if !netnstest.InNetNS(t) {
				return
			}
			var port uint16
			if network == "udp" {
				port = uint16(udpSink(t, false).LocalAddr().(*net.UDPAddr).Port)
			} else {
				port = tcpSink(t, false)
			}
			dst := netip.AddrPortFrom(v4dst(1), port).String()
			src := v4src(1)
			ports := tuple.MustParsePortSet("20000-20009")
			// The cooperative lock: under UDPLockOwner another Dialer's
			// ports are busy (EADDRINUSE), not taken toward one destination.
			holder := &Dialer{Sources: []netip.Addr{src}, Ports: ports, Strategy: Search, UDPLock: UDPLockFile}
			d := &Dialer{Sources: []netip.Addr{src}, Ports: ports, Strategy: Search, UDPLock: UDPLockFile}
			st := d.init()
			if st.udp.err != nil && network == "udp" {
				t.Fatalf("the forced Search strategy cannot dial UDP here: %v", st.udp.err)
			}
			clk := newFakeClock()
			st.sel.now = clk.now
			drop := func(c net.Conn) {
				if network == "tcp" {
					closeRST(c) // no TIME_WAIT: the 4-tuple is free at once
				} else {
					c.Close()
				}
			}
			dial := func() (net.Conn, uint64, error) {
				before := st.tries.Load()
				c, err := d.Dial(network, dst)
				return c, st.tries.Load() - before, err
			}

			// The other holder takes all ten ports, then frees one.
			var held []net.Conn
			defer func() { closeAll(held) }()
			for range ports.Len() {
				c, err := holder.Dial(network, dst)
				if err != nil {
					t.Fatalf("holder: %v", err)
				}
				held = append(held, c)
			}
			// The freed port is the last of d's walk from its keyed-hash
			// start, so the first dial tries all ten ports.
			proto := tuple.TCP
			if network == "udp" {
				proto = tuple.UDP
			}
			key := holdKey{proto: proto, src: src, dst: netip.MustParseAddrPort(dst)}
			last := (uint32(st.sel.offset(key)%10) + 9) % 10
			free, _ := ports.Nth(int(last))
			i := slices.IndexFunc(held, func(c net.Conn) bool { return fourTuple(c)[0].Port() == free })
			drop(held[i])
			held = slices.Delete(held, i, i+1)

			c1, tries1, err := dial()
			if err != nil {
				t.Fatalf("dial 1: %v", err)
			}
			if got := fourTuple(c1)[0].Port(); got != free || tries1 != 10 {
				t.Fatalf("dial 1 got port %d after %d tries, want the free %d after 10", got, tries1, free)
			}
			// Every port is taken now (9 by the holder, 1 by d): exact
			// exhaustion, after trying each port the memo had skipped.
			c, tries, err := dial()
			if !errors.Is(err, ErrExhausted) {
				if c != nil {
					c.Close()
				}
				t.Fatalf("dial with every port taken: %v, want ErrExhausted", err)
			}
			if tries != 9 {
				t.Fatalf("exhausted after %d tries, want each of the holder's 9 ports tried once", tries)
			}
			// All nine are memoised now: the next dial makes one try.
			drop(c1)
			c2, tries2, err := dial()
			if err != nil {
				t.Fatalf("dial 2: %v", err)
			}
			if tries2 != 1 {
				t.Fatalf("dial with 9 ports memoised made %d tries, want 1", tries2)
			}
			// After memoTTL the marks are stale: the dial re-probes
			// memoReprobe of them, then passes over the rest.
			drop(c2)
			clk.add(memoTTL)
			c3, tries3, err := dial()
			if err != nil {
				t.Fatalf("dial 3: %v", err)
			}
			if tries3 != memoReprobe+1 {
				t.Fatalf("dial after the marks expired made %d tries, want %d re-probes and the free port", tries3, memoReprobe)
			}
			defer c3.Close()
			// The holder releases a (memoised) port: the search finds it
			// before it would report exhaustion.
			c, _, err = dial() // memoises all nine again
			if !errors.Is(err, ErrExhausted) {
				if c != nil {
					c.Close()
				}
				t.Fatalf("dial with every port taken: %v, want ErrExhausted", err)
			}
			released := fourTuple(held[0])[0].Port()
			drop(held[0])
			held = held[1:]
			c4, _, err := dial()
			if err != nil {
				t.Fatalf("dial after the holder released port %d: %v", released, err)
			}
			defer c4.Close()
			if got := fourTuple(c4)[0].Port(); got != released {
				t.Fatalf("got port %d, want the released %d", got, released)
			}
		})
	}
}

// TestSearchMemoProgress checks that a search cut short by MaxAttempts
// memoises what it tried, so that repeated dials reach a free port of a set
// mostly held by another Dialer.
func TestSearchMemoProgress(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	dst := netip.AddrPortFrom(v4dst(1), tcpSink(t, false)).String()
	src := v4src(1)
	ports := tuple.MustParsePortSet("20000-20009")
	holder := &Dialer{Sources: []netip.Addr{src}, Ports: ports, Strategy: Search}
	var held []net.Conn
	defer func() { closeAll(held) }()
	for range ports.Len() {
		c, err := holder.Dial("tcp", dst)
		if err != nil {
			t.Fatalf("holder: %v", err)
		}
		held = append(held, c)
	}
	closeRST(held[6])
	held = slices.Delete(held, 6, 7)
	d := &Dialer{Sources: []netip.Addr{src}, Ports: ports, Strategy: Search, MaxAttempts: 2}
	for i := range 5 {
		c, err := d.Dial("tcp", dst)
		if err == nil {
			c.Close()
			return
		}
		if !errors.Is(err, ErrExhausted) {
			t.Fatalf("dial %d: %v", i+1, err)
		}
	}
	t.Fatal("5 dials of 2 tries each did not reach the one free port of 10")
}
