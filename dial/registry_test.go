package dial

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/tuple"
)

// TestRegistryOffset checks the registry's byte layout, which every
// portspace process must share: port<<32 | FNV-1a 32 of the destination's
// 16-byte address and big-endian port (computed here with hash/fnv), below
// 2^48, with the zone ignored.
func TestRegistryOffset(t *testing.T) {
	for _, tc := range []struct {
		port uint16
		dst  string
	}{
		{20000, "127.0.1.1:7000"}, {0, "0.0.0.0:0"}, {65535, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"},
		{40000, "[fd00::1:1]:443"}, {40000, "[fe80::1%lo]:443"},
	} {
		dst := netip.MustParseAddrPort(tc.dst)
		h := fnv.New32a()
		a := dst.Addr().As16()
		h.Write(a[:])
		h.Write(binary.BigEndian.AppendUint16(nil, dst.Port()))
		want := int64(tc.port)<<32 | int64(h.Sum32())
		if got := registryOffset(tc.port, dst); got != want || got >= 1<<48 || got < 0 {
			t.Errorf("registryOffset(%d, %v) = %#x, want %#x (below 2^48)", tc.port, dst, got, want)
		}
	}
	a, b := netip.MustParseAddrPort("[fe80::1%lo]:443"), netip.MustParseAddrPort("[fe80::1]:443")
	if registryOffset(1, a) != registryOffset(1, b) {
		t.Error("the zone changed the offset")
	}
	d1, d2 := netip.MustParseAddrPort("127.0.1.1:7000"), netip.MustParseAddrPort("127.0.1.2:7000")
	if registryOffset(20000, d1) == registryOffset(20000, d2) || registryOffset(20000, d1) == registryOffset(20001, d1) {
		t.Error("distinct 4-tuples share a byte")
	}
}

// TestRegistryOffsetAllocs pins the offset computation at 0 allocations.
func TestRegistryOffsetAllocs(t *testing.T) {
	dst := netip.MustParseAddrPort("[fd00::1:1]:443")
	var sink int64
	if n := testing.AllocsPerRun(1000, func() { sink += registryOffset(40000, dst) }); n != 0 {
		t.Fatalf("registryOffset allocates %v times per call", n)
	}
	_ = sink
}

// TestRegistryRefCount checks that two holders of one byte in a Dialer (two
// of its 4-tuples whose offsets collide) keep it locked against another
// file description until both have released it, and that acquire and
// release allocate nothing once the stripe's map exists.
func TestRegistryRefCount(t *testing.T) {
	dir := t.TempDir()
	r := newRegistry(dir, "ns", v4src(1))
	other, err := netsys.OpenPortLockFile(dir, "ns", shardProto(20000), v4src(1))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	const off = 20000<<32 | 0x1234
	for range 2 {
		if ok, err := r.acquire(off); !ok || err != nil {
			t.Fatalf("acquire: %v %v", ok, err)
		}
	}
	otherTry := func(want bool) {
		t.Helper()
		ok, err := other.TryLockAt(off)
		if ok != want || err != nil {
			t.Fatalf("the other file description locked the byte: %v %v, want %v", ok, err, want)
		}
		if ok {
			other.UnlockAt(off)
		}
	}
	otherTry(false)
	if err := r.release(off); err != nil {
		t.Fatal(err)
	}
	otherTry(false) // one holder left
	if err := r.release(off); err != nil {
		t.Fatal(err)
	}
	otherTry(true)
	if ok, err := other.TryLockAt(off); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, err := r.acquire(off); ok || err != nil {
		t.Fatalf("acquire of a byte another description holds: %v %v, want false", ok, err)
	}
	other.UnlockAt(off)
	if n := testing.AllocsPerRun(100, func() {
		if ok, _ := r.acquire(off); ok {
			r.release(off)
		}
	}); n != 0 {
		t.Fatalf("acquire and release allocate %v times", n)
	}
}

// TestUDPRegistryMakesTupleBusy checks UDPLockRegistry on sockets: while
// the Dialer holds a conn, its 4-tuple's byte is locked (another file
// description cannot take it) and Close unlocks it; while another holder
// (another process's registry) has the byte of one destination, the only
// port is busy toward it (ErrExhausted) but serves another destination.
// A forced registry in an unusable directory fails with ErrStrategy.
func TestUDPRegistryMakesTupleBusy(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	dir := t.TempDir()
	r1, r2 := netip.AddrPortFrom(v4dst(1), racePort), netip.AddrPortFrom(v4dst(2), racePort)
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search, UDPLock: UDPLockRegistry, LockDir: dir}
	if l, err := d.UDPLockInUse(); l != UDPLockRegistry || err != nil {
		t.Fatalf("UDPLockInUse() = %v, %v; want registry", l, err)
	}
	other, err := netsys.OpenPortLockFile(dir, d.st.netns, shardProto(20000), v4src(1))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	off1 := registryOffset(20000, r1)
	c, err := d.Dial("udp", r1.String())
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := other.TryLockAt(off1); ok || err != nil {
		t.Fatalf("the byte of a held 4-tuple was free to another holder: %v %v", ok, err)
	}
	c.Close()
	if ok, err := other.TryLockAt(off1); !ok || err != nil {
		t.Fatalf("the byte stayed locked after Close: %v %v", ok, err)
	}
	if c, err := d.Dial("udp", r1.String()); !errors.Is(err, ErrExhausted) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial while another holder has the 4-tuple's byte: %v, want ErrExhausted", err)
	}
	c2, err := d.Dial("udp", r2.String()) // the same port toward another destination
	if err != nil {
		t.Fatalf("dial to another destination: %v", err)
	}
	c2.Close()
	if err := other.UnlockAt(off1); err != nil {
		t.Fatal(err)
	}
	if c, err = d.Dial("udp", r1.String()); err != nil {
		t.Fatalf("dial after the other holder unlocked: %v", err)
	}
	c.Close()
	bad := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), UDPLock: UDPLockRegistry, LockDir: "/proc/portspace-no-such-dir"}
	if _, err := bad.Dial("udp", r1.String()); !errors.Is(err, ErrStrategy) {
		t.Fatalf("registry in an unusable directory: %v, want ErrStrategy", err)
	}
	if l, err := (&Dialer{LockDir: dir}).UDPLockInUse(); l != UDPLockFile || err != nil {
		t.Fatalf("UDPLockAuto chose %v, %v; want file", l, err)
	}
}

