package natlog

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/portalloc"
	"github.com/portspace/portspace/tuple"
)

// Holding is one interval during which a subscriber held an external
// endpoint (a mapping) or an external port block, reconstructed from the
// event log (RFC 6888 REQ-12, RFC 7422: tracing an external endpoint
// back to a subscriber).
type Holding struct {
	// Proto is the protocol of the mapping or block.
	Proto tuple.Proto
	// Subscriber is the internal address that held it.
	Subscriber netip.Addr
	// Internal is the internal endpoint of a mapping (zero for a block).
	Internal netip.AddrPort
	// External is the external endpoint of a mapping; for a block only its
	// address is set.
	External netip.AddrPort
	// Remote is the remote endpoint, when the log has destinations
	// (LogOptions.Destinations; RFC 6888 REQ-12 says not to by default).
	Remote netip.AddrPort
	// Block is the port block (valid for block holdings, and for mappings
	// whose events named their block).
	Block tuple.PortRange
	// IsBlock says that this is a port-block holding, not a mapping.
	IsBlock bool
	// From is when it started; zero when the log starts after it did (the
	// log holds only its end).
	From time.Time
	// To is when it ended; zero while still held at the end of the log.
	To time.Time
	// Reason is the reason of the deletion event, if any.
	Reason string
	// Deterministic says that the holding follows from RFC 7422
	// deterministic parameters (WhoisDeterministic): the block belongs to
	// the subscriber at every time, and no log was read.
	Deterministic bool
}

// Open reports whether the holding had not ended by the end of the log.
func (h Holding) Open() bool { return h.To.IsZero() }

// Covers reports whether the holding was in force at t: From <= t < To,
// with a zero From or To unbounded.
func (h Holding) Covers(t time.Time) bool {
	return (h.From.IsZero() || !t.Before(h.From)) && (h.To.IsZero() || t.Before(h.To))
}

// String describes h in one line, e.g.
// "udp 192.0.2.1:61001 held by 10.0.0.7 (10.0.0.7:40000) from ... to ...".
func (h Holding) String() string {
	what := h.External.String()
	if h.IsBlock {
		what = fmt.Sprintf("%v ports %v", h.External.Addr(), h.Block)
	}
	proto := "any"
	if h.Proto != 0 {
		proto = h.Proto.String()
	}
	s := fmt.Sprintf("%s %s held by %v", proto, what, h.Subscriber)
	if h.Internal.IsValid() {
		s += fmt.Sprintf(" (%v)", h.Internal)
	}
	if h.Remote.IsValid() {
		s += fmt.Sprintf(" to %v", h.Remote)
	}
	if h.Deterministic {
		return s + " at any time (RFC 7422 deterministic block)"
	}
	from, to := "before the log", "end of log (still held)"
	if !h.From.IsZero() {
		from = h.From.UTC().Format(time.RFC3339Nano)
	}
	if !h.To.IsZero() {
		to = h.To.UTC().Format(time.RFC3339Nano)
	}
	return s + " from " + from + " to " + to
}

// ErrNoHolder is matched (errors.Is) by Whois errors when no subscriber held
// the external endpoint at the time asked.
var ErrNoHolder = errors.New("natlog: no holder")

// noHolderError is the error of a whois without answer; it names the
// question and matches ErrNoHolder.
type noHolderError struct{ msg string }

func (e *noHolderError) Error() string        { return e.msg }
func (e *noHolderError) Is(target error) bool { return target == ErrNoHolder }

func noHolder(format string, args ...any) error {
	return &noHolderError{msg: fmt.Sprintf(format, args...)}
}

type mappingKey struct {
	proto    tuple.Proto
	internal netip.AddrPort
	external netip.AddrPort
	remote   netip.AddrPort // set when the events carry destinations
}

type blockKey struct {
	proto tuple.Proto
	sub   netip.Addr
	ext   netip.Addr
	block tuple.PortRange
}

