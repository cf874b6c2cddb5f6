package netsys

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// PortLockFile is one open lock file of a port-lock directory: one file per
// (network namespace, protocol, source address), in which an open file
// description lock (F_OFD_SETLK, Linux 3.15) on the byte at offset port
// stands for the (address, port) pair. The kernel releases such a lock when
// the file description is closed, so a process that dies holds none. Locks
// of one PortLockFile do not exclude each other (they share one file
// description); locks of two PortLockFiles, in one process or in two, do.
type PortLockFile struct {
	fd   int
	path string
}

// NetNSID returns an identity of the calling thread's network namespace
// (the device and inode of /proc/thread-self/ns/net), stable while the
// namespace exists and equal for every process in it.
func NetNSID() (string, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return "", fmt.Errorf("netsys: network namespace identity: %w", os.NewSyscallError("stat /proc/thread-self/ns/net", err))
	}
	return fmt.Sprintf("%x-%x", st.Dev, st.Ino), nil
}

// OpenPortLockFile opens (creating it if needed) the lock file for proto
// ("udp") and source address a in dir, itself created if missing. Both are
// made usable by every user (the directory 01777, the file 0666), since
// processes of different users that share a port set must share the locks;
// the netns argument (NetNSID) keeps namespaces apart.
func OpenPortLockFile(dir, netns, proto string, a netip.Addr) (*PortLockFile, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("netsys: port lock directory: %w", err)
	}
	// Best effort: a directory created by someone else keeps its mode.
	if st, err := os.Stat(dir); err == nil && st.Mode().Perm() != 0o777 {
		os.Chmod(dir, 0o777|os.ModeSticky)
	}
	name := proto + "-" + netns + "-" + strings.ReplaceAll(a.String(), "%", "_")
	path := filepath.Join(dir, name)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o666)
	if err != nil {
		return nil, fmt.Errorf("netsys: port lock file: %w", &os.PathError{Op: "open", Path: path, Err: err})
	}
	unix.Fchmod(fd, 0o666) // past the umask; fails harmlessly on a file of another user
	return &PortLockFile{fd: fd, path: path}, nil
}

// TryLock takes the exclusive lock of port without waiting; it reports
// false when another file description holds it.
func (l *PortLockFile) TryLock(port uint16) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: int64(port), Len: 1}
	err := ofdSetLk(l.fd, &lk)
	switch err {
	case nil:
		return true, nil
	case unix.EAGAIN, unix.EACCES:
		return false, nil
	}
	return false, fmt.Errorf("netsys: lock port %d in %s: %w", port, l.path, os.NewSyscallError("fcntl F_OFD_SETLK", err))
}

// Unlock releases the lock of port.
func (l *PortLockFile) Unlock(port uint16) error {
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: int64(port), Len: 1}
	if err := ofdSetLk(l.fd, &lk); err != nil {
		return fmt.Errorf("netsys: unlock port %d in %s: %w", port, l.path, os.NewSyscallError("fcntl F_OFD_SETLK", err))
	}
	return nil
}

// Close closes the file, releasing every lock it holds.
func (l *PortLockFile) Close() error {
	return os.NewSyscallError("close", unix.Close(l.fd))
}
