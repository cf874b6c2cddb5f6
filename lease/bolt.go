package lease

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrLockTimeout is wrapped when the bolt store's file lock was not free
// within BoltOptions.LockTimeout.
var ErrLockTimeout = errors.New("lease: store lock not free in time")

// ErrNoStore is returned by OpenBolt with BoltOptions.MustExist when the
// database file does not exist, and by OpenEtcd with EtcdOptions.MustExist
// when the URL's prefix holds no pools.
var ErrNoStore = errors.New("lease: no store there (portspace lease apply makes one)")

// BoltOptions configures a bolt store. The zero value is the defaults.
type BoltOptions struct {
	// Now is the store's clock (grants, expiries, quarantines); nil is
	// time.Now. Tests pass a fake clock.
	Now func() time.Time
	// LockTimeout bounds the wait for the file lock per transaction;
	// zero is 5 s.
	LockTimeout time.Duration
	// PollInterval is how often Watch looks for changes by other
	// processes; zero is 1 s.
	PollInterval time.Duration
	// NoSync skips fsync on commit (for benchmarks only: a crash may lose
	// grants, so a slice could be granted twice).
	NoSync bool
	// Logger receives debug records; nil discards them.
	Logger *slog.Logger
	// MustExist refuses a database file that does not exist yet
	// (ErrNoStore) instead of making an empty store, for readers that
	// would take a mistyped path for a store without leases (steer, whose
	// empty plan removes a gateway's steering). Zero makes the file and
	// its directory, as a writer wants.
	MustExist bool
}

// BoltStore is the embedded store: one bbolt database file on one machine,
// safe for several processes at once. bbolt holds an exclusive lock on a
// database file while it is open, so the store opens the file for each
// transaction and closes it after; processes queue for a lock on a side
// file (PATH.lock, a blocking flock(2), served in about arrival order)
// for at most LockTimeout, so a claim waits behind others' claims instead
// of failing, and a stuck process makes the others fail with
// ErrLockTimeout instead of hanging.
//
// Layout: bucket "meta" holds the pools (JSON), bucket "gen" a change
// counter;
// bucket "slices" one JSON record per slice ID; bucket "avail" one empty
// key per slice, pool name + NUL + the time from which the slice may be
// granted (8 bytes, big-endian Unix nanoseconds) + ID, so a claim takes the
// first key of each matching pool (O(log n), the slice free the longest:
// fair reuse) instead of scanning.
type BoltStore struct {
	path string
	o    BoltOptions
	log  *slog.Logger
	sem  chan struct{} // one transaction at a time in this process

	mu       sync.Mutex
	closed   bool
	stop     chan struct{}
	poolsRaw []byte // the pools as last decoded, and the result
	poolsDec []Pool
}

var (
	bMeta   = []byte("meta")
	bSlices = []byte("slices")
	bAvail  = []byte("avail")
	bGen    = []byte("gen") // its own bucket: bumping it must not rewrite the pools' pages
	kPools  = []byte("pools")
	kGen    = []byte("gen")
)

var _ Store = (*BoltStore)(nil)

// OpenBolt opens (creating it and its directory if needed) the bolt store
// in the file path.
func OpenBolt(ctx context.Context, path string, o BoltOptions) (*BoltStore, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: empty bolt path", ErrURL)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("lease: bolt:%s: %w", path, err)
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = 5 * time.Second
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &BoltStore{path: abs, o: o, log: o.Logger, sem: make(chan struct{}, 1), stop: make(chan struct{})}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if o.MustExist {
		if _, err := os.Stat(abs); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: bolt:%s", ErrNoStore, path)
		}
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("lease: bolt:%s: %w", path, err)
	}
	err = s.update(ctx, func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bMeta, bSlices, bAvail, bGen} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Path returns the database file.
func (s *BoltStore) Path() string { return s.path }

// update runs fn in a read-write transaction, with the file open only for
// its duration.
func (s *BoltStore) update(ctx context.Context, fn func(*bolt.Tx) error) error {
	return s.tx(ctx, true, fn)
}

