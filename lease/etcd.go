package lease

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdOptions configures an etcd store. The zero value is the defaults.
type EtcdOptions struct {
	// DialTimeout bounds the wait for a member to answer when the store
	// opens; zero is 3 s.
	DialTimeout time.Duration
	// RequestTimeout bounds each method call that has no earlier context
	// deadline, retries included; zero is 10 s.
	RequestTimeout time.Duration
	// Logger receives debug records; nil discards them.
	Logger *slog.Logger
	// MustExist refuses a prefix that holds no pools key (ErrNoStore)
	// instead of opening it as an empty store, for readers that must not
	// take a mistyped URL for a store without leases (portspace steer,
	// whose empty plan would remove the gateway's steering). The pools key
	// is written by Store.Apply (portspace lease apply).
	MustExist bool
}

// EtcdStore is the fleet store: etcd v3 (servers 3.4 and later) through
// the v3 client. Keys under the URL's prefix P:
//
//   - P pools: the pools (JSON), one key, so that every claim can check in
//     its transaction that the pools it read are still current;
//   - P h/ID: the slice's grant (holder, host, TTL, expiry), attached to an
//     etcd lease with the grant's TTL; its CreateRevision is the fencing
//     token, so tokens increase with every grant;
//   - P b/ID: present while the slice is held or in quarantine, attached to
//     an etcd lease of TTL + quarantine while held, and of the quarantine
//     after a release: etcd itself ends the quarantine, also after a
//     holder dies.
//
// A claim is one transaction: if pools, h/ID and b/ID are as the store's
// watch-fed view says (pools unchanged, both keys absent), put h/ID and
// b/ID. The two etcd leases are reused for every claim of the same
// holder, TTL and quarantine (so a holder's slices with the same TTL expire
// together, and renewing one renews them all). Candidates are drawn at
// random from the slices the view holds free, so that claimers on many
// hosts rarely race for the same slice; a claim that loses the race tries
// another.
type EtcdStore struct {
	loc     Location
	cli     *clientv3.Client
	o       EtcdOptions
	log     *slog.Logger
	kPools  string
	pfxH    string
	pfxB    string
	stopCtx context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup

	mu        sync.Mutex
	view      etcdView
	leases    map[leaseKey]*heldLease
	abandoned map[string]bool // nonces of claims given up as not committed
	poolsKey  bool            // the last resync found the pools key
}

var _ Store = (*EtcdStore)(nil)

// leaseKey names a reusable etcd lease: one holder, one TTL.
type leaseKey struct {
	holder string
	ttl    int64 // seconds
}

// heldLease is a cached etcd lease: its ID, and until when (local
// monotonic clock) it surely lives.
type heldLease struct {
	id    clientv3.LeaseID
	ttl   int64
	fresh time.Time // last grant or keep-alive sent
}

// poolsDoc is the value of the pools key.
type poolsDoc struct {
	Pools []Pool `json:"pools"`
	// Draining lists slices that an Apply under way is about to remove:
	// no claim takes them.
	Draining []string `json:"draining,omitempty"`
}

// grant is the value of an h/ID key.
type grant struct {
	Holder  string     `json:"holder"`
	Host    netip.Addr `json:"host,omitzero"`
	TTL     int64      `json:"ttl"`     // ns
	Expires int64      `json:"expires"` // Unix ns, as the last claim or renew computed it
	Nonce   string     `json:"nonce"`   // tells a claim whose reply was lost its own grant
}

// etcdView is the store's watch-fed picture of which slices are free.
type etcdView struct {
	pools    []Pool
	poolsRev int64
	draining map[string]bool
	slot     map[string]slot     // busy slices by ID
	free     map[string]*freeSet // per pool
	poolOf   map[string]int      // slice ID -> index in pools
	// onLease indexes the grants the view knows by their etcd lease, so that
	// a keep-alive of a lease can find its stale grants (sweepLease).
	onLease map[int64]map[string]struct{}
}

// setGrantLocked records slice id's grant reference g (zero: none) in the
// slot and the lease index; the caller stores the slot.
func (v *etcdView) setGrantLocked(id string, sl *slot, g grantRef) {
	if sl.g.lease == g.lease {
		sl.g = g
		return
	}
	if m := v.onLease[sl.g.lease]; m != nil {
		delete(m, id)
		if len(m) == 0 {
			delete(v.onLease, sl.g.lease)
		}
	}
	sl.g = g
	if g.lease != 0 {
		if v.onLease == nil {
			v.onLease = map[int64]map[string]struct{}{}
		}
		m := v.onLease[g.lease]
		if m == nil {
			m = map[string]struct{}{}
			v.onLease[g.lease] = m
		}
		m[id] = struct{}{}
	}
}

// grantRefOf returns the reference of an h key's grant (zero when the
// value does not decode).
func grantRefOf(kv *mvccpb.KeyValue) grantRef {
	var g grant
	if json.Unmarshal(kv.Value, &g) != nil {
		return grantRef{}
	}
	return grantRef{lease: kv.Lease, expires: g.Expires, create: kv.CreateRevision, mod: kv.ModRevision}
}

// slot is what the view knows of a busy slice and the revision it knows it at.
type slot struct {
	h, b bool
	rev  int64
	g    grantRef // the h key's grant, when h and the view has read its value
}

// grantRef is what the view keeps of a grant for the sweep of stale grants:
// its etcd lease, its recorded expiry (Unix ns) and its key's revisions.
type grantRef struct {
	lease   int64
	expires int64
	create  int64
	mod     int64
}

