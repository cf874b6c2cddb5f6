//go:build unix

package lease

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lockFile takes an flock(2) on path (created if missing): exclusive, or
// shared when shared is set. It waits in the kernel's queue (blocking
// flock, so waiters are served about in arrival order rather than by
// polling) for at most timeout or until ctx ends. The returned function
// releases the lock.
func lockFile(ctx context.Context, path string, shared bool, timeout time.Duration) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lease: lock %s: %w", path, err)
	}
	how := syscall.LOCK_EX
	if shared {
		how = syscall.LOCK_SH
	}
	fd := int(f.Fd())
	unlock := func() { f.Close() } // closing the only descriptor drops the lock
	err = flockRetry(fd, how|syscall.LOCK_NB)
	if err == nil {
		return unlock, nil
	}
	if !errors.Is(err, syscall.EWOULDBLOCK) {
		f.Close()
		return nil, fmt.Errorf("lease: lock %s: %w", path, err)
	}
	done := make(chan error, 1)
	go func() { done <- flockRetry(fd, how) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lease: lock %s: %w", path, err)
		}
		return unlock, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
		err = fmt.Errorf("%w: another process held it for %v", ErrLockTimeout, timeout)
	}
	// The waiting flock cannot be interrupted; drop the lock when it comes.
	go func() { <-done; f.Close() }()
	return nil, fmt.Errorf("lease: lock %s: %w", path, err)
}

func flockRetry(fd, how int) error {
	for {
		err := syscall.Flock(fd, how)
		if err != syscall.EINTR {
			return err
		}
	}
}
