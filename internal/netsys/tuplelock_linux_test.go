package netsys

import (
	"net/netip"
	"os"
	"testing"
)

// TestTryLockAt checks the byte locks UDPLockRegistry rests on: offsets up
// to 2^48 lock, neighbouring bytes are independent, two open file
// descriptions exclude each other byte by byte while one description's
// locks merge, an unlock or a close releases, and the file stays empty.
func TestTryLockAt(t *testing.T) {
	dir := t.TempDir()
	a := netip.MustParseAddr("127.0.0.1")
	open := func() *PortLockFile {
		t.Helper()
		l, err := OpenPortLockFile(dir, "ns", "udptuple", a)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l1, l2 := open(), open()
	defer l2.Close()
	try := func(l *PortLockFile, off int64, want bool) {
		t.Helper()
		if ok, err := l.TryLockAt(off); ok != want || err != nil {
			t.Fatalf("TryLockAt(%#x) = %v, %v; want %v", off, ok, err, want)
		}
	}
	const top = 65535<<32 | 0xffffffff // the largest registry offset
	for _, off := range []int64{0, 1 << 32, top} {
		try(l1, off, true)
		try(l1, off, true) // merged: the same file description
		try(l2, off, false)
		try(l2, off+1, true) // the next byte is another 4-tuple
		if off > 0 {
			try(l2, off-1, true) // and so is the byte before
		}
	}
	if err := l1.UnlockAt(top); err != nil {
		t.Fatal(err)
	}
	try(l2, top, true) // one unlock released the twice-locked byte
	try(l1, 1<<32, true)
	l1.Close()
	try(l2, 0, true)
	try(l2, 1<<32, true)
	st, err := os.Stat(dir + "/udptuple-ns-127.0.0.1")
	if err != nil || st.Size() != 0 {
		t.Fatalf("lock file: %v, size %d; want an empty file", err, st.Size())
	}
}
