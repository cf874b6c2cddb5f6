package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/portspace/portspace/tuple"
)

// Dialer is what the harness measures: anything that opens a connection to
// address over network ("tcp", "tcp4", "udp", ...), as net.Dialer does.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// NamedDialer is a Dialer with the name it is reported under.
type NamedDialer struct {
	Name   string
	Dialer Dialer
}

// Names of the dialers "portspace bench dial" knows.
const (
	DialerPortspace = "portspace"
	DialerBaseline  = "net.Dialer"
)

// Defaults used by the zero Config fields and by the CLI.
const (
	DefaultSource      = "127.0.0.1"
	DefaultPorts       = "40000-40999"
	DefaultDests       = 20
	DefaultConns       = 4000
	DefaultConcurrency = 4
	DefaultTimeout     = 5 * time.Second
	// MaxDests bounds the number of destination addresses a run may use.
	MaxDests = 1 << 17
)

// Config describes one run. The zero value of each field is its documented
// default.
type Config struct {
	// Proto is tuple.TCP or tuple.UDP (zero: TCP).
	Proto tuple.Proto
	// Sources are the source addresses the dialers use (nil: 127.0.0.1).
	// The baseline binds them round robin with port 0.
	Sources []netip.Addr
	// Ports is the port set the portspace dialer draws from (zero:
	// 40000-40999). It only sizes the run here (capacity for --fill).
	Ports tuple.PortSet
	// Dests are the destination addresses; each gets its own listener
	// (nil: 20 addresses from 127.1.0.1 up).
	Dests []netip.Addr
	// DestPort is the listeners' port (0: chosen by the kernel for the
	// first destination and reused for the others where it is free).
	DestPort uint16
	// Conns is the number of connections each dialer opens and measures
	// (0: 4000). In-process runs cap the connections they hold to what
	// the open-files limit allows, and say so in the report's notes.
	Conns int
	// Fill lists pre-fill levels in percent of the capacity
	// (len(Sources) × Ports.Len() × len(Dests)). For each level, that many
	// connections are opened and held first, then Conns connections are
	// measured, each closed right after it is open so that the fill level
	// stays put. Empty: no pre-fill; the Conns connections are held.
	Fill []float64
	// Hold is how long the open connections are held after the census
	// before they are closed (0: not at all).
	Hold time.Duration
	// Rounds repeats every phase, alternating the order of the dialers
	// (A B, then B A, ...), and sums the figures over the rounds (0: 1).
	Rounds int
	// Warmup is the number of connections each dialer opens and closes
	// before anything is measured (0: min(Conns, 1000); negative: none).
	// With a warm-up, each fill level (or the hold phase) also starts
	// with one unmeasured round of every dialer's phase: the first phase
	// of a run grows the process's heap and the kernel's socket caches
	// and is slower, whichever dialer runs it (docs/bench-dial.md, "Stop
	// 18, second pass").
	Warmup int
	// Concurrency is the number of goroutines dialing at once (0: 4).
	Concurrency int
	// Timeout bounds each dial (0: 5s).
	Timeout time.Duration
	// Census turns off the sock_diag census when set to CensusOff.
	Census CensusMode
	// Exhausted is the dialer's "no port left" sentinel, matched with
	// errors.Is to count failures of kind ErrKindExhausted (nil: none).
	Exhausted error
	// LocalPrefix, when valid, is accepted for sources and destinations
	// besides loopback. Set it only inside a network namespace the run
	// created and put those addresses on (see NamespaceIPv6).
	LocalPrefix netip.Prefix
	// Progress, when set, is called by an in-process Run after every dial
	// (warm-up, pre-fill and measured) with the dials finished so far and
	// the run's total, for a progress line (internal/progress). RunWorkers
	// reports through WorkersOptions.Progress instead.
	Progress func(done, total int64) `json:"-"`
	// OpenFiles overrides the open-files limit used to cap in-process runs
	// (0: RLIMIT_NOFILE of this process).
	OpenFiles int
}

// CensusMode says whether a run takes a sock_diag census.
type CensusMode int

// Census modes.
const (
	CensusOn  CensusMode = iota // take the census (the default)
	CensusOff                   // skip it (reported as not taken)
)