// Index answers "who held this external endpoint at that time?" from event
// log records. It keeps, per external endpoint and per external address,
// the intervals of mappings, sessions (when destinations were logged) and
// port blocks. Add events in the order they were logged. The zero Index is
// not usable; call NewIndex.
type Index struct {
	mappings  map[netip.AddrPort][]Holding // by external endpoint
	sessions  map[netip.AddrPort][]Holding // by external endpoint
	blocks    map[netip.Addr][]Holding     // by external address
	openMap   map[mappingKey][]int         // FIFO of open mapping intervals
	openSess  map[mappingKey][]int         // FIFO of open session intervals
	openBlock map[blockKey]int
	events    int
	first     time.Time
	last      time.Time
	unmatched int
	dups      int
	only      netip.AddrPort // NewIndexFor: keep only events about this endpoint
}

// NewIndex returns an empty Index.
func NewIndex() *Index {
	return &Index{
		mappings:  map[netip.AddrPort][]Holding{},
		sessions:  map[netip.AddrPort][]Holding{},
		blocks:    map[netip.Addr][]Holding{},
		openMap:   map[mappingKey][]int{},
		openSess:  map[mappingKey][]int{},
		openBlock: map[blockKey]int{},
	}
}

// NewIndexFor returns an empty Index that keeps only the events that can
// answer a whois about ext: mappings and sessions of ext and blocks of its
// address that contain its port. Reading a large log into it needs memory
// for those events only (the `nat whois` command uses it).
func NewIndexFor(ext netip.AddrPort) *Index {
	ix := NewIndex()
	ix.only = ext
	return ix
}

// relevant reports whether ev can matter to a whois about ix.only.
func (ix *Index) relevant(ev nat.Event) bool {
	switch ev.Kind {
	case nat.BlockAllocated, nat.BlockFreed:
		return ev.External.Addr() == ix.only.Addr() && ev.Block.Contains(ix.only.Port())
	}
	return ev.External == ix.only
}

// Record implements nat.EventSink, so an Index can follow a nat.Engine live.
func (ix *Index) Record(ev nat.Event) { ix.Add(ev) }

