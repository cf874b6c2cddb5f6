package netsys

import (
	"net/netip"
	"os"
	"testing"
)

// TestPortLockFile checks the lock files UDPLockFile rests on: two open
// lock files of one (namespace, protocol, address) exclude each other port
// by port, another address or namespace is another file, an unlock or a
// close releases, and the files are usable by every user (mode 0666).
func TestPortLockFile(t *testing.T) {
	dir := t.TempDir() + "/locks"
	ns, err := NetNSID()
	if err != nil || ns == "" {
		t.Fatalf("NetNSID() = %q, %v", ns, err)
	}
	a := netip.MustParseAddr("127.0.0.1")
	open := func(ns string, addr netip.Addr) *PortLockFile {
		t.Helper()
		l, err := OpenPortLockFile(dir, ns, "udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l1, l2 := open(ns, a), open(ns, a)
	defer l2.Close()
	try := func(l *PortLockFile, port uint16, want bool) {
		t.Helper()
		if ok, err := l.TryLock(port); ok != want || err != nil {
			t.Fatalf("TryLock(%d) = %v, %v; want %v", port, ok, err, want)
		}
	}
	try(l1, 20000, true)
	try(l1, 20000, true) // the same file description: no conflict
	try(l2, 20000, false)
	try(l2, 20001, true) // another port
	other := open(ns, netip.MustParseAddr("127.0.0.2"))
	defer other.Close()
	try(other, 20000, true)
	elsewhere := open(ns+"-other", a)
	defer elsewhere.Close()
	try(elsewhere, 20000, true)
	if err := l1.Unlock(20000); err != nil {
		t.Fatal(err)
	}
	try(l2, 20000, true)
	if err := l2.Unlock(20000); err != nil {
		t.Fatal(err)
	}
	try(l1, 20000, true)
	l1.Close()
	try(l2, 20000, true)
	st, err := os.Stat(dir + "/udp-" + ns + "-127.0.0.1")
	if err != nil || st.Mode().Perm() != 0o666 {
		t.Fatalf("lock file: %v, mode %v; want 0666", err, st.Mode())
	}
}
