package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/portspace/portspace/internal/netsys"
)

// relayBufSize is the size of the pooled buffers a relay copies through.
const relayBufSize = 64 << 10

// relayBufs is a bounded free list of copy buffers (a channel rather than
// a sync.Pool, whose items the race detector drops at random, so that the
// allocation test holds in both builds).
var relayBufs = make(chan *[relayBufSize]byte, 256)

// bufsOut counts the copy buffers taken and not yet given back: an idle
// tunnel holds none (TestIdleTunnelDescriptors).
var bufsOut atomic.Int64

func getBuf() *[relayBufSize]byte {
	bufsOut.Add(1)
	select {
	case b := <-relayBufs:
		return b
	default:
		return new([relayBufSize]byte)
	}
}

func putBuf(b *[relayBufSize]byte) {
	bufsOut.Add(-1)
	select {
	case relayBufs <- b:
	default: // the list is full: let the collector have it
	}
}

// bulkBufSize is the size of the pooled buffers a bulk direction on a
// short hop copies through (modeCopy): as much as one splice moves.
const bulkBufSize = relayPipeSize

// bulkBufs is the free list of bulk buffers, at most 16 (16 MiB): a
// direction takes one only from its socket's readiness event to the end of
// its write, and at most 16 directions copy at once (copyDirs), so no more
// than 16 are ever made and an idle tunnel holds none.
var bulkBufs = make(chan *[bulkBufSize]byte, 16)

func getBulkBuf() *[bulkBufSize]byte {
	bufsOut.Add(1)
	select {
	case b := <-bulkBufs:
		return b
	default:
		return new([bulkBufSize]byte)
	}
}

func putBulkBuf(b *[bulkBufSize]byte) {
	bufsOut.Add(-1)
	select {
	case bulkBufs <- b:
	default:
	}
}

// copyDirs counts the directions in modeCopy. At most cap(bulkBufs) copy at
// once, each holding at most one bulk buffer, so every buffer taken comes
// back to the free list and the relay allocates none after the first ones;
// a bulk direction that finds no slot free keeps splicing.
var copyDirs atomic.Int32

