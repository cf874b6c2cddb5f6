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
	"time"

	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/tuple"
)

func udpNetwork(dst netip.AddrPort) string {
	if dst.Addr().Is4() {
		return "udp4"
	}
	return "udp6"
}

// udpKernel binds (source, 0), confined by IP_LOCAL_PORT_RANGE when the
// Dialer has a port set, and connects: the kernel gives each socket a port
// of its own, so ports are not shared between destinations.
func (d *Dialer) udpKernel(ctx context.Context, pl *plan, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	var lo, hi uint16
	if pl.ports.IsValid() {
		r := pl.ports.Range(0)
		lo, hi = r.First(), r.Last()
	}
	nd := d.netDialer(lo == 0, func(fd int) error {
		if lo != 0 {
			return netsys.SetLocalPortRange(fd, lo, hi)
		}
		return nil
	})
	if src.IsValid() {
		nd.LocalAddr = &net.UDPAddr{IP: src.AsSlice(), Zone: src.Zone()}
	}
	c, err := nd.DialContext(ctx, udpNetwork(dst), dst.String())
	if err == nil {
		return c, nil
	}
	switch sc := syscallOf(err); {
	case (sc == "bind" || sc == "connect") && (netsys.IsAddrInUse(err) || errors.Is(err, syscall.EAGAIN)):
		return nil, fmt.Errorf("%w: %w", errSourceFull, err)
	case sc == "bind":
		return nil, sourceError(src, err)
	}
	return nil, err
}

// udpSearch tries ports of the set in the selector's order with the
// cooperative lock (udpTry).
func (d *Dialer) udpSearch(ctx context.Context, st *state, pl *plan, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if !src.IsValid() {
		var err error
		if src, err = netsys.RouteSource(dst.Addr()); err != nil {
			return nil, fmt.Errorf("dial: finding the source address toward %v: %w", dst.Addr(), err)
		}
	}
	sr := search{key: holdKey{proto: tuple.UDP, src: src, dst: dst}, size: uint32(pl.ports.Len())}
	var uses []portSlot
	if st.udpLock != UDPLockRegistry {
		uses = st.portUses(src, sr.size)
	}
	// try dials port index idx and settles it in the selector. taken
	// reports that another socket holds the 4-tuple, or that another
	// process's lock or socket holds the port (the port is memoised and the
	// search goes on); otherwise the search ends with c or err.
	//
	// wait says whether to wait for another dial of this Dialer that is
	// inside (source, port)'s lock window; without it such a port is
	// errOwnBusy, retried before exhaustion like a busy port.
	try := func(idx uint32, wait bool) (c net.Conn, taken bool, err error) {
		port, _ := pl.ports.Nth(int(idx))
		st.tries.Add(1)
		var uc *net.UDPConn
		var reg *registry
		var off int64
		var rc syscall.RawConn
		switch st.udpLock {
		case UDPLockRegistry:
			uc, reg, off, err = d.udpTryRegistry(ctx, st, src, port, dst)
		case UDPLockOwner:
			uc, rc, err = d.udpTryOwner(ctx, st, src, port, dst, &uses[idx], wait)
		default:
			uc, err = d.udpTry(ctx, st, src, port, dst, &uses[idx], wait)
		}
		if err == errOwnBusy {
			st.sel.settle(&sr, idx, false)
			return nil, true, err
		}
		if errors.Is(err, errPortTaken) {
			st.sel.settleTaken(&sr, idx)
			return nil, true, err
		}
		st.sel.settle(&sr, idx, err == nil)
		if err != nil {
			return nil, false, err
		}
		c = newUDPConn(uc, st.sel, sr.key, idx, reg, off)
		if uses != nil {
			rel := c.(*UDPConn).rel
			rel.use = &uses[idx].n
			if rc != nil {
				rel.slot, rel.rc, rel.sock = &uses[idx], rc, uc
			}
		}
		return c, false, nil
	}
	var last error
	var busy []uint32 // indices whose bind met another process's lock
	for range d.maxAttempts() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		idx, ok := st.sel.pick(&sr)
		if !ok {
			break
		}
		c, taken, err := try(idx, false)
		if !taken {
			return c, err
		}
		if errors.Is(err, errPortBusy) || err == errOwnBusy {
			busy = append(busy, idx)
		}
		if err != errOwnBusy {
			last = err
		}
	}
	// A bind that failed with EADDRINUSE may have met a cooperating socket
	// holding its lock for a few microseconds (another Dialer or process),
	// not an owner of the port: before reporting exhaustion, retry those
	// ports a few times with a short, growing pause.
	wait := busyFirstWait
	for round := 0; round < busyRounds && len(busy) > 0; round++ {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		wait *= 2
		still := busy[:0]
		for _, idx := range busy {
			if !st.sel.reserve(&sr, idx) {
				continue // this Dialer holds it now
			}
			c, taken, err := try(idx, true)
			if !taken {
				return c, err
			}
			if errors.Is(err, errPortBusy) {
				still = append(still, idx)
			}
			last = err
		}
		busy = still
	}
	if last == nil {
		last = fmt.Errorf("this Dialer holds all %d ports toward %v", sr.size, dst)
	}
	return nil, fmt.Errorf("%w: %w", errSourceFull, last)
}

