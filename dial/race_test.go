package dial

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/tuple"
)

// The cross-process race: raceProcs copies of the test binary dial
// raceDials times each, over UDP, from one raceSet port set (16 ports) of
// one source to raceDests destinations, each keeping its last raceWindow
// conns open (so the 320 4-tuples are about 75% in use and the processes
// keep colliding on the same ports). The parent lists connected UDP sockets
// with `ss -Hnue` throughout and at the end. Each child also keeps a ledger:
// for every conn, its socket cookie, 4-tuple, and the CLOCK_MONOTONIC time
// just after connect and just before close, so each recorded interval lies
// inside the socket's real lifetime. The test fails when two sockets of one
// 4-tuple have overlapping ledger intervals (a proven duplicate, whether or
// not a snapshot caught it) and when ss lists two sockets on one 4-tuple
// whose ledger intervals overlap or that are not in the ledgers at all. A
// mid-run ss duplicate whose two sockets provably never coexisted (one was
// closed before the other connected) is a dump made across several netlink
// messages, not a duplicate, and is only logged.
const (
	raceProcs  = 8
	raceDials  = 2000
	raceDests  = 20
	raceWindow = 30
	raceSet    = "20000-20007,20100-20107"
	raceEnv    = "PORTSPACE_DIAL_RACE_CHILD"
	racePort   = 7000
)

// ssSocket is one line of `ss -Hnue`: a connected UDP socket.
type ssSocket struct {
	local, peer netip.AddrPort
	cookie      string // "sk:..." identifies the socket
}

// parseSS parses `ss -Hnue` output: the first two fields that parse as
// address:port are the local and peer ends; the sk: field is the cookie.
func parseSS(out string) ([]ssSocket, error) {
	var socks []ssSocket
	for ln, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var s ssSocket
		var eps []netip.AddrPort
		for _, f := range strings.Fields(line) {
			if ap, err := netip.ParseAddrPort(f); err == nil {
				eps = append(eps, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
			} else if strings.HasPrefix(f, "sk:") {
				s.cookie = f
			}
		}
		if len(eps) < 2 || s.cookie == "" {
			return nil, fmt.Errorf("ss output line %d: cannot parse %q", ln+1, line)
		}
		s.local, s.peer = eps[0], eps[1]
		socks = append(socks, s)
	}
	return socks, nil
}

// duplicates returns the 4-tuples that more than one socket (distinct
// cookies) holds among those whose local end matches keep.
func duplicates(socks []ssSocket, keep func(netip.AddrPort) bool) (dups []string, n int) {
	groups, n := dupGroups(socks, keep)
	for _, g := range groups {
		dups = append(dups, g.String())
	}
	return dups, n
}

// dupGroup is one 4-tuple and the cookies of the sockets ss listed on it.
type dupGroup struct {
	local, peer netip.AddrPort
	cookies     []string
}

func (g dupGroup) String() string {
	return fmt.Sprintf("%v -> %v held by %d sockets", g.local, g.peer, len(g.cookies))
}

// dupGroups is duplicates with the cookies of each duplicated 4-tuple.
func dupGroups(socks []ssSocket, keep func(netip.AddrPort) bool) (groups []dupGroup, n int) {
	by := map[[2]netip.AddrPort]map[string]bool{}
	for _, s := range socks {
		if !keep(s.local) {
			continue
		}
		k := [2]netip.AddrPort{s.local, s.peer}
		if by[k] == nil {
			by[k] = map[string]bool{}
		}
		by[k][s.cookie] = true
	}
	for k, cs := range by {
		n += len(cs)
		if len(cs) > 1 {
			g := dupGroup{local: k[0], peer: k[1]}
			for c := range cs {
				g.cookies = append(g.cookies, c)
			}
			groups = append(groups, g)
		}
	}
	return groups, n
}

// monoNow reads CLOCK_MONOTONIC, which all processes of the machine share.
func monoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return ts.Nano()
}

// ledgerEntry is one conn of a race child: its 4-tuple and the interval
// [open, close) inside its socket's lifetime (close is max int64 when the
// conn was still open at the end).
type ledgerEntry struct {
	local, peer netip.AddrPort
	open, close int64
}

// readLedgers parses the children's ledger files: lines "open COOKIE LOCAL
// PEER T" and "close COOKIE T", COOKIE in ss's "sk:%x" form.
func readLedgers(t *testing.T, paths []string) map[string]*ledgerEntry {
	t.Helper()
	led := map[string]*ledgerEntry{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for ln, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) == 0:
			case f[0] == "open" && len(f) == 5:
				at, _ := strconv.ParseInt(f[4], 10, 64)
				led[f[1]] = &ledgerEntry{
					local: netip.MustParseAddrPort(f[2]), peer: netip.MustParseAddrPort(f[3]),
					open: at, close: 1<<63 - 1,
				}
			case f[0] == "close" && len(f) == 3 && led[f[1]] != nil:
				led[f[1]].close, _ = strconv.ParseInt(f[2], 10, 64)
			default:
				t.Fatalf("%s:%d: bad ledger line %q", p, ln+1, line)
			}
		}
	}
	return led
}

