package dial

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/tuple"
)

// ErrExhausted is returned (wrapped) when no (source, port) pair of the
// Dialer is free toward the destination: every source's ports already carry
// a connection to that exact address and port. Test it with errors.Is.
var ErrExhausted = errors.New("dial: no free source port toward the destination")

// ErrStrategy is returned (wrapped) when the forced Strategy cannot serve
// the Dialer's configuration on this kernel or namespace.
var ErrStrategy = errors.New("dial: strategy not usable here")

// Strategy selects how a Dialer chooses source ports.
type Strategy int

const (
	// Auto (the zero value) picks the fastest strategy that confines ports
	// exactly: Kernel for TCP when the port set is empty, or is one range
	// inside the namespace's ip_local_port_range and the kernel has
	// IP_LOCAL_PORT_RANGE; Search otherwise, and always Search for UDP
	// (Kernel when the kernel lacks the sock_diag lookup).
	Auto Strategy = iota
	// Kernel lets the kernel choose the port at connect time. TCP:
	// IP_BIND_ADDRESS_NO_PORT on a bound source, and IP_LOCAL_PORT_RANGE
	// for a port set; the kernel then checks the whole 4-tuple, so a port
	// serves many destinations. UDP: bind(source, 0) and connect, which
	// gives every socket its own port (no sharing).
	Kernel
	// Search chooses ports in user space. It starts at an RFC 6056 §3.3.3
	// keyed hash of (source, destination), skips ports this Dialer already
	// holds toward that destination and, until they expire, ports it found
	// taken by other sockets toward it (retried, oldest first, before
	// ErrExhausted), and tries each candidate. TCP:
	// SO_REUSEADDR, bind, connect; EADDRNOTAVAIL means the 4-tuple is taken.
	// UDP: an exclusive bind on a port no socket holds, else the
	// cooperative SO_REUSEADDR lock with an exact sock_diag lookup (see the
	// package documentation).
	Search
)

// String returns the strategy's name.
func (s Strategy) String() string {
	switch s {
	case Auto:
		return "auto"
	case Kernel:
		return "kernel"
	case Search:
		return "search"
	}
	return "Strategy(" + strconv.Itoa(int(s)) + ")"
}

// UDPLock selects how the UDP Search strategy keeps two sockets off one
// connected 4-tuple (see the package documentation). UDPLockFile and
// UDPLockDump run the cooperative SO_REUSEADDR lock and the exact sock_diag
// lookup, so they interoperate with other programs that follow that
// protocol, and differ in how two portspace processes binding one (source,
// port) at the same instant exclude each other. UDPLockRegistry needs no
// sock_diag: portspace processes register every 4-tuple they hold.
// UDPLockOwner needs neither sock_diag nor a directory: the kernel's bind
// check keeps every other socket off the ports the Dialer holds.
type UDPLock int

const (
	// UDPLockAuto (the zero value) uses UDPLockFile when the lock
	// directory and open file description locks work (probed at the
	// Dialer's first dial), UDPLockDump otherwise.
	UDPLockAuto UDPLock = iota
	// UDPLockFile holds an advisory lock per (network namespace, source,
	// port) in LockDir around the protocol's steps, so no two processes
	// that share the directory are inside them for one port at once. The
	// kernel walks no table: the dial costs two fcntl calls over a plain
	// locked dial, and none on a port that no socket holds (the exclusive
	// bind, which needs no lock). Every portspace process of the namespace
	// that dials from the same ports must use it with the same directory.
	UDPLockFile
	// UDPLockDump adds, instead, an in-flight check: a sock_diag dump of
	// the unconnected UDP sockets, which finds another socket bound to the
	// port whose owner may be between bind and connect. It needs no shared
	// directory, but the kernel walks its whole UDP hash table (every
	// slot and every socket, connected or not) for each attempt.
	UDPLockDump
	// UDPLockRegistry registers every connected 4-tuple of the Dialer, for
	// the life of its conn, as an open file description lock on one byte
	// of a registry file per (network namespace, source address) in
	// LockDir, at an offset computed from (port, destination); a 4-tuple
	// whose byte another process holds is busy. The dial is
	// SO_REUSEADDR, bind and connect plus one fcntl (and one at Close):
	// no sock_diag, no lock window. It excludes only processes that
	// register in the same directory: a socket connected earlier by any
	// other program (including portspace processes using UDPLockFile or
	// UDPLockDump) is not seen, and the Dialer may connect the same
	// 4-tuple beside it. Programs of the published protocol that dial
	// after us still see our sockets. Use it when every process dialing
	// from the port set is a portspace process with UDPLockRegistry and
	// the same LockDir; it is never chosen by UDPLockAuto.
	UDPLockRegistry
	// UDPLockOwner makes the Dialer the kernel's owner of each (source,
	// port) it dials from: its first socket on the port binds with
	// SO_REUSEADDR=0 and SO_REUSEPORT=0, which only succeeds when no
	// socket of any program holds the port, and while the Dialer holds a
	// socket there every socket of its own on the port keeps both at 0,
	// so no other socket (of any program, of any portspace process and
	// lock, or of another Dialer) can bind the port. A further dial on
	// an owned port sets SO_REUSEPORT=1 on the port's sockets, binds a
	// new one with SO_REUSEPORT=1 and clears the flag on all of them
	// again: no lock file, no sock_diag. A port that any other socket
	// holds is busy, so ports are shared across destinations by one
	// Dialer at a time. Not protected: a socket of the same uid with
	// SO_REUSEPORT=1 that binds the port inside the microseconds of that
	// window (see the package documentation). Probed once per Dialer (a
	// kernel that does not behave so makes the dials fail with
	// ErrStrategy). It is never chosen by UDPLockAuto: a process that
	// keeps a conn on each port it touched keeps those ports from every
	// other process, so processes sharing a port set can starve (in the
	// cross-process race test, 5 of 8 processes opened nothing).
	UDPLockOwner
)