// takeCopySlot reserves one of the copy slots; false when all are taken.
func takeCopySlot() bool {
	for {
		n := copyDirs.Load()
		if int(n) >= cap(bulkBufs) {
			return false
		}
		if copyDirs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// relayPipeSize is the capacity asked for each splice pipe
// (F_SETPIPE_SZ), and the most one splice moves: 1 MiB, the default
// /proc/sys/fs/pipe-max-size (a refused size leaves the kernel's 64 KiB).
const relayPipeSize = 1 << 20

// relayPipes is the free list of splice pipes, bounded like relayBufs; a
// pipe is taken only when its socket has bytes to move, so an idle tunnel
// holds none (TestIdleTunnelDescriptors).
var relayPipes = make(chan *netsys.Pipe, 64)

// pipesOut counts the pipes taken and not yet given back.
var pipesOut atomic.Int64

// newPipe opens a splice pipe (a variable so that a test can make it fail).
var newPipe = netsys.NewPipe

func getPipe() (*netsys.Pipe, error) {
	select {
	case p := <-relayPipes:
		pipesOut.Add(1)
		return p, nil
	default:
	}
	p, err := newPipe(relayPipeSize)
	if err != nil {
		return nil, fmt.Errorf("proxy: relay: %w", err)
	}
	pipesOut.Add(1)
	return p, nil
}

// putPipe gives p back; a pipe that still holds bytes (its write failed)
// is closed instead.
func putPipe(p *netsys.Pipe) {
	pipesOut.Add(-1)
	if p.Buffered() != 0 {
		p.Close()
		return
	}
	select {
	case relayPipes <- p:
	default:
		p.Close()
	}
}

// A bulk direction on a short hop leaves BBR: once a direction splices a
// chunk of at least unpaceChunk bytes (a bulk transfer: short tunnels pay
// nothing), its sending socket switches from BBR to Options.ShortHopCC
// (reno) if its round trip is under unpaceRTTus microseconds (loopback, a
// LAN). BBR paces inside TCP when the qdisc does not (lo's noqueue,
// pfifo_fast), a timer per burst; on this machine that made a proxied bulk
// tunnel cost 19-38% more CPU per GiB than with reno, and carry 0.72-0.79x
// the rate (docs/proxy.md, "Pacing on a short hop"). Internet hops (longer
// round trips) keep the system's choice.
//
// The same direction caps its receiving socket's SO_RCVBUF at shortRcvbuf
// on such a hop, where net.core.rmem_max allows it: autotuning had grown
// the queue in front of the relay to 32 MB (net.ipv4.tcp_rmem's maximum
// here), whose pages went cold in the cache before the client read them;
// bounded, the tunnel cost 4-17% less CPU per GiB again in five runs of
// six. 2 MiB (the kernel doubles it) still fills a 1 ms hop at 2 GB/s.
//
// And when both of its sockets are on such hops, the direction stops
// splicing and copies through a pooled 1 MiB buffer (modeCopy): a splice
// keeps the sender's pages referenced from its write until the reader's
// copy, through the relay's receive queue, the pipe and the send queue, so
// (the likely cause) the sender writes into pages it has not reused and the
// reader copies from pages long evicted from the cache; a copy frees them
// at the relay's read and hands the reader pages the relay has just
// written. It costs the relay two copies, and saved the endpoints more:
// their CPU per GiB fell to what a direct connection costs them
// (docs/proxy.md, "Stop 18: copying on a short hop").
const (
	unpaceChunk = 256 << 10
	unpaceRTTus = 1000
	shortRcvbuf = 2 << 20
)

// shortHop is what a bulk direction on a short hop does
// (Options.ShortHopCC): cc is the congestion control its sending socket
// switches to from BBR ("" leaves the hop alone: no switch, no receive
// buffer cap, no copying), and switched, if not nil, counts each socket
// switched.
type shortHop struct {
	cc       string
	switched func()
}

// canSplice: the splice and non-blocking read paths (internal/netsys) exist
// on Linux only; elsewhere the relay reads in a blocking Read.
const canSplice = runtime.GOOS == "linux"

// tunnel is one relayed connection pair: two directions that share an idle
// clock.
type tunnel struct {
	idle     time.Duration
	now      func() time.Time
	hop      shortHop
	lastNano atomic.Int64
}

func (t *tunnel) touch() { t.lastNano.Store(t.now().UnixNano()) }

// How a direction moves its bytes.
const (
	// modeSplice: src and dst are sockets: each readiness event of src
	// splices what is queued (up to relayPipeSize) into a pooled pipe and
	// from it into dst; two system calls per chunk, no copy.
	modeSplice = iota
	// modeRead: src is a socket, dst is not: a non-blocking read into a
	// pooled buffer taken for the call, then dst.Write.
	modeRead
	// modeBlock: src offers no raw socket (or not on Linux): Read blocks
	// holding a pooled buffer.
	modeBlock
	// modeCopy: a bulk direction between two short hops (see unpaceChunk):
	// a raw read of up to bulkBufSize into a pooled buffer taken for the
	// step, then raw sends of it into dst.
	modeCopy
)

// direction copies src to dst, one chunk per readiness event. Its raw
// callbacks take a pipe or buffer only when src has bytes (or EOF) and give
// it back before src's next wait, so an idle direction holds nothing but
// its sockets.
type direction struct {
	t        *tunnel
	src, dst net.Conn
	srcRC    syscall.RawConn
	dstRC    syscall.RawConn
	mode     int
	readFn   func(fd uintptr) bool // d.spliceIn or d.readIn, bound once
	writeFn  func(fd uintptr) bool // d.spliceOut
	pipe     *netsys.Pipe          // held from a splice in to its splice out
	buf      *[relayBufSize]byte   // held from a read to its write
	bulk     *[bulkBufSize]byte    // modeCopy's buffer, held from a read to its write
	sent     int                   // bytes of bulk sent to dst in this step
	got      int                   // bytes the last read callback moved in
	errno    syscall.Errno         // the last callback's error
	perr     error                 // no pipe could be opened (EMFILE...)
	n        int64
	ended    atomic.Bool // run returned
	other    *direction  // the opposite direction, if known
	count    func(int)   // adds bytes to a metric; may be nil
	deadline time.Time
	unpace   int8 // 0: not yet bulk; 1: switch dst in the next spliceOut; 2: done
	srcShort bool // src's round trip is short (set with unpace = 1)
	copySlot bool // holds one of the copyDirs slots (modeCopy)
}

// rawConn returns c's raw socket (a *net.TCPConn's, or a wrapper's that
// offers SyscallConn, as leaseConn does), or nil.
func rawConn(c net.Conn) syscall.RawConn {
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			return rc
		}
	}
	return nil
}

