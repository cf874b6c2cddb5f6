package bench

import (
	"time"

	"golang.org/x/sys/unix"
)

// openFilesLimit returns this process's RLIMIT_NOFILE soft limit (Go raises
// it to the hard limit at start-up).
func openFilesLimit() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return 1024
	}
	return int(rl.Cur)
}

// processCPU returns the user plus system CPU time this process has used.
func processCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
