package hugepage

import (
	"runtime"
	"testing"
	"unsafe"
)

func TestAdvise(t *testing.T) {
	small := make([]byte, 1<<20)
	if Advise(unsafe.Pointer(&small[0]), len(small)) {
		t.Fatal("advised a 1 MiB region")
	}
	if Advise(nil, 8<<20) {
		t.Fatal("advised nil")
	}
	big := make([]uint32, 4<<20) // 16 MiB
	ok := Advise(unsafe.Pointer(&big[0]), 4*len(big))
	if runtime.GOOS == "linux" && !ok {
		t.Log("madvise(MADV_HUGEPAGE) refused (THP disabled?)")
	}
	big[len(big)-1] = 1 // the memory stays usable
}