// freeSet is a set of slice IDs with O(1) add, remove and random pick.
type freeSet struct {
	ids []string
	pos map[string]int
}

func (f *freeSet) add(id string) {
	if _, ok := f.pos[id]; ok {
		return
	}
	f.pos[id] = len(f.ids)
	f.ids = append(f.ids, id)
}

func (f *freeSet) remove(id string) {
	i, ok := f.pos[id]
	if !ok {
		return
	}
	last := f.ids[len(f.ids)-1]
	f.ids[i] = last
	f.pos[last] = i
	f.ids = f.ids[:len(f.ids)-1]
	delete(f.pos, id)
}

// OpenEtcd opens the etcd store at loc. It fails with an error naming the
// URL when no member answers within DialTimeout.
func OpenEtcd(ctx context.Context, loc Location, o EtcdOptions) (*EtcdStore, error) {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 3 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 10 * time.Second
	}
	cfg := clientv3.Config{
		Endpoints:            loc.Endpoints,
		DialTimeout:          o.DialTimeout,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
	}
	if err := loc.etcdSecurity(&cfg); err != nil {
		return nil, fmt.Errorf("lease: %s: %w", loc, err)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("lease: %s: %w", loc, err)
	}
	s := &EtcdStore{loc: loc, cli: cli, o: o, log: o.Logger, kPools: loc.Prefix + "pools", pfxH: loc.Prefix + "h/", pfxB: loc.Prefix + "b/",
		leases: map[leaseKey]*heldLease{}, abandoned: map[string]bool{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.stopCtx, s.stop = context.WithCancel(context.Background())
	octx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	defer cancel()
	rev, err := s.resync(octx)
	if err == nil && o.MustExist && !s.poolsKey {
		cli.Close()
		return nil, fmt.Errorf("%w: %s (no pools under prefix %q)", ErrNoStore, loc, loc.Prefix)
	}
	if err != nil {
		cli.Close()
		if octx.Err() != nil && ctx.Err() == nil {
			if why := probeTLS(ctx, loc, cfg.TLS); why != "" {
				return nil, fmt.Errorf("lease: %s: no member answered within %v (%s): %w", loc, o.DialTimeout, why, err)
			}
			return nil, fmt.Errorf("lease: %s: no member answered within %v: %w", loc, o.DialTimeout, err)
		}
		return nil, fmt.Errorf("lease: %s: %w", loc, err)
	}
	s.wg.Add(1)
	go s.follow(rev)
	return s, nil
}

// etcdSecurity sets cfg's TLS and authentication from loc, reading the
// files its options name; errors name the option and the file.
func (loc Location) etcdSecurity(cfg *clientv3.Config) error {
	if loc.TLS {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if loc.CACert != "" {
			pem, err := os.ReadFile(loc.CACert)
			if err != nil {
				return fmt.Errorf("cacert=%s: %w", loc.CACert, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("cacert=%s: no PEM certificate in the file", loc.CACert)
			}
			tc.RootCAs = pool
		}
		if loc.Cert != "" {
			c, err := tls.LoadX509KeyPair(loc.Cert, loc.Key)
			if err != nil {
				return fmt.Errorf("cert=%s, key=%s: %w", loc.Cert, loc.Key, err)
			}
			tc.Certificates = []tls.Certificate{c}
		}
		cfg.TLS = tc
		eps := make([]string, len(cfg.Endpoints))
		for i, ep := range cfg.Endpoints {
			eps[i] = "https://" + ep
		}
		cfg.Endpoints = eps
	}
	if loc.User != "" {
		cfg.Username, cfg.Password = loc.User, loc.Password
		if loc.PasswordFile != "" {
			b, err := os.ReadFile(loc.PasswordFile)
			if err != nil {
				return fmt.Errorf("password-file=%s: %w", loc.PasswordFile, err)
			}
			pw, _, _ := strings.Cut(string(b), "\n")
			if pw = strings.TrimSuffix(pw, "\r"); pw == "" {
				return fmt.Errorf("password-file=%s: the first line is empty", loc.PasswordFile)
			}
			cfg.Password = pw
		}
		if cfg.Password == "" {
			return errors.New("user " + loc.User + " has no password (USER:PASSWORD@ or password-file=)")
		}
	}
	return nil
}

// probeTLS tells, after an open that no member answered, whether TLS is
// why: with tc (etcds://) it runs one handshake with the first member and
// returns its error or the alert the member sends right after it (a client
// certificate refused); without tc (etcd://) it returns a hint when the
// member speaks TLS. It returns "" when it cannot tell. The probe sends no
// request.
func probeTLS(ctx context.Context, loc Location, tc *tls.Config) string {
	ep := loc.Endpoints[0]
	d := net.Dialer{Timeout: time.Second}
	conn, err := d.DialContext(ctx, "tcp", ep)
	if err != nil {
		return ""
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	host, _, _ := net.SplitHostPort(ep)
	if tc == nil {
		// Only to recognize a TLS server: nothing is sent after the
		// handshake, so the unverified certificate is never trusted.
		c := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, ServerName: host})
		if c.HandshakeContext(ctx) == nil {
			return ep + " speaks TLS: use etcds://"
		}
		return ""
	}
	tc = tc.Clone()
	tc.ServerName = host
	c := tls.Client(conn, tc)
	if err := c.HandshakeContext(ctx); err != nil {
		return "TLS with " + ep + ": " + err.Error()
	}
	// TLS 1.3 servers check the client certificate after the handshake:
	// a refusal arrives as an alert on the first read.
	conn.SetDeadline(time.Now().Add(300 * time.Millisecond))
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return "TLS with " + ep + ": " + err.Error()
		}
	}
	return ""
}

