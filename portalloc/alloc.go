package portalloc

import (
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/portspace/portspace/tuple"
)

// Algorithm is an RFC 6056 §3.3 ephemeral-port selection algorithm. Each
// gives the position where the search for a free port starts; the search
// then moves to the next free port (a bitmap scan standing in for the RFC's
// "try next_ephemeral + 1" loop, with the same result).
type Algorithm uint8

// The port selection algorithms. The zero value is KeyedHash.
const (
	// KeyedHash is RFC 6056 §3.3.3 Algorithm 3: start at
	// F(local, remote, secret) + next_ephemeral, a global counter that
	// advances with every port tried. Recommended by RFC 6056 and the
	// default.
	KeyedHash Algorithm = iota
	// SimpleRandom is §3.3.1 Algorithm 1: start at a random port.
	SimpleRandom
	// RandomAlt is §3.3.2 Algorithm 2: try up to 8 independent random
	// ports, then fall back to a scan from the last one.
	RandomAlt
	// DoubleHash is §3.3.4 Algorithm 4: start at F(local, remote, secret) +
	// table[G(local, remote, secret2) mod TableSize], where each table slot
	// is a counter that advances with the ports tried.
	DoubleHash
	// RandomIncrements is §3.3.5 Algorithm 5: next_ephemeral grows by a
	// random step in 1..Increment before each search.
	RandomIncrements
	// Sequential is not from RFC 6056: the next port after the previous
	// choice (predictable, like pion/transport vnet; for experiments).
	Sequential
)

var algNames = [...]string{"keyed-hash", "simple-random", "random-alt", "double-hash", "random-increments", "sequential"}

// String returns the name ParseAlgorithm accepts.
func (a Algorithm) String() string {
	if int(a) < len(algNames) {
		return algNames[a]
	}
	return fmt.Sprintf("algorithm(%d)", uint8(a))
}

// ParseAlgorithm parses an Algorithm name ("keyed-hash", "simple-random",
// "random-alt", "double-hash", "random-increments", "sequential").
func ParseAlgorithm(s string) (Algorithm, error) {
	for i, n := range algNames {
		if n == s {
			return Algorithm(i), nil
		}
	}
	return 0, fmt.Errorf("portalloc: unknown algorithm %q", s)
}

