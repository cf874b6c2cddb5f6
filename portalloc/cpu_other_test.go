//go:build !linux

package portalloc

// cpuNanos is not measured outside Linux (the cpu-ns/op metric reads 0).
func cpuNanos() int64 { return 0 }