// String returns the lock's name.
func (l UDPLock) String() string {
	switch l {
	case UDPLockAuto:
		return "auto"
	case UDPLockFile:
		return "file"
	case UDPLockDump:
		return "dump"
	case UDPLockRegistry:
		return "registry"
	case UDPLockOwner:
		return "owner"
	}
	return "UDPLock(" + strconv.Itoa(int(l)) + ")"
}

// DefaultLockDir returns the lock directory of UDPLockFile when
// Dialer.LockDir is empty: "portspace-locks" under os.TempDir().
func DefaultLockDir() string { return filepath.Join(os.TempDir(), "portspace-locks") }

// DefaultMaxAttempts is the bound on ports tried per source and destination
// in one dial when Dialer.MaxAttempts is zero.
const DefaultMaxAttempts = 128

// Dialer dials TCP and UDP from a set of source addresses and a set of source
// ports, sharing each (source, port) among all destinations (4-tuple reuse).
// Its zero value dials like net.Dialer. Set the fields before the first dial
// and do not change them afterwards; a Dialer is safe for concurrent use and
// must not be copied after first use.
type Dialer struct {
	// Sources are the egress source addresses. Dials rotate over the ones
	// of the destination's family (round robin) and move to the next when
	// one has no free port toward the destination. Empty: the kernel
	// chooses the source by route.
	Sources []netip.Addr

	// Ports are the source ports the Dialer may use. Empty: the
	// namespace's ephemeral range (net.ipv4.ip_local_port_range), minus
	// ip_local_reserved_ports for the Search strategy.
	Ports tuple.PortSet

	// LocalAddr is the local address to dial from, as net.Dialer.LocalAddr
	// (a *net.TCPAddr, *net.UDPAddr or *net.IPAddr): its IP, unless nil or
	// unspecified, is the only source, and its port, unless zero, the only
	// port (which still serves every destination). Use it or Sources and
	// Ports, not both: a Dialer with both fails every dial. Nil: unused.
	LocalAddr net.Addr

	// FallbackDelay is how long a "tcp" dial to a name with addresses of
	// both families waits on the first family before it also dials the
	// other, racing them (RFC 6555 Happy Eyeballs, as net.Dialer does).
	// Zero: DefaultFallbackDelay (300 ms); negative: no racing, the
	// addresses are dialed one after another.
	FallbackDelay time.Duration

	// Timeout bounds a whole dial, name resolution and port search
	// included. Zero: no timeout beyond the context's.
	Timeout time.Duration

	// Deadline, if not zero, is the time after which dials fail, as
	// net.Dialer.Deadline; with Timeout too, the earlier one applies.
	Deadline time.Time

	// Resolver looks up host names and service names. Nil:
	// net.DefaultResolver.
	Resolver *net.Resolver

	// KeepAlive and KeepAliveConfig are passed to the TCP connection as by
	// net.Dialer (zero: the default 15 s keep-alive; negative: off).
	KeepAlive       time.Duration
	KeepAliveConfig net.KeepAliveConfig

	// Control, if not nil, is called for every socket after the Dialer has
	// set its own options and before bind, as net.Dialer.Control. For
	// UDP sockets of the Search strategy the RawConn only supports Control.
	Control func(network, address string, c syscall.RawConn) error

	// ControlContext is Control with the dial's context, as
	// net.Dialer.ControlContext; if not nil, Control is ignored.
	ControlContext func(ctx context.Context, network, address string, c syscall.RawConn) error

	// Logger receives debug records about the strategy chosen and the
	// fallbacks taken; nil discards them.
	Logger *slog.Logger

	// Strategy forces a port-selection strategy (for tests and old
	// kernels); Auto chooses.
	Strategy Strategy

	// UDPLock chooses how UDP Search dials of several processes exclude
	// each other (UDPLockAuto: the lock files, or the dump when they do
	// not work here; UDPLockRegistry and UDPLockOwner only when set).
	UDPLock UDPLock

	// LockDir is the directory of the UDPLockFile lock files and the
	// UDPLockRegistry registry files; every
	// process that dials from the same ports in one network namespace must
	// use the same directory. Empty: DefaultLockDir().
	LockDir string

	// MaxAttempts bounds the ports tried (bind and connect) per source in
	// one dial, not counting ports this Dialer already holds toward the
	// destination, nor ports it recently found taken by other sockets
	// toward it (the taken-port memo), which it skips without a syscall.
	// Zero means DefaultMaxAttempts. ErrExhausted is exact when the port
	// set has at most MaxAttempts ports not held by this Dialer toward the
	// destination; with more, a dial that spends its attempts on ports
	// other programs hold reports ErrExhausted, and the memo makes the
	// next dials start past those ports.
	MaxAttempts int

	once sync.Once
	st   *state
}