// MarshalText implements encoding.TextMarshaler with the name
// ParseAlgorithm accepts (RFC 6056 §3.3).
func (a Algorithm) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseAlgorithm
// (RFC 6056 §3.3 algorithms by name, for YAML and JSON configurations).
func (a *Algorithm) UnmarshalText(b []byte) error {
	v, err := ParseAlgorithm(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// Pooling is the IP address pooling behaviour of RFC 4787 §4.1.
type Pooling uint8

var poolingNames = [...]string{"paired", "arbitrary"}

// String returns "paired" or "arbitrary" (RFC 4787 §4.1 terms), the names
// ParsePooling accepts.
func (p Pooling) String() string {
	if int(p) < len(poolingNames) {
		return poolingNames[p]
	}
	return fmt.Sprintf("pooling(%d)", uint8(p))
}

// ParsePooling parses "paired" or "arbitrary" (RFC 4787 §4.1 REQ-2).
func ParsePooling(s string) (Pooling, error) {
	for i, n := range poolingNames {
		if n == s {
			return Pooling(i), nil
		}
	}
	return 0, fmt.Errorf("portalloc: unknown pooling %q (want paired or arbitrary)", s)
}

// MarshalText implements encoding.TextMarshaler with String (RFC 4787 §4.1).
func (p Pooling) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParsePooling
// (RFC 4787 §4.1 pooling by name, for YAML and JSON configurations).
func (p *Pooling) UnmarshalText(b []byte) error {
	v, err := ParsePooling(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// The pooling behaviours. The zero value is Paired.
const (
	// Paired: every port of one subscriber comes from the same external
	// address, chosen by a keyed hash of the subscriber address
	// (RFC 4787 REQ-2 RECOMMENDED, RFC 6888 REQ-2 MUST). When that address
	// is full, Get fails rather than use another address.
	Paired Pooling = iota
	// Arbitrary: any external address may serve any request; the search
	// starts at a per-request hashed address and moves on when it is full.
	Arbitrary
)

// Errors returned by Get and Put; test with errors.Is.
var (
	// ErrExhausted: no suitable free port is left (RFC 4787 REQ-3: the NAT
	// then drops rather than overloads).
	ErrExhausted = errors.New("portalloc: no free port")
	// ErrLimit: the subscriber reached MaxPorts or MaxBlocks
	// (RFC 6888 REQ-3/REQ-4).
	ErrLimit = errors.New("portalloc: subscriber port limit reached")
	// ErrNotInUse: Put of a port that is not allocated to the subscriber.
	ErrNotInUse = errors.New("portalloc: port not in use")
	// ErrUnknownAddr: an external address that is not in the pool.
	ErrUnknownAddr = errors.New("portalloc: address not in the pool")
)

// Config configures an Allocator. The zero value of every field is a
// documented default; Addrs is required.
type Config struct {
	// Addrs are the external addresses (IPv4 or IPv6).
	Addrs []netip.Addr
	// Ports is the set of external ports to hand out. Zero means 1-65535
	// (port 0 is never used). For ICMP identifiers pass 0-65535 and set
	// MixClasses.
	Ports tuple.PortSet
	// Algorithm is the RFC 6056 algorithm (default KeyedHash).
	Algorithm Algorithm
	// Secret keys the hashes of KeyedHash, DoubleHash and the paired
	// address choice. Zero means NewSecret().
	Secret Secret
	// Seed seeds the PRNG of the random algorithms; 0 means a random seed.
	// Set it for reproducible tests.
	Seed uint64
	// Preserve tries the requested port first (port preservation,
	// RFC 4787 §4.2.1).
	Preserve bool
	// Parity keeps the parity of the requested port (RFC 4787 REQ-4).
	Parity bool
	// MixClasses lets a port of one class (0-1023, 1024-65535) be mapped to
	// the other. By default the class is kept (RFC 4787 REQ-3a).
	MixClasses bool
	// Pooling is Paired (default) or Arbitrary.
	Pooling Pooling
	// Quarantine keeps a freed port out of use for this long (RFC 6888
	// REQ-8 says at least 120 s). Zero disables the quarantine.
	Quarantine time.Duration
	// BlockSize > 0 hands out ports in per-subscriber blocks of this many
	// ports (RFC 6888 REQ-4 "port blocks", bulk port allocation). Blocks
	// are cut from the ports of class 1024-65535 (from all of Ports with
	// MixClasses).
	BlockSize int
	// MaxBlocks limits the blocks of one subscriber; 0 means no limit.
	MaxBlocks int
	// MaxPorts limits the ports one subscriber holds at once (RFC 6888
	// REQ-3); 0 means no limit.
	MaxPorts int
	// Deterministic, if set, confines each subscriber to its RFC 7422
	// block; Addrs must then equal Deterministic.Outside() (nil Addrs
	// means that) and BlockSize is ignored.
	Deterministic *Deterministic
	// TableSize is TABLE_LENGTH of DoubleHash (default 1024).
	TableSize int
	// Increment is N of RandomIncrements (default 500, RFC 6056 §3.3.5).
	Increment int
}

// Lease is the result of Get.
type Lease struct {
	// Ext is the external endpoint allocated.
	Ext netip.AddrPort
	// Block is the port block Ext belongs to (block and deterministic
	// modes); invalid otherwise.
	Block tuple.PortRange
	// NewBlock is true when this Get allocated Block to the subscriber.
	NewBlock bool
}

const words = 1024 // 65536 bits

type addrState struct {
	addr   netip.Addr
	used   [words]uint64 // 1 = allocated or quarantined
	full   [words / 64]uint64
	blocks []uint64 // block mode: 1 = block taken
	nused  int
}

type blockRef struct {
	idx  int32
	used int32
}

type subState struct {
	addr   netip.Addr
	ai     int32 // paired address index, -1 until known
	ports  int
	blocks []blockRef
}

type qentry struct {
	at   int64 // unix nanoseconds when the port may be reused
	ai   int32
	port uint16
}

// Allocator hands out external ports. It is not safe for concurrent use.
type Allocator struct {
	cfg      Config
	addrs    []addrState
	addrIdx  map[netip.Addr]int // for pools of more than 8 addresses
	allowed  [words]uint64
	classes  [2]tuple.PortRange // low, high; with MixClasses both are the bounds
	rng      *rand.Rand
	next     uint32
	table    []uint32
	lastSlot uint32 // DoubleHash: table slot of the current search
	// blocks
	blockBase uint16
	nblocks   int
	// subscribers
	subs    map[netip.Addr]int32
	subList []subState
	subFree []int32
	// quarantine ring
	q          []qentry
	qhead, qn  int
	quarantine int64
}

// New returns an Allocator for cfg.
func New(cfg Config) (*Allocator, error) {
	if cfg.Deterministic != nil {
		if len(cfg.Addrs) == 0 {
			cfg.Addrs = cfg.Deterministic.Outside()
		}
		if len(cfg.Addrs) != len(cfg.Deterministic.Outside()) {
			return nil, errors.New("portalloc: Config.Addrs: must equal Deterministic.Outside()")
		}
		for i, a := range cfg.Deterministic.Outside() {
			if cfg.Addrs[i] != a {
				return nil, errors.New("portalloc: Config.Addrs: must equal Deterministic.Outside()")
			}
		}
	}
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("portalloc: Config.Addrs: no external addresses")
	}
	if len(cfg.Addrs) > 1<<20 {
		return nil, errors.New("portalloc: Config.Addrs: more than 2^20 addresses")
	}
	if cfg.Algorithm > Sequential {
		return nil, fmt.Errorf("portalloc: Config.Algorithm: unknown algorithm %d", cfg.Algorithm)
	}
	if cfg.Pooling > Arbitrary {
		return nil, fmt.Errorf("portalloc: Config.Pooling: unknown pooling %d", cfg.Pooling)
	}
	if cfg.Quarantine < 0 || cfg.BlockSize < 0 || cfg.MaxBlocks < 0 || cfg.MaxPorts < 0 || cfg.TableSize < 0 || cfg.Increment < 0 {
		return nil, errors.New("portalloc: Config: negative Quarantine, BlockSize, MaxBlocks, MaxPorts, TableSize or Increment")
	}
	if !cfg.Ports.IsValid() {
		cfg.Ports = tuple.PortSetOf(tuple.PortRangeFrom(1, 65535))
	}
	if cfg.Secret.IsZero() {
		cfg.Secret = NewSecret()
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64() | 1
	}
	if cfg.TableSize == 0 {
		cfg.TableSize = 1024
	}
	if cfg.Increment == 0 {
		cfg.Increment = 500
	}
	a := &Allocator{
		cfg:        cfg,
		rng:        rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		subs:       map[netip.Addr]int32{},
		quarantine: int64(cfg.Quarantine),
	}
	if cfg.Algorithm == DoubleHash {
		a.table = make([]uint32, cfg.TableSize)
	}
	for r := range cfg.Ports.Ranges() {
		for p := range r.All() {
			a.allowed[p>>6] |= 1 << (p & 63)
		}
	}
	b := cfg.Ports.Bounds()
	if cfg.MixClasses {
		a.classes = [2]tuple.PortRange{b, b}
	} else {
		a.classes[0] = b.Intersect(tuple.PortRangeFrom(0, 1023))
		a.classes[1] = b.Intersect(tuple.PortRangeFrom(1024, 65535))
	}
	if cfg.BlockSize > 0 && cfg.Deterministic == nil {
		r := a.classes[1]
		if !r.IsValid() {
			return nil, errors.New("portalloc: Config.BlockSize: no ports of class 1024-65535 to cut blocks from")
		}
		a.blockBase = r.First()
		a.nblocks = r.Len() / cfg.BlockSize
		if a.nblocks == 0 {
			return nil, fmt.Errorf("portalloc: Config.BlockSize: %d exceeds the %d ports available", cfg.BlockSize, r.Len())
		}
	}
	seen := map[netip.Addr]bool{}
	a.addrIdx = map[netip.Addr]int{}
	a.addrs = make([]addrState, len(cfg.Addrs))
	for i, ad := range cfg.Addrs {
		if !ad.IsValid() {
			return nil, fmt.Errorf("portalloc: Config.Addrs: address %d is invalid", i)
		}
		if seen[ad] {
			return nil, fmt.Errorf("portalloc: Config.Addrs: %v listed twice", ad)
		}
		seen[ad] = true
		a.addrIdx[ad] = i
		st := &a.addrs[i]
		st.addr = ad
		for w := range st.full {
			// words with no allowed port count as full
			for j := 0; j < 64; j++ {
				if a.allowed[w*64+j] == 0 {
					st.full[w] |= 1 << j
				}
			}
		}
		if a.nblocks > 0 {
			st.blocks = make([]uint64, (a.nblocks+63)/64)
		}
	}
	return a, nil
}

// Config returns the configuration in use, with defaults filled in.
func (a *Allocator) Config() Config { return a.cfg }

// AddrIndex returns the index of external address ad in Config.Addrs, or -1.
func (a *Allocator) AddrIndex(ad netip.Addr) int {
	if len(a.addrs) <= 8 {
		for i := range a.addrs {
			if a.addrs[i].addr == ad {
				return i
			}
		}
		return -1
	}
	if i, ok := a.addrIdx[ad]; ok {
		return i
	}
	return -1
}

// InUse reports whether ext is allocated or quarantined.
func (a *Allocator) InUse(ext netip.AddrPort) bool {
	i := a.AddrIndex(ext.Addr())
	if i < 0 {
		return false
	}
	p := ext.Port()
	return a.addrs[i].used[p>>6]&(1<<(p&63)) != 0
}

// Used returns the number of ports of address ad allocated or quarantined.
func (a *Allocator) Used(ad netip.Addr) int {
	i := a.AddrIndex(ad)
	if i < 0 {
		return 0
	}
	return a.addrs[i].nused
}

// Subscriber returns how many ports subscriber sub holds and its blocks.
// It allocates the returned slice; for tests and management.
func (a *Allocator) Subscriber(sub netip.Addr) (ports int, blocks []tuple.PortRange) {
	si, ok := a.subs[sub]
	if !ok {
		return 0, nil
	}
	s := &a.subList[si]
	for _, b := range s.blocks {
		blocks = append(blocks, a.blockRange(b.idx))
	}
	return s.ports, blocks
}

func (a *Allocator) blockRange(idx int32) tuple.PortRange {
	lo := int(a.blockBase) + int(idx)*a.cfg.BlockSize
	return tuple.PortRangeFrom(uint16(lo), uint16(lo+a.cfg.BlockSize-1))
}

func (a *Allocator) take(ai int, p uint16) {
	st := &a.addrs[ai]
	w := p >> 6
	st.used[w] |= 1 << (p & 63)
	st.nused++
	if a.allowed[w]&^st.used[w] == 0 {
		st.full[w>>6] |= 1 << (w & 63)
	}
}

func (a *Allocator) clear(ai int, p uint16) {
	st := &a.addrs[ai]
	w := p >> 6
	st.used[w] &^= 1 << (p & 63)
	st.nused--
	st.full[w>>6] &^= 1 << (w & 63)
}

func (a *Allocator) free(ai int, p uint16) bool {
	w := p >> 6
	return a.allowed[w]&^a.addrs[ai].used[w]&(1<<(p&63)) != 0
}

// scan returns the first free port in [from, hi] whose bit is in pm.
func (a *Allocator) scan(st *addrState, from, hi uint16, pm uint64) (uint16, bool) {
	w := int(from >> 6)
	last := int(hi >> 6)
	first := true
	for w <= last {
		// Skip full words using the summary level.
		if !first {
			sw := w >> 6
			rest := ^st.full[sw] >> (w & 63)
			if rest == 0 {
				w = (sw + 1) << 6
				continue
			}
			w += bits.TrailingZeros64(rest)
			if w > last {
				break
			}
		}
		free := a.allowed[w] &^ st.used[w] & pm
		if first {
			free &= ^uint64(0) << (from & 63)
			first = false
		}
		if w == last {
			free &= ^uint64(0) >> (63 - (hi & 63))
		}
		if free != 0 {
			return uint16(w<<6 + bits.TrailingZeros64(free)), true
		}
		w++
	}
	return 0, false
}

// search finds a free port in [lo, hi] starting at start, cyclically.
func (a *Allocator) search(ai int, lo, hi, start uint16, pm uint64) (uint16, bool) {
	st := &a.addrs[ai]
	if p, ok := a.scan(st, start, hi, pm); ok {
		return p, true
	}
	if start > lo {
		return a.scan(st, lo, start-1, pm)
	}
	return 0, false
}

func parityMask(parity bool, want uint16) uint64 {
	if !parity {
		return ^uint64(0)
	}
	if want&1 == 0 {
		return 0x5555555555555555
	}
	return 0xaaaaaaaaaaaaaaaa
}

// startValue returns the algorithm's raw start value x (the port is
// lo + x mod n) and whether RandomAlt candidates should be tried.
func (a *Allocator) startValue(sub netip.Addr, remote netip.AddrPort) uint32 {
	switch a.cfg.Algorithm {
	case SimpleRandom, RandomAlt:
		return a.rng.Uint32()
	case DoubleHash:
		i := tableIndex(a.cfg.Secret, sub, remote) % uint32(len(a.table))
		a.lastSlot = i
		return Offset(a.cfg.Secret, sub, remote) + a.table[i]
	case RandomIncrements:
		a.next += uint32(a.rng.IntN(a.cfg.Increment)) + 1
		return a.next
	case Sequential:
		return a.next
	}
	return Offset(a.cfg.Secret, sub, remote) + a.next
}

// advance records that the search went dist ports past its start.
func (a *Allocator) advance(sub netip.Addr, remote netip.AddrPort, dist uint32) {
	switch a.cfg.Algorithm {
	case KeyedHash, RandomIncrements:
		a.next += dist + 1
	case Sequential:
		a.next += dist + 1
	case DoubleHash:
		a.table[a.lastSlot] += dist + 1 // the slot startValue used
	}
}

// Expire returns to the pool the quarantined ports whose time has come
// (Get and Put do this too).
func (a *Allocator) Expire(now time.Time) { a.release(now) }

func (a *Allocator) release(now time.Time) {
	if a.qn == 0 {
		return
	}
	t := now.UnixNano()
	for a.qn > 0 {
		e := &a.q[a.qhead]
		if e.at > t {
			return
		}
		a.clear(int(e.ai), e.port)
		a.qhead++
		if a.qhead == len(a.q) {
			a.qhead = 0
		}
		a.qn--
	}
}

func (a *Allocator) pushQ(e qentry) {
	if a.qn == len(a.q) {
		n := make([]qentry, max(64, 2*len(a.q)))
		for i := 0; i < a.qn; i++ {
			n[i] = a.q[(a.qhead+i)%len(a.q)]
		}
		a.q, a.qhead = n, 0
	}
	a.q[(a.qhead+a.qn)%len(a.q)] = e
	a.qn++
}

func (a *Allocator) subFor(sub netip.Addr) int32 {
	if si, ok := a.subs[sub]; ok {
		return si
	}
	var si int32
	if n := len(a.subFree); n > 0 {
		si = a.subFree[n-1]
		a.subFree = a.subFree[:n-1]
		blocks := a.subList[si].blocks[:0]
		a.subList[si] = subState{addr: sub, ai: -1, blocks: blocks}
	} else {
		si = int32(len(a.subList))
		a.subList = append(a.subList, subState{addr: sub, ai: -1})
	}
	a.subs[sub] = si
	return si
}

func (a *Allocator) maybeDropSub(si int32) {
	s := &a.subList[si]
	if s.ports == 0 && len(s.blocks) == 0 {
		delete(a.subs, s.addr)
		a.subFree = append(a.subFree, si)
	}
}

// pairedIndex returns the address index of subscriber sub under Paired
// pooling.
func (a *Allocator) pairedIndex(sub netip.Addr) int {
	return int(addrHash(a.cfg.Secret, sub) % uint32(len(a.addrs)))
}

// Get allocates an external port for subscriber sub (the internal address),
// which asked for port want (its internal port, or ICMP identifier) towards
// remote. Under Paired pooling the address is the subscriber's paired
// address. It returns ErrExhausted or ErrLimit (wrapped) when no port can
// be given. now releases quarantined ports whose time has come.
// Get does not allocate once the subscriber is known.
func (a *Allocator) Get(sub netip.Addr, want uint16, remote netip.AddrPort, now time.Time) (Lease, error) {
	a.release(now)
	si := a.subFor(sub)
	s := &a.subList[si]
	if a.cfg.MaxPorts > 0 && s.ports >= a.cfg.MaxPorts {
		a.maybeDropSub(si)
		return Lease{}, ErrLimit
	}
	var l Lease
	var err error
	switch {
	case a.cfg.Deterministic != nil:
		l, err = a.getDeterministic(sub, want, remote)
	case a.nblocks > 0:
		l, err = a.getBlock(si, want, remote)
	default:
		l, err = a.getPlain(si, want, remote)
	}
	s = &a.subList[si]
	if err != nil {
		a.maybeDropSub(si)
		return Lease{}, err
	}
	s.ports++
	return l, nil
}

func (a *Allocator) class(want uint16) tuple.PortRange {
	// A pool without ports of the low class maps low ports to the high
	// class rather than failing.
	if want < 1024 && a.classes[0].IsValid() {
		return a.classes[0]
	}
	if !a.classes[1].IsValid() {
		return a.classes[0]
	}
	return a.classes[1]
}

// pick searches [lo, hi] of address ai with the configured algorithm.
func (a *Allocator) pick(ai int, sub netip.Addr, want uint16, remote netip.AddrPort, r tuple.PortRange) (uint16, bool) {
	if !r.IsValid() {
		return 0, false
	}
	lo, hi := r.First(), r.Last()
	pm := parityMask(a.cfg.Parity, want)
	if a.cfg.Preserve && r.Contains(want) && a.free(ai, want) {
		return want, true
	}
	n := uint32(r.Len())
	if a.cfg.Algorithm == RandomAlt {
		for range 8 {
			p := lo + uint16(a.rng.Uint32()%n)
			if a.free(ai, p) && pm&(1<<(p&63)) != 0 {
				return p, true
			}
		}
	}
	start := lo + uint16(a.startValue(sub, remote)%n)
	p, ok := a.search(ai, lo, hi, start, pm)
	if ok {
		d := uint32(p) - uint32(start)
		if p < start {
			d = uint32(p) + n - uint32(start)
		}
		a.advance(sub, remote, d)
	}
	return p, ok
}

func (a *Allocator) getPlain(si int32, want uint16, remote netip.AddrPort) (Lease, error) {
	r := a.class(want)
	s := &a.subList[si]
	sub := s.addr
	if a.cfg.Pooling == Paired {
		if s.ai < 0 {
			s.ai = int32(a.pairedIndex(sub)) // hashed once per subscriber
		}
		ai := int(s.ai)
		p, ok := a.pick(ai, sub, want, remote, r)
		if !ok {
			return Lease{}, ErrExhausted
		}
		a.take(ai, p)
		return Lease{Ext: netip.AddrPortFrom(a.addrs[ai].addr, p)}, nil
	}
	n := len(a.addrs)
	first := int(Offset(a.cfg.Secret, sub, remote) % uint32(n))
	for k := 0; k < n; k++ {
		ai := (first + k) % n
		if p, ok := a.pick(ai, sub, want, remote, r); ok {
			a.take(ai, p)
			return Lease{Ext: netip.AddrPortFrom(a.addrs[ai].addr, p)}, nil
		}
	}
	return Lease{}, ErrExhausted
}

func (a *Allocator) getDeterministic(sub netip.Addr, want uint16, remote netip.AddrPort) (Lease, error) {
	out, blk, ok := a.cfg.Deterministic.Forward(sub)
	if !ok {
		return Lease{}, fmt.Errorf("%w: %v", ErrNotInside, sub)
	}
	ai := a.AddrIndex(out)
	p, ok := a.pick(ai, sub, want, remote, blk)
	if !ok {
		return Lease{}, ErrLimit
	}
	a.take(ai, p)
	return Lease{Ext: netip.AddrPortFrom(out, p), Block: blk}, nil
}

func (a *Allocator) getBlock(si int32, want uint16, remote netip.AddrPort) (Lease, error) {
	s := &a.subList[si]
	sub := s.addr
	if s.ai >= 0 {
		ai := int(s.ai)
		nb := len(s.blocks)
		// Try the block holding the wanted port first (preservation), then
		// the others from a hashed start.
		if a.cfg.Preserve && a.free(ai, want) {
			for i := range s.blocks {
				if r := a.blockRange(s.blocks[i].idx); r.Contains(want) {
					a.take(ai, want)
					s.blocks[i].used++
					return Lease{Ext: netip.AddrPortFrom(a.addrs[ai].addr, want), Block: r}, nil
				}
			}
		}
		first := 0
		if nb > 1 {
			first = int(Offset(a.cfg.Secret, sub, remote) % uint32(nb))
		}
		for k := 0; k < nb; k++ {
			i := (first + k) % nb
			r := a.blockRange(s.blocks[i].idx)
			if p, ok := a.pick(ai, sub, want, remote, r); ok {
				a.take(ai, p)
				s.blocks[i].used++
				return Lease{Ext: netip.AddrPortFrom(a.addrs[ai].addr, p), Block: r}, nil
			}
		}
		if a.cfg.MaxBlocks > 0 && nb >= a.cfg.MaxBlocks {
			return Lease{}, ErrLimit
		}
	}
	// A new block: on the paired address, or under Arbitrary pooling the
	// first address (from a hashed start) with a free block.
	cands := 1
	first := a.pairedIndex(sub)
	if s.ai >= 0 {
		first = int(s.ai)
	} else if a.cfg.Pooling == Arbitrary {
		cands = len(a.addrs)
	}
	for k := 0; k < cands; k++ {
		ai := (first + k) % len(a.addrs)
		st := &a.addrs[ai]
		// The block holding the wanted port when preserving, then every
		// free block from a hashed start: a free block whose ports are all
		// still quarantined is passed over, not taken for exhaustion.
		pref := -1
		if a.cfg.Preserve && want >= a.blockBase {
			if b := (int(want) - int(a.blockBase)) / a.cfg.BlockSize; b < a.nblocks {
				pref = b
			}
		}
		startB := int(Offset(a.cfg.Secret, sub, remote) % uint32(a.nblocks))
		for n := -1; n < a.nblocks; n++ {
			var b int
			if n < 0 {
				if pref < 0 {
					continue
				}
				b = pref
			} else {
				b = (startB + n) % a.nblocks
				if b&63 == 0 && b+64 <= a.nblocks && st.blocks[b>>6] == ^uint64(0) {
					n += 63 // a word of taken blocks
					continue
				}
				if b == pref {
					continue
				}
			}
			if st.blocks[b>>6]&(1<<(b&63)) != 0 {
				continue
			}
			bi := int32(b)
			r := a.blockRange(bi)
			p, ok := a.pick(ai, sub, want, remote, r)
			if !ok {
				continue // every port of the block is still quarantined
			}
			st.blocks[bi>>6] |= 1 << (bi & 63)
			s.ai = int32(ai)
			s.blocks = append(s.blocks, blockRef{idx: bi, used: 1})
			a.take(ai, p)
			return Lease{Ext: netip.AddrPortFrom(st.addr, p), Block: r, NewBlock: true}, nil
		}
	}
	return Lease{}, ErrExhausted
}

// Put returns ext, allocated to subscriber sub, to the pool (through the
// quarantine when Config.Quarantine is set). When this empties one of the
// subscriber's blocks the block is freed and returned. Put does not
// allocate.
func (a *Allocator) Put(sub netip.Addr, ext netip.AddrPort, now time.Time) (freed tuple.PortRange, err error) {
	a.release(now)
	ai := a.AddrIndex(ext.Addr())
	if ai < 0 {
		return tuple.PortRange{}, ErrUnknownAddr
	}
	p := ext.Port()
	si, ok := a.subs[sub]
	if !ok || a.free(ai, p) || a.allowed[p>>6]&(1<<(p&63)) == 0 {
		return tuple.PortRange{}, ErrNotInUse
	}
	s := &a.subList[si]
	if a.nblocks > 0 && a.cfg.Deterministic == nil {
		found := false
		for i := range s.blocks {
			r := a.blockRange(s.blocks[i].idx)
			if int(s.ai) == ai && r.Contains(p) {
				found = true
				s.blocks[i].used--
				if s.blocks[i].used == 0 {
					freed = r
					b := s.blocks[i].idx
					a.addrs[ai].blocks[b>>6] &^= 1 << (b & 63)
					s.blocks[i] = s.blocks[len(s.blocks)-1]
					s.blocks = s.blocks[:len(s.blocks)-1]
				}
				break
			}
		}
		if !found {
			return tuple.PortRange{}, ErrNotInUse
		}
	}
	if s.ports == 0 {
		return tuple.PortRange{}, ErrNotInUse
	}
	s.ports--
	if a.quarantine > 0 {
		a.pushQ(qentry{at: now.UnixNano() + a.quarantine, ai: int32(ai), port: p})
	} else {
		a.clear(ai, p)
	}
	a.maybeDropSub(si)
	return freed, nil
}

// PairedAddr returns the external address subscriber sub's ports come
// from under Paired pooling (or its RFC 7422 address); ok is false under
// Arbitrary pooling, where it is not fixed.
func (a *Allocator) PairedAddr(sub netip.Addr) (netip.Addr, bool) {
	if a.cfg.Deterministic != nil {
		out, _, ok := a.cfg.Deterministic.Forward(sub)
		return out, ok
	}
	if si, ok := a.subs[sub]; ok && a.subList[si].ai >= 0 {
		return a.addrs[a.subList[si].ai].addr, true
	}
	if a.cfg.Pooling != Paired {
		return netip.Addr{}, false
	}
	return a.addrs[a.pairedIndex(sub)].addr, true
}

// BlockOf returns the port block that ext belongs to for subscriber sub:
// the RFC 7422 block in deterministic mode, the aligned block in block
// mode, and the invalid PortRange otherwise. It does not allocate.
func (a *Allocator) BlockOf(sub netip.Addr, ext netip.AddrPort) tuple.PortRange {
	if a.cfg.Deterministic != nil {
		_, blk, _ := a.cfg.Deterministic.Forward(sub)
		return blk
	}
	p := ext.Port()
	if a.nblocks == 0 || p < a.blockBase {
		return tuple.PortRange{}
	}
	b := (int(p) - int(a.blockBase)) / a.cfg.BlockSize
	if b >= a.nblocks {
		return tuple.PortRange{}
	}
	return a.blockRange(int32(b))
}

// Checker reports whether an external endpoint is already used in a way
// that forbids sharing it for the flow being set up (for example, the NAT
// already has a session from ext to the same remote endpoint).
type Checker interface {
	Taken(ext netip.AddrPort) bool
}

// GetShared chooses a port for port overlapping (RFC 7857 §3): a port may
// serve several internal endpoints as long as their remote endpoints
// differ, so whether a port is usable is up to the caller's Checker. It
// tries the wanted port first when preserving, then the configured
// algorithm's sequence, at most 256 candidates (like Linux, which tries
// 128 and then narrows the range), and records nothing. Do not mix Get and
// GetShared on one Allocator. It does not allocate.
func (a *Allocator) GetShared(sub netip.Addr, want uint16, remote netip.AddrPort, taken Checker) (netip.AddrPort, error) {
	r := a.class(want)
	if !r.IsValid() {
		return netip.AddrPort{}, ErrExhausted
	}
	ai := a.pairedIndex(sub)
	if a.cfg.Deterministic != nil {
		out, blk, ok := a.cfg.Deterministic.Forward(sub)
		if !ok {
			return netip.AddrPort{}, fmt.Errorf("%w: %v", ErrNotInside, sub)
		}
		ai, r = a.AddrIndex(out), blk
	}
	ad := a.addrs[ai].addr
	if a.cfg.Preserve && r.Contains(want) && a.allowed[want>>6]&(1<<(want&63)) != 0 {
		if ep := netip.AddrPortFrom(ad, want); !taken.Taken(ep) {
			return ep, nil
		}
	}
	n := uint32(r.Len())
	start := a.startValue(sub, remote)
	pm := parityMask(a.cfg.Parity, want)
	tries := 0
	for d := uint32(0); d < n && tries < 256; d++ {
		p := r.First() + uint16((start+d)%n)
		if a.allowed[p>>6]&(1<<(p&63)) == 0 || pm&(1<<(p&63)) == 0 {
			continue
		}
		tries++
		if ep := netip.AddrPortFrom(ad, p); !taken.Taken(ep) {
			a.advance(sub, remote, d)
			return ep, nil
		}
	}
	return netip.AddrPort{}, ErrExhausted
}
