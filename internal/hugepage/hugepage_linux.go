//go:build linux

package hugepage

import (
	"syscall"
	"unsafe"
)

const huge = 2 << 20

// Advise asks Linux to back the 2 MiB-aligned interior of the n bytes at p
// with transparent huge pages (madvise MADV_HUGEPAGE, honoured when
// /sys/kernel/mm/transparent_hugepage/enabled is "madvise" or "always").
// Regions under 4 MiB are left alone. It reports whether the advice was
// given; failures are harmless (huge pages are an optimisation).
func Advise(p unsafe.Pointer, n int) bool {
	if p == nil || n < 2*huge {
		return false
	}
	base := uintptr(p)
	start := (base + huge - 1) &^ (huge - 1)
	end := (base + uintptr(n)) &^ (huge - 1)
	if end <= start {
		return false
	}
	b := unsafe.Slice((*byte)(unsafe.Add(p, start-base)), end-start)
	return syscall.Madvise(b, syscall.MADV_HUGEPAGE) == nil
}