// state is what a Dialer computes once, at its first dial.
type state struct {
	// sources and ports are the Dialer's Sources and Ports, or what its
	// LocalAddr stands for when those are empty.
	sources []netip.Addr
	ports   tuple.PortSet
	log     *slog.Logger
	caps    netsys.Caps
	tcp     plan
	udp     plan
	sel     *selector
	diags   *diagPool
	rr      atomic.Uint32
	dials   atomic.Uint64
	tries   atomic.Uint64 // Search: ports tried with syscalls (for tests)
	full    fullMemo
	// uses holds the slots (socket count, mutex) of each UDP Search
	// (source, port index), copied on write under usesMu; exclusive counts the dials that bound
	// exclusively (for tests).
	uses      atomic.Pointer[[]srcUses]
	usesMu    sync.Mutex
	exclusive atomic.Uint64

	// ifs is the namespace's interface indices for the UDP lookups,
	// refreshed after ifaceTTL.
	ifs atomic.Pointer[ifaceList]

	udpLock   UDPLock // UDPLockFile or UDPLockDump, for UDP Search
	lockDir   string
	netns     string
	lockFiles *lockFiles
	// registries are the UDPLockRegistry files by source. They are not
	// closed with the state: conns keep them open while they hold bytes.
	registries registries

	kernelTCP map[netip.Addr]*net.Dialer // the TCP Kernel strategy's dialers, by source (read-only)
	searchTCP net.Dialer                 // the TCP Search strategy's template (LocalAddr set per try)
}

// plan is the resolved strategy for one protocol.
type plan struct {
	strategy Strategy
	ports    tuple.PortSet // Search: the ports searched; Kernel: the per-socket range (or empty)
	err      error         // the forced strategy cannot work here
}

var discard = slog.New(slog.DiscardHandler)

func (d *Dialer) init() *state {
	d.once.Do(func() {
		st := &state{log: d.Logger, sel: newSelector(), sources: d.Sources, ports: d.Ports}
		st.diags = newDiagPool(st)
		st.lockFiles = &lockFiles{}
		runtime.AddCleanup(st, (*lockFiles).closeAll, st.lockFiles)
		if st.log == nil {
			st.log = discard
		}
		st.caps = netsys.Probe()
		lerr := d.applyLocalAddr(st)
		st.tcp = d.planTCP(st)
		st.udp = d.planUDP(st)
		for i, s := range d.Sources {
			if !s.IsValid() {
				err := fmt.Errorf("dial: Sources[%d] is the zero netip.Addr, not an address", i)
				st.tcp.err, st.udp.err = err, err
			}
		}
		if lerr != nil {
			st.tcp.err, st.udp.err = lerr, lerr
		}
		d.buildKernelDialers(st)
		d.st = st
	})
	return d.st
}

// applyLocalAddr applies LocalAddr: its IP, if specified, becomes the only
// source and its port, if not zero, the only port, as net.Dialer binds
// LocalAddr. Setting it together with Sources or Ports is an error.
func (d *Dialer) applyLocalAddr(st *state) error {
	if d.LocalAddr == nil {
		return nil
	}
	var ip net.IP
	var port int
	var zone string
	switch a := d.LocalAddr.(type) {
	case *net.TCPAddr:
		if a == nil {
			return nil
		}
		ip, port, zone = a.IP, a.Port, a.Zone
	case *net.UDPAddr:
		if a == nil {
			return nil
		}
		ip, port, zone = a.IP, a.Port, a.Zone
	case *net.IPAddr:
		if a == nil {
			return nil
		}
		ip, zone = a.IP, a.Zone
	default:
		return fmt.Errorf("dial: LocalAddr %v is a %T, want a *net.TCPAddr, *net.UDPAddr or *net.IPAddr", d.LocalAddr, d.LocalAddr)
	}
	if len(d.Sources) > 0 || d.Ports.IsValid() {
		return fmt.Errorf("dial: LocalAddr %v is set together with Sources or Ports; set one of them", d.LocalAddr)
	}
	if a, ok := netip.AddrFromSlice(ip); ok && !a.IsUnspecified() {
		st.sources = []netip.Addr{a.Unmap().WithZone(zone)}
	}
	if port < 0 || port > 65535 {
		return fmt.Errorf("dial: LocalAddr %v: port out of range", d.LocalAddr)
	}
	if port != 0 {
		st.ports = tuple.PortSetOf(tuple.SinglePort(uint16(port)))
	}
	return nil
}

// lockFiles are a Dialer's open lock files, one per source address: a map
// copied on write under mu, read without a lock by every dial.
type lockFiles struct {
	mu sync.Mutex
	m  atomic.Pointer[map[netip.Addr]*netsys.PortLockFile]
}

// closeAll closes the lock files of a Dialer that was garbage collected.
func (l *lockFiles) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p := l.m.Swap(nil); p != nil {
		for _, lf := range *p {
			lf.Close()
		}
	}
}

// ephemeral returns the namespace's ephemeral range as a port set, minus the
// reserved ports when minusReserved is set.
func ephemeral(minusReserved bool) (tuple.PortSet, error) {
	r, err := netsys.EphemeralRange()
	if err != nil {
		return tuple.PortSet{}, err
	}
	set := tuple.PortSetOf(tuple.PortRangeFrom(r.Lo, r.Hi))
	if minusReserved {
		res, err := netsys.ReservedPorts()
		if err != nil {
			return tuple.PortSet{}, err
		}
		var rs []tuple.PortRange
		for _, x := range res {
			rs = append(rs, tuple.PortRangeFrom(x.Lo, x.Hi))
		}
		set = set.Subtract(tuple.PortSetOf(rs...))
	}
	return set, nil
}