// portUses returns the Dialer's slots of each port index of src (size
// ports): the count of its connected sockets on the port, which tells
// udpTry when the exclusive bind can work (a count that is wrong for a
// moment costs one failed bind or one skipped fast path, never a
// guarantee), and the port's mutex.
func (st *state) portUses(src netip.Addr, size uint32) []portSlot {
	if p := st.uses.Load(); p != nil {
		for _, u := range *p {
			if u.src == src {
				return u.n
			}
		}
	}
	st.usesMu.Lock()
	defer st.usesMu.Unlock()
	var tab []srcUses
	if p := st.uses.Load(); p != nil {
		for _, u := range *p {
			if u.src == src {
				return u.n
			}
		}
		tab = append(tab, *p...)
	}
	u := srcUses{src: src, n: make([]portSlot, size)}
	tab = append(tab, u)
	st.uses.Store(&tab)
	return u.n
}

// srcUses are the slots of portUses for one source.
type srcUses struct {
	src netip.Addr
	n   []portSlot
}

// portSlot is what a Dialer keeps per (source, port) for the cooperative
// lock: n counts its connected sockets on the port; mu keeps its own dials
// out of each other's lock window (while one holds SO_REUSEADDR=0, another
// would fail to bind the port and wrongly count it as taken), and under
// UDPLockOwner guards the port's socket set.
type portSlot struct {
	n  atomic.Int32
	mu sync.Mutex
	// socks are the Dialer's sockets on the port under UDPLockOwner,
	// guarded by mu.
	socks []syscall.RawConn
}

// busyRounds and busyFirstWait bound the retries of ports whose bind met
// another process's lock: 4 rounds after 50, 100, 200 and 400 µs.
const (
	busyRounds    = 4
	busyFirstWait = 50 * time.Microsecond
)

// errPortBusy: bind failed with EADDRINUSE, so a socket holds the port
// without sharing it, possibly only for the moment (a cooperating socket's
// lock).
var errPortBusy = fmt.Errorf("%w: bound without sharing, or locked by another process", errPortTaken)

// errOwnBusy: another dial of this Dialer is inside the port's lock
// window. The search does not wait for it (a goroutine parked on the port
// mutex waits for a scheduler slot once woken, up to a time slice, while
// dials that never park hold both Ps: a 10-15 ms tail in bench dial) but
// tries the next port, and comes back to this one before exhaustion.
var errOwnBusy = errors.New("dial: another dial of this Dialer holds the port's lock")