// Location returns the store's parsed URL.
func (s *EtcdStore) Location() Location { return s.loc }

func (s *EtcdStore) errf(format string, args ...any) error {
	return fmt.Errorf("lease: %s: "+format, append([]any{s.loc}, args...)...)
}

// attemptTimeout bounds one attempt of a claim, so that a call stuck on a
// member that lost its leader is retried elsewhere.
const attemptTimeout = 5 * time.Second

// attempt returns the context of one claim attempt: at most
// attemptTimeout, and failing at once on a member without a leader.
func (s *EtcdStore) attempt(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(clientv3.WithRequireLeader(ctx), attemptTimeout)
}

// reqCtx bounds a call that has no deadline by RequestTimeout.
func (s *EtcdStore) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.o.RequestTimeout)
}

// resync reads pools and every busy key at one revision and rebuilds the
// view from them; it returns that revision.
func (s *EtcdStore) resync(ctx context.Context) (int64, error) {
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.kPools),
		clientv3.OpGet(s.pfxH, clientv3.WithPrefix()),
		clientv3.OpGet(s.pfxB, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return 0, err
	}
	rev := resp.Header.Revision
	doc, prev, err := decodePools(resp.Responses[0].GetResponseRange().Kvs)
	if err != nil {
		return 0, s.errf("%w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.poolsKey = len(resp.Responses[0].GetResponseRange().Kvs) > 0
	s.setPoolsLocked(doc, prev)
	for id, sl := range s.view.slot {
		sl.h, sl.b, sl.rev = false, false, rev
		s.view.setGrantLocked(id, &sl, grantRef{})
		s.view.slot[id] = sl
	}
	for i, pfx := range []string{s.pfxH, s.pfxB} {
		for _, kv := range resp.Responses[i+1].GetResponseRange().Kvs {
			id := strings.TrimPrefix(string(kv.Key), pfx)
			sl := s.view.slot[id]
			if i == 0 {
				sl.h = true
				s.view.setGrantLocked(id, &sl, grantRefOf(kv))
			} else {
				sl.b = true
			}
			sl.rev = rev
			s.view.slot[id] = sl
		}
	}
	for id := range s.view.slot {
		s.refreshLocked(id)
	}
	return rev, nil
}

func decodePools(kvs []*mvccpb.KeyValue) (poolsDoc, int64, error) {
	var doc poolsDoc
	if len(kvs) == 0 {
		return doc, 0, nil
	}
	if err := json.Unmarshal(kvs[0].Value, &doc); err != nil {
		return doc, 0, fmt.Errorf("corrupt pools: %w", err)
	}
	return doc, kvs[0].ModRevision, nil
}

// setPoolsLocked installs new pools in the view and rebuilds the free sets.
func (s *EtcdStore) setPoolsLocked(doc poolsDoc, rev int64) {
	v := &s.view
	v.pools, v.poolsRev = doc.Pools, rev
	v.draining = map[string]bool{}
	for _, id := range doc.Draining {
		v.draining[id] = true
	}
	if v.slot == nil {
		v.slot = map[string]slot{}
	}
	v.free = map[string]*freeSet{}
	v.poolOf = map[string]int{}
	for i, p := range v.pools {
		f := &freeSet{pos: map[string]int{}}
		v.free[p.Name] = f
		for _, l := range slicesOf(p) {
			v.poolOf[l.ID] = i
			if sl := v.slot[l.ID]; !sl.h && !sl.b && !v.draining[l.ID] {
				f.add(l.ID)
			}
		}
	}
}

// refreshLocked puts id in or out of its pool's free set by its slot.
func (s *EtcdStore) refreshLocked(id string) {
	v := &s.view
	i, ok := v.poolOf[id]
	if !ok {
		return
	}
	f := v.free[v.pools[i].Name]
	if sl := v.slot[id]; sl.h || sl.b || v.draining[id] {
		f.remove(id)
	} else {
		f.add(id)
		if !sl.h && !sl.b {
			delete(v.slot, id)
		}
	}
}

// note records what a read at rev showed of slice id.
func (s *EtcdStore) note(id string, h, b bool, rev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := s.view.slot[id]
	if rev < sl.rev {
		return
	}
	sl.h, sl.b, sl.rev = h, b, rev
	if !h {
		s.view.setGrantLocked(id, &sl, grantRef{})
	}
	s.view.slot[id] = sl
	s.refreshLocked(id)
}

// follow keeps the view current from a watch on the prefix, resyncing
// when the watch breaks (compaction, all members lost for a while).
func (s *EtcdStore) follow(rev int64) {
	defer s.wg.Done()
	for s.stopCtx.Err() == nil {
		wctx := clientv3.WithRequireLeader(s.stopCtx)
		wch := s.cli.Watch(wctx, s.loc.Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for wr := range wch {
			if err := wr.Err(); err != nil {
				s.log.Debug("lease: etcd watch", "err", err)
				break
			}
			for _, ev := range wr.Events {
				s.apply(ev)
			}
			if wr.Header.Revision > rev {
				rev = wr.Header.Revision
			}
		}
		if s.stopCtx.Err() != nil {
			return
		}
		// Rebuild from a fresh read, with a pause so that an unreachable
		// cluster is not hammered.
		for s.stopCtx.Err() == nil {
			ctx, cancel := context.WithTimeout(s.stopCtx, s.o.DialTimeout)
			r, err := s.resync(ctx)
			cancel()
			if err == nil {
				rev = r
				break
			}
			s.log.Debug("lease: etcd resync", "err", err)
			select {
			case <-s.stopCtx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

// apply updates the view with one watch event.
func (s *EtcdStore) apply(ev *clientv3.Event) {
	k := string(ev.Kv.Key)
	put := ev.Type == mvccpb.PUT
	rev := ev.Kv.ModRevision
	switch {
	case k == s.kPools:
		if !put {
			s.mu.Lock()
			s.setPoolsLocked(poolsDoc{}, 0)
			s.mu.Unlock()
			return
		}
		doc, _, err := decodePools([]*mvccpb.KeyValue{ev.Kv})
		if err != nil {
			s.log.Debug("lease: etcd watch", "err", err)
			return
		}
		s.mu.Lock()
		if rev > s.view.poolsRev {
			s.setPoolsLocked(doc, rev)
		}
		s.mu.Unlock()
	case strings.HasPrefix(k, s.pfxH), strings.HasPrefix(k, s.pfxB):
		isH := strings.HasPrefix(k, s.pfxH)
		if isH && put && ev.Kv.Version == 1 {
			s.undoAbandoned(ev.Kv)
		}
		id := strings.TrimPrefix(strings.TrimPrefix(k, s.pfxH), s.pfxB)
		s.mu.Lock()
		sl := s.view.slot[id]
		if rev >= sl.rev {
			if isH {
				sl.h = put
				g := grantRef{}
				if put {
					g = grantRefOf(ev.Kv)
				}
				s.view.setGrantLocked(id, &sl, g)
			} else {
				sl.b = put
			}
			sl.rev = rev
			s.view.slot[id] = sl
			s.refreshLocked(id)
		}
		s.mu.Unlock()
	}
}

// undoAbandoned deletes a grant that a claim of this store gave up on
// (its reply was lost and a read did not show it) but that committed
// later, so that the slice is not held by nobody's knowledge until the
// holder's etcd lease runs out. Nobody was told of the grant, so the
// slice goes back without a quarantine.
func (s *EtcdStore) undoAbandoned(kv *mvccpb.KeyValue) {
	var g grant
	if json.Unmarshal(kv.Value, &g) != nil || g.Nonce == "" {
		return
	}
	s.mu.Lock()
	mine := s.abandoned[g.Nonce]
	delete(s.abandoned, g.Nonce)
	s.mu.Unlock()
	if !mine {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(s.stopCtx, s.o.RequestTimeout)
		defer cancel()
		s.undo(ctx, kv)
	}()
}

// undo deletes the abandoned grant kv (and its b key) if it is still the
// slice's grant.
func (s *EtcdStore) undo(ctx context.Context, kv *mvccpb.KeyValue) error {
	id := strings.TrimPrefix(string(kv.Key), s.pfxH)
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(string(kv.Key)), "=", kv.CreateRevision)).
		Then(clientv3.OpDelete(string(kv.Key)), clientv3.OpDelete(s.pfxB+id)).Commit()
	s.log.Debug("lease: etcd undid an abandoned grant", "slice", id, "err", err)
	if err == nil && resp.Succeeded {
		s.note(id, false, false, resp.Header.Revision)
	}
	return err
}

// sweepAbandoned undoes every grant that committed after a claim of this
// store gave up on it; it reports whether it undid any.
func (s *EtcdStore) sweepAbandoned(ctx context.Context) (bool, error) {
	s.mu.Lock()
	n := len(s.abandoned)
	s.mu.Unlock()
	if n == 0 {
		return false, nil
	}
	resp, err := s.cli.Get(ctx, s.pfxH, clientv3.WithPrefix())
	if err != nil {
		return false, err
	}
	undone := false
	for _, kv := range resp.Kvs {
		var g grant
		if json.Unmarshal(kv.Value, &g) != nil {
			continue
		}
		s.mu.Lock()
		mine := s.abandoned[g.Nonce]
		delete(s.abandoned, g.Nonce)
		s.mu.Unlock()
		if mine {
			if err := s.undo(ctx, kv); err != nil {
				return undone, err
			}
			undone = true
		}
	}
	return undone, nil
}

// Apply makes the store's pools these. Removing or re-cutting a slice
// that is held or in quarantine is refused (nothing changes); while the
// check runs, the slices to be removed are marked draining so that no
// claim takes them.
func (s *EtcdStore) Apply(ctx context.Context, pools []Pool) error {
	if err := checkPools(pools); err != nil {
		return err
	}
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	next := make([]Pool, len(pools))
	for i, p := range pools {
		next[i] = clonePool(p)
	}
	for {
		resp, err := s.cli.Get(ctx, s.kPools)
		if err != nil {
			return s.errf("apply: %w", err)
		}
		old, rev, err := decodePools(resp.Kvs)
		if err != nil {
			return s.errf("%w", err)
		}
		gone := removedSlices(old.Pools, next)
		if len(gone) > 0 {
			// Phase 1: no claim takes the slices that would go.
			drain := poolsDoc{Pools: old.Pools, Draining: gone}
			ok, r1, err := s.casPools(ctx, rev, drain)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			if busy, err := s.firstBusy(ctx, gone); err != nil || busy != nil {
				// Undo the mark.
				if _, _, uerr := s.casPools(ctx, r1, poolsDoc{Pools: old.Pools}); uerr != nil && err == nil {
					err = uerr
				}
				if err != nil {
					return err
				}
				return busyError(busy.ID, busy.State, busy.Holder, busy.Expires)
			}
			rev = r1
		}
		ok, _, err := s.casPools(ctx, rev, poolsDoc{Pools: next})
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
}

// casPools writes doc if the pools key is still at rev; it returns whether
// it did and the new revision.
func (s *EtcdStore) casPools(ctx context.Context, rev int64, doc poolsDoc) (bool, int64, error) {
	v, err := json.Marshal(doc)
	if err != nil {
		return false, 0, err
	}
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.kPools), "=", rev)).
		Then(clientv3.OpPut(s.kPools, string(v))).Commit()
	if err != nil {
		return false, 0, s.errf("apply: %w", err)
	}
	return resp.Succeeded, resp.Header.Revision, nil
}

// firstBusy returns the first of ids that is held or in quarantine.
func (s *EtcdStore) firstBusy(ctx context.Context, ids []string) (*Lease, error) {
	ls, err := s.List(ctx)
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for _, l := range ls {
		if want[l.ID] && l.State != Free {
			return &l, nil
		}
	}
	return nil, nil
}

// leaseFor returns an etcd lease of ttl seconds for holder, reusing the
// cached one while it was refreshed within a third of its TTL (else it
// refreshes it, or grants a new one), and the local time from which its
// remaining TTL is counted.
func (s *EtcdStore) leaseFor(ctx context.Context, holder string, ttl int64) (*heldLease, error) {
	k := leaseKey{holder, ttl}
	s.mu.Lock()
	hl := s.leases[k]
	s.mu.Unlock()
	if hl != nil && time.Since(hl.fresh) < time.Duration(ttl)*time.Second/3 {
		return hl, nil
	}
	if hl != nil {
		sent := time.Now()
		ka, err := s.cli.KeepAliveOnce(ctx, hl.id)
		if err == nil {
			n := &heldLease{id: hl.id, ttl: ka.TTL, fresh: sent}
			s.mu.Lock()
			s.leases[k] = n
			s.mu.Unlock()
			s.sweepLease(ctx, hl.id, "")
			return n, nil
		}
		if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return nil, err
		}
	}
	sent := time.Now()
	g, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return nil, err
	}
	n := &heldLease{id: g.ID, ttl: g.TTL, fresh: sent}
	s.mu.Lock()
	s.leases[k] = n
	s.mu.Unlock()
	return n, nil
}