func (d *Dialer) planTCP(st *state) plan {
	kernelOK, why := d.kernelRangeOK(st)
	switch d.Strategy {
	case Kernel:
		if !kernelOK {
			return plan{strategy: Kernel, err: fmt.Errorf("%w: kernel strategy for tcp: %s", ErrStrategy, why)}
		}
		return plan{strategy: Kernel, ports: st.ports}
	case Search:
		return d.searchPlan(st, "tcp", "forced")
	case Auto:
		if kernelOK {
			st.log.Debug("dial: tcp uses the kernel strategy", "ports", st.ports.String(), "sources", len(st.sources))
			return plan{strategy: Kernel, ports: st.ports}
		}
		return d.searchPlan(st, "tcp", why)
	}
	return plan{err: fmt.Errorf("%w: unknown strategy %v", ErrStrategy, d.Strategy)}
}

func (d *Dialer) planUDP(st *state) plan {
	kernelOK, why := d.kernelRangeOK(st)
	switch d.Strategy {
	case Kernel:
		if !kernelOK {
			return plan{strategy: Kernel, err: fmt.Errorf("%w: kernel strategy for udp: %s", ErrStrategy, why)}
		}
		return plan{strategy: Kernel, ports: st.ports}
	case Search:
		if !st.caps.UDPDiag && d.UDPLock != UDPLockRegistry && d.UDPLock != UDPLockOwner {
			return plan{strategy: Search, err: fmt.Errorf("%w: search strategy for udp: the kernel lacks the exact sock_diag UDP lookup or SO_COOKIE", ErrStrategy)}
		}
		if err := d.planUDPLock(st); err != nil {
			return plan{strategy: Search, err: err}
		}
		return d.searchPlan(st, "udp", "forced")
	case Auto:
		if st.caps.UDPDiag || d.UDPLock == UDPLockRegistry || d.UDPLock == UDPLockOwner {
			if err := d.planUDPLock(st); err != nil {
				return plan{strategy: Search, err: err}
			}
			return d.searchPlan(st, "udp", "connected UDP sockets share ports only through the cooperative lock")
		}
		if kernelOK {
			st.log.Debug("dial: udp uses the kernel strategy (no port sharing): the kernel lacks the sock_diag UDP lookup")
			return plan{strategy: Kernel, ports: st.ports}
		}
		return plan{strategy: Search, err: fmt.Errorf("%w: udp: the kernel lacks the sock_diag UDP lookup, and %s", ErrStrategy, why)}
	}
	return plan{err: fmt.Errorf("%w: unknown strategy %v", ErrStrategy, d.Strategy)}
}

// planUDPLock resolves UDPLock, probing the lock directory once.
func (d *Dialer) planUDPLock(st *state) error {
	st.lockDir = d.LockDir
	if st.lockDir == "" {
		st.lockDir = DefaultLockDir()
	}
	switch d.UDPLock {
	case UDPLockDump:
		st.udpLock = UDPLockDump
		return nil
	case UDPLockRegistry:
		err := st.probeNetNS()
		if err == nil {
			err = st.probeRegistry()
		}
		if err != nil {
			return fmt.Errorf("%w: udp registry in %s: %w", ErrStrategy, st.lockDir, err)
		}
		st.udpLock = UDPLockRegistry
		st.log.Debug("dial: udp search registers its 4-tuples (no sock_diag)", "dir", st.lockDir)
		return nil
	case UDPLockOwner:
		if err := netsys.ProbePortOwner(); err != nil {
			return fmt.Errorf("%w: udp port owner lock: %w", ErrStrategy, err)
		}
		st.udpLock = UDPLockOwner
		st.log.Debug("dial: udp search owns its ports (SO_REUSEPORT toggled per dial)")
		return nil
	case UDPLockAuto, UDPLockFile:
	default:
		return fmt.Errorf("%w: unknown UDPLock %v", ErrStrategy, d.UDPLock)
	}
	err := st.probeLockFile()
	if err == nil {
		st.udpLock = UDPLockFile
		st.log.Debug("dial: udp search locks ports with lock files", "dir", st.lockDir)
		return nil
	}
	if d.UDPLock == UDPLockFile {
		return fmt.Errorf("%w: udp lock files in %s: %w", ErrStrategy, st.lockDir, err)
	}
	st.udpLock = UDPLockDump
	st.log.Debug("dial: udp search uses the in-flight dump: lock files do not work here", "dir", st.lockDir, "err", err)
	return nil
}

// probeLockFile checks that a lock file can be opened in the lock
// directory and locked.
func (st *state) probeLockFile() error {
	if err := st.probeNetNS(); err != nil {
		return err
	}
	lf, err := netsys.OpenPortLockFile(st.lockDir, st.netns, "udp", netip.IPv4Unspecified())
	if err != nil {
		return err
	}
	defer lf.Close()
	ok, err := lf.TryLock(0)
	if err != nil {
		return err
	}
	if ok {
		return lf.Unlock(0)
	}
	return nil // held by another process's probe: locks work
}

// probeNetNS reads the namespace identity that names the lock files.
func (st *state) probeNetNS() error {
	ns, err := netsys.NetNSID()
	if err != nil {
		return err
	}
	st.netns = ns
	return nil
}