func (s *BoltStore) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	return s.tx(ctx, false, fn)
}

func (s *BoltStore) tx(ctx context.Context, write bool, fn func(*bolt.Tx) error) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("lease: bolt:%s: store closed", s.path)
	}
	t := time.NewTimer(s.o.LockTimeout)
	defer t.Stop()
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("lease: bolt:%s: %w", s.path, ctx.Err())
	case <-t.C:
		return fmt.Errorf("lease: bolt:%s: %w: waited %v behind this process's own transactions", s.path, ErrLockTimeout, s.o.LockTimeout)
	}
	defer func() { <-s.sem }()
	unlock, err := lockFile(ctx, s.path+".lock", !write, s.o.LockTimeout)
	if err != nil {
		return fmt.Errorf("lease: bolt:%s: %w", s.path, err)
	}
	defer unlock()
	// The side lock makes the database's own lock uncontended among
	// stores; the timeout only guards against other bbolt users.
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: s.o.LockTimeout, NoSync: s.o.NoSync, ReadOnly: !write && s.exists()})
	if err != nil {
		return fmt.Errorf("lease: bolt:%s: open: %w", s.path, err)
	}
	if write {
		err = db.Update(fn)
	} else {
		err = db.View(fn)
	}
	if cerr := db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("lease: bolt:%s: close: %w", s.path, cerr)
	}
	return err
}

func (s *BoltStore) exists() bool {
	_, err := os.Stat(s.path)
	return err == nil
}

// record is a slice's stored state.
type record struct {
	Pool    string     `json:"pool"`
	Holder  string     `json:"holder,omitempty"`
	Host    netip.Addr `json:"host,omitzero"`
	Token   uint64     `json:"token"`
	TTL     int64      `json:"ttl,omitempty"`     // the grant's TTL, ns
	Expires int64      `json:"expires,omitempty"` // grant end (or release time), Unix ns
	Avail   int64      `json:"avail,omitempty"`   // grantable from, Unix ns
}

func availKey(pool string, at int64, id string) []byte {
	k := make([]byte, 0, len(pool)+1+8+len(id))
	k = append(k, pool...)
	k = append(k, 0)
	k = binary.BigEndian.AppendUint64(k, uint64(max(at, 0)))
	return append(k, id...)
}

func getRecord(tx *bolt.Tx, id string) (record, bool, error) {
	v := tx.Bucket(bSlices).Get([]byte(id))
	if v == nil {
		return record{}, false, nil
	}
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return r, false, fmt.Errorf("lease: slice %s: corrupt record: %w", id, err)
	}
	return r, true, nil
}

func putRecord(tx *bolt.Tx, id string, r record) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return tx.Bucket(bSlices).Put([]byte(id), v)
}

func getPools(tx *bolt.Tx) ([]Pool, error) {
	v := tx.Bucket(bMeta).Get(kPools)
	if v == nil {
		return nil, nil
	}
	var pools []Pool
	if err := json.Unmarshal(v, &pools); err != nil {
		return nil, fmt.Errorf("lease: corrupt pools: %w", err)
	}
	return pools, nil
}