// sweepLease ends the grants on etcd lease id whose recorded expiry has
// passed (except slice skip's), each in a transaction guarded by the grant
// key's revisions, and puts their slices in quarantine. A holder's slices
// with one TTL share id, so a keep-alive of id (a renew of one of them, or a
// claim) would otherwise keep a slice whose keeper stopped held past its own
// expiry; every keep-alive therefore sweeps. The stale grants are found in
// the view's lease index, so a sweep with none costs no request. Errors are
// only logged: the next keep-alive sweeps again.
func (s *EtcdStore) sweepLease(ctx context.Context, id clientv3.LeaseID, skip string) {
	if id == 0 {
		return
	}
	now := time.Now().UnixNano()
	type stale struct {
		id string
		g  grantRef
	}
	var todo []stale
	s.mu.Lock()
	for sid := range s.view.onLease[int64(id)] {
		if g := s.view.slot[sid].g; sid != skip && g.expires <= now {
			todo = append(todo, stale{sid, g})
		}
	}
	s.mu.Unlock()
	for _, st := range todo {
		err := s.end(ctx, Lease{ID: st.id, Token: uint64(st.g.create)}, st.g.mod, "sweep")
		s.log.Debug("lease: etcd swept a grant past its expiry", "slice", st.id, "token", st.g.create,
			"expired", time.Unix(0, st.g.expires), "err", err)
	}
}