// lockFile returns the Dialer's lock file of source src, opening it at its
// first use. The files are closed when the Dialer is garbage collected.
func (st *state) lockFile(src netip.Addr) (*netsys.PortLockFile, error) {
	l := st.lockFiles
	if p := l.m.Load(); p != nil {
		if lf := (*p)[src]; lf != nil {
			return lf, nil
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	m := map[netip.Addr]*netsys.PortLockFile{}
	if p := l.m.Load(); p != nil {
		if lf := (*p)[src]; lf != nil {
			return lf, nil
		}
		for k, v := range *p {
			m[k] = v
		}
	}
	lf, err := netsys.OpenPortLockFile(st.lockDir, st.netns, "udp", src)
	if err != nil {
		return nil, fmt.Errorf("dial: udp lock: %w", err)
	}
	m[src] = lf
	l.m.Store(&m)
	return lf, nil
}

// kernelRangeOK reports whether the kernel can confine ports to st.ports, and
// if not, why.
func (d *Dialer) kernelRangeOK(st *state) (bool, string) {
	if !st.ports.IsValid() {
		if len(st.sources) > 0 && !st.caps.BindAddressNoPort {
			return false, "the kernel lacks IP_BIND_ADDRESS_NO_PORT"
		}
		return true, ""
	}
	if st.ports.NumRanges() != 1 {
		return false, fmt.Sprintf("port set %s is not one range", st.ports)
	}
	if !st.caps.LocalPortRange {
		return false, "the kernel lacks IP_LOCAL_PORT_RANGE (Linux 6.3)"
	}
	eph, err := netsys.EphemeralRange()
	if err != nil {
		return false, err.Error()
	}
	r := st.ports.Range(0)
	if r.First() < eph.Lo || r.Last() > eph.Hi {
		return false, fmt.Sprintf("port set %s is outside the namespace's ephemeral range %d-%d (IP_LOCAL_PORT_RANGE only narrows it; the sysctl is never widened)", st.ports, eph.Lo, eph.Hi)
	}
	res, err := netsys.ReservedPorts()
	if err != nil {
		return false, err.Error()
	}
	for _, x := range res {
		if r.Overlaps(tuple.PortRangeFrom(x.Lo, x.Hi)) {
			return false, fmt.Sprintf("port set %s overlaps ip_local_reserved_ports %d-%d, which the kernel skips", st.ports, x.Lo, x.Hi)
		}
	}
	return true, ""
}

func (d *Dialer) searchPlan(st *state, proto, why string) plan {
	// Port 0 would ask the kernel to choose; it is never a source port.
	ports := st.ports.Subtract(tuple.PortSetOf(tuple.SinglePort(0)))
	if st.ports.IsValid() && !ports.IsValid() {
		return plan{strategy: Search, err: fmt.Errorf("dial: %s: port set %s holds no usable port", proto, st.ports)}
	}
	if !ports.IsValid() {
		var err error
		if ports, err = ephemeral(true); err != nil {
			return plan{strategy: Search, err: fmt.Errorf("dial: %s: reading the ephemeral range: %w", proto, err)}
		}
		if !ports.IsValid() {
			return plan{strategy: Search, err: fmt.Errorf("dial: %s: the ephemeral range minus reserved ports is empty", proto)}
		}
	}
	st.log.Debug("dial: "+proto+" uses the user-space search strategy", "reason", why, "ports", ports.String(), "sources", len(st.sources))
	return plan{strategy: Search, ports: ports}
}

// Dial connects to address on network; see DialContext.
func (d *Dialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

// DialContext connects to address ("host:port") on network ("tcp", "tcp4",
// "tcp6", "udp", "udp4" or "udp6") from one of the Dialer's sources and
// ports. Names resolve through the Resolver; IP literals are used as they
// are. With several addresses, each is tried in turn; for "tcp" with
// addresses of both families, the second family races the first after
// FallbackDelay (RFC 6555 Happy Eyeballs, as net.Dialer does it). The conn
// is a *net.TCPConn or *net.UDPConn (Kernel strategy), or a *TCPConn or
// *UDPConn that embeds one and releases the port to the Dialer on Close
// (Search). Errors are *net.OpError (Op "dial", Net, Source and Addr as
// known); when every source's ports are taken toward the destination, the
// error wraps ErrExhausted.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	proto, fam, err := parseNetwork(network)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	st := d.init()
	// A pointer, not a copy: the plans are read-only after init, and a
	// copy whose address the dial passes on is an allocation per dial.
	pl := &st.tcp
	if proto == tuple.UDP {
		pl = &st.udp
	}
	if pl.err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: pl.err}
	}
	if dl, ok := d.deadline(time.Now()); ok {
		// As net.Dialer: a context of its own only when the Dialer's
		// deadline comes before the caller's (a timer and a goroutine-safe
		// context cost about 5% of a UDP dial's CPU).
		if cur, has := ctx.Deadline(); !has || dl.Before(cur) {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, dl)
			defer cancel()
		}
	}
	var lit [1]netip.AddrPort // an IP literal's destination, without an allocation
	dsts, err := d.resolve(ctx, st, network, fam, address, &lit)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	if d.FallbackDelay >= 0 && proto == tuple.TCP && fam == famAny {
		if primaries, fallbacks := partitionFamily(dsts); len(fallbacks) > 0 {
			return d.dialParallel(ctx, st, pl, proto, network, primaries, fallbacks)
		}
	}
	return d.dialSerial(ctx, st, pl, proto, network, dsts)
}

// deadline is the earlier of now+Timeout and Deadline; ok is false when
// neither is set.
func (d *Dialer) deadline(now time.Time) (dl time.Time, ok bool) {
	if d.Timeout > 0 {
		dl, ok = now.Add(d.Timeout), true
	}
	if !d.Deadline.IsZero() && (!ok || d.Deadline.Before(dl)) {
		dl, ok = d.Deadline, true
	}
	return dl, ok
}

