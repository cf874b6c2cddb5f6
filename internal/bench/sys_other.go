//go:build !linux

package bench

// openFilesLimit returns a conservative limit where RLIMIT_NOFILE is not
// read.
func openFilesLimit() int { return 1024 }