func (s *EtcdStore) forget(holder string, ttl int64, id clientv3.LeaseID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := leaseKey{holder, ttl}
	if hl := s.leases[k]; hl != nil && hl.id == id {
		delete(s.leases, k)
	}
}

// ttlSeconds rounds d up to whole seconds (etcd lease TTLs are seconds).
func ttlSeconds(d time.Duration) int64 {
	return int64(math.Ceil(d.Seconds()))
}

// pick draws a random free slice of the pools that match traits.
func (s *EtcdStore) pick(traits map[string]string, skip map[string]bool) (id string, p Pool, rev int64, matched bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := &s.view
	total := 0
	for _, p := range v.pools {
		if matches(p.Traits, traits) {
			matched = true
			total += len(v.free[p.Name].ids)
		}
	}
	if total == 0 {
		return "", Pool{}, v.poolsRev, matched
	}
	for range 8 {
		n := mrand.IntN(total)
		for _, p := range v.pools {
			if !matches(p.Traits, traits) {
				continue
			}
			f := v.free[p.Name]
			if n < len(f.ids) {
				if id := f.ids[n]; !skip[id] {
					return id, p, v.poolsRev, true
				}
				break
			}
			n -= len(f.ids)
		}
	}
	// Mostly skipped: take the first one not skipped.
	for _, p := range v.pools {
		if matches(p.Traits, traits) {
			for _, id := range v.free[p.Name].ids {
				if !skip[id] {
					return id, p, v.poolsRev, true
				}
			}
		}
	}
	return "", Pool{}, v.poolsRev, matched
}