// pools returns the stored pools, decoding them only when their bytes
// differ from the last ones this store decoded. Callers must not modify
// the result.
func (s *BoltStore) pools(tx *bolt.Tx) ([]Pool, error) {
	v := tx.Bucket(bMeta).Get(kPools)
	s.mu.Lock()
	if v != nil && bytes.Equal(v, s.poolsRaw) {
		p := s.poolsDec
		s.mu.Unlock()
		return p, nil
	}
	s.mu.Unlock()
	pools, err := getPools(tx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.poolsRaw, s.poolsDec = bytes.Clone(v), pools
	s.mu.Unlock()
	return pools, nil
}

func bumpGen(tx *bolt.Tx) error {
	b := tx.Bucket(bGen)
	var g uint64
	if v := b.Get(kGen); len(v) == 8 {
		g = binary.BigEndian.Uint64(v)
	}
	return b.Put(kGen, binary.BigEndian.AppendUint64(nil, g+1))
}

func readGen(tx *bolt.Tx) uint64 {
	if b := tx.Bucket(bGen); b != nil {
		if v := b.Get(kGen); len(v) == 8 {
			return binary.BigEndian.Uint64(v)
		}
	}
	return 0
}

// state returns the state of r at now.
func (r record) state(now int64) State {
	switch {
	case r.Holder != "" && now < r.Expires:
		return Held
	case now < r.Avail:
		return Quarantined
	}
	return Free
}

// Apply makes the store's pools these. It refuses (changing nothing) to
// remove or re-cut a slice that is held or in quarantine; traits,
// quarantine and new addresses or pools apply at once.
func (s *BoltStore) Apply(ctx context.Context, pools []Pool) error {
	if err := checkPools(pools); err != nil {
		return err
	}
	next := make([]Pool, len(pools))
	for i, p := range pools {
		next[i] = clonePool(p)
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		old, err := getPools(tx)
		if err != nil {
			return err
		}
		now := s.o.Now().UnixNano()
		gone := removedSlices(old, next)
		for _, id := range gone {
			r, ok, err := getRecord(tx, id)
			if err != nil {
				return err
			}
			if ok && r.state(now) != Free {
				return busyError(id, r.state(now), r.Holder, time.Unix(0, max(r.Expires, r.Avail)))
			}
		}
		for _, id := range gone {
			r, ok, _ := getRecord(tx, id)
			if ok {
				if err := tx.Bucket(bAvail).Delete(availKey(r.Pool, r.Avail, id)); err != nil {
					return err
				}
			}
			if err := tx.Bucket(bSlices).Delete([]byte(id)); err != nil {
				return err
			}
		}
		for _, p := range next {
			for _, l := range slicesOf(p) {
				if _, ok, err := getRecord(tx, l.ID); err != nil {
					return err
				} else if ok {
					continue
				}
				if err := putRecord(tx, l.ID, record{Pool: p.Name}); err != nil {
					return err
				}
				if err := tx.Bucket(bAvail).Put(availKey(p.Name, 0, l.ID), nil); err != nil {
					return err
				}
			}
		}
		v, err := json.Marshal(next)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bMeta).Put(kPools, v); err != nil {
			return err
		}
		return bumpGen(tx)
	})
}

// busyError is Apply's refusal to remove or re-cut a slice in use.
func busyError(id string, st State, holder string, until time.Time) error {
	who := ""
	if st == Held {
		who = " by " + holder
	}
	return fmt.Errorf("%w: slice %s is %s%s until %s: a pool change may not take it; apply again after that",
		ErrPools, id, st, who, until.UTC().Format(time.RFC3339))
}

func checkRequest(req Request) error {
	if req.Holder == "" {
		return errors.New("lease: claim: empty holder")
	}
	if req.TTL <= 0 {
		return fmt.Errorf("lease: claim: TTL %v: want a positive duration", req.TTL)
	}
	if req.Host.IsValid() && req.Host.Zone() != "" {
		return fmt.Errorf("lease: claim: host %v: no zones", req.Host)
	}
	return nil
}

