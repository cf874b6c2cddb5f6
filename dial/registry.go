package dial

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/portspace/portspace/internal/netsys"
)

// registryProto names the registry files in the lock directory:
// LockDir/udptupleSS-<netns>-<source>, SS the shard (registryShard) in two
// hex digits. The name carries the layout (the shards and registryOffset):
// a change of layout must change the name, or processes of two versions
// would not see each other's 4-tuples.
const registryProto = "udptuple"

// registryShards is the number of registry files per (network namespace,
// source address). Linux keeps an inode's record locks in one list and
// walks it on every F_OFD_SETLK, so the cost of a lock grows with the locks
// held on its file by every process (measured: a dial at 0.56x a plain one
// with 400 conns held in one file, 0.23x with 4,000). Sharding by port
// divides that list; a Dialer opens at most registryShards files per
// source, at their first use.
const registryShards = 256

// registryShard returns the registry file (shard) of port: its low byte.
func registryShard(port uint16) int { return int(port & (registryShards - 1)) }

// registryOffset returns the byte of a registry file (the shard of port, in
// the network namespace and of the source address) that stands for the connected UDP 4-tuple
// (source, port, dst): port<<32 | h, where h is the 32-bit FNV-1a hash of
// dst's address in its 16-byte form (IPv4 as ::ffff:a.b.c.d; the zone is
// ignored) followed by dst's port, high byte first. Every process computes
// the same offset for the same 4-tuple (there is no per-process key); two
// destinations whose hashes collide share a byte, which costs capacity (one
// of the two 4-tuples looks busy while the other is held), never
// uniqueness. The offset is below 2^48. It allocates nothing
// (TestRegistryOffsetAllocs).
func registryOffset(port uint16, dst netip.AddrPort) int64 {
	const (
		fnvOffset = 2166136261
		fnvPrime  = 16777619
	)
	h := uint32(fnvOffset)
	a := dst.Addr().As16()
	for _, b := range a {
		h = (h ^ uint32(b)) * fnvPrime
	}
	p := dst.Port()
	h = (h ^ uint32(p>>8)) * fnvPrime
	h = (h ^ uint32(p&0xff)) * fnvPrime
	return int64(port)<<32 | int64(h)
}

// registryStripes is the number of mutexes (and reference-count maps) of
// one registry.
const registryStripes = 64

// registry is a Dialer's open registry files of one source address
// (UDPLockRegistry): a byte lock per connected 4-tuple, held from before
// bind until the socket is closed. Locks of one open file description do
// not exclude each other and do not count (one F_UNLCK releases a byte
// locked twice), so the registry counts the Dialer's holders of each byte:
// two of its 4-tuples whose offsets collide share the lock, which is
// released when the last of them closes. The files are closed when neither
// the Dialer nor any of its conns can reach the registry any more.
type registry struct {
	dir, netns string
	src        netip.Addr
	files      *registryFiles
	stripes    [registryStripes]struct {
		mu sync.Mutex
		n  map[int64]int32
	}
}

// registryFiles are the open shards of a registry; f is read without the
// mutex, which only serialises opening.
type registryFiles struct {
	mu sync.Mutex
	f  [registryShards]atomic.Pointer[netsys.PortLockFile]
}

func (fs *registryFiles) closeAll() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for i := range fs.f {
		if f := fs.f[i].Swap(nil); f != nil {
			f.Close()
		}
	}
}

func newRegistry(dir, netns string, src netip.Addr) *registry {
	r := &registry{dir: dir, netns: netns, src: src, files: &registryFiles{}}
	runtime.AddCleanup(r, (*registryFiles).closeAll, r.files)
	return r
}