// ledgerOverlaps returns the 4-tuples on which two ledger intervals overlap:
// duplicates proven from the children's own records.
func ledgerOverlaps(led map[string]*ledgerEntry) []string {
	by := map[[2]netip.AddrPort][]*ledgerEntry{}
	for _, e := range led {
		k := [2]netip.AddrPort{e.local, e.peer}
		by[k] = append(by[k], e)
	}
	var out []string
	for k, es := range by {
		for i := range es {
			for j := i + 1; j < len(es); j++ {
				if es[i].open < es[j].close && es[j].open < es[i].close {
					out = append(out, fmt.Sprintf("%v -> %v held by two sockets at once (ledger)", k[0], k[1]))
				}
			}
		}
	}
	return out
}

// coexisted reports whether the sockets of g may have been open at the
// same time: true unless the ledgers prove, for every pair, that one was
// closed before the other connected. Unknown cookies count as coexisting.
func coexisted(g dupGroup, led map[string]*ledgerEntry) bool {
	for i := range g.cookies {
		for j := i + 1; j < len(g.cookies); j++ {
			a, b := led[g.cookies[i]], led[g.cookies[j]]
			if a == nil || b == nil || (a.open < b.close && b.open < a.close) {
				return true
			}
		}
	}
	return false
}

func ssUDP(t *testing.T) []ssSocket {
	t.Helper()
	cmd := exec.Command("ss", "-Hnue")
	var stderr strings.Builder
	cmd.Stderr = &stderr // ss may warn here (e.g. about cgroup2)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ss -Hnue: %v: %s", err, stderr.String())
	}
	socks, err := parseSS(string(out))
	if err != nil {
		t.Fatal(err)
	}
	return socks
}

// TestSSDetectsDuplicates is the race test's control: two sockets that
// share a 4-tuple through SO_REUSEADDR alone (what the lock prevents) are
// reported by the ss check.
func TestSSDetectsDuplicates(t *testing.T) {
	netnstest.RequireCommand(t, "ss")
	if !netnstest.InNetNS(t) {
		return
	}
	local := netip.AddrPortFrom(v4src(1), 20000)
	remote := netip.AddrPortFrom(v4dst(1), racePort)
	for range 2 {
		fd, err := netsys.UDPSocket(false)
		if err != nil {
			t.Fatal(err)
		}
		defer netsys.Close(fd)
		if err := netsys.SetReuseAddr(fd, true); err != nil {
			t.Fatal(err)
		}
		if err := netsys.Bind(fd, local); err != nil {
			t.Fatal(err)
		}
		if err := netsys.Connect(fd, remote); err != nil {
			t.Fatal(err)
		}
	}
	dups, n := duplicates(ssUDP(t), func(ap netip.AddrPort) bool { return ap == local })
	if n != 2 || len(dups) != 1 {
		t.Fatalf("ss check saw %d sockets and duplicates %v; want 2 sockets, 1 duplicate", n, dups)
	}
	// And the Dialer refuses to add a third socket on that 4-tuple.
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search}
	if c, err := d.Dial("udp", remote.String()); !errors.Is(err, ErrExhausted) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial onto a taken 4-tuple: %v, want ErrExhausted", err)
	}
}

// TestUDPCrossProcessRace runs the cross-process race (see raceProcs) once
// per UDPLock (or those named in PORTSPACE_DIAL_RACE_CHILD_LOCKS) and
// checks ss snapshots for duplicate 4-tuples. Its control run disables the
// lock (SO_REUSEADDR and bind alone, as plain programs do) with fewer dials
// and must see duplicates, which shows the check can fail.
func TestUDPCrossProcessRace(t *testing.T) {
	netnstest.RequireCommand(t, "ss")
	if !netnstest.InNetNS(t) {
		return
	}
	locks := []UDPLock{UDPLockFile, UDPLockDump, UDPLockRegistry, UDPLockOwner}
	if only := os.Getenv(raceEnv + "_LOCKS"); only != "" {
		// For long repetitions of one lock (docs/bench-dial.md), e.g.
		// PORTSPACE_DIAL_RACE_CHILD_LOCKS=registry; the control run stays.
		locks = locks[:0]
		for _, l := range []UDPLock{UDPLockFile, UDPLockDump, UDPLockRegistry, UDPLockOwner} {
			if slices.Contains(strings.Split(only, ","), l.String()) {
				locks = append(locks, l)
			}
		}
		if len(locks) == 0 {
			t.Fatalf("%s_LOCKS=%q names no UDPLock (file, dump, registry, owner)", raceEnv, only)
		}
	}
	for _, lock := range locks {
		dups, summary := runRace(t, lock, false, raceDials)
		if len(dups) > 0 {
			t.Fatalf("UDPLock %v: duplicate 4-tuples with the lock: %v", lock, dups)
		}
		t.Logf("UDPLock %v: %s", lock, summary)
	}
	dups, _ := runRace(t, UDPLockFile, true, 200)
	if len(dups) == 0 {
		t.Fatal("control run without the lock left no duplicate 4-tuple; the check is blind")
	}
	t.Logf("control without the lock: %d duplicate 4-tuples, e.g. %s", len(dups), dups[0])
}