const registryChildEnv = "PORTSPACE_DIAL_REGISTRY_CHILD"

// TestUDPRegistryCrashReleases checks that a process killed while it holds
// a registered conn holds nothing afterwards: a child dials the only port
// toward the destination and is killed with SIGKILL; while it lives the
// parent's dial is exhausted, after its death the parent's dial succeeds.
func TestUDPRegistryCrashReleases(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	dir := t.TempDir()
	dst := netip.AddrPortFrom(v4dst(1), racePort)
	cmd := exec.Command(os.Args[0], "-test.run=^TestUDPRegistryChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), registryChildEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if !strings.HasPrefix(line, "HELD ") {
		t.Fatalf("child: %q, %v", line, err)
	}
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search, UDPLock: UDPLockRegistry, LockDir: dir}
	if c, err := d.Dial("udp", dst.String()); !errors.Is(err, ErrExhausted) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial while the child holds the 4-tuple: %v, want ErrExhausted", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	c, err := d.Dial("udp", dst.String())
	if err != nil {
		t.Fatalf("dial after the child was killed: %v", err)
	}
	c.Close()
}

// TestUDPRegistryChild is the child of TestUDPRegistryCrashReleases.
func TestUDPRegistryChild(t *testing.T) {
	dir := os.Getenv(registryChildEnv)
	if dir == "" {
		return // runs only as that test's child
	}
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search, UDPLock: UDPLockRegistry, LockDir: dir}
	c, err := d.DialContext(context.Background(), "udp", netip.AddrPortFrom(v4dst(1), racePort).String())
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("HELD " + c.LocalAddr().String() + "\n")
	select {} // until killed
}

// TestRegistryDialAllocs checks that a UDPLockRegistry dial and close
// allocate no more than a UDPLockFile one through the cooperative lock (the
// exclusive bind, which a file dial on a free port takes, allocates less).
func TestRegistryDialAllocs(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	dst := netip.AddrPortFrom(v4dst(1), racePort).String()
	allocs := func(lock UDPLock) float64 {
		d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000-20999"), Strategy: Search, UDPLock: lock, LockDir: t.TempDir()}
		dialClose := func() {
			c, err := d.Dial("udp", dst)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
		dialClose()
		return testing.AllocsPerRun(200, dialClose)
	}
	excl := allocs(UDPLockFile)
	testHookNoExclusive = true
	file := allocs(UDPLockFile)
	testHookNoExclusive = false
	reg := allocs(UDPLockRegistry)
	t.Logf("allocations per dial and close: file %v (%v with the exclusive bind), registry %v", file, excl, reg)
	if reg > file {
		t.Fatalf("a registry dial allocates %v times, a file dial %v", reg, file)
	}
}

var _ net.Conn = (*UDPConn)(nil)

// shardProto is the registry file name prefix of port's shard, spelled out
// as the documentation gives it: udptuple and the port's low byte in hex.
func shardProto(port uint16) string { return fmt.Sprintf("udptuple%02x", port&0xff) }

// TestRegistryShards checks that ports with different low bytes lock in
// different registry files (the kernel walks one list per file) and ports
// with the same low byte in one, named as documented.
func TestRegistryShards(t *testing.T) {
	dir := t.TempDir()
	r := newRegistry(dir, "ns", v4src(1))
	defer r.files.closeAll()
	dst := netip.MustParseAddrPort("127.0.1.1:7000")
	for _, port := range []uint16{20000, 20001, 20000 + 256} {
		if ok, err := r.acquire(registryOffset(port, dst)); !ok || err != nil {
			t.Fatalf("acquire port %d: %v %v", port, ok, err)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	want := []string{shardProto(20000) + "-ns-127.0.2.1", shardProto(20001) + "-ns-127.0.2.1"}
	if !slices.Equal(names, want) {
		t.Fatalf("registry files %v, want %v", names, want)
	}
}

// TestUDPRegistryDroppedConn checks the cleanup of a registered conn
// garbage collected without Close (releaser.dropped, which newReleaser
// registers with runtime.AddCleanup; called here directly, since cleanups
// run at the collector's pace): the socket is closed and the byte
// unlocked; a second call, or Close afterwards, only reports the closed
// socket.
func TestUDPRegistryDroppedConn(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	dir := t.TempDir()
	dst := netip.AddrPortFrom(v4dst(1), racePort)
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search, UDPLock: UDPLockRegistry, LockDir: dir}
	c, err := d.Dial("udp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	other, err := netsys.OpenPortLockFile(dir, d.st.netns, shardProto(20000), v4src(1))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	off := registryOffset(20000, dst)
	uc := c.(*UDPConn)
	uc.rel.dropped()
	if _, err := uc.UDPConn.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after the cleanup: %v, want net.ErrClosed (the socket must be closed before the unlock)", err)
	}
	if ok, err := other.TryLockAt(off); !ok || err != nil {
		t.Fatalf("the byte after the cleanup: %v %v, want free", ok, err)
	}
	uc.rel.dropped()
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Close after the cleanup: %v, want net.ErrClosed", err)
	}
}
