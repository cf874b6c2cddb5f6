package capacity

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strings"
	"time"

	"github.com/portspace/portspace/tuple"
)

// DefaultTimeWait is the TIME-WAIT duration used when Input.TimeWait is
// zero: Linux's TCP_TIMEWAIT_LEN (60 s), which is not tunable by sysctl.
// RFC 9293 §3.6 asks for 2×MSL, 4 minutes with the RFC's MSL of 2 minutes.
const DefaultTimeWait = 60 * time.Second

// Errors returned by Compute and ParsePorts; test them with errors.Is.
var (
	// ErrInput is matched by every error about an invalid input value.
	ErrInput = errors.New("capacity: invalid input")
	// ErrTooLarge is matched when a figure does not fit in an int64.
	ErrTooLarge = errors.New("capacity: result does not fit in 64 bits")
	// ErrUnknownProfile is matched when a port specification names a
	// profile that the profile source does not know.
	ErrUnknownProfile = errors.New("capacity: unknown port profile")
)

// Sharing says whether one source port can carry connections to several
// destinations at the same time.
type Sharing uint8

const (
	// FourTuple (the zero value) lets a source port serve one connection per
	// destination at once: the kernel picks the port at connect() time and
	// only needs the whole 4-tuple to be unused (Linux, for sockets not bound
	// to a port or bound with IP_BIND_ADDRESS_NO_PORT; RFC 6056 §2.1).
	FourTuple Sharing = iota
	// Exclusive gives each source port to one connection at a time, whatever
	// its destination: bind() to a port (or port 0) before connect() without
	// SO_REUSEADDR, where TIME-WAIT also keeps the port from being bound.
	Exclusive
)

// String returns "4-tuple" or "exclusive".
func (s Sharing) String() string {
	switch s {
	case FourTuple:
		return "4-tuple"
	case Exclusive:
		return "exclusive"
	}
	return fmt.Sprintf("Sharing(%d)", uint8(s))
}

// ParseSharing parses "4-tuple" (also "4tuple", "four-tuple") or
// "exclusive" (also "bind"), case-insensitively.
func ParseSharing(in string) (Sharing, error) {
	switch strings.ToLower(strings.TrimSpace(in)) {
	case "4-tuple", "4tuple", "four-tuple":
		return FourTuple, nil
	case "exclusive", "bind":
		return Exclusive, nil
	}
	return 0, badInput(nil, "sharing %q: want 4-tuple or exclusive", in)
}