// runRace starts raceProcs children that dial dials times each and returns
// the duplicate 4-tuples seen in ss snapshots during and after the run.
func runRace(t *testing.T, lock UDPLock, unsafe bool, dials int) (dups []string, summary string) {
	raceSetPorts := tuple.MustParsePortSet(raceSet)
	ours := func(ap netip.AddrPort) bool { return ap.Addr() == v4src(1) && raceSetPorts.Contains(ap.Port()) }
	type child struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		ready chan string
		out   strings.Builder // stderr
		log   []string        // stdout lines other than the report; read after ready closes
	}
	var children []*child
	var ledgers []string
	dir := t.TempDir()
	lockDir := t.TempDir()
	for i := range raceProcs {
		c := &child{ready: make(chan string, 1)}
		ledger := fmt.Sprintf("%s/ledger-%d", dir, i)
		ledgers = append(ledgers, ledger)
		c.cmd = exec.Command(os.Args[0], "-test.run=^TestUDPRaceChild$", "-test.count=1")
		c.cmd.Env = append(os.Environ(), raceEnv+"="+strconv.Itoa(dials), raceEnv+"_LEDGER="+ledger,
			raceEnv+"_LOCK="+strconv.Itoa(int(lock)), raceEnv+"_LOCKDIR="+lockDir)
		if unsafe {
			c.cmd.Env = append(c.cmd.Env, raceEnv+"_UNSAFE=1")
		}
		var err error
		if c.stdin, err = c.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		stdout, err := c.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		c.cmd.Stderr = &c.out
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if line, ok := strings.CutPrefix(sc.Text(), "RACECHILD "); ok {
					c.ready <- line
				} else {
					c.log = append(c.log, sc.Text())
				}
			}
			close(c.ready)
		}()
		children = append(children, c)
	}
	defer func() {
		for _, c := range children {
			c.stdin.Close()
			c.cmd.Wait()
		}
	}()
	// Snapshot while the children run, until all have reported.
	var mu sync.Mutex
	reports := 0
	var lines []string
	for _, c := range children {
		go func() {
			line, ok := <-c.ready
			mu.Lock()
			defer mu.Unlock()
			reports++
			if !ok {
				line = "FAILED: " + strings.Join(c.log, "\n") + c.out.String()
			}
			lines = append(lines, line)
		}()
	}
	type seenDup struct {
		snapshot int
		g        dupGroup
	}
	var midRun []seenDup
	snapshots := 0
	for {
		mu.Lock()
		done := reports == raceProcs
		mu.Unlock()
		groups, _ := dupGroups(ssUDP(t), ours)
		snapshots++
		for _, g := range groups {
			midRun = append(midRun, seenDup{snapshots, g})
		}
		if done {
			break
		}
	}
	held, exhausted, opened := 0, 0, 0
	for _, line := range lines {
		var h, ok, ex int
		if _, err := fmt.Sscanf(line, "held=%d ok=%d exhausted=%d", &h, &ok, &ex); err != nil {
			t.Fatalf("child report %q: %v", line, err)
		}
		held += h
		exhausted += ex
		opened += ok
		// Under UDPLockOwner a port belongs to one process at a time, and
		// a child that keeps a conn on each of its ports keeps them: some
		// children get one port or none, so only the sum is bounded.
		if ok+ex != dials || (lock != UDPLockOwner || unsafe) && ok < dials/2 {
			t.Fatalf("child report %q: want %d dials, mostly successful", line, dials)
		}
	}
	if opened < raceProcs*dials/8 {
		t.Fatalf("the children opened %d conns in all, want at least %d", opened, raceProcs*dials/8)
	}
	finalSocks := ssUDP(t)
	final, n := duplicates(finalSocks, ours)
	for _, x := range final {
		dups = append(dups, "final: "+x)
	}
	if n != held {
		t.Fatalf("ss lists %d connected sockets in the set; the children hold %d", n, held)
	}
	// Every child has reported, so its ledger is complete up to now.
	led := readLedgers(t, ledgers)
	if len(led) == 0 {
		t.Fatal("the children's ledgers are empty")
	}
	// The ledgers name sockets as ss does: every socket ss lists at the end
	// is an open ledger entry with the same 4-tuple.
	for _, so := range finalSocks {
		if !ours(so.local) {
			continue
		}
		e := led[so.cookie]
		if e == nil || e.close != 1<<63-1 || e.local != so.local || e.peer != so.peer {
			t.Fatalf("ss lists %s %v -> %v, which no child's ledger holds open", so.cookie, so.local, so.peer)
		}
	}
	dups = append(dups, ledgerOverlaps(led)...)
	seen := map[string]bool{}
	inconsistent := 0
	for _, d := range midRun {
		if !coexisted(d.g, led) {
			inconsistent++
			continue
		}
		if x := d.g.String(); !seen[x] {
			seen[x] = true
			dups = append(dups, fmt.Sprintf("snapshot %d: %s", d.snapshot, x))
		}
	}
	if inconsistent > 0 {
		t.Logf("%d mid-run ss listings showed two sockets on one 4-tuple that the ledgers prove never coexisted (a dump spread over several netlink messages)", inconsistent)
	}
	return dups, fmt.Sprintf("%d processes × %d dials: %d sockets held at the end, %d dials exhausted, %d ss snapshots, %d ledger entries; per child: %s", raceProcs, dials, held, exhausted, snapshots, len(led), strings.Join(lines, "; "))
}