// Add adds one event. A creation opens an interval; a deletion closes the
// oldest open interval with the same protocol, internal, external and (when
// logged) remote endpoint. Several open intervals of one key are legitimate
// with port overlapping (one internal endpoint, one external port, several
// destinations: RFC 7857 §3), so they are kept as a FIFO. Blocks are matched
// by subscriber, address and block; a second allocation of an open block
// closes the first. A deletion without a creation (the log starts mid-way)
// gives an interval with a zero From.
func (ix *Index) Add(ev nat.Event) {
	ix.events++
	if ix.first.IsZero() || ev.Time.Before(ix.first) {
		ix.first = ev.Time
	}
	if ev.Time.After(ix.last) {
		ix.last = ev.Time
	}
	if ix.only.IsValid() && !ix.relevant(ev) {
		return
	}
	sub := ev.Subscriber
	if !sub.IsValid() {
		sub = ev.Internal.Addr()
	}
	switch ev.Kind {
	case nat.MappingCreated, nat.SessionCreated, nat.MappingDeleted, nat.SessionDeleted:
		hs, open := ix.mappings, ix.openMap
		if ev.Kind == nat.SessionCreated || ev.Kind == nat.SessionDeleted {
			hs, open = ix.sessions, ix.openSess
		}
		ext := ev.External
		k := mappingKey{ev.Proto, ev.Internal, ext, ev.Remote}
		q := open[k]
		if ev.Kind == nat.MappingCreated || ev.Kind == nat.SessionCreated {
			if len(q) > 0 {
				ix.dups++
			}
			hs[ext] = append(hs[ext], Holding{Proto: ev.Proto, Subscriber: sub, Internal: ev.Internal,
				External: ext, Remote: ev.Remote, Block: ev.Block, From: ev.Time})
			open[k] = append(q, len(hs[ext])-1)
			return
		}
		if len(q) > 0 {
			h := &hs[ext][q[0]]
			h.To, h.Reason = ev.Time, ev.Reason
			if len(q) == 1 {
				delete(open, k)
			} else {
				open[k] = q[1:]
			}
			return
		}
		ix.unmatched++
		hs[ext] = append(hs[ext], Holding{Proto: ev.Proto, Subscriber: sub, Internal: ev.Internal,
			External: ext, Remote: ev.Remote, Block: ev.Block, To: ev.Time, Reason: ev.Reason})
	case nat.BlockAllocated, nat.BlockFreed:
		addr := ev.External.Addr()
		k := blockKey{ev.Proto, ev.Subscriber, addr, ev.Block}
		i, open := ix.openBlock[k]
		if ev.Kind == nat.BlockAllocated {
			if open {
				ix.blocks[addr][i].To = ev.Time
				ix.dups++
			}
			ix.blocks[addr] = append(ix.blocks[addr], Holding{
				Proto: ev.Proto, Subscriber: ev.Subscriber, External: netip.AddrPortFrom(addr, 0),
				Block: ev.Block, IsBlock: true, From: ev.Time,
			})
			ix.openBlock[k] = len(ix.blocks[addr]) - 1
			return
		}
		if open {
			h := &ix.blocks[addr][i]
			h.To, h.Reason = ev.Time, ev.Reason
			delete(ix.openBlock, k)
			return
		}
		ix.unmatched++
		ix.blocks[addr] = append(ix.blocks[addr], Holding{
			Proto: ev.Proto, Subscriber: ev.Subscriber, External: netip.AddrPortFrom(addr, 0),
			Block: ev.Block, IsBlock: true, To: ev.Time, Reason: ev.Reason,
		})
	}
}

// IndexStats describes what an Index holds.
type IndexStats struct {
	Events      int       // events added
	Mappings    int       // mapping intervals
	Blocks      int       // block intervals
	Open        int       // intervals still open at the end of the log
	Sessions    int       // session intervals (destination logging)
	Unmatched   int       // deletions without a creation in the log
	Duplicates  int       // creations while the same key was already open
	First, Last time.Time // time of the earliest and latest event
}

// Stats returns counts of what the index holds.
func (ix *Index) Stats() IndexStats {
	s := IndexStats{Events: ix.events, Unmatched: ix.unmatched, Duplicates: ix.dups,
		First: ix.first, Last: ix.last, Open: len(ix.openBlock)}
	for _, q := range ix.openMap {
		s.Open += len(q)
	}
	for _, q := range ix.openSess {
		s.Open += len(q)
	}
	for _, hs := range ix.mappings {
		s.Mappings += len(hs)
	}
	for _, hs := range ix.sessions {
		s.Sessions += len(hs)
	}
	for _, hs := range ix.blocks {
		s.Blocks += len(hs)
	}
	return s
}

// Whois returns every holding in force at time at for the external endpoint
// ext: mappings of ext (any protocol; with RFC 7857 port overlapping several
// internal endpoints can share ext at once, and without destination logging
// the log cannot tell their flows apart) and port blocks of ext's address
// that contain its port. Results are sorted by start time, then protocol. It
// returns an error wrapping ErrNoHolder when there is none.
func (ix *Index) Whois(ext netip.AddrPort, at time.Time) ([]Holding, error) {
	var out []Holding
	seen := false
	for _, h := range ix.mappings[ext] {
		seen = true
		if h.Covers(at) {
			out = append(out, h)
		}
	}
	for _, h := range ix.blocks[ext.Addr()] {
		if h.Block.Contains(ext.Port()) {
			seen = true
			if h.Covers(at) {
				out = append(out, h)
			}
		}
	}
	if len(out) == 0 {
		when := at.UTC().Format(time.RFC3339Nano)
		if !seen {
			return nil, noHolder("natlog: whois %v at %s: no holder (the log never mentions it)", ext, when)
		}
		return nil, noHolder("natlog: whois %v at %s: no holder at that time", ext, when)
	}
	slices.SortFunc(out, func(a, b Holding) int {
		if c := a.From.Compare(b.From); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Proto, b.Proto); c != 0 {
			return c
		}
		return a.Internal.Compare(b.Internal)
	})
	return out, nil
}

