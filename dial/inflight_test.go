package dial

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/portspace/portspace/internal/netnstest"
	"github.com/portspace/portspace/internal/netsys"
	"github.com/portspace/portspace/tuple"
)

// TestUDPInFlightSocketMakesPortBusy checks the lock's in-flight step: a
// socket bound with SO_REUSEADDR to the only port and not connected (another
// process between its bind and its connect) makes the port busy, so the
// Dialer does not connect beside it and reports ErrExhausted; once that
// socket is gone, the same dial succeeds.
func TestUDPInFlightSocketMakesPortBusy(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	local := netip.AddrPortFrom(v4src(1), 20000)
	remote := netip.AddrPortFrom(v4dst(1), racePort)
	fd, err := netsys.UDPSocket(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := netsys.SetReuseAddr(fd, true); err != nil {
		t.Fatal(err)
	}
	if err := netsys.Bind(fd, local); err != nil {
		t.Fatal(err)
	}
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search, UDPLock: UDPLockDump}
	if c, err := d.Dial("udp", remote.String()); !errors.Is(err, ErrExhausted) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial beside an unconnected socket on the only port: %v, want ErrExhausted", err)
	}
	netsys.Close(fd)
	c, err := d.Dial("udp", remote.String())
	if err != nil {
		t.Fatalf("dial after the other socket closed: %v", err)
	}
	c.Close()
}

// TestUDPLockFileMakesPortBusy checks UDPLockFile's lock: while another
// process (here, another open file description of the same lock file)
// holds the lock of (source, port), the Dialer does not bind that port and
// reports ErrExhausted after its busy retries; once it is released, the
// same dial succeeds. The lock file lives in the Dialer's LockDir.
func TestUDPLockFileMakesPortBusy(t *testing.T) {
	if !netnstest.InNetNS(t) {
		return
	}
	dir := t.TempDir()
	remote := netip.AddrPortFrom(v4dst(1), racePort)
	d := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), Strategy: Search, UDPLock: UDPLockFile, LockDir: dir}
	c, err := d.Dial("udp", remote.String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if d.st.udpLock != UDPLockFile {
		t.Fatalf("lock %v, want file", d.st.udpLock)
	}
	other, err := netsys.OpenPortLockFile(dir, d.st.netns, "udp", v4src(1))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if ok, err := other.TryLock(20000); !ok || err != nil {
		t.Fatalf("the other holder could not take the lock: %v %v", ok, err)
	}
	if c, err := d.Dial("udp", remote.String()); !errors.Is(err, ErrExhausted) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial while another process holds the port's lock: %v, want ErrExhausted", err)
	}
	if err := other.Unlock(20000); err != nil {
		t.Fatal(err)
	}
	c, err = d.Dial("udp", remote.String())
	if err != nil {
		t.Fatalf("dial after the lock was released: %v", err)
	}
	c.Close()
	// Forced UDPLockFile with a directory that cannot exist fails closed.
	bad := &Dialer{Sources: []netip.Addr{v4src(1)}, Ports: tuple.MustParsePortSet("20000"), UDPLock: UDPLockFile, LockDir: "/proc/portspace-no-such-dir"}
	if _, err := bad.Dial("udp", remote.String()); !errors.Is(err, ErrStrategy) {
		t.Fatalf("forced file lock in an unusable directory: %v, want ErrStrategy", err)
	}
	if s, err := (&Dialer{LockDir: "/proc/portspace-no-such-dir"}).StrategyFor("udp"); s != Search || err != nil {
		t.Fatalf("auto with an unusable directory: %v %v, want search with the dump", s, err)
	}
}
