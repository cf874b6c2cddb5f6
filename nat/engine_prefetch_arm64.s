#include "textflag.h"

// func prefetch(p unsafe.Pointer) uint8
TEXT ·prefetch(SB), NOSPLIT|NOFRAME, $0-9
	MOVD p+0(FP), R0
	PRFM (R0), PLDL1KEEP
	MOVB ZR, ret+8(FP)
	RET