// WhoisRemote is Whois for one flow: the holders of ext at time at whose
// mapping or session went to remote. It needs a log written with
// destinations (LogOptions.Destinations and nat.Config.LogDestinations), and is
// the only way to tell apart subscribers sharing an external port under
// RFC 7857 port overlapping. The error wraps ErrNoHolder when there is none.
func (ix *Index) WhoisRemote(ext, remote netip.AddrPort, at time.Time) ([]Holding, error) {
	var out []Holding
	seen := map[mappingKey]bool{}
	for _, hs := range [][]Holding{ix.mappings[ext], ix.sessions[ext]} {
		for _, h := range hs {
			k := mappingKey{h.Proto, h.Internal, h.External, h.Remote}
			if h.Remote == remote && h.Covers(at) && !seen[k] {
				seen[k] = true
				out = append(out, h)
			}
		}
	}
	if len(out) == 0 {
		return nil, noHolder("natlog: whois %v from %v at %s: no holder (the log has no flow to that remote then; were destinations logged?)",
			ext, remote, at.UTC().Format(time.RFC3339Nano))
	}
	slices.SortFunc(out, func(a, b Holding) int { return a.From.Compare(b.From) })
	return out, nil
}

// History returns every holding of ext (all times), sorted by start time.
func (ix *Index) History(ext netip.AddrPort) []Holding {
	var out []Holding
	out = append(out, ix.mappings[ext]...)
	for _, h := range ix.blocks[ext.Addr()] {
		if h.Block.Contains(ext.Port()) {
			out = append(out, h)
		}
	}
	slices.SortStableFunc(out, func(a, b Holding) int { return a.From.Compare(b.From) })
	return out
}

// ReadIndex reads a whole event log into a new Index. Bad lines are passed
// to onBad (which may be nil); if onBad returns an error, reading stops and
// that error is returned, otherwise the line is skipped and reading goes on.
func ReadIndex(r *LogReader, onBad func(*LogError) error) (*Index, error) {
	ix := NewIndex()
	if err := ix.ReadFrom(r, onBad); err != nil {
		return nil, err
	}
	return ix, nil
}

// ReadFrom adds every event of a log to ix, handling bad lines like
// ReadIndex. Several logs (rotated files) are read in time order by calling
// ReadFrom for each.
func (ix *Index) ReadFrom(r *LogReader, onBad func(*LogError) error) error {
	for {
		ev, err := r.Next()
		if err == io.EOF {
			return nil
		}
		var le *LogError
		if errors.As(err, &le) {
			if onBad != nil {
				if err := onBad(le); err != nil {
					return err
				}
			}
			continue
		}
		if err != nil {
			return err
		}
		ix.Add(ev)
	}
}

// WhoisDeterministic answers whois for an RFC 7422 deterministic NAT from
// its parameters alone (no log; RFC 7422: the operator logs the
// parameters, not the mappings). The answer holds whenever these
// parameters were in force; it has no time bounds. It returns an error
// wrapping ErrNoHolder when no inside address owns ext.
func WhoisDeterministic(d *portalloc.Deterministic, ext netip.AddrPort) (Holding, error) {
	in, ok := d.Reverse(ext)
	if !ok {
		return Holding{}, noHolder("natlog: whois %v: no holder (not in any deterministic block)", ext)
	}
	_, block, _ := d.Forward(in)
	return Holding{Subscriber: in, External: ext, Block: block, IsBlock: true, Deterministic: true}, nil
}