// dialSerial tries dsts in turn and returns the first conn, or the first
// error, as net.Dialer does.
func (d *Dialer) dialSerial(ctx context.Context, st *state, pl *plan, proto tuple.Proto, network string, dsts []netip.AddrPort) (net.Conn, error) {
	var first error
	for i, dst := range dsts {
		if err := ctx.Err(); err != nil {
			if first == nil {
				first = opErr(network, proto, netip.Addr{}, dst, err)
			}
			break
		}
		dctx := ctx
		if left := len(dsts) - i; left <= 1 {
			// The last (or only) address: the whole time left, and no
			// clock read (partialDeadline would return false).
		} else if dl, ok := partialDeadline(ctx, time.Now(), left); ok {
			var cancel context.CancelFunc
			dctx, cancel = context.WithDeadline(ctx, dl)
			defer cancel()
		}
		c, src, err := d.dialAddr(dctx, st, pl, proto, dst)
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = opErr(network, proto, src, dst, err)
		}
	}
	return nil, first
}

// minAttemptTime is the least time partialDeadline gives one address, as
// net.Dialer does.
const minAttemptTime = 2 * time.Second

// partialDeadline returns the deadline for one of left addresses still to
// try: an equal share of the time to the context's deadline, but at least
// minAttemptTime (and never past the deadline). ok is false when the
// context has no deadline, or when this is the last address.
func partialDeadline(ctx context.Context, now time.Time, left int) (time.Time, bool) {
	dl, ok := ctx.Deadline()
	if !ok || left <= 1 {
		return time.Time{}, false
	}
	share := dl.Sub(now) / time.Duration(left)
	if share < minAttemptTime {
		share = minAttemptTime
	}
	if t := now.Add(share); t.Before(dl) {
		return t, true
	}
	return time.Time{}, false
}

// DefaultFallbackDelay is the head start of the first address family in
// Happy Eyeballs when Dialer.FallbackDelay is zero, as net.Dialer's.
const DefaultFallbackDelay = 300 * time.Millisecond

// partitionFamily splits dsts into those of the first address's family
// (primaries) and the rest (fallbacks), keeping their order (RFC 6555 §4:
// the resolver's order chooses the preferred family).
func partitionFamily(dsts []netip.AddrPort) (primaries, fallbacks []netip.AddrPort) {
	v4 := dsts[0].Addr().Is4()
	for _, a := range dsts {
		if a.Addr().Is4() == v4 {
			primaries = append(primaries, a)
		} else {
			fallbacks = append(fallbacks, a)
		}
	}
	return primaries, fallbacks
}

// dialParallel races primaries against fallbacks (RFC 6555 §5, the "Happy
// Eyeballs" fast fallback): the fallbacks start after FallbackDelay, or as
// soon as the primaries have failed; the first conn wins and the other
// attempt is cancelled (a conn it still produces is closed). With both
// failing, the primaries' error is returned.
func (d *Dialer) dialParallel(ctx context.Context, st *state, pl *plan, proto tuple.Proto, network string, primaries, fallbacks []netip.AddrPort) (net.Conn, error) {
	type result struct {
		c       net.Conn
		err     error
		primary bool
	}
	results := make(chan result)
	returned := make(chan struct{})
	defer close(returned)
	race := func(ctx context.Context, primary bool) {
		dsts := primaries
		if !primary {
			dsts = fallbacks
		}
		c, err := d.dialSerial(ctx, st, pl, proto, network, dsts)
		select {
		case results <- result{c: c, err: err, primary: primary}:
		case <-returned:
			if c != nil {
				c.Close()
			}
		}
	}
	pctx, pcancel := context.WithCancel(ctx)
	defer pcancel()
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	go race(pctx, true)
	delay := d.FallbackDelay
	if delay == 0 {
		delay = DefaultFallbackDelay
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	var primaryErr, fallbackErr error
	started := false
	for {
		select {
		case <-timer.C:
			if !started {
				started = true
				go race(fctx, false)
			}
		case r := <-results:
			if r.err == nil {
				return r.c, nil
			}
			if r.primary {
				primaryErr = r.err
				if !started {
					started = true
					timer.Stop()
					go race(fctx, false)
				}
			} else {
				fallbackErr = r.err
			}
			if primaryErr != nil && fallbackErr != nil {
				return nil, primaryErr
			}
		}
	}
}

// opErr shapes a dial error as net.Dialer's: a *net.OpError with Op "dial",
// the caller's network, the source (when one was chosen) and the
// destination. A *net.OpError from the net package is kept, with Net set to
// the caller's network.
func opErr(network string, proto tuple.Proto, src netip.Addr, dst netip.AddrPort, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		c := *oe
		c.Net = network
		return &c
	}
	oe := &net.OpError{Op: "dial", Net: network, Err: err}
	if proto == tuple.TCP {
		oe.Addr = net.TCPAddrFromAddrPort(dst)
		if src.IsValid() {
			oe.Source = &net.TCPAddr{IP: src.AsSlice(), Zone: src.Zone()}
		}
	} else {
		oe.Addr = net.UDPAddrFromAddrPort(dst)
		if src.IsValid() {
			oe.Source = &net.UDPAddr{IP: src.AsSlice(), Zone: src.Zone()}
		}
	}
	return oe
}