func nonce() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Claim grants a random free slice of a matching pool in one transaction
// (plus, once per third of the TTL, a keep-alive of the holder's etcd
// leases).
func (s *EtcdStore) Claim(ctx context.Context, req Request) (Lease, error) {
	if err := checkRequest(req); err != nil {
		return Lease{}, err
	}
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	ttl := ttlSeconds(req.TTL)
	skip := map[string]bool{}
	resynced := false
	for attempt := 0; ; attempt++ {
		id, p, prev, matched := s.pick(req.Traits, skip)
		var (
			l   Lease
			ok  bool
			err error
		)
		switch {
		case (!matched || id == "") && !resynced:
			// The view may lag: confirm with a fresh read before saying no.
			actx, acancel := s.attempt(ctx)
			_, err = s.resync(actx)
			acancel()
			if err == nil {
				resynced = true
				clear(skip)
				continue
			}
		case !matched:
			s.mu.Lock()
			pools := s.view.pools
			s.mu.Unlock()
			return Lease{}, unmatchedTraitsError(req.Traits, pools)
		case id == "":
			// A claim of ours whose reply was lost may have committed after
			// all: take such grants back before saying no.
			actx, acancel := s.attempt(ctx)
			var undone bool
			undone, err = s.sweepAbandoned(actx)
			acancel()
			if err == nil && undone {
				clear(skip)
				continue
			}
			if err == nil {
				return Lease{}, fmt.Errorf("%w %s: every matching slice is held or in quarantine", ErrNoSlice, traitString(req.Traits))
			}
		default:
			actx, acancel := s.attempt(ctx)
			l, ok, err = s.try(actx, ctx, req, id, p, prev, ttl)
			acancel()
		}
		if err != nil {
			// A lost leader, a member gone, a lease that ran out: retry
			// until the context ends.
			if ctx.Err() != nil {
				return Lease{}, s.errf("claim: %w", err)
			}
			s.log.Debug("lease: etcd claim retry", "slice", id, "err", err)
			select {
			case <-ctx.Done():
				return Lease{}, s.errf("claim: %w", err)
			case <-time.After(time.Duration(10+mrand.IntN(40)) * time.Millisecond):
			}
			continue
		}
		if ok {
			return l, nil
		}
		skip[id] = true
	}
}

// try runs one claim transaction for slice id. ok is false when the slice
// (or the pools) turned out not as the view said.
// ctx bounds this attempt; outer, the whole claim (for finding out what
// became of a transaction whose reply was lost).
func (s *EtcdStore) try(ctx, outer context.Context, req Request, id string, p Pool, prev int64, ttl int64) (Lease, bool, error) {
	ha, err := s.leaseFor(ctx, req.Holder, ttl)
	if err != nil {
		return Lease{}, false, err
	}
	qs := ttlSeconds(p.Quarantine)
	var hb *heldLease
	if qs > 0 {
		if hb, err = s.leaseFor(ctx, req.Holder, ha.ttl+qs); err != nil {
			return Lease{}, false, err
		}
	}
	g := grant{Holder: req.Holder, Host: req.Host, TTL: ha.ttl * int64(time.Second), Nonce: nonce()}
	g.Expires = ha.fresh.Add(time.Duration(ha.ttl) * time.Second).UnixNano()
	gv, _ := json.Marshal(g)
	kh, kb := s.pfxH+id, s.pfxB+id
	ops := []clientv3.Op{clientv3.OpPut(kh, string(gv), clientv3.WithLease(ha.id))}
	if hb != nil {
		ops = append(ops, clientv3.OpPut(kb, g.Nonce, clientv3.WithLease(hb.id)))
	}
	resp, err := s.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(s.kPools), "=", prev),
		clientv3.Compare(clientv3.CreateRevision(kh), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(kb), "=", 0),
	).Then(ops...).Else(
		clientv3.OpGet(s.kPools, clientv3.WithKeysOnly()),
		clientv3.OpGet(kh, clientv3.WithKeysOnly()),
		clientv3.OpGet(kb, clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			s.forget(req.Holder, ha.ttl, ha.id)
			if hb != nil {
				s.forget(req.Holder, hb.ttl, hb.id)
			}
			return Lease{}, false, err
		}
		// The reply may be lost after the grant committed: look for our
		// nonce.
		if l, ok := s.recover(outer, id, p, g); ok {
			return l, true, nil
		}
		return Lease{}, false, err
	}
	if !resp.Succeeded {
		rev := resp.Header.Revision
		pr := resp.Responses[0].GetResponseRange().Kvs
		if (len(pr) == 0 && prev != 0) || (len(pr) > 0 && pr[0].ModRevision != prev) {
			if _, err := s.resync(ctx); err != nil {
				return Lease{}, false, err
			}
			return Lease{}, false, nil
		}
		s.note(id, len(resp.Responses[1].GetResponseRange().Kvs) > 0, len(resp.Responses[2].GetResponseRange().Kvs) > 0, rev)
		return Lease{}, false, nil
	}
	rev := resp.Header.Revision
	s.note(id, true, hb != nil, rev)
	return s.leaseOf(id, p, g, rev), true, nil
}

