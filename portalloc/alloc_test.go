package portalloc

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/tuple"
)

var (
	t0     = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	sub1   = netip.MustParseAddr("10.0.0.1")
	sub2   = netip.MustParseAddr("10.0.0.2")
	remote = netip.MustParseAddrPort("192.0.2.1:443")
	ext1   = netip.MustParseAddr("198.51.100.1")
	ext2   = netip.MustParseAddr("198.51.100.2")
)

func mustNew(t testing.TB, cfg Config) *Allocator {
	t.Helper()
	if cfg.Addrs == nil && cfg.Deterministic == nil {
		cfg.Addrs = []netip.Addr{ext1}
	}
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestFillEveryAlgorithm: with each algorithm, a pool of 200 ports hands out
// 200 distinct ports, then reports ErrExhausted (RFC 4787 REQ-3: no
// overloading), and a Put port can be had again.
func TestFillEveryAlgorithm(t *testing.T) {
	for alg := KeyedHash; alg <= Sequential; alg++ {
		t.Run(alg.String(), func(t *testing.T) {
			a := mustNew(t, Config{Algorithm: alg, Ports: tuple.PortSetOf(tuple.PortRangeFrom(5000, 5099), tuple.PortRangeFrom(6000, 6099))})
			seen := map[uint16]bool{}
			for i := 0; i < 200; i++ {
				r := netip.AddrPortFrom(remote.Addr(), uint16(i))
				l, err := a.Get(sub1, 40000, r, t0)
				if err != nil {
					t.Fatalf("Get %d: %v", i, err)
				}
				p := l.Ext.Port()
				if seen[p] || !(p >= 5000 && p < 5100 || p >= 6000 && p < 6100) {
					t.Fatalf("Get %d: port %d repeated or outside the pool", i, p)
				}
				seen[p] = true
			}
			if _, err := a.Get(sub1, 40000, remote, t0); !errors.Is(err, ErrExhausted) {
				t.Fatalf("Get on a full pool: %v, want ErrExhausted", err)
			}
			if _, err := a.Put(sub1, netip.AddrPortFrom(ext1, 6042), t0); err != nil {
				t.Fatal(err)
			}
			if l, err := a.Get(sub1, 40000, remote, t0); err != nil || l.Ext.Port() != 6042 {
				t.Fatalf("Get after Put = %v, %v; want port 6042", l, err)
			}
		})
	}
}

// TestKeyedHashSpread: Algorithm 3 gives different destinations different
// starting points but successive ports to one destination (RFC 6056 §3.3.3).
func TestKeyedHashSpread(t *testing.T) {
	a := mustNew(t, Config{})
	l1, _ := a.Get(sub1, 40000, remote, t0)
	l2, _ := a.Get(sub1, 40000, remote, t0)
	if l2.Ext.Port() != l1.Ext.Port()+1 {
		t.Errorf("same destination: %d then %d, want consecutive", l1.Ext.Port(), l2.Ext.Port())
	}
	other := 0
	for i := 0; i < 8; i++ {
		l, _ := a.Get(sub1, 40000, netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 443), t0)
		if d := int(l.Ext.Port()) - int(l2.Ext.Port()); d < -100 || d > 100 {
			other++
		}
	}
	if other < 6 {
		t.Errorf("only %d of 8 other destinations started far away", other)
	}
}