// splitAddress splits "host:port" without touching the network: lit is the
// host as an IP literal (unmapped; loopback of the family for an empty
// host), or invalid when host is a name to resolve; port is the numeric port,
// or portName the service name to look up.
func splitAddress(address string, fam family) (host string, lit netip.Addr, port uint16, portName string, err error) {
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return "", netip.Addr{}, 0, "", fmt.Errorf("dial: address %q: %w", address, err)
	}
	if p, perr := strconv.ParseUint(portStr, 10, 16); perr == nil {
		port = uint16(p)
	} else if portStr == "" || strings.TrimLeft(portStr, "0123456789") == "" {
		return "", netip.Addr{}, 0, "", fmt.Errorf("dial: address %q: bad port %q", address, portStr)
	} else {
		portName = portStr
	}
	switch a, aerr := netip.ParseAddr(host); {
	case host == "" && fam == fam6:
		lit = netip.IPv6Loopback()
	case host == "":
		lit = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case aerr == nil:
		lit = a.Unmap()
	}
	return host, lit, port, portName, nil
}

// family is the address family a network name allows.
type family uint8

const (
	famAny family = iota
	fam4
	fam6
)

func parseNetwork(network string) (tuple.Proto, family, error) {
	switch network {
	case "tcp":
		return tuple.TCP, famAny, nil
	case "tcp4":
		return tuple.TCP, fam4, nil
	case "tcp6":
		return tuple.TCP, fam6, nil
	case "udp":
		return tuple.UDP, famAny, nil
	case "udp4":
		return tuple.UDP, fam4, nil
	case "udp6":
		return tuple.UDP, fam6, nil
	}
	return 0, 0, fmt.Errorf("dial: unknown network %q (want tcp, tcp4, tcp6, udp, udp4 or udp6)", network)
}

func (f family) allows(a netip.Addr) bool {
	switch f {
	case fam4:
		return a.Is4()
	case fam6:
		return a.Is6()
	}
	return true
}

// resolve turns address into destinations, as net.Dialer would: literals
// directly, names through the Resolver, an empty host as loopback.
// With Sources set, only destinations of a family some source has are kept.
// An IP literal with a numeric port that the Dialer can dial to is
// returned in buf, without an allocation.
func (d *Dialer) resolve(ctx context.Context, st *state, network string, fam family, address string, buf *[1]netip.AddrPort) ([]netip.AddrPort, error) {
	host, lit, port, portName, err := splitAddress(address, fam)
	if err != nil {
		return nil, err
	}
	if lit.IsValid() && portName == "" && fam.allows(lit) && st.hasSourceFor(lit) {
		buf[0] = netip.AddrPortFrom(lit, port)
		return buf[:], nil
	}
	r := d.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	if portName != "" {
		p, err := r.LookupPort(ctx, network, portName)
		if err != nil {
			return nil, fmt.Errorf("dial: address %q: bad port %q: %w", address, portName, err)
		}
		port = uint16(p)
	}
	var addrs []netip.Addr
	if lit.IsValid() {
		addrs = []netip.Addr{lit}
	} else {
		ipnet := "ip"
		switch fam {
		case fam4:
			ipnet = "ip4"
		case fam6:
			ipnet = "ip6"
		}
		res, err := r.LookupNetIP(ctx, ipnet, host)
		if err != nil {
			return nil, fmt.Errorf("dial: address %q: %w", address, err)
		}
		for _, a := range res {
			addrs = append(addrs, a.Unmap())
		}
	}
	var out []netip.AddrPort
	for _, a := range addrs {
		if !fam.allows(a) || !st.hasSourceFor(a) {
			continue
		}
		out = append(out, netip.AddrPortFrom(a, uint16(port)))
	}
	if len(out) == 0 {
		if len(addrs) == 1 && !fam.allows(addrs[0]) {
			return nil, fmt.Errorf("dial: address %q: %v is not a %s address", address, addrs[0], network)
		}
		if len(st.sources) > 0 {
			return nil, fmt.Errorf("dial: address %q: no source address of the destination's family (sources %v)", address, st.sources)
		}
		return nil, fmt.Errorf("dial: address %q: no suitable address for %s", address, network)
	}
	return out, nil
}

func (st *state) hasSourceFor(a netip.Addr) bool {
	if len(st.sources) == 0 {
		return true
	}
	for _, s := range st.sources {
		if s.Unmap().Is4() == a.Is4() {
			return true
		}
	}
	return false
}

// errSourceFull is the internal signal that one source has no free port
// toward the destination; the dial moves to the next source.
var errSourceFull = errors.New("dial: source exhausted")