// Claim grants the matching slice that has been free the longest.
func (s *BoltStore) Claim(ctx context.Context, req Request) (Lease, error) {
	if err := checkRequest(req); err != nil {
		return Lease{}, err
	}
	var out Lease
	err := s.update(ctx, func(tx *bolt.Tx) error {
		pools, err := s.pools(tx)
		if err != nil {
			return err
		}
		now := s.o.Now().UnixNano()
		var (
			best     []byte
			bestAt   int64
			bestPool Pool
			matched  bool
		)
		c := tx.Bucket(bAvail).Cursor()
		for _, p := range pools {
			if !matches(p.Traits, req.Traits) {
				continue
			}
			matched = true
			prefix := append([]byte(p.Name), 0)
			k, _ := c.Seek(prefix)
			if k == nil || !bytes.HasPrefix(k, prefix) || len(k) < len(prefix)+8 {
				continue
			}
			at := int64(binary.BigEndian.Uint64(k[len(prefix):]))
			if at > now || (best != nil && at >= bestAt) {
				continue
			}
			best, bestAt, bestPool = slices.Clone(k), at, p
		}
		if !matched {
			return unmatchedTraitsError(req.Traits, pools)
		}
		if best == nil {
			return fmt.Errorf("%w %s: every matching slice is held or in quarantine", ErrNoSlice, traitString(req.Traits))
		}
		id := string(best[len(bestPool.Name)+1+8:])
		r, ok, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		if !ok || r.state(now) != Free {
			return fmt.Errorf("lease: slice %s: index and record disagree (state %v)", id, r.state(now))
		}
		r.Holder, r.Host, r.Token, r.TTL = req.Holder, req.Host, r.Token+1, int64(req.TTL)
		r.Expires = now + int64(req.TTL)
		r.Avail = r.Expires + int64(bestPool.Quarantine)
		if err := tx.Bucket(bAvail).Delete(best); err != nil {
			return err
		}
		if err := tx.Bucket(bAvail).Put(availKey(r.Pool, r.Avail, id), nil); err != nil {
			return err
		}
		if err := putRecord(tx, id, r); err != nil {
			return err
		}
		out = leaseOf(id, bestPool, r, now)
		return bumpGen(tx)
	})
	return out, err
}

// leaseOf builds the Lease of slice id of pool p with record r at now.
func leaseOf(id string, p Pool, r record, now int64) Lease {
	_, addr, index, _ := parseSliceID(id)
	l := Lease{ID: id, Pool: p.Name, Addr: addr, Ports: slicePorts(p, index), Token: r.Token, State: r.state(now)}
	switch l.State {
	case Held:
		l.Holder, l.Host, l.Expires = r.Holder, r.Host, time.Unix(0, r.Expires)
	case Quarantined:
		l.Expires = time.Unix(0, r.Avail)
	}
	return l
}

// lost is the ErrLost error for lease l.
func lost(l Lease, why string) error {
	return fmt.Errorf("%w: slice %s token %d: %s", ErrLost, l.ID, l.Token, why)
}

// current loads l's record and checks that l is its current, unexpired
// grant.
func (s *BoltStore) current(tx *bolt.Tx, l Lease, now int64) (record, Pool, error) {
	r, ok, err := getRecord(tx, l.ID)
	if err != nil {
		return r, Pool{}, err
	}
	if !ok {
		return r, Pool{}, lost(l, "no such slice")
	}
	if r.Token != l.Token {
		return r, Pool{}, lost(l, fmt.Sprintf("the current grant is token %d", r.Token))
	}
	if r.Holder == "" {
		return r, Pool{}, lost(l, "released")
	}
	if now >= r.Expires {
		return r, Pool{}, lost(l, "expired at "+time.Unix(0, r.Expires).UTC().Format(time.RFC3339Nano))
	}
	pools, err := s.pools(tx)
	if err != nil {
		return r, Pool{}, err
	}
	for _, p := range pools {
		if p.Name == r.Pool {
			return r, p, nil
		}
	}
	// The pool was removed while the slice was held (Apply refuses that);
	// keep the grant as it is.
	return r, Pool{}, lost(l, "its pool is gone")
}

// Renew extends l's grant by its TTL from now.
func (s *BoltStore) Renew(ctx context.Context, l Lease) (Lease, error) {
	var out Lease
	err := s.update(ctx, func(tx *bolt.Tx) error {
		now := s.o.Now().UnixNano()
		r, p, err := s.current(tx, l, now)
		if err != nil {
			return err
		}
		oldAvail := r.Avail
		r.Expires = now + r.TTL
		r.Avail = r.Expires + int64(p.Quarantine)
		if err := tx.Bucket(bAvail).Delete(availKey(r.Pool, oldAvail, l.ID)); err != nil {
			return err
		}
		if err := tx.Bucket(bAvail).Put(availKey(r.Pool, r.Avail, l.ID), nil); err != nil {
			return err
		}
		if err := putRecord(tx, l.ID, r); err != nil {
			return err
		}
		out = leaseOf(l.ID, p, r, now)
		return bumpGen(tx)
	})
	return out, err
}