func TestPreserveParityClass(t *testing.T) {
	a := mustNew(t, Config{Preserve: true, Parity: true})
	l, err := a.Get(sub1, 40000, remote, t0)
	if err != nil || l.Ext.Port() != 40000 {
		t.Fatalf("preserve: %v %v", l, err)
	}
	for i := 0; i < 50; i++ {
		l, err = a.Get(sub2, 40000, remote, t0) // 40000 is taken now
		if err != nil || l.Ext.Port()%2 != 0 || l.Ext.Port() < 1024 || l.Ext.Port() == 40000 {
			t.Fatalf("parity/class of even high port (40000 is taken): %v %v", l, err)
		}
		l, err = a.Get(sub2, 40001+2*uint16(i), remote, t0)
		if err != nil || l.Ext.Port()%2 != 1 {
			t.Fatalf("parity of odd port: %v %v", l, err)
		}
	}
	a = mustNew(t, Config{})
	for i := 0; i < 50; i++ {
		l, err = a.Get(sub1, 123, remote, t0)
		if err != nil || l.Ext.Port() >= 1024 || l.Ext.Port() == 0 {
			t.Fatalf("class 0-1023 not kept: %v %v", l, err)
		}
	}
	a = mustNew(t, Config{Ports: tuple.PortSetOf(tuple.PortRangeFrom(1024, 2047))})
	if l, err = a.Get(sub1, 123, remote, t0); err != nil || l.Ext.Port() < 1024 {
		t.Fatalf("low port without a low class: %v %v", l, err)
	}
}

func TestPooling(t *testing.T) {
	a := mustNew(t, Config{Addrs: []netip.Addr{ext1, ext2, netip.MustParseAddr("198.51.100.3")}})
	addrs := map[netip.Addr]bool{}
	for i := 0; i < 100; i++ {
		l, err := a.Get(sub1, uint16(30000+i), netip.AddrPortFrom(remote.Addr(), uint16(i)), t0)
		if err != nil {
			t.Fatal(err)
		}
		addrs[l.Ext.Addr()] = true
	}
	if len(addrs) != 1 {
		t.Fatalf("paired pooling used %d addresses", len(addrs))
	}
	a = mustNew(t, Config{Addrs: []netip.Addr{ext1, ext2, netip.MustParseAddr("198.51.100.3")}, Pooling: Arbitrary})
	addrs = map[netip.Addr]bool{}
	for i := 0; i < 100; i++ {
		l, _ := a.Get(sub1, uint16(30000+i), netip.AddrPortFrom(remote.Addr(), uint16(i)), t0)
		addrs[l.Ext.Addr()] = true
	}
	if len(addrs) < 2 {
		t.Fatalf("arbitrary pooling used %d addresses", len(addrs))
	}
}