// udpTry dials (source, port) -> dst for UDPLockFile and UDPLockDump; the
// net package creates, connects and wraps the socket itself.
//
// The exclusive bind (the fast path), when use says this Dialer holds no
// socket on (source, port) and there is no user Control:
// net.Dialer.DialUDP binds (source, port) with SO_REUSEADDR still 0, as
// the socket was created, and connects; then SO_REUSEADDR=1 (step 5). The
// kernel checks and inserts a bind under one lock of its port hash, and a
// socket without SO_REUSEADDR conflicts with every other socket on the
// port, so success proves that no socket at all held (source, port),
// connected or not, and none can bind it until SO_REUSEADDR is set: the
// socket is in the protocol's lock (step 2 below) from its bind on, no
// 4-tuple of the port is connected, and the lock file and the lookup have
// nothing to find. EADDRINUSE means some socket holds the port: the
// cooperative lock follows, on a new socket.
//
// The cooperative lock (Cloudflare's connectx for UDP), inside a
// net.Dialer's ControlContext:
//
//  0. UDPLockFile: take the advisory lock of (source, port) in the lock
//     directory (an OFD lock, netsys.PortLockFile), held until step 5. No
//     other portspace process of the namespace is between its steps 1 and
//     4 for this (source, port) meanwhile. Held elsewhere: busy.
//  1. Read the socket's SO_COOKIE; SO_REUSEADDR=1; the user's Control;
//     bind(source, port). EADDRINUSE: another socket holds the port
//     without sharing it, or another program's SO_REUSEADDR lock holds it
//     right now: busy (udpSearch retries it before reporting exhaustion).
//     Within the Dialer, the per-(source, port) mutex keeps its own dials
//     out of each other's lock.
//  2. SO_REUSEADDR=0. This is the protocol's lock: no cooperating socket
//     can bind (source, port) until it is set again.
//  3. UDPLockDump only: the in-flight check, a dump of the unconnected UDP
//     sockets; another one bound to (source, port) may be between its own
//     steps 1 and 4: busy.
//  4. Exact sock_diag lookups of (destination -> source:port), one per
//     interface of the namespace (state.interfaces): the socket the kernel
//     would deliver that 4-tuple's datagrams to when they arrive on that
//     interface, among the sockets bound to no device or to that one. A
//     socket connected to the destination wins over ours; if an answer is
//     not our cookie, the 4-tuple is taken (a socket connected to it, or
//     another unconnected one that may be in its own lock window). No
//     answer (ENOENT) means the best match is a socket that is being
//     closed: taken, too. A lookup without an interface would skip every
//     socket bound to a device (SO_BINDTODEVICE): TestUDPDeviceBoundHolder.
//  5. connect(destination) (by the net package); SO_REUSEADDR=1 again to
//     release the protocol's lock; release the file lock.
func (d *Dialer) udpTry(ctx context.Context, st *state, src netip.Addr, port uint16, dst netip.AddrPort, slot *portSlot, wait bool) (*net.UDPConn, error) {
	mu := &slot.mu
	if wait {
		mu.Lock()
	} else if !mu.TryLock() {
		return nil, errOwnBusy
	}
	defer mu.Unlock()
	use := &slot.n
	local := netip.AddrPortFrom(src, port)
	user := d.ControlContext != nil || d.Control != nil
	if !user && !testHookSkipLock && !testHookNoExclusive && use.Load() == 0 {
		// The exclusive bind: net binds local itself, with SO_REUSEADDR
		// as the socket was created (0), and connects.
		fd := -1
		nd := net.Dialer{ControlContext: func(_ context.Context, _, _ string, c syscall.RawConn) error {
			return c.Control(func(s uintptr) { fd = int(s) })
		}}
		uc, err := nd.DialUDP(ctx, udpNetwork(dst), local, dst)
		switch sc := syscallOf(err); {
		case err == nil:
			if err := releaseLock(uc, fd, local, true); err != nil {
				return nil, err
			}
			st.exclusive.Add(1)
			use.Add(1) // under mu: the next dial of (source, port) sees it
			return uc, nil
		case sc == "bind" && netsys.IsAddrInUse(err):
			// Some socket holds the port: the cooperative lock.
		case sc == "bind":
			return nil, sourceError(src, err)
		default:
			return nil, err
		}
	}
	tr := &udpTrial{d: d, st: st, local: local, dst: dst}
	defer tr.unlock()
	nd := net.Dialer{ControlContext: func(ctx context.Context, network, address string, c syscall.RawConn) error {
		if !user {
			// Every step in one Control call.
			return netsys.Control(c, tr.steps)
		}
		err := netsys.Control(c, func(fd int) (err error) {
			if tr.own, err = netsys.Cookie(fd); err != nil {
				return err
			}
			return netsys.SetReuseAddr(fd, true)
		})
		if err != nil {
			return err
		}
		if err := d.userControl(ctx, network, address, c); err != nil {
			return err
		}
		return netsys.Control(c, tr.lockSteps)
	}}
	c, err := nd.DialContext(ctx, udpNetwork(dst), dst.String())
	if err != nil {
		// The steps' own errors come back inside net's *OpError; unwrap
		// them so that the search sees errPortTaken and the caller a
		// single OpError.
		if se, ok := errors.AsType[*stepError](err); ok {
			return nil, se.err
		}
		return nil, err
	}
	uc := c.(*net.UDPConn)
	if testHookSkipLock {
		return uc, nil
	}
	if err := releaseLock(uc, tr.fd, local, false); err != nil {
		return nil, err
	}
	use.Add(1)
	return uc, nil
}