func newDirection(t *tunnel, src, dst net.Conn, count func(int)) *direction {
	d := &direction{}
	d.init(t, src, dst, rawConn(src), rawConn(dst), count)
	return d
}

// init sets d up in place (relayAsync's directions live inside its
// relayState: one allocation per tunnel, not three); srcRC and dstRC are
// rawConn(src) and rawConn(dst), which relayAsync gets once for both
// directions.
func (d *direction) init(t *tunnel, src, dst net.Conn, srcRC, dstRC syscall.RawConn, count func(int)) {
	*d = direction{t: t, src: src, dst: dst, count: count, srcRC: srcRC, dstRC: dstRC, mode: modeBlock}
	switch {
	case !canSplice || d.srcRC == nil:
	case d.dstRC != nil:
		d.mode = modeSplice
		d.readFn, d.writeFn = d.spliceIn, d.spliceOut
	default:
		d.mode = modeRead
		d.readFn = d.readIn
	}
}

// spliceIn is src's raw read callback in modeSplice; false (wait for the
// next readiness event, holding no pipe) when nothing is queued.
func (d *direction) spliceIn(fd uintptr) bool {
	if d.pipe == nil {
		p, err := getPipe()
		if err != nil {
			d.perr = err
			return true
		}
		d.pipe = p
	}
	n, e := d.pipe.SpliceFrom(fd, relayPipeSize)
	if e == syscall.EAGAIN {
		putPipe(d.pipe)
		d.pipe = nil
		return false
	}
	d.got, d.errno = n, e
	if d.unpace == 0 && n >= unpaceChunk && d.t.hop.cc != "" {
		d.unpace = 1 // spliceOut switches dst's congestion control
		_, _ = netsys.CapShortPathRcvbuf(fd, unpaceRTTus, shortRcvbuf)
		d.srcShort = netsys.ShortPath(fd, unpaceRTTus)
	}
	return true
}

// spliceOut is dst's raw write callback in modeSplice; false (wait until
// dst is writable) while the pipe is not empty.
func (d *direction) spliceOut(fd uintptr) bool {
	if d.unpace == 1 {
		d.unpace = 2
		if ok, _ := netsys.UnpaceShortPath(fd, unpaceRTTus, d.t.hop.cc); ok && d.t.hop.switched != nil {
			d.t.hop.switched()
		}
		if d.srcShort && netsys.ShortPath(fd, unpaceRTTus) && takeCopySlot() {
			// From the next step on (this chunk is in the pipe); run
			// gives the slot back when the direction ends.
			d.mode, d.readFn, d.writeFn = modeCopy, d.copyIn, d.copyOut
			d.copySlot = true
		}
	}
	_, e := d.pipe.SpliceTo(fd)
	if e == syscall.EAGAIN {
		return false
	}
	d.errno = e
	return true
}

