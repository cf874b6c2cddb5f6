package netsys

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// SetReusePortFlag sets or clears SO_REUSEPORT alone. Linux reads the flag
// of a bound socket at the time of each later bind of its port, so it can
// be toggled after bind (the dial package's port-ownership lock).
func SetReusePortFlag(fd int, on bool) error {
	v := 0
	if on {
		v = 1
	}
	return os.NewSyscallError("setsockopt SO_REUSEPORT", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, v))
}

// ProbePortOwner checks, on a UDP port of the wildcard IPv4 address that
// the kernel picks, the kernel behaviour that the dial package's
// port-ownership lock relies on:
//
//   - beside a socket with SO_REUSEADDR=0 and SO_REUSEPORT=0 (the
//     blocker), a bind with SO_REUSEPORT=1 and one with SO_REUSEADDR=1
//     fail with EADDRINUSE;
//   - once the blocker has set SO_REUSEPORT=1, a bind with SO_REUSEPORT=1
//     succeeds;
//   - once both are back at SO_REUSEPORT=0, a bind with SO_REUSEPORT=1
//     fails again.
//
// It returns nil when the kernel behaves so, and an error that says which
// step differed otherwise. The sockets are closed before it returns.
func ProbePortOwner() (err error) {
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	sock := func(reuseAddr, reusePort bool) (int, error) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, os.NewSyscallError("socket", err)
		}
		fds = append(fds, fd)
		if reuseAddr {
			if err := SetReuseAddr(fd, true); err != nil {
				return -1, err
			}
		}
		if reusePort {
			if err := SetReusePortFlag(fd, true); err != nil {
				return -1, err
			}
		}
		return fd, nil
	}
	blocker, err := sock(false, false)
	if err != nil {
		return err
	}
	if err := unix.Bind(blocker, &unix.SockaddrInet4{}); err != nil {
		return os.NewSyscallError("bind", err)
	}
	sa, err := unix.Getsockname(blocker)
	if err != nil {
		return os.NewSyscallError("getsockname", err)
	}
	port := sa.(*unix.SockaddrInet4).Port
	at := &unix.SockaddrInet4{Port: port}
	// mustFail binds a new socket to the port and wants EADDRINUSE.
	mustFail := func(what string, reuseAddr, reusePort bool) error {
		fd, err := sock(reuseAddr, reusePort)
		if err != nil {
			return err
		}
		switch err := unix.Bind(fd, at); {
		case err == nil:
			return fmt.Errorf("port owner probe: a bind with %s succeeded beside %s", what, "a socket with SO_REUSEADDR=0 and SO_REUSEPORT=0")
		case !errors.Is(err, unix.EADDRINUSE):
			return fmt.Errorf("port owner probe: a bind with %s: %w", what, os.NewSyscallError("bind", err))
		}
		return nil
	}
	if err := mustFail("SO_REUSEPORT=1", false, true); err != nil {
		return err
	}
	if err := mustFail("SO_REUSEADDR=1", true, false); err != nil {
		return err
	}
	if err := SetReusePortFlag(blocker, true); err != nil {
		return err
	}
	sib, err := sock(false, true)
	if err != nil {
		return err
	}
	if err := unix.Bind(sib, at); err != nil {
		return fmt.Errorf("port owner probe: a bind with SO_REUSEPORT=1 beside a socket that set SO_REUSEPORT=1 after its bind: %w", os.NewSyscallError("bind", err))
	}
	if err := SetReusePortFlag(sib, false); err != nil {
		return err
	}
	if err := SetReusePortFlag(blocker, false); err != nil {
		return err
	}
	return mustFail("SO_REUSEPORT=1 (after the sockets of the port cleared it again)", false, true)
}