// releaseLock sets SO_REUSEADDR on fd, the connected socket of udpTry
// (after testHookConnected), releasing the protocol's lock; on failure it
// closes uc. fd was read in the dial's Control and stays valid: nothing but
// udpTry holds uc yet.
func releaseLock(uc *net.UDPConn, fd int, local netip.AddrPort, exclusive bool) error {
	if testHookConnected != nil {
		testHookConnected(local, exclusive)
	}
	if err := netsys.SetReuseAddr(fd, true); err != nil {
		uc.Close()
		return fmt.Errorf("dial: udp lock: releasing: %w", err)
	}
	return nil
}

// udpTrial is one udpTry: what its steps learn and hold.
type udpTrial struct {
	d          *Dialer
	st         *state
	local, dst netip.AddrPort
	own        uint64 // our SO_COOKIE
	fd         int    // the socket, for the release after connect
	lf         *netsys.PortLockFile
}

// unlock releases the file lock, if step 0 took it.
func (tr *udpTrial) unlock() {
	if tr.lf != nil {
		tr.lf.Unlock(tr.local.Port())
		tr.lf = nil
	}
}

// steps runs the cooperative lock's steps 0 to 4 on fd (no user Control).
func (tr *udpTrial) steps(fd int) error {
	var err error
	if tr.own, err = netsys.Cookie(fd); err != nil {
		return err
	}
	if err := netsys.SetReuseAddr(fd, true); err != nil {
		return err
	}
	return tr.lockSteps(fd)
}

// lockSteps runs the cooperative lock's step 0 and steps 1 (bind) to 4 on
// fd, whose cookie is tr.own and whose SO_REUSEADDR is set.
func (tr *udpTrial) lockSteps(fd int) error {
	tr.fd = fd
	st, local, port := tr.st, tr.local, tr.local.Port()
	if st.udpLock == UDPLockFile && !testHookSkipLock {
		lf, err := st.lockFile(local.Addr())
		if err != nil {
			return wrapStep(err)
		}
		ok, err := lf.TryLock(port)
		if err != nil {
			return wrapStep(fmt.Errorf("dial: udp lock: %w", err))
		}
		if !ok {
			return wrapStep(fmt.Errorf("%w: another process holds the lock of %v", errPortBusy, local))
		}
		tr.lf = lf
	}
	return wrapStep(tr.d.udpLockSteps(st, fd, tr.own, local, tr.dst))
}

// stepError carries an error of udpLockSteps through net.Dialer.
type stepError struct{ err error }

func wrapStep(err error) error {
	if err == nil {
		return nil
	}
	return &stepError{err}
}

