package netsys

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// bpfInsn is one eBPF instruction (struct bpf_insn).
type bpfInsn struct {
	code uint8
	regs uint8 // dst in the low nibble, src in the high one
	off  int16
	imm  int32
}

func insn(code uint8, dst, src uint8, off int16, imm int32) bpfInsn {
	return bpfInsn{code: code, regs: dst | src<<4, off: off, imm: imm}
}

// eBPF opcodes and helper ids used by the verdict program (linux/bpf.h;
// x/sys/unix has the commands and types but not the helper ids).
const (
	bpfMovReg  = 0xbf // BPF_ALU64 | BPF_MOV | BPF_X
	bpfMovImm  = 0xb7 // BPF_ALU64 | BPF_MOV | BPF_K
	bpfAddImm  = 0x07 // BPF_ALU64 | BPF_ADD | BPF_K
	bpfStxDW   = 0x7b // BPF_STX | BPF_MEM | BPF_DW
	bpfLdImm64 = 0x18 // BPF_LD | BPF_IMM | BPF_DW
	bpfCall    = 0x85 // BPF_JMP | BPF_CALL
	bpfExit    = 0x95 // BPF_JMP | BPF_EXIT

	bpfFuncGetSocketCookie = 46 // bpf_get_socket_cookie
	bpfFuncSkRedirectHash  = 72 // bpf_sk_redirect_hash
)

// verdictProgram is the stream verdict: every skb a socket of the map
// receives goes to the egress of the socket stored under the receiving
// socket's own cookie (its tunnel's peer):
//
//	r6 = r1                           // the skb
//	r0 = bpf_get_socket_cookie(r1)
//	*(u64 *)(r10 - 8) = r0
//	return bpf_sk_redirect_hash(r6, map, r10 - 8, 0)   // 0: egress
//
// A socket whose peer is gone from the map gets SK_DROP.
func verdictProgram(mapFD int) []bpfInsn {
	return []bpfInsn{
		insn(bpfMovReg, 6, 1, 0, 0),
		insn(bpfCall, 0, 0, 0, bpfFuncGetSocketCookie),
		insn(bpfStxDW, 10, 0, -8, 0),
		insn(bpfMovReg, 1, 6, 0, 0),
		insn(bpfLdImm64, 2, unix.BPF_PSEUDO_MAP_FD, 0, int32(mapFD)),
		insn(0, 0, 0, 0, 0),
		insn(bpfMovReg, 3, 10, 0, 0),
		insn(bpfAddImm, 3, 0, 0, -8),
		insn(bpfMovImm, 4, 0, 0, 0),
		insn(bpfCall, 0, 0, 0, bpfFuncSkRedirectHash),
		insn(bpfExit, 0, 0, 0, 0),
	}
}

func bpf(cmd int, attr unsafe.Pointer, size uintptr) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(attr), size)
	runtime.KeepAlive(attr)
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// SockRelay is an in-kernel TCP relay: a BPF sockhash with a stream verdict
// program attached that redirects each segment one socket of a pair
// receives to the send queue of the other, so the bytes of a joined pair
// never reach user space. It holds two descriptors (the map and the
// program) for any number of pairs. Its methods are safe for concurrent
// use.
//
// The proxy's relay does not use it: measured against the splice relay it
// carried a bulk stream at 0.4-0.9x the rate for 1.5-1.8x the CPU per byte
// (the egress runs in a kworker, one work item per skb; docs/proxy.md, "A
// kernel relay: BPF sockmap"). BenchmarkRelayBulkSockmap in package proxy
// reproduces the figures. What a tunnel on it would have to handle, as
// the tests show: a FIN is not relayed (the relay's socket reads EOF and
// must pass it on once the peer has sent every byte), bytes queued before
// the join wait for a data_ready (SO_RCVLOWAT gives one), and the byte
// counts come from tcp_info.
type SockRelay struct {
	mapFD, progFD int
}

// sockRelayMax is the number of sockets one SockRelay can hold (two per
// tunnel).
const sockRelayMax = 1 << 17