// Release ends l's grant now; the slice is in quarantine for its pool's
// quarantine.
func (s *BoltStore) Release(ctx context.Context, l Lease) error {
	return s.update(ctx, func(tx *bolt.Tx) error {
		now := s.o.Now().UnixNano()
		r, p, err := s.current(tx, l, now)
		if err != nil {
			return err
		}
		oldAvail := r.Avail
		r.Holder, r.Host, r.Expires = "", netip.Addr{}, now
		r.Avail = now + int64(p.Quarantine)
		if err := tx.Bucket(bAvail).Delete(availKey(r.Pool, oldAvail, l.ID)); err != nil {
			return err
		}
		if err := tx.Bucket(bAvail).Put(availKey(r.Pool, r.Avail, l.ID), nil); err != nil {
			return err
		}
		if err := putRecord(tx, l.ID, r); err != nil {
			return err
		}
		return bumpGen(tx)
	})
}

// List returns every slice in pool, address and index order.
func (s *BoltStore) List(ctx context.Context) ([]Lease, error) {
	var out []Lease
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var err error
		out, err = listTx(tx, s.o.Now().UnixNano())
		return err
	})
	return out, err
}

func listTx(tx *bolt.Tx, now int64) ([]Lease, error) {
	if tx.Bucket(bMeta) == nil {
		return nil, nil
	}
	pools, err := getPools(tx)
	if err != nil {
		return nil, err
	}
	var out []Lease
	for _, p := range pools {
		for _, l := range slicesOf(p) {
			r, ok, err := getRecord(tx, l.ID)
			if err != nil {
				return nil, err
			}
			if ok {
				l = leaseOf(l.ID, p, r, now)
			}
			out = append(out, l)
		}
	}
	return out, nil
}

// Watch returns a channel that receives a value (coalesced: at most one
// waits) whenever the store's slices or pools may have changed: a write by
// any process (seen within PollInterval) or a grant's expiry or a
// quarantine's end (seen within PollInterval of the store's clock passing
// it). The channel is closed when ctx ends or the store is closed. A
// reader calls List after each value.
func (s *BoltStore) Watch(ctx context.Context) (<-chan struct{}, error) {
	gen, next, err := s.watchState(ctx)
	if err != nil {
		return nil, err
	}
	ch := make(chan struct{}, 1)
	go func() {
		defer close(ch)
		t := time.NewTicker(s.o.PollInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.stop:
				return
			case <-t.C:
			}
			g, n, err := s.watchState(ctx)
			if err != nil {
				s.log.Debug("lease: watch", "err", err)
				continue
			}
			now := s.o.Now().UnixNano()
			if g != gen || (next != 0 && now >= next) {
				gen, next = g, n
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		}
	}()
	return ch, nil
}

// watchState returns the change counter and the next time (after now) at
// which some slice changes state by itself, or 0.
func (s *BoltStore) watchState(ctx context.Context) (gen uint64, next int64, err error) {
	err = s.view(ctx, func(tx *bolt.Tx) error {
		gen = readGen(tx)
		now := s.o.Now().UnixNano()
		b := tx.Bucket(bSlices)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var r record
			if json.Unmarshal(v, &r) != nil {
				return nil
			}
			for _, t := range []int64{r.Expires, r.Avail} {
				if t > now && (next == 0 || t < next) {
					next = t
				}
			}
			return nil
		})
	})
	return gen, next, err
}

// Close stops the store's watches. Grants stay in the file.
func (s *BoltStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.stop)
	}
	return nil
}