// dialAddr dials dst from the Dialer's sources in round-robin order.
// It returns the source tried last (invalid when the kernel chooses).
func (d *Dialer) dialAddr(ctx context.Context, st *state, pl *plan, proto tuple.Proto, dst netip.AddrPort) (net.Conn, netip.Addr, error) {
	n := len(st.sources)
	if n == 0 {
		c, err := d.dialFrom(ctx, st, pl, proto, netip.Addr{}, dst)
		if errors.Is(err, errSourceFull) {
			return nil, netip.Addr{}, d.exhausted(st, pl, err)
		}
		return c, netip.Addr{}, err
	}
	if n == 1 {
		// One source: no rotation, and no source to defer to.
		src := st.sources[0].Unmap()
		c, err := d.dialFrom(ctx, st, pl, proto, src, dst)
		if errors.Is(err, errSourceFull) {
			return nil, src, d.exhausted(st, pl, err)
		}
		return c, src, err
	}
	// Round robin over the sources of the destination's family.
	m := 0
	for _, s := range st.sources {
		if s.Unmap().Is4() == dst.Addr().Is4() {
			m++
		}
	}
	skip := int(st.rr.Add(1) % uint32(m))
	start := 0
	for i, s := range st.sources {
		if s.Unmap().Is4() == dst.Addr().Is4() {
			if skip == 0 {
				start = i
				break
			}
			skip--
		}
	}
	// Sources found full toward dst by a recent dial are tried last, so
	// that a dial does not pay for a failed search (or a kernel scan of the
	// whole range) on them while another source has room. They are still
	// tried before ErrExhausted, so exhaustion stays exact.
	seq := st.dials.Add(1)
	var tried []bool
	var last error
	var lastSrc netip.Addr
	for pass := range 2 {
		for i := range n {
			j := (start + i) % n
			src := st.sources[j].Unmap()
			if src.Is4() != dst.Addr().Is4() {
				continue
			}
			k := holdKey{proto: proto, src: src, dst: dst}
			if pass == 1 && tried != nil && tried[j] {
				continue
			}
			if full := st.full.has(k, seq); full != (pass == 1) {
				continue
			}
			c, err := d.dialFrom(ctx, st, pl, proto, src, dst)
			if err == nil {
				if pass == 1 {
					st.full.clear(k)
				}
				return c, src, nil
			}
			if !errors.Is(err, errSourceFull) {
				return nil, src, err
			}
			st.log.Debug("dial: source exhausted toward destination; trying the next", "source", src, "destination", dst, "proto", proto)
			st.full.mark(k, seq)
			if tried == nil {
				tried = make([]bool, n)
			}
			tried[j] = true
			last, lastSrc = err, src
			if err := ctx.Err(); err != nil {
				return nil, src, err
			}
		}
	}
	return nil, lastSrc, d.exhausted(st, pl, last)
}

// fullMemoDials is how many later dials (of the Dialer, toward any
// destination) a source stays "recently full" toward a destination.
const fullMemoDials = 1024

// fullMemo remembers which (source, destination) pairs were recently found
// full.
type fullMemo struct {
	mu sync.Mutex
	m  map[holdKey]uint64 // dial sequence number when found full
}

func (f *fullMemo) has(k holdKey, seq uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	at, ok := f.m[k]
	if ok && seq-at > fullMemoDials {
		delete(f.m, k)
		return false
	}
	return ok
}

func (f *fullMemo) mark(k holdKey, seq uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil || len(f.m) >= 1<<16 {
		f.m = make(map[holdKey]uint64) // bound the memory; the memo is only a hint
	}
	f.m[k] = seq
}

func (f *fullMemo) clear(k holdKey) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, k)
}

func (d *Dialer) exhausted(st *state, pl *plan, last error) error {
	ports := "the ephemeral range"
	if pl.ports.IsValid() {
		ports = pl.ports.String()
	}
	nsrc := max(len(st.sources), 1)
	return fmt.Errorf("dial: every port of %s from %d source(s) is in use toward the destination (%w): %w", ports, nsrc, last, ErrExhausted)
}

func (d *Dialer) dialFrom(ctx context.Context, st *state, pl *plan, proto tuple.Proto, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if proto == tuple.TCP {
		if pl.strategy == Kernel {
			return d.tcpKernel(ctx, st, pl, src, dst)
		}
		return d.tcpSearch(ctx, st, pl, src, dst)
	}
	if pl.strategy == Kernel {
		return d.udpKernel(ctx, pl, src, dst)
	}
	return d.udpSearch(ctx, st, pl, src, dst)
}

func (d *Dialer) maxAttempts() uint32 {
	if d.MaxAttempts > 0 {
		return uint32(d.MaxAttempts)
	}
	return DefaultMaxAttempts
}

// userControlSet reports whether the user set ControlContext or Control.
func (d *Dialer) userControlSet() bool { return d.ControlContext != nil || d.Control != nil }

// userControl runs the user's ControlContext, or else Control.
func (d *Dialer) userControl(ctx context.Context, network, address string, c syscall.RawConn) error {
	if d.ControlContext != nil {
		return d.ControlContext(ctx, network, address, c)
	}
	if d.Control != nil {
		return d.Control(network, address, c)
	}
	return nil
}

// sourceError explains a bind failure caused by the source address.
func sourceError(src netip.Addr, err error) error {
	if netsys.IsAddrNotAvail(err) {
		return fmt.Errorf("dial: source %v is not an address of this host: %w", src, err)
	}
	return fmt.Errorf("dial: bind to source %v: %w", src, err)
}

// UDPLockInUse reports the UDPLock (UDPLockFile, UDPLockDump,
// UDPLockRegistry or UDPLockOwner) that UDP Search dials use after the Dialer's one-time
// probes, or the error such dials return. It is UDPLockAuto when UDP dials
// use the Kernel strategy, which shares no port and needs no lock.
func (d *Dialer) UDPLockInUse() (UDPLock, error) {
	st := d.init()
	if st.udp.err != nil {
		return UDPLockAuto, st.udp.err
	}
	if st.udp.strategy != Search {
		return UDPLockAuto, nil
	}
	return st.udpLock, nil
}

// StrategyFor reports the strategy (Kernel or Search) that dials on network
// use, after the Dialer's one-time probes, or the error such dials return
// because no strategy fits.
func (d *Dialer) StrategyFor(network string) (Strategy, error) {
	proto, _, err := parseNetwork(network)
	if err != nil {
		return Auto, err
	}
	st := d.init()
	pl := st.tcp
	if proto == tuple.UDP {
		pl = st.udp
	}
	return pl.strategy, pl.err
}