func (e *stepError) Error() string { return e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// udpLockSteps runs steps 1 (bind) to 4 of udpTry on fd.
func (d *Dialer) udpLockSteps(st *state, fd int, own uint64, local, dst netip.AddrPort) error {
	if err := netsys.Bind(fd, local); err != nil {
		if netsys.IsAddrInUse(err) {
			return fmt.Errorf("%w: %w", errPortBusy, err)
		}
		return sourceError(local.Addr(), err)
	}
	if testHookSkipLock {
		return nil
	}
	if err := netsys.SetReuseAddr(fd, false); err != nil {
		return fmt.Errorf("dial: udp lock: %w", err)
	}
	if st.udpLock == UDPLockDump {
		// Before the exact lookup: another socket bound to local and not
		// yet connected may have passed bind's check just before our lock
		// and be running its own lookup, and it need not be visible to
		// ours. Of two such sockets at least one sees the other here and
		// backs off; a socket that connected before this check is found by
		// the lookup below.
		other, err := st.diags.otherUnbound(local, own)
		if err != nil {
			return fmt.Errorf("dial: udp lock: %w", err)
		}
		if other {
			return fmt.Errorf("%w: another socket is binding %v", errPortBusy, local)
		}
	}
	ifs, err := st.interfaces()
	if err != nil {
		return fmt.Errorf("dial: udp lock: %w", err)
	}
	return st.diags.checkTuple(local, dst, own, ifs)
}

// checkTuple runs the exact lookup of (dst -> local) once per interface
// index of ifs, on one pooled socket, and returns errPortTaken when an
// answer is not our socket (cookie own): a socket connected to dst on local
// (bound to no device or to one of ifs), another unconnected one that
// outscores ours, or none (the best match is a socket being closed).
func (p *diagPool) checkTuple(local, dst netip.AddrPort, own uint64, ifs []int) error {
	var taken error
	err := p.do(func(d *netsys.Diag) error {
		for _, ix := range ifs {
			o, found, err := d.LookupUDPOn(local, dst, ix)
			if err != nil {
				return err
			}
			if !found {
				// The best match is a socket being closed (its refcount
				// already dropped; the kernel skips it): the 4-tuple
				// frees soon, but not now.
				taken = fmt.Errorf("%w: %v -> %v belongs to a closing socket", errPortTaken, local, dst)
				return nil
			}
			if o.Cookie != own {
				taken = fmt.Errorf("%w: %v -> %v: the lookup on interface %d names another socket (cookie %#x, peer %v)", errPortTaken, local, dst, ix, o.Cookie, o.Peer)
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("dial: udp lock: %w", err)
	}
	return taken
}

// ifaceTTL is how long a Dialer uses its list of the namespace's
// interfaces for the per-interface lookups before it reads the list again
// (net.Interfaces, one netlink dump): a socket bound to a device created
// less than this before a dial, and connected on the 4-tuple, can be missed.
const ifaceTTL = time.Second

// ifaceList is the interface indices read at a time of the Dialer's clock.
type ifaceList struct {
	idx []int
	at  time.Time
}

// interfaces returns the indices of the network namespace's interfaces
// (at least one: with none, index 0, the lookup without an interface).
func (st *state) interfaces() ([]int, error) {
	now := st.sel.now()
	if l := st.ifs.Load(); l != nil && !now.Before(l.at) && now.Sub(l.at) < ifaceTTL {
		return l.idx, nil
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("listing the interfaces for the per-interface lookup: %w", err)
	}
	l := &ifaceList{at: now}
	for _, ifc := range ifs {
		l.idx = append(l.idx, ifc.Index)
	}
	if len(l.idx) == 0 {
		l.idx = []int{0}
	}
	st.ifs.Store(l)
	return l.idx, nil
}

// testHookConnected, when set, runs in udpTry after connect and before
// the protocol's lock is released (tests look at the port in the window).
var testHookConnected func(local netip.AddrPort, exclusive bool)

// testHookNoExclusive turns the exclusive bind off, so that tests (and the
// benchmark's comparison) can run the cooperative lock on a free port.
var testHookNoExclusive bool

// testHookSkipLock makes udpTry skip every lock and the lookup
// (SO_REUSEADDR, bind, connect, as programs that do not cooperate do). Only
// the race test's control run sets it, to show that its duplicate check
// works.
var testHookSkipLock bool

// diagPool keeps a few open sock_diag sockets for a Dialer, so that a lookup
// costs one sendto and one recvfrom. A Dialer's sockets are closed when it
// is garbage collected.
type diagPool struct {
	ch chan *netsys.Diag
}

func newDiagPool(owner *state) *diagPool {
	p := &diagPool{ch: make(chan *netsys.Diag, 4)}
	runtime.AddCleanup(owner, func(p *diagPool) { p.closeAll() }, p)
	return p
}

// do runs f on one of the pool's sock_diag sockets (opening one if none
// is free) and keeps the socket for later unless f failed.
func (p *diagPool) do(f func(d *netsys.Diag) error) error {
	var d *netsys.Diag
	select {
	case d = <-p.ch:
	default:
		var err error
		if d, err = netsys.OpenDiag(); err != nil {
			return err
		}
	}
	if err := f(d); err != nil {
		d.Close()
		return err
	}
	select {
	case p.ch <- d:
	default:
		d.Close()
	}
	return nil
}

// otherUnbound is netsys.Diag.OtherUnboundUDP on a pooled socket.
func (p *diagPool) otherUnbound(local netip.AddrPort, own uint64) (other bool, err error) {
	err = p.do(func(d *netsys.Diag) (err error) {
		other, err = d.OtherUnboundUDP(local, own)
		return err
	})
	return other, err
}

func (p *diagPool) closeAll() {
	for {
		select {
		case d := <-p.ch:
			d.Close()
		default:
			return
		}
	}
}