// readIn is src's raw read callback in modeRead.
func (d *direction) readIn(fd uintptr) bool {
	if d.buf == nil {
		d.buf = getBuf()
	}
	n, e := netsys.ReadFD(fd, d.buf[:])
	if e == syscall.EAGAIN {
		putBuf(d.buf)
		d.buf = nil
		return false
	}
	d.got, d.errno = n, e
	return true
}

// copyIn is src's raw read callback in modeCopy; false (wait for the next
// readiness event, holding no buffer) when nothing is queued.
func (d *direction) copyIn(fd uintptr) bool {
	if d.bulk == nil {
		d.bulk = getBulkBuf()
	}
	n, e := netsys.ReadFD(fd, d.bulk[:])
	if e == syscall.EAGAIN {
		putBulkBuf(d.bulk)
		d.bulk = nil
		return false
	}
	d.got, d.errno = n, e
	return true
}

// copyOut is dst's raw write callback in modeCopy; false (wait until dst
// is writable) while bytes of the buffer are left to send.
func (d *direction) copyOut(fd uintptr) bool {
	for d.sent < d.got {
		n, e := netsys.SendFD(fd, d.bulk[d.sent:d.got])
		if e == syscall.EAGAIN {
			return false
		}
		if e != 0 {
			d.errno = e
			return true
		}
		d.sent += n
	}
	return true
}

// writeBulk sends what copyIn read (modeCopy).
func (d *direction) writeBulk() (int, error) {
	n := d.got
	if d.errno != 0 || n == 0 {
		putBulkBuf(d.bulk)
		d.bulk = nil
		if d.errno != 0 {
			return 0, os.NewSyscallError("read", d.errno)
		}
		return 0, io.EOF
	}
	d.sent, d.errno = 0, 0
	err := d.dstRC.Write(d.writeFn)
	if err == nil && d.errno != 0 {
		err = os.NewSyscallError("sendto", d.errno)
	}
	moved := d.sent
	putBulkBuf(d.bulk)
	d.bulk = nil
	if moved > 0 {
		d.moved(moved)
	}
	return moved, err
}

// errIdle ends a tunnel that saw no byte in either direction for its idle
// timeout.
var errIdle = errors.New("proxy: tunnel idle")

// armDeadline sets src's read deadline from the shared idle clock (the
// other direction's traffic moves it), or reports errIdle.
func (d *direction) armDeadline() error {
	if d.t.idle <= 0 {
		return nil
	}
	dl := time.Unix(0, d.t.lastNano.Load()).Add(d.t.idle)
	if dl.Equal(d.deadline) {
		return nil
	}
	if !d.t.now().Before(dl) {
		return errIdle
	}
	d.deadline = dl
	return d.src.SetReadDeadline(dl)
}

// timedOut is called when the read deadline fired: errIdle when the tunnel
// really was idle, nil when the other direction moved meanwhile (the caller
// waits again, with a later deadline).
func (d *direction) timedOut() error {
	dl := time.Unix(0, d.t.lastNano.Load()).Add(d.t.idle)
	if !d.t.now().Before(dl) {
		return errIdle
	}
	return nil
}

func (d *direction) moved(n int) {
	d.t.touch()
	d.n += int64(n)
	if d.count != nil {
		d.count(n)
	}
}

