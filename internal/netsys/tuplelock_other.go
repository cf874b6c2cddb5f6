//go:build !linux

package netsys

// TryLockAt is only supported on Linux.
func (l *PortLockFile) TryLockAt(off int64) (bool, error) { return false, unsupported("byte lock") }

// UnlockAt is only supported on Linux.
func (l *PortLockFile) UnlockAt(off int64) error { return unsupported("byte lock") }
