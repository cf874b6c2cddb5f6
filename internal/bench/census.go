package bench

import (
	"net/netip"

	"github.com/portspace/portspace/tuple"
)

// Census is what an independent sock_diag dump found: the ESTABLISHED
// sockets of the run's protocol whose local address is one of the sources
// and whose remote endpoint is one of the listeners.
type Census struct {
	// Taken is false when no census was taken (turned off, or not
	// supported on this platform); Err then says why, if it failed.
	Taken bool `json:"taken"`
	// Seen counts the matching sockets, Distinct their distinct 4-tuples.
	Seen     int `json:"seen"`
	Distinct int `json:"distinct"`
	// Duplicates counts sockets beyond the first on one 4-tuple; any
	// duplicate means two sockets share a 4-tuple (for UDP: the older
	// one is overshadowed and silently gets no traffic).
	Duplicates int `json:"duplicates"`
	// OutsidePorts counts matching sockets whose local port is outside
	// the port set (counted only for the portspace dialer).
	OutsidePorts int    `json:"outside_ports"`
	Err          string `json:"error,omitempty"`
}

// CensusFilter selects the sockets a census counts.
type CensusFilter struct {
	Proto   tuple.Proto
	Sources []netip.Addr
	Dests   []netip.AddrPort
	// Ports, when valid, makes the census count sockets outside it.
	Ports tuple.PortSet
}

// count fills a Census from the client-side tuples of matching sockets.
func (f CensusFilter) count(tuples []tuple.Tuple) Census {
	c := Census{Taken: true, Seen: len(tuples)}
	seen := make(map[tuple.Tuple]int, len(tuples))
	for _, t := range tuples {
		seen[t]++
		if f.Ports.IsValid() && !f.Ports.Contains(t.Local.Port()) {
			c.OutsidePorts++
		}
	}
	c.Distinct = len(seen)
	c.Duplicates = c.Seen - c.Distinct
	return c
}

// matcher returns a function that reports whether a socket with local and
// remote endpoints belongs to the run.
func (f CensusFilter) matcher() func(local, remote netip.AddrPort) bool {
	src := make(map[netip.Addr]bool, len(f.Sources))
	for _, a := range f.Sources {
		src[a.Unmap()] = true
	}
	dst := make(map[netip.AddrPort]bool, len(f.Dests))
	for _, ep := range f.Dests {
		dst[netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())] = true
	}
	return func(local, remote netip.AddrPort) bool {
		return src[local.Addr().Unmap()] && dst[netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())]
	}
}