// MarshalText implements encoding.TextMarshaler.
func (s Sharing) MarshalText() ([]byte, error) {
	if s > Exclusive {
		return nil, badInput(nil, "sharing %d is not FourTuple or Exclusive", uint8(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseSharing.
func (s *Sharing) UnmarshalText(b []byte) error {
	v, err := ParseSharing(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Input holds what Compute needs. The zero value of every field except
// Ports is a documented default.
type Input struct {
	// Ports is the set of source ports the client may use. It must not be
	// empty.
	Ports tuple.PortSet
	// TimeWait is how long a 4-tuple stays in TIME-WAIT after the client's
	// active close. Zero means DefaultTimeWait; negative is an error.
	TimeWait time.Duration
	// Hold is how long each connection stays open before the client closes
	// it. Zero means connections close at once (the upper bound on rate);
	// negative is an error.
	Hold time.Duration
	// Destinations is the number of distinct destination endpoints
	// (address, port). Zero is valid and gives zero totals; negative is an
	// error.
	Destinations int64
	// Sources is the number of source addresses the client spreads its
	// connections over, each with the whole of Ports. Zero means 1; negative
	// is an error.
	Sources int64
	// Sharing says whether a port may serve several destinations at once.
	// The zero value is FourTuple.
	Sharing Sharing
}

// Result holds the inputs Compute used (defaults applied) and the figures.
// Rates are connections per second; JSON names are stable.
type Result struct {
	// Ports is the port set in tuple.PortSet form.
	Ports string `json:"ports"`
	// PortCount is the number of ports in Ports.
	PortCount int `json:"port_count"`
	// TimeWaitSeconds is the TIME-WAIT duration used.
	TimeWaitSeconds float64 `json:"time_wait_seconds"`
	// HoldSeconds is the connection lifetime used.
	HoldSeconds float64 `json:"hold_seconds"`
	// Destinations is the number of destinations.
	Destinations int64 `json:"destinations"`
	// Sources is the number of source addresses used.
	Sources int64 `json:"sources"`
	// Sharing is the sharing mode used.
	Sharing Sharing `json:"sharing"`

	// MaxConcurrentPerDestination is the most connections that can be open
	// at once to one destination: PortCount × Sources.
	MaxConcurrentPerDestination int64 `json:"max_concurrent_per_destination"`
	// MaxNewPerSecond is the highest sustained rate of new connections to
	// one destination: MaxConcurrentPerDestination / (Hold + TimeWait).
	MaxNewPerSecond float64 `json:"max_new_per_second"`
	// TotalMaxConcurrent is the most connections open at once over all
	// destinations: × Destinations with FourTuple sharing; with Exclusive
	// sharing the same as one destination (zero without destinations).
	TotalMaxConcurrent int64 `json:"total_max_concurrent"`
	// TotalMaxNewPerSecond is the highest sustained rate over all
	// destinations, scaled the same way as TotalMaxConcurrent.
	TotalMaxNewPerSecond float64 `json:"total_max_new_per_second"`
	// PerSourceMaxConcurrentPerDestination is MaxConcurrentPerDestination
	// for one source address: PortCount.
	PerSourceMaxConcurrentPerDestination int64 `json:"per_source_max_concurrent_per_destination"`
	// PerSourceMaxNewPerSecond is MaxNewPerSecond for one source address.
	PerSourceMaxNewPerSecond float64 `json:"per_source_max_new_per_second"`
}

// Compute returns the connection capacity of in. An error names the input
// at fault and matches ErrInput, or ErrTooLarge when a count overflows int64
// (the rates are float64 and do not overflow).
func Compute(in Input) (Result, error) {
	if !in.Ports.IsValid() {
		return Result{}, badInput(nil, "ports: the port set is empty")
	}
	if in.TimeWait < 0 {
		return Result{}, badInput(nil, "time-wait %v is negative", in.TimeWait)
	}
	if in.Hold < 0 {
		return Result{}, badInput(nil, "hold %v is negative", in.Hold)
	}
	if in.Destinations < 0 {
		return Result{}, badInput(nil, "destinations %d is negative", in.Destinations)
	}
	if in.Sources < 0 {
		return Result{}, badInput(nil, "sources %d is negative", in.Sources)
	}
	if in.Sharing > Exclusive {
		return Result{}, badInput(nil, "sharing %d is not FourTuple or Exclusive", uint8(in.Sharing))
	}
	tw := in.TimeWait
	if tw == 0 {
		tw = DefaultTimeWait
	}
	sources := in.Sources
	if sources == 0 {
		sources = 1
	}
	// A port returns to service Hold + TimeWait after it was taken. The sum
	// cannot overflow: both are non-negative int64 durations, so compute it
	// in float64 seconds.
	period := tw.Seconds() + in.Hold.Seconds()

	n := int64(in.Ports.Len())
	perDest, ok := mul(n, sources)
	if !ok {
		return Result{}, fmt.Errorf("%w: %d ports × %d sources", ErrTooLarge, n, sources)
	}
	total := perDest
	switch {
	case in.Destinations == 0:
		total = 0
	case in.Sharing == FourTuple:
		total, ok = mul(perDest, in.Destinations)
		if !ok {
			return Result{}, fmt.Errorf("%w: %d ports × %d sources × %d destinations", ErrTooLarge, n, sources, in.Destinations)
		}
	}
	return Result{
		Ports:           in.Ports.String(),
		PortCount:       int(n),
		TimeWaitSeconds: tw.Seconds(),
		HoldSeconds:     in.Hold.Seconds(),
		Destinations:    in.Destinations,
		Sources:         sources,
		Sharing:         in.Sharing,

		MaxConcurrentPerDestination:          perDest,
		MaxNewPerSecond:                      float64(perDest) / period,
		TotalMaxConcurrent:                   total,
		TotalMaxNewPerSecond:                 float64(total) / period,
		PerSourceMaxConcurrentPerDestination: n,
		PerSourceMaxNewPerSecond:             float64(n) / period,
	}, nil
}

// inputError is an error about an input: its message starts with the
// package name once, and it matches ErrInput and, if set, a cause.
type inputError struct {
	msg   string
	cause error
}

func (e *inputError) Error() string { return "capacity: " + e.msg }

func (e *inputError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrInput}
	}
	return []error{ErrInput, e.cause}
}

// badInput returns an inputError with a formatted message and a cause
// (which may be nil) for errors.Is.
func badInput(cause error, format string, args ...any) error {
	return &inputError{msg: fmt.Sprintf(format, args...), cause: cause}
}

// mul returns a×b for non-negative a and b, and false if it exceeds int64.
func mul(a, b int64) (int64, bool) {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi != 0 || lo > math.MaxInt64 {
		return 0, false
	}
	return int64(lo), true
}