// file returns the open registry file of port's shard, opening it at its
// first use.
func (r *registry) file(port uint16) (*netsys.PortLockFile, error) {
	i := registryShard(port)
	fs := r.files
	if f := fs.f[i].Load(); f != nil {
		return f, nil
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f := fs.f[i].Load(); f != nil {
		return f, nil
	}
	f, err := netsys.OpenPortLockFile(r.dir, r.netns, fmt.Sprintf("%s%02x", registryProto, i), r.src)
	if err != nil {
		return nil, err
	}
	fs.f[i].Store(f)
	return f, nil
}

func (r *registry) stripe(off int64) int {
	return int((uint64(off) * 0x9e3779b97f4a7c15) >> (64 - 6))
}

// acquire takes the byte at off for one more holder of this Dialer: it
// reports false, without error, when another file description (another
// portspace process or Dialer) holds it.
func (r *registry) acquire(off int64) (bool, error) {
	s := &r.stripes[r.stripe(off)]
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.n[off]; n > 0 {
		s.n[off] = n + 1 // a colliding 4-tuple of this Dialer holds it
		return true, nil
	}
	f, err := r.file(uint16(off >> 32))
	if err != nil {
		return false, err
	}
	ok, err := f.TryLockAt(off)
	if !ok || err != nil {
		return ok, err
	}
	if s.n == nil {
		s.n = make(map[int64]int32)
	}
	s.n[off] = 1
	return true, nil
}

// release drops one holder of the byte at off and unlocks it after the
// last.
func (r *registry) release(off int64) error {
	s := &r.stripes[r.stripe(off)]
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.n[off] - 1
	if n > 0 {
		s.n[off] = n
		return nil
	}
	delete(s.n, off)
	if n < 0 {
		return nil // not held (a second release); nothing to unlock
	}
	f, err := r.file(uint16(off >> 32))
	if err == nil {
		err = f.UnlockAt(off)
	}
	if err != nil {
		return fmt.Errorf("dial: udp registry: %w", err)
	}
	return nil
}

// registries are a Dialer's registries, one per source address (m, read
// without the mutex, which serialises adding one).
type registries struct {
	mu sync.Mutex
	m  sync.Map // netip.Addr -> *registry
}

// closeAll closes the registry files now, releasing every byte they hold
// (for tests that count file descriptors).
func (rs *registries) closeAll() {
	rs.m.Range(func(_, r any) bool {
		r.(*registry).files.closeAll()
		return true
	})
}

// registry returns the Dialer's registry of source src (its files open at
// their first use).
func (st *state) registry(src netip.Addr) (*registry, error) {
	rs := &st.registries
	if r, ok := rs.m.Load(src); ok {
		return r.(*registry), nil
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if r, ok := rs.m.Load(src); ok {
		return r.(*registry), nil
	}
	r := newRegistry(st.lockDir, st.netns, src)
	rs.m.Store(src, r)
	return r, nil
}

// probeRegistry checks that a registry file can be opened in the lock
// directory and that a byte at the top of the offset range locks.
func (st *state) probeRegistry() error {
	lf, err := netsys.OpenPortLockFile(st.lockDir, st.netns, registryProto+"00", netipUnspecified)
	if err != nil {
		return err
	}
	defer lf.Close()
	const top = 65535<<32 | 0xffffffff
	ok, err := lf.TryLockAt(top)
	if err != nil {
		return err
	}
	if ok {
		return lf.UnlockAt(top)
	}
	return nil // held by another process's probe: locks work
}

var netipUnspecified = netip.IPv4Unspecified()

// udpTryRegistry dials (source, port) -> dst under UDPLockRegistry:
//
//  1. Take the registry byte of the 4-tuple (registryOffset) without
//     waiting. Held by another portspace process (or Dialer): busy, the
//     search goes on (and retries it before reporting exhaustion).
//  2. In a net.Dialer's ControlContext: SO_REUSEADDR=1, the user's Control,
//     bind(source, port). EADDRINUSE: a socket holds the port without
//     sharing, or a program of the published protocol is in its lock
//     window: busy.
//  3. connect(dst), by the net package.
//
// The byte stays locked for the life of the conn: UDPConn.Close closes the
// socket first and then unlocks it; on any failure here it is unlocked at
// once. No sock_diag: a socket connected to the 4-tuple by a program that
// does not register (see the package documentation) is not seen.
func (d *Dialer) udpTryRegistry(ctx context.Context, st *state, src netip.Addr, port uint16, dst netip.AddrPort) (*net.UDPConn, *registry, int64, error) {
	reg, err := st.registry(src)
	if err != nil {
		return nil, nil, 0, err
	}
	off := registryOffset(port, dst)
	ok, err := reg.acquire(off)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("dial: udp registry: %w", err)
	}
	local := netip.AddrPortFrom(src, port)
	if !ok {
		return nil, nil, 0, fmt.Errorf("%w: another process holds %v -> %v (or a 4-tuple of the same registry byte)", errPortBusy, local, dst)
	}
	user := d.ControlContext != nil || d.Control != nil
	nd := net.Dialer{ControlContext: func(ctx context.Context, network, address string, c syscall.RawConn) error {
		err := netsys.Control(c, func(fd int) error {
			if err := netsys.SetReuseAddr(fd, true); err != nil || user {
				return err
			}
			return wrapStep(registryBind(fd, local))
		})
		if err != nil || !user {
			return err
		}
		if err := d.userControl(ctx, network, address, c); err != nil {
			return err
		}
		return wrapStep(netsys.Control(c, func(fd int) error { return registryBind(fd, local) }))
	}}
	c, err := nd.DialContext(ctx, udpNetwork(dst), dst.String())
	if err != nil {
		reg.release(off)
		if se, ok := errors.AsType[*stepError](err); ok {
			return nil, nil, 0, se.err
		}
		return nil, nil, 0, err
	}
	return c.(*net.UDPConn), reg, off, nil
}

// registryBind binds fd to local; EADDRINUSE makes the port busy.
func registryBind(fd int, local netip.AddrPort) error {
	if err := netsys.Bind(fd, local); err != nil {
		if netsys.IsAddrInUse(err) {
			return fmt.Errorf("%w: %w", errPortBusy, err)
		}
		return sourceError(local.Addr(), err)
	}
	return nil
}