// NewSockRelay creates the map, loads the verdict program and attaches it.
// It needs CAP_BPF and CAP_NET_ADMIN (or root) and a kernel with
// CONFIG_BPF_STREAM_PARSER; the error says which step failed.
func NewSockRelay() (*SockRelay, error) {
	mattr := struct {
		mapType, keySize, valueSize, maxEntries, flags uint32
	}{unix.BPF_MAP_TYPE_SOCKHASH, 8, 8, sockRelayMax, 0}
	mfd, err := bpf(unix.BPF_MAP_CREATE, unsafe.Pointer(&mattr), unsafe.Sizeof(mattr))
	if err != nil {
		return nil, os.NewSyscallError("bpf map create (sockhash)", err)
	}
	prog := verdictProgram(mfd)
	license := []byte("GPL\x00")
	pattr := struct {
		progType uint32
		insnCnt  uint32
		insns    uint64
		license  uint64
		logLevel uint32
		logSize  uint32
		logBuf   uint64
		kernVer  uint32
		flags    uint32
	}{
		progType: unix.BPF_PROG_TYPE_SK_SKB,
		insnCnt:  uint32(len(prog)),
		insns:    uint64(uintptr(unsafe.Pointer(&prog[0]))),
		license:  uint64(uintptr(unsafe.Pointer(&license[0]))),
	}
	pfd, err := bpf(unix.BPF_PROG_LOAD, unsafe.Pointer(&pattr), unsafe.Sizeof(pattr))
	runtime.KeepAlive(prog)
	runtime.KeepAlive(license)
	if err != nil {
		unix.Close(mfd)
		return nil, os.NewSyscallError("bpf prog load (sk_skb)", err)
	}
	aattr := struct {
		targetFD, attachBPFFD, attachType, attachFlags uint32
	}{uint32(mfd), uint32(pfd), unix.BPF_SK_SKB_STREAM_VERDICT, 0}
	if _, err := bpf(unix.BPF_PROG_ATTACH, unsafe.Pointer(&aattr), unsafe.Sizeof(aattr)); err != nil {
		unix.Close(pfd)
		unix.Close(mfd)
		return nil, os.NewSyscallError("bpf prog attach (stream verdict)", err)
	}
	return &SockRelay{mapFD: mfd, progFD: pfd}, nil
}

var (
	sockRelayOnce sync.Once
	sockRelay     *SockRelay
	sockRelayErr  error
)

// SharedSockRelay returns the process's SockRelay, created on the first
// call; the error (no capability, no kernel support) is probed once and
// returned to every caller.
func SharedSockRelay() (*SockRelay, error) {
	sockRelayOnce.Do(func() { sockRelay, sockRelayErr = NewSockRelay() })
	return sockRelay, sockRelayErr
}

// Close closes the map and the program; joined pairs stop relaying.
func (r *SockRelay) Close() error {
	err := unix.Close(r.progFD)
	if e := unix.Close(r.mapFD); err == nil {
		err = e
	}
	return err
}

func (r *SockRelay) update(key uint64, fd uintptr) error {
	val := uint64(fd)
	attr := struct {
		mapFD uint32
		_     uint32
		key   uint64
		value uint64
		flags uint64
	}{mapFD: uint32(r.mapFD), key: uint64(uintptr(unsafe.Pointer(&key))), value: uint64(uintptr(unsafe.Pointer(&val))), flags: unix.BPF_ANY}
	_, err := bpf(unix.BPF_MAP_UPDATE_ELEM, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(&key)
	runtime.KeepAlive(&val)
	if err != nil {
		return os.NewSyscallError("bpf map update (sockhash)", err)
	}
	return nil
}

func (r *SockRelay) delete(key uint64) error {
	attr := struct {
		mapFD uint32
		_     uint32
		key   uint64
	}{mapFD: uint32(r.mapFD), key: uint64(uintptr(unsafe.Pointer(&key)))}
	_, err := bpf(unix.BPF_MAP_DELETE_ELEM, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(&key)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return os.NewSyscallError("bpf map delete (sockhash)", err)
	}
	return nil
}

// Join puts the established TCP sockets a and b (with cookies ca and cb)
// into the map so that what either receives from now on is sent by the
// other. Bytes already in a socket's receive queue stay there (the verdict
// sees segments that arrive after the join); the caller moves them.
func (r *SockRelay) Join(a uintptr, ca uint64, b uintptr, cb uint64) error {
	if err := r.update(ca, b); err != nil {
		return fmt.Errorf("join: %w", err)
	}
	if err := r.update(cb, a); err != nil {
		_ = r.delete(ca)
		return fmt.Errorf("join: %w", err)
	}
	return nil
}

// Leave takes the pair with cookies ca and cb out of the map (closing a
// socket does it too).
func (r *SockRelay) Leave(ca, cb uint64) error {
	err := r.delete(ca)
	if e := r.delete(cb); err == nil {
		err = e
	}
	return err
}

// TCPCounters are a TCP socket's lifetime byte counters (tcp_info). Take
// differences: bytes_acked counts the dialer's SYN and bytes_received a
// received FIN.
type TCPCounters struct {
	Received uint64 // bytes_received: payload received (rcv_nxt - irs - 1)
	Acked    uint64 // bytes_acked: payload the peer acknowledged
	InQ      int    // SIOCINQ: received, not yet read
	OutQ     int    // SIOCOUTQ: written, not yet acknowledged
}

// Written returns the payload written to the socket so far (acked plus
// queued).
func (c TCPCounters) Written() uint64 { return c.Acked + uint64(c.OutQ) }

// ReadTCPCounters reads fd's counters.
func ReadTCPCounters(fd uintptr) (TCPCounters, error) {
	var c TCPCounters
	ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return c, os.NewSyscallError("getsockopt TCP_INFO", err)
	}
	c.Received, c.Acked = ti.Bytes_received, ti.Bytes_acked
	if c.InQ, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ); err != nil {
		return c, os.NewSyscallError("ioctl SIOCINQ", err)
	}
	if c.OutQ, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err != nil {
		return c, os.NewSyscallError("ioctl SIOCOUTQ", err)
	}
	return c, nil
}
