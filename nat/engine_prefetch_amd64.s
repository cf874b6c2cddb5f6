#include "textflag.h"

// func prefetch(p unsafe.Pointer) uint8
TEXT ·prefetch(SB), NOSPLIT|NOFRAME, $0-9
	MOVQ p+0(FP), AX
	PREFETCHT0 (AX)
	MOVB $0, ret+8(FP)
	RET