// step relays one chunk: it waits for src to have bytes, EOF or an error,
// and moves what is queued to dst; it returns io.EOF at src's end of
// stream. It allocates nothing.
func (d *direction) step() (int, error) {
	if err := d.armDeadline(); err != nil {
		return 0, err
	}
	if d.mode == modeBlock {
		return d.blockingStep()
	}
	d.got, d.errno, d.perr = 0, 0, nil
	if err := d.srcRC.Read(d.readFn); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, d.timedOut()
		}
		return 0, err
	}
	if d.perr != nil {
		// No pipe (out of descriptors, say): this direction copies
		// through a buffer from now on; nothing was read yet.
		d.mode, d.readFn = modeRead, d.readIn
		return 0, nil
	}
	switch d.mode {
	case modeRead:
		return d.writeBuf()
	case modeCopy:
		return d.writeBulk()
	}
	n := d.got
	if d.errno != 0 || n == 0 {
		putPipe(d.pipe)
		d.pipe = nil
		if d.errno != 0 {
			return 0, os.NewSyscallError("splice", d.errno)
		}
		return 0, io.EOF
	}
	d.errno = 0
	err := d.dstRC.Write(d.writeFn)
	if err == nil && d.errno != 0 {
		err = os.NewSyscallError("splice", d.errno)
	}
	moved := n - d.pipe.Buffered()
	putPipe(d.pipe) // closed, not pooled, if bytes are left in it
	d.pipe = nil
	if moved > 0 {
		d.moved(moved)
	}
	return moved, err
}

// writeBuf writes what readIn read (modeRead).
func (d *direction) writeBuf() (int, error) {
	n, e := d.got, d.errno
	var err error
	if n > 0 {
		_, err = d.dst.Write(d.buf[:n])
		d.moved(n)
	}
	putBuf(d.buf)
	d.buf = nil
	switch {
	case err != nil:
		return n, err
	case e != 0:
		return n, os.NewSyscallError("read", e)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// blockingStep is step in modeBlock: Read blocks holding a pooled buffer.
func (d *direction) blockingStep() (int, error) {
	bp := getBuf()
	n, err := d.src.Read(bp[:])
	if n > 0 {
		if _, werr := d.dst.Write(bp[:n]); werr != nil && err == nil {
			err = werr
		}
		d.moved(n)
	}
	putBuf(bp)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && n == 0 {
		// The deadline fires inside Read.
		return 0, d.timedOut()
	}
	return n, err
}

// run relays until EOF (then half-closes dst) or an error (then reports it).
func (d *direction) run() error {
	defer d.endCopy()
	for {
		_, err := d.step()
		if err == io.EOF {
			// Pass the FIN on, unless the other direction has ended too:
			// then both sockets are about to be closed anyway.
			if d.other == nil || !d.other.ended.Load() {
				closeWrite(d.dst)
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// endCopy gives back the direction's copy slot, if it took one.
func (d *direction) endCopy() {
	if d.copySlot {
		d.copySlot = false
		copyDirs.Add(-1)
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// relayAsync copies a to b and b to a, each direction in a new goroutine,
// until both end, propagating a half-close (FIN) from either side; an error
// or the idle timeout in either direction closes both. It then calls done
// with the bytes relayed each way and the first error. The caller's
// goroutine (and its stack) is free at once. hop is what a bulk direction
// on a short hop does.
func relayAsync(a, b net.Conn, idle time.Duration, now func() time.Time, up, down func(int), hop shortHop, done func(aToB, bToA int64, err error)) {
	r := &relayState{a: a, b: b, done: done}
	r.t.idle, r.t.now, r.t.hop = idle, now, hop
	r.t.touch()
	ra, rb := rawConn(a), rawConn(b)
	r.ab.init(&r.t, a, b, ra, rb, up)
	r.ba.init(&r.t, b, a, rb, ra, down)
	r.ab.other, r.ba.other = &r.ba, &r.ab
	r.left.Store(2)
	go r.run(&r.ab)
	go r.run(&r.ba)
}

type relayState struct {
	a, b   net.Conn
	t      tunnel
	ab, ba direction
	left   atomic.Int32
	once   sync.Once
	first  error
	done   func(aToB, bToA int64, err error)
}

func (r *relayState) run(d *direction) {
	err := d.run()
	d.ended.Store(true)
	if err != nil {
		r.once.Do(func() {
			r.first = err
			r.a.Close()
			r.b.Close()
		})
	}
	if r.left.Add(-1) == 0 {
		r.once.Do(func() {})
		r.done(r.ab.n, r.ba.n, r.first)
	}
}
