//go:build !amd64 && !arm64

package nat

import "unsafe"

// prefetch loads the byte at p and returns it (architectures without a
// prefetch instruction here: the load waits for the line; the caller keeps
// the byte so that the load stays).
func prefetch(p unsafe.Pointer) uint8 { return *(*uint8)(p) }