// recover reads slice id after a claim transaction whose outcome is
// unknown and reports whether it holds the grant with g's nonce. The read
// is linearizable, so a grant not visible now never commits later.
func (s *EtcdStore) recover(ctx context.Context, id string, p Pool, g grant) (Lease, bool) {
	for ctx.Err() == nil {
		gctx, cancel := s.attempt(ctx)
		resp, err := s.cli.Get(gctx, s.pfxH+id)
		cancel()
		if err == nil {
			var got grant
			if len(resp.Kvs) > 0 && json.Unmarshal(resp.Kvs[0].Value, &got) == nil && got.Nonce == g.Nonce {
				return s.leaseOf(id, p, got, resp.Kvs[0].CreateRevision), true
			}
			// Not committed as far as a linearizable read can tell; should
			// the proposal still commit later, follow undoes it.
			s.mu.Lock()
			s.abandoned[g.Nonce] = true
			s.mu.Unlock()
			return Lease{}, false
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	return Lease{}, false
}

func (s *EtcdStore) leaseOf(id string, p Pool, g grant, token int64) Lease {
	_, addr, index, _ := parseSliceID(id)
	return Lease{ID: id, Pool: p.Name, Addr: addr, Ports: slicePorts(p, index), Holder: g.Holder, Host: g.Host,
		Token: uint64(token), Expires: time.Unix(0, g.Expires), State: Held}
}

// current reads l's grant and checks that l is it.
func (s *EtcdStore) current(ctx context.Context, l Lease) (*mvccpb.KeyValue, *mvccpb.KeyValue, grant, error) {
	resp, err := s.cli.Txn(ctx).Then(clientv3.OpGet(s.pfxH+l.ID), clientv3.OpGet(s.pfxB+l.ID)).Commit()
	if err != nil {
		return nil, nil, grant{}, s.errf("%w", err)
	}
	hk := resp.Responses[0].GetResponseRange().Kvs
	bk := resp.Responses[1].GetResponseRange().Kvs
	if len(hk) == 0 {
		return nil, nil, grant{}, lost(l, "not held (released, or expired)")
	}
	if uint64(hk[0].CreateRevision) != l.Token {
		return nil, nil, grant{}, lost(l, fmt.Sprintf("the current grant is token %d", hk[0].CreateRevision))
	}
	var g grant
	if err := json.Unmarshal(hk[0].Value, &g); err != nil {
		return nil, nil, g, s.errf("slice %s: corrupt grant: %w", l.ID, err)
	}
	var b *mvccpb.KeyValue
	if len(bk) > 0 {
		b = bk[0]
	}
	return hk[0], b, g, nil
}

func (s *EtcdStore) poolNamed(name string) (Pool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.view.pools {
		if p.Name == name {
			return p, true
		}
	}
	return Pool{}, false
}

// Renew extends l's grant: a keep-alive of its etcd leases (which also
// extends the holder's other slices with the same TTL) and a transaction
// that records the new expiry if l is still the current grant.
func (s *EtcdStore) Renew(ctx context.Context, l Lease) (Lease, error) {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	hk, bk, g, err := s.current(ctx, l)
	if err != nil {
		return Lease{}, err
	}
	sent := time.Now()
	if exp := time.Unix(0, g.Expires); !sent.Before(exp) {
		// The holder's etcd lease outlives this grant while the holder
		// renews its other slices, but this grant's own expiry has passed:
		// the renew is too late. End the grant, so that the slice enters
		// its quarantine instead of staying held by nobody's keeper.
		if err := s.end(ctx, l, 0, "renew"); err != nil {
			return Lease{}, err
		}
		return Lease{}, lost(l, "expired at "+exp.UTC().Format(time.RFC3339Nano))
	}
	ka, err := s.cli.KeepAliveOnce(ctx, clientv3.LeaseID(hk.Lease))
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return Lease{}, lost(l, "its etcd lease expired")
	}
	if err != nil {
		return Lease{}, s.errf("renew %s: %w", l.ID, err)
	}
	if bk != nil && bk.Lease != hk.Lease && bk.Lease != 0 {
		if _, err := s.cli.KeepAliveOnce(ctx, clientv3.LeaseID(bk.Lease)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return Lease{}, s.errf("renew %s: %w", l.ID, err)
		}
	}
	s.mu.Lock()
	if hl := s.leases[leaseKey{g.Holder, ka.TTL}]; hl != nil && hl.id == clientv3.LeaseID(hk.Lease) {
		hl.fresh = sent
	}
	s.mu.Unlock()
	g.Expires = sent.Add(time.Duration(ka.TTL) * time.Second).UnixNano()
	gv, _ := json.Marshal(g)
	kh := s.pfxH + l.ID
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(kh), "=", int64(l.Token))).
		Then(clientv3.OpPut(kh, string(gv), clientv3.WithIgnoreLease())).Commit()
	if err != nil {
		return Lease{}, s.errf("renew %s: %w", l.ID, err)
	}
	if !resp.Succeeded {
		return Lease{}, lost(l, "the grant ended during the renew")
	}
	s.sweepLease(ctx, clientv3.LeaseID(hk.Lease), l.ID)
	pool, _, _, _ := parseSliceID(l.ID)
	if p, ok := s.poolNamed(pool); ok {
		return s.leaseOf(l.ID, p, g, int64(l.Token)), nil
	}
	out := l
	out.Holder, out.Host, out.Expires, out.State = g.Holder, g.Host, time.Unix(0, g.Expires), Held
	return out, nil
}

// Release ends l's grant: h/ID goes, b/ID moves to a fresh etcd lease of
// the pool's quarantine.
func (s *EtcdStore) Release(ctx context.Context, l Lease) error {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	if _, _, _, err := s.current(ctx, l); err != nil {
		return err
	}
	return s.end(ctx, l, 0, "release")
}