// TestQuarantine: a freed port stays out of use for the quarantine
// (RFC 6888 REQ-8) and comes back after it.
func TestQuarantine(t *testing.T) {
	a := mustNew(t, Config{Quarantine: 120 * time.Second, Ports: tuple.PortSetOf(tuple.PortRangeFrom(2000, 2001))})
	l1, _ := a.Get(sub1, 2000, remote, t0)
	l2, _ := a.Get(sub1, 2000, remote, t0)
	if _, err := a.Put(sub1, l1.Ext, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Get(sub2, 2000, remote, t0.Add(119*time.Second)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("port reused inside the quarantine: %v", err)
	}
	l, err := a.Get(sub2, 2000, remote, t0.Add(120*time.Second))
	if err != nil || l.Ext != l1.Ext {
		t.Fatalf("after the quarantine: %v %v, want %v", l, err, l1.Ext)
	}
	_ = l2
}

func TestLimits(t *testing.T) {
	a := mustNew(t, Config{MaxPorts: 3})
	for i := 0; i < 3; i++ {
		if _, err := a.Get(sub1, 40000, remote, t0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Get(sub1, 40000, remote, t0); !errors.Is(err, ErrLimit) {
		t.Fatalf("4th port: %v, want ErrLimit", err)
	}
	if _, err := a.Get(sub2, 40000, remote, t0); err != nil {
		t.Fatalf("other subscriber: %v", err)
	}
	if n, _ := a.Subscriber(sub1); n != 3 {
		t.Fatalf("subscriber holds %d ports", n)
	}
}

// TestBlocks: ports come in per-subscriber blocks (RFC 6888 REQ-4); a block
// is reported when allocated and when its last port is freed; MaxBlocks
// limits a subscriber.
func TestBlocks(t *testing.T) {
	a := mustNew(t, Config{BlockSize: 8, MaxBlocks: 2, Ports: tuple.PortSetOf(tuple.PortRangeFrom(1024, 1024+64-1))})
	var got []Lease
	for i := 0; i < 16; i++ {
		l, err := a.Get(sub1, 50000, remote, t0)
		if err != nil {
			t.Fatalf("Get %d: %v", i, err)
		}
		if !l.Block.Contains(l.Ext.Port()) || l.Block.Len() != 8 {
			t.Fatalf("lease %v outside its block", l)
		}
		if l.NewBlock != (i == 0 || i == 8) {
			t.Fatalf("Get %d: NewBlock %v", i, l.NewBlock)
		}
		got = append(got, l)
	}
	if _, err := a.Get(sub1, 50000, remote, t0); !errors.Is(err, ErrLimit) {
		t.Fatalf("17th: %v, want ErrLimit", err)
	}
	l2, err := a.Get(sub2, 50000, remote, t0)
	if err != nil || l2.Block.Overlaps(got[0].Block) || l2.Block.Overlaps(got[8].Block) {
		t.Fatalf("second subscriber: %v %v", l2, err)
	}
	var freed []tuple.PortRange
	for _, l := range got[:8] {
		f, err := a.Put(sub1, l.Ext, t0)
		if err != nil {
			t.Fatal(err)
		}
		if f.IsValid() {
			freed = append(freed, f)
		}
	}
	if len(freed) != 1 || freed[0] != got[0].Block {
		t.Fatalf("freed %v, want [%v]", freed, got[0].Block)
	}
	if _, err := a.Put(sub2, got[8].Ext, t0); !errors.Is(err, ErrNotInUse) {
		t.Fatalf("Put by the wrong subscriber: %v", err)
	}
}

func TestDeterministicAllocator(t *testing.T) {
	d, err := NewDeterministic([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, []netip.Addr{ext1}, tuple.PortRangeFrom(1024, 1024+256*4-1))
	if err != nil {
		t.Fatal(err)
	}
	a := mustNew(t, Config{Deterministic: d})
	_, blk, _ := d.Forward(sub2)
	for i := 0; i < 4; i++ {
		l, err := a.Get(sub2, 40000, remote, t0)
		if err != nil || !blk.Contains(l.Ext.Port()) {
			t.Fatalf("Get %d: %v %v, want a port of %v", i, l, err, blk)
		}
		if in, ok := d.Reverse(l.Ext); !ok || in != sub2 {
			t.Fatalf("Reverse(%v) = %v", l.Ext, in)
		}
	}
	if _, err := a.Get(sub2, 40000, remote, t0); !errors.Is(err, ErrLimit) {
		t.Fatalf("5th port of a 4-port block: %v", err)
	}
	if _, err := a.Get(netip.MustParseAddr("10.0.1.1"), 1, remote, t0); !errors.Is(err, ErrNotInside) {
		t.Fatalf("outside subscriber: %v", err)
	}
}

type takenSet map[netip.AddrPort]bool

func (s takenSet) Taken(ep netip.AddrPort) bool { return s[ep] }

func TestGetShared(t *testing.T) {
	a := mustNew(t, Config{Preserve: true})
	ts := takenSet{}
	ep, err := a.GetShared(sub1, 40000, remote, ts)
	if err != nil || ep.Port() != 40000 {
		t.Fatalf("preserved shared port: %v %v", ep, err)
	}
	ts[ep] = true
	ep2, err := a.GetShared(sub2, 40000, remote, ts)
	if err != nil || ep2 == ep {
		t.Fatalf("taken port handed out again: %v %v", ep2, err)
	}
	a = mustNew(t, Config{Ports: tuple.PortSetOf(tuple.PortRangeFrom(3000, 3003))})
	for p := 3000; p <= 3003; p++ {
		ts[netip.AddrPortFrom(ext1, uint16(p))] = true
	}
	if _, err := a.GetShared(sub1, 40000, remote, ts); !errors.Is(err, ErrExhausted) {
		t.Fatalf("all taken: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]Config{
		"noaddr":    {},
		"dup":       {Addrs: []netip.Addr{ext1, ext1}},
		"badalg":    {Addrs: []netip.Addr{ext1}, Algorithm: 99},
		"bigblock":  {Addrs: []netip.Addr{ext1}, BlockSize: 70000},
		"negative":  {Addrs: []netip.Addr{ext1}, MaxPorts: -1},
		"lowblocks": {Addrs: []netip.Addr{ext1}, BlockSize: 8, Ports: tuple.PortSetOf(tuple.PortRangeFrom(1, 1000))},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestGetPutNoAlloc(t *testing.T) {
	for _, cfg := range []Config{{}, {Quarantine: time.Minute}, {BlockSize: 64}, {Algorithm: DoubleHash, Parity: true}} {
		a := mustNew(t, cfg)
		now := t0
		a.Get(sub1, 40000, remote, now) // subscriber known from here on
		n := testing.AllocsPerRun(1000, func() {
			now = now.Add(time.Second)
			l, err := a.Get(sub1, 40000, remote, now)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.Put(sub1, l.Ext, now); err != nil {
				t.Fatal(err)
			}
		})
		if n != 0 {
			t.Errorf("%+v: Get+Put allocate %v", cfg, n)
		}
	}
}

// FuzzParseAlgorithm: names round-trip through String, others fail.
func FuzzParseAlgorithm(f *testing.F) {
	f.Add("keyed-hash")   // the default
	f.Add("double-hash")  // RFC 6056 §3.3.4
	f.Add("Keyed-Hash")   // wrong case
	f.Add("")             // empty
	f.Add("algorithm(9)") // the String of an unknown value
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAlgorithm(s)
		if err != nil {
			return
		}
		if a.String() != s {
			t.Fatalf("%q parsed to %v", s, a)
		}
	})
}

func TestManyAddresses(t *testing.T) {
	var addrs []netip.Addr
	a := netip.MustParseAddr("198.18.0.0")
	for i := 0; i < 300; i++ {
		addrs = append(addrs, a)
		a = a.Next()
	}
	al := mustNew(t, Config{Addrs: addrs})
	for i, ad := range addrs {
		if al.AddrIndex(ad) != i {
			t.Fatalf("AddrIndex(%v) = %d, want %d", ad, al.AddrIndex(ad), i)
		}
	}
	if al.AddrIndex(ext1) != -1 {
		t.Fatal("unknown address found")
	}
	l, err := al.Get(sub1, 40000, remote, t0)
	if err != nil || !al.InUse(l.Ext) {
		t.Fatal(err)
	}
	if _, err := al.Put(sub1, l.Ext, t0); err != nil || al.InUse(l.Ext) {
		t.Fatal(err)
	}
}

// TestBlocksWithQuarantine: a freed block whose ports are all still in
// quarantine is passed over when another subscriber needs a block, so the
// pool is not reported exhausted while usable blocks remain (the hashed
// start often lands on such a block).
func TestBlocksWithQuarantine(t *testing.T) {
	b := mustNew(t, Config{BlockSize: 8, Quarantine: 120 * time.Second, Ports: tuple.PortSetOf(tuple.PortRangeFrom(1024, 1024+8*6-1))})
	for i := 0; i < 6; i++ {
		sub := netip.AddrFrom4([4]byte{10, 0, 2, byte(i)})
		var got []Lease
		for j := 0; j < 8; j++ {
			l, err := b.Get(sub, 40000, remote, t0)
			if err != nil {
				t.Fatalf("subscriber %d, port %d refused with %d blocks untouched: %v", i, j, 6-i, err)
			}
			got = append(got, l)
		}
		for _, l := range got {
			if _, err := b.Put(sub, l.Ext, t0); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := b.Get(netip.MustParseAddr("10.0.2.99"), 40000, remote, t0); !errors.Is(err, ErrExhausted) {
		t.Fatalf("every port quarantined: %v", err)
	}
	if _, err := b.Get(netip.MustParseAddr("10.0.2.99"), 40000, remote, t0.Add(121*time.Second)); err != nil {
		t.Fatalf("after the quarantine: %v", err)
	}
}
