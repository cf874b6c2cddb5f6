package dial

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/tuple"
)

// errPortTaken is the internal signal that one (source, port) cannot carry
// the 4-tuple; the search moves to the next port.
var errPortTaken = errors.New("dial: port taken")

func tcpNetwork(dst netip.AddrPort) string {
	if dst.Addr().Is4() {
		return "tcp4"
	}
	return "tcp6"
}

// syscallOf returns the name of the failed system call inside err ("bind",
// "connect", ...), if any.
func syscallOf(err error) string {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Syscall
	}
	return ""
}

// netDialer returns a net.Dialer that runs control on each socket, then the
// user's ControlContext or Control. With optional set, control failing as unsupported (on
// platforms other than Linux) is ignored: it only adds SO_REUSEADDR.
func (d *Dialer) netDialer(optional bool, control func(fd int) error) net.Dialer {
	return net.Dialer{
		KeepAlive:       d.KeepAlive,
		KeepAliveConfig: d.KeepAliveConfig,
		ControlContext: func(ctx context.Context, network, address string, c syscall.RawConn) error {
			if err := netsys.Control(c, control); err != nil && !(optional && errors.Is(err, netsys.ErrUnsupported)) {
				return err
			}
			return d.userControl(ctx, network, address, c)
		},
	}
}

func setReuseAddr(fd int) error { return netsys.SetReuseAddr(fd, true) }

// tcpKernel dials with the port chosen by the kernel at connect:
// IP_BIND_ADDRESS_NO_PORT keeps bind(source, 0) from locking a port, and
// IP_LOCAL_PORT_RANGE confines the choice to the port set. It sets no
// SO_REUSEADDR: the kernel's connect-time choice never needs it, and it
// would cost a system call per dial (see docs/dial.md for what that means
// for Search-strategy sockets of other Dialers on the same ports). The
// net.Dialer of each source is built once (kernelDialer).
func (d *Dialer) tcpKernel(ctx context.Context, st *state, pl *plan, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	nd := st.kernelDialer(d, pl, src)
	var c net.Conn
	var err error
	if src.IsValid() {
		// The addresses are known: no string to format and parse again,
		// no resolver (net.Dialer.DialTCP binds laddr, port 0).
		var tc *net.TCPConn
		if tc, err = nd.DialTCP(ctx, tcpNetwork(dst), netip.AddrPortFrom(src, 0), dst); err == nil {
			return tc, nil
		}
	} else if c, err = nd.DialContext(ctx, tcpNetwork(dst), dst.String()); err == nil {
		return c, nil
	}
	switch sc := syscallOf(err); {
	case sc == "bind":
		return nil, sourceError(src, err)
	case sc == "connect" && netsys.IsAddrNotAvail(err):
		return nil, fmt.Errorf("%w: %w", errSourceFull, err)
	}
	return nil, err
}

// kernelDialer returns the net.Dialer of the TCP Kernel strategy for src
// (built by buildKernelDialers), or builds one.
func (st *state) kernelDialer(d *Dialer, pl *plan, src netip.Addr) *net.Dialer {
	if nd := st.kernelTCP[src]; nd != nil {
		return nd
	}
	return d.newKernelDialer(pl, src)
}

// buildKernelDialers builds the Kernel strategy's net.Dialer of every
// source (or of the kernel's choice, with none) once, at the Dialer's
// first dial; the map is read-only afterwards.
func (d *Dialer) buildKernelDialers(st *state) {
	st.searchTCP = d.netDialer(false, setReuseAddr)
	if st.tcp.strategy != Kernel || st.tcp.err != nil {
		return
	}
	st.kernelTCP = map[netip.Addr]*net.Dialer{}
	if len(st.sources) == 0 {
		st.kernelTCP[netip.Addr{}] = d.newKernelDialer(&st.tcp, netip.Addr{})
	}
	for _, s := range st.sources {
		s = s.Unmap()
		st.kernelTCP[s] = d.newKernelDialer(&st.tcp, s)
	}
}

