package portalloc

import "syscall"

// cpuNanos returns the CPU time (user + system) this process has used. On
// the shared benchmark machine it is steadier than wall time, which
// counts the time other processes hold the cores.
func cpuNanos() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