// withDefaults returns c with its zero fields filled in.
func (c Config) withDefaults() Config {
	if c.Proto == 0 {
		c.Proto = tuple.TCP
	}
	if len(c.Sources) == 0 {
		c.Sources = []netip.Addr{netip.MustParseAddr(DefaultSource)}
	}
	if !c.Ports.IsValid() {
		c.Ports = tuple.MustParsePortSet(DefaultPorts)
	}
	if len(c.Dests) == 0 {
		c.Dests, _ = CountDests(DefaultDests)
	}
	if c.Conns == 0 {
		c.Conns = DefaultConns
	}
	if c.Rounds <= 0 {
		c.Rounds = 1
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	return c
}

// warmup returns the number of warm-up connections per dialer.
func (c Config) warmup() int {
	switch {
	case c.Warmup < 0:
		return 0
	case c.Warmup > 0:
		return c.Warmup
	}
	return min(c.Conns, 1000)
}

// Capacity is the number of connections the port set allows at once:
// one per (source, port, destination), since a 4-tuple must be unique.
func (c Config) Capacity() int {
	c = c.withDefaults()
	return len(c.Sources) * c.Ports.Len() * len(c.Dests)
}

// Validate reports the first problem with c, naming the setting.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.Proto != tuple.TCP && c.Proto != tuple.UDP {
		return fmt.Errorf("bench: proto %v: want tcp or udp", c.Proto)
	}
	v6 := c.Sources[0].Is6()
	for _, a := range c.Sources {
		if err := c.checkLocal("source", a); err != nil {
			return err
		}
		if a.Is6() != v6 {
			return fmt.Errorf("bench: sources mix IPv4 and IPv6 (%v)", a)
		}
	}
	for _, a := range c.Dests {
		if err := c.checkLocal("destination", a); err != nil {
			return err
		}
		if a.Is6() != v6 {
			return fmt.Errorf("bench: destination %v is not of the sources' address family (IPv6 runs use --ipv6)", a)
		}
	}
	if len(c.Dests) > MaxDests {
		return fmt.Errorf("bench: %d destinations: at most %d", len(c.Dests), MaxDests)
	}
	if c.Conns < 0 {
		return fmt.Errorf("bench: conns %d: must not be negative", c.Conns)
	}
	for _, f := range c.Fill {
		if f < 0 || f >= 100 || math.IsNaN(f) {
			return fmt.Errorf("bench: fill %v%%: want a percentage from 0 up to (not including) 100", f)
		}
	}
	return nil
}

// checkLocal is checkLoopback that also accepts c.LocalPrefix.
func (c Config) checkLocal(what string, a netip.Addr) error {
	if c.LocalPrefix.IsValid() && c.LocalPrefix.Contains(a) {
		return nil
	}
	return checkLoopback(what, a)
}

// NamespacePrefix is the IPv6 prefix (a unique local address block, RFC
// 4193) of an IPv6 run: its addresses exist only on the loopback device of
// the network namespace the run creates.
var NamespacePrefix = netip.MustParsePrefix("fd00:5053:6269::/64")

// NamespaceIPv6 returns the addresses of an IPv6 run inside its own
// namespace: the source ::1:0:0:1 and n destinations ::2:0:0:1 up of
// NamespacePrefix.
func NamespaceIPv6(n int) (source netip.Addr, dests []netip.Addr, err error) {
	if n <= 0 || n > MaxDests {
		return source, nil, &InputError{Flag: "--dests", In: strconv.Itoa(n), Msg: fmt.Sprintf("want a count from 1 to %d", MaxDests)}
	}
	base := NamespacePrefix.Addr().As16()
	base[9] = 1
	base[15] = 1
	source = netip.AddrFrom16(base)
	base[9] = 2
	a := netip.AddrFrom16(base)
	for range n {
		dests = append(dests, a)
		a = a.Next()
	}
	return source, dests, nil
}

// checkLoopback refuses addresses outside 127.0.0.0/8 and ::1: the harness
// sends traffic only to loopback.
func checkLoopback(what string, a netip.Addr) error {
	if !a.IsValid() || !a.Unmap().IsLoopback() {
		return fmt.Errorf("bench: %s %v is not a loopback address (127.0.0.0/8 or ::1); the benchmark only talks to loopback", what, a)
	}
	return nil
}

// ErrBadInput is matched (errors.Is) by every error of the parsers below.
var ErrBadInput = errors.New("bench: bad input")

// InputError is a parse error that names the flag and the input.
type InputError struct {
	Flag string // the setting, such as "--dests"
	In   string // the whole input
	Msg  string // what is wrong
}

// Error returns `bench: --dests "x": msg`.
func (e *InputError) Error() string {
	return fmt.Sprintf("bench: %s %q: %s", e.Flag, e.In, e.Msg)
}

