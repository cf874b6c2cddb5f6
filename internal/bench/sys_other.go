//go:build !linux

package bench

import "time"

// openFilesLimit returns a conservative limit where RLIMIT_NOFILE is not
// read.
func openFilesLimit() int { return 1024 }

// processCPU is not measured outside Linux.
func processCPU() time.Duration { return 0 }