// end deletes l's grant and puts the slice in its quarantine, in one
// transaction guarded by l's token (and, when mod is not 0, by the grant
// key's ModRevision, so that a renew in between wins); op names the caller
// in errors.
func (s *EtcdStore) end(ctx context.Context, l Lease, mod int64, op string) error {
	pool, _, _, _ := parseSliceID(l.ID)
	p, ok := s.poolNamed(pool)
	q := DefaultQuarantine
	if ok {
		q = p.Quarantine
	}
	kh, kb := s.pfxH+l.ID, s.pfxB+l.ID
	ops := []clientv3.Op{clientv3.OpDelete(kh)}
	var ql clientv3.LeaseID
	if qs := ttlSeconds(q); qs > 0 {
		g, err := s.cli.Grant(ctx, qs)
		if err != nil {
			return s.errf("%s %s: %w", op, l.ID, err)
		}
		ql = g.ID
		ops = append(ops, clientv3.OpPut(kb, "released", clientv3.WithLease(ql)))
	} else {
		ops = append(ops, clientv3.OpDelete(kb))
	}
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(kh), "=", int64(l.Token))}
	if mod != 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(kh), "=", mod))
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		if ql != 0 {
			s.cli.Revoke(ctx, ql)
		}
		return s.errf("%s %s: %w", op, l.ID, err)
	}
	if !resp.Succeeded {
		if ql != 0 {
			s.cli.Revoke(ctx, ql)
		}
		return lost(l, "the grant ended during the "+op)
	}
	s.note(l.ID, false, ql != 0, resp.Header.Revision)
	return nil
}

// List returns every slice from one consistent read. A quarantined slice's
// Expires is the end of its etcd lease (one TimeToLive per distinct lease).
// A grant whose recorded expiry has passed is listed as quarantined until
// its expiry plus the quarantine at the earliest: its key is still there
// only because its holder keeps their shared etcd lease alive with other
// slices, and the holder's next keep-alive ends it (sweepLease).
func (s *EtcdStore) List(ctx context.Context) ([]Lease, error) {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.kPools),
		clientv3.OpGet(s.pfxH, clientv3.WithPrefix()),
		clientv3.OpGet(s.pfxB, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, s.errf("list: %w", err)
	}
	doc, _, err := decodePools(resp.Responses[0].GetResponseRange().Kvs)
	if err != nil {
		return nil, s.errf("%w", err)
	}
	held := map[string]*mvccpb.KeyValue{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		held[strings.TrimPrefix(string(kv.Key), s.pfxH)] = kv
	}
	busy := map[string]*mvccpb.KeyValue{}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		busy[strings.TrimPrefix(string(kv.Key), s.pfxB)] = kv
	}
	ttls := map[int64]time.Time{}
	now := time.Now()
	var out []Lease
	for _, p := range doc.Pools {
		for _, l := range slicesOf(p) {
			if h := held[l.ID]; h != nil {
				var g grant
				json.Unmarshal(h.Value, &g)
				if exp := time.Unix(0, g.Expires); g.Expires != 0 && !now.Before(exp) {
					l.State = Quarantined
					l.Token = uint64(h.CreateRevision)
					l.Expires = exp.Add(p.Quarantine)
				} else {
					l = s.leaseOf(l.ID, p, g, h.CreateRevision)
				}
			} else if b := busy[l.ID]; b != nil {
				l.State = Quarantined
				l.Token = uint64(b.CreateRevision)
				end, ok := ttls[b.Lease]
				if !ok && b.Lease != 0 {
					if r, err := s.cli.TimeToLive(ctx, clientv3.LeaseID(b.Lease)); err == nil && r.TTL > 0 {
						end = time.Now().Add(time.Duration(r.TTL) * time.Second)
					}
					ttls[b.Lease] = end
				}
				l.Expires = end
			}
			out = append(out, l)
		}
	}
	return out, nil
}

// Watch reports changes under the store's prefix (see Watcher); etcd's
// own lease expiries (a grant ending, a quarantine ending) are changes.
func (s *EtcdStore) Watch(ctx context.Context) (<-chan struct{}, error) {
	ch := make(chan struct{}, 1)
	wctx, cancel := context.WithCancel(ctx)
	// Closing the store ends the watch too; AfterFunc (unlike a goroutine
	// waiting on stopCtx) leaves nothing behind when ctx ends first.
	unhook := context.AfterFunc(s.stopCtx, cancel)
	go func() {
		defer close(ch)
		defer cancel()
		defer unhook()
		for wctx.Err() == nil {
			wch := s.cli.Watch(clientv3.WithRequireLeader(wctx), s.loc.Prefix, clientv3.WithPrefix())
			for wr := range wch {
				if wr.Err() != nil {
					break
				}
				if len(wr.Events) > 0 {
					select {
					case ch <- struct{}{}:
					default:
					}
				}
			}
			if wctx.Err() != nil {
				return
			}
			// The watch broke (a leader lost): changes may have been missed.
			select {
			case ch <- struct{}{}:
			default:
			}
			select {
			case <-wctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return ch, nil
}

// Close stops the store's watches and closes the client. Grants stay; the
// holder's etcd leases run out unless another process renews them.
func (s *EtcdStore) Close() error {
	s.stop()
	err := s.cli.Close()
	s.wg.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return s.errf("close: %w", err)
	}
	return nil
}