// TestUDPRaceChild is one process of TestUDPCrossProcessRace; it runs only
// when that test starts it.
func TestUDPRaceChild(t *testing.T) {
	dials, _ := strconv.Atoi(os.Getenv(raceEnv))
	if dials == 0 {
		return // runs only as a child of TestUDPCrossProcessRace
	}
	testHookSkipLock = os.Getenv(raceEnv+"_UNSAFE") != ""
	lock, _ := strconv.Atoi(os.Getenv(raceEnv + "_LOCK"))
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet(raceSet), Strategy: Search,
		UDPLock: UDPLock(lock), LockDir: os.Getenv(raceEnv + "_LOCKDIR")}
	if got := d.init().udpLock; !testHookSkipLock && got != UDPLock(lock) {
		t.Fatalf("the child runs UDPLock %v, want %v", got, UDPLock(lock))
	}
	ledger, err := os.Create(os.Getenv(raceEnv + "_LEDGER"))
	if err != nil {
		t.Fatal(err)
	}
	defer ledger.Close()
	lw := bufio.NewWriter(ledger)
	defer lw.Flush()
	cookies := map[net.Conn]string{}
	ring := make([]net.Conn, 0, raceWindow)
	ok, exhausted := 0, 0
	ctx := context.Background()
	for i := range dials {
		if len(ring) == raceWindow {
			fmt.Fprintf(lw, "close %s %d\n", cookies[ring[0]], monoNow())
			delete(cookies, ring[0])
			ring[0].Close()
			ring = append(ring[:0], ring[1:]...)
		}
		dst := netip.AddrPortFrom(v4dst(1+i%raceDests), racePort)
		c, err := d.DialContext(ctx, "udp", dst.String())
		switch {
		case err == nil:
			at := monoNow()
			cookie := connCookie(t, c)
			cookies[c] = cookie
			fmt.Fprintf(lw, "open %s %s %s %d\n", cookie, c.LocalAddr(), c.RemoteAddr(), at)
			ok++
			ring = append(ring, c)
		case errors.Is(err, ErrExhausted):
			exhausted++
		default:
			t.Fatalf("dial %d: %v", i, err)
		}
	}
	if err := lw.Flush(); err != nil {
		t.Fatal(err)
	}
	fmt.Println("RACECHILD held=" + strconv.Itoa(len(ring)) + " ok=" + strconv.Itoa(ok) + " exhausted=" + strconv.Itoa(exhausted))
	io.Copy(io.Discard, os.Stdin) // hold the sockets until the parent has looked
	closeAll(ring)
}

// connCookie returns the SO_COOKIE of c's socket in ss's "sk:%x" form.
func connCookie(t *testing.T, c net.Conn) string {
	sc, ok := c.(syscall.Conn)
	if !ok {
		t.Fatalf("%T has no SyscallConn", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cookie uint64
	var cerr error
	if err := rc.Control(func(fd uintptr) { cookie, cerr = netsys.Cookie(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	if cerr != nil {
		t.Fatal(cerr)
	}
	return fmt.Sprintf("sk:%x", cookie)
}