func (d *Dialer) newKernelDialer(pl *plan, src netip.Addr) *net.Dialer {
	var lo, hi uint16
	if pl.ports.IsValid() {
		r := pl.ports.Range(0)
		lo, hi = r.First(), r.Last()
	}
	if !d.userControlSet() && (src.IsValid() || lo != 0) {
		// The Kernel strategy's own options alone: one closure, raw
		// setsockopts (BenchmarkDialTCP).
		noPort := src.IsValid()
		pool := &sync.Pool{New: func() any { return newKernelCtl(noPort, lo, hi) }}
		return &net.Dialer{
			KeepAlive:       d.KeepAlive,
			KeepAliveConfig: d.KeepAliveConfig,
			ControlContext: func(_ context.Context, _, _ string, c syscall.RawConn) error {
				k := pool.Get().(*kernelCtl)
				cerr := c.Control(k.fn)
				err := k.err
				k.err = nil
				pool.Put(k)
				if cerr != nil {
					return cerr
				}
				return err
			},
		}
	}
	opts := func(fd int) error { return kernelOptions(fd, src.IsValid(), lo, hi) }
	nd := d.netDialer(false, opts)
	if !src.IsValid() && lo == 0 {
		// No option to set: the plain kernel dial.
		nd.ControlContext = nil
		if d.userControlSet() {
			nd.ControlContext = d.userControl
		}
	}
	return &nd
}

// kernelCtl carries the Kernel strategy's options into RawConn.Control
// and the result back, without a closure per dial: fn is bound once, when
// the kernelCtl is made, and a Dialer's kernelCtls are pooled (a closure
// that writes to the dial's error escapes to the heap: two allocations per
// dial, TestKernelControlAllocs).
type kernelCtl struct {
	noPort bool
	lo, hi uint16
	err    error
	fn     func(fd uintptr)
}

func newKernelCtl(noPort bool, lo, hi uint16) *kernelCtl {
	k := &kernelCtl{noPort: noPort, lo: lo, hi: hi}
	k.fn = k.run
	return k
}

func (k *kernelCtl) run(fd uintptr) { k.err = kernelOptions(int(fd), k.noPort, k.lo, k.hi) }

// kernelOptions sets the TCP Kernel strategy's socket options on fd:
// IP_BIND_ADDRESS_NO_PORT with a source (noPort), IP_LOCAL_PORT_RANGE with
// a port set (lo != 0).
func kernelOptions(fd int, noPort bool, lo, hi uint16) error {
	if noPort {
		if err := netsys.SetBindAddressNoPort(fd); err != nil {
			return err
		}
	}
	if lo != 0 {
		return netsys.SetLocalPortRange(fd, lo, hi)
	}
	return nil
}

// tcpSearch tries ports of the set in the selector's order: SO_REUSEADDR,
// bind(source, port), connect. The kernel's established-hash check makes a
// taken 4-tuple fail with EADDRNOTAVAIL; the search then moves on.
func (d *Dialer) tcpSearch(ctx context.Context, st *state, pl *plan, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	sr := search{key: holdKey{proto: tuple.TCP, src: src, dst: dst}, size: uint32(pl.ports.Len())}
	var last error
	for range d.maxAttempts() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		idx, ok := st.sel.pick(&sr)
		if !ok {
			break
		}
		port, _ := pl.ports.Nth(int(idx))
		st.tries.Add(1)
		c, err := d.tcpTry(ctx, st, src, port, dst)
		if errors.Is(err, errPortTaken) {
			// Another socket holds the 4-tuple (or the port): memoise it.
			st.sel.settleTaken(&sr, idx)
			last = err
			continue
		}
		st.sel.settle(&sr, idx, err == nil)
		if err != nil {
			return nil, err
		}
		return newTCPConn(c, st.sel, sr.key, idx), nil
	}
	if last == nil {
		last = fmt.Errorf("this Dialer holds all %d ports toward %v", sr.size, dst)
	}
	return nil, fmt.Errorf("%w: %w", errSourceFull, last)
}

func (d *Dialer) tcpTry(ctx context.Context, st *state, src netip.Addr, port uint16, dst netip.AddrPort) (*net.TCPConn, error) {
	// The template's ControlContext is built once; DialTCP binds (src,
	// port), or (unspecified, port) without a source, and skips the
	// resolver.
	c, err := st.searchTCP.DialTCP(ctx, tcpNetwork(dst), netip.AddrPortFrom(src, port), dst)
	if err == nil {
		return c, nil
	}
	switch sc := syscallOf(err); {
	case sc == "bind" && netsys.IsAddrInUse(err):
		// A listener or a socket without SO_REUSEADDR owns the port.
		return nil, fmt.Errorf("%w: %w", errPortTaken, err)
	case sc == "bind" && src.IsValid():
		return nil, sourceError(src, err)
	case sc == "connect" && netsys.IsAddrNotAvail(err):
		return nil, fmt.Errorf("%w: %w", errPortTaken, err)
	}
	return nil, err
}