// Is makes errors.Is(err, ErrBadInput) true.
func (e *InputError) Is(target error) bool { return target == ErrBadInput }

// CountDests returns n destination addresses 127.1.0.1, 127.1.0.2, ...,
// skipping addresses whose last byte is 0 or 255.
func CountDests(n int) ([]netip.Addr, error) {
	if n <= 0 || n > MaxDests {
		return nil, &InputError{Flag: "--dests", In: strconv.Itoa(n), Msg: fmt.Sprintf("want a count from 1 to %d", MaxDests)}
	}
	out := make([]netip.Addr, 0, n)
	a := netip.AddrFrom4([4]byte{127, 1, 0, 0})
	for len(out) < n {
		a = a.Next()
		if b := a.As4(); b[3] == 0 || b[3] == 255 {
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

// ParseDests parses the --dests flag: a count ("20", giving 127.1.0.1 up),
// or a comma-separated list of addresses and prefixes
// ("127.0.0.2,127.0.0.3", "127.2.0.0/24", "::1"). Every address must be
// loopback; duplicates are an error.
func ParseDests(in string) ([]netip.Addr, error) {
	s := strings.TrimSpace(in)
	if s == "" {
		return nil, &InputError{Flag: "--dests", In: in, Msg: "empty; want a count or a list of loopback addresses"}
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > MaxDests {
			return nil, &InputError{Flag: "--dests", In: in, Msg: fmt.Sprintf("count %d: want 1 to %d", n, MaxDests)}
		}
		return CountDests(n)
	}
	return parseAddrList("--dests", in)
}

// ParseSources parses the --sources flag: a comma-separated list of
// loopback addresses and prefixes.
func ParseSources(in string) ([]netip.Addr, error) {
	if strings.TrimSpace(in) == "" {
		return nil, &InputError{Flag: "--sources", In: in, Msg: "empty; want a list of loopback addresses"}
	}
	return parseAddrList("--sources", in)
}

func parseAddrList(flag, in string) ([]netip.Addr, error) {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(item string, a netip.Addr) error {
		a = a.Unmap()
		if !a.IsLoopback() {
			return &InputError{Flag: flag, In: in, Msg: fmt.Sprintf("item %q: %v is not a loopback address (127.0.0.0/8 or ::1)", item, a)}
		}
		if seen[a] {
			return &InputError{Flag: flag, In: in, Msg: fmt.Sprintf("item %q: %v appears twice", item, a)}
		}
		if len(out) >= MaxDests {
			return &InputError{Flag: flag, In: in, Msg: fmt.Sprintf("more than %d addresses", MaxDests)}
		}
		seen[a] = true
		out = append(out, a)
		return nil
	}
	for item := range strings.SplitSeq(in, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, &InputError{Flag: flag, In: in, Msg: "empty item"}
		}
		if strings.Contains(item, "/") {
			p, err := netip.ParsePrefix(item)
			if err != nil {
				return nil, &InputError{Flag: flag, In: in, Msg: fmt.Sprintf("item %q is not an address or prefix", item)}
			}
			p = p.Masked()
			if p.Addr().BitLen()-p.Bits() > 17 {
				return nil, &InputError{Flag: flag, In: in, Msg: fmt.Sprintf("prefix %q holds more than %d addresses", item, MaxDests)}
			}
			for a := p.Addr(); p.Contains(a); a = a.Next() {
				if err := add(item, a); err != nil {
					return nil, err
				}
			}
			continue
		}
		a, err := netip.ParseAddr(item)
		if err != nil {
			return nil, &InputError{Flag: flag, In: in, Msg: fmt.Sprintf("item %q is not an address, prefix or count", item)}
		}
		if err := add(item, a); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ParseFill parses the --fill flag: a comma-separated list of percentages
// ("95", "0,50,95"), each from 0 up to (not including) 100.
func ParseFill(in string) ([]float64, error) {
	var out []float64
	for item := range strings.SplitSeq(in, ",") {
		item = strings.TrimSuffix(strings.TrimSpace(item), "%")
		f, err := strconv.ParseFloat(item, 64)
		if err != nil || f < 0 || f >= 100 || math.IsNaN(f) {
			return nil, &InputError{Flag: "--fill", In: in, Msg: fmt.Sprintf("item %q: want a percentage from 0 up to (not including) 100", item)}
		}
		out = append(out, f)
	}
	return out, nil
}
