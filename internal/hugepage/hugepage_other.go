//go:build !linux

package hugepage

import "unsafe"

// Advise does nothing outside Linux and reports false.
func Advise(p unsafe.Pointer, n int) bool { return false }
