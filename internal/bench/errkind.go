package bench

import (
	"context"
	"errors"
	"net"
	"syscall"
)

// Kinds of dial failure the report counts.
const (
	ErrKindExhausted     = "exhausted"     // the dialer's sentinel (dial.ErrExhausted)
	ErrKindEADDRNOTAVAIL = "eaddrnotavail" // the kernel found no free 4-tuple
	ErrKindTimeout       = "timeout"       // the dial timed out
	ErrKindOther         = "other"         // anything else (the report keeps a sample)
)

// ErrKinds lists the failure kinds in report order.
var ErrKinds = []string{ErrKindExhausted, ErrKindEADDRNOTAVAIL, ErrKindTimeout, ErrKindOther}

// Classify returns the kind of a dial error; exhausted is the dialer's
// exhaustion sentinel (nil: none).
func Classify(err, exhausted error) string {
	var ne net.Error
	switch {
	case exhausted != nil && errors.Is(err, exhausted):
		return ErrKindExhausted
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return ErrKindEADDRNOTAVAIL
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return ErrKindTimeout
	}
	return ErrKindOther
}

// errAddrInUse is the bind error of a taken endpoint.
var errAddrInUse = syscall.EADDRINUSE

// errAddrNotAvail is the connect error of a 4-tuple already in use.
var errAddrNotAvail = syscall.EADDRNOTAVAIL
