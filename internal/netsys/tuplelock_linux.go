package netsys

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// TryLockAt takes the exclusive open file description lock (F_OFD_SETLK,
// F_WRLCK) of the one byte at offset off of the lock file without waiting,
// and reports false when another file description holds it. The file stays
// empty: a lock may lie past the end of a file, at any offset below 2^63.
// Locks of this file description at off are merged, not counted: one
// Unlock releases the byte however often it was locked.
func (l *PortLockFile) TryLockAt(off int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: off, Len: 1}
	err := unix.FcntlFlock(uintptr(l.fd), unix.F_OFD_SETLK, &lk)
	switch err {
	case nil:
		return true, nil
	case unix.EAGAIN, unix.EACCES:
		return false, nil
	}
	return false, fmt.Errorf("netsys: lock byte %#x of %s: %w", off, l.path, os.NewSyscallError("fcntl F_OFD_SETLK", err))
}

// UnlockAt releases the lock of the byte at offset off (F_UNLCK), if this
// file description holds it.
func (l *PortLockFile) UnlockAt(off int64) error {
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: off, Len: 1}
	if err := unix.FcntlFlock(uintptr(l.fd), unix.F_OFD_SETLK, &lk); err != nil {
		return fmt.Errorf("netsys: unlock byte %#x of %s: %w", off, l.path, os.NewSyscallError("fcntl F_OFD_SETLK", err))
	}
	return nil
}
