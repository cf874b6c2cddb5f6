// Package tunnet sets up and removes what the kernel needs so that a
// user-space NAT gateway on a TUN device sits in the forwarding path: the
// TUN device itself (multi-queue, with virtio-net headers for GSO/GRO
// offloads), a policy rule and a routing table that send the traffic of the
// inside interfaces into it, a /32 route per external address into it,
// proxy-ARP entries so the outside network's ARP for the external addresses
// is answered, and the sysctls this needs (ip_forward, proxy_delay 0,
// disable_ipv6 on the TUN).
//
// Everything Apply adds is written first to a state file, so that Remove,
// or the next Apply after a SIGKILL, takes all of it away again. Only this
// package (under internal/, the syscall and netlink boundary) talks netlink.
// On platforms other than Linux every function returns ErrUnsupported.
package tunnet

import (
	"errors"
	"net/netip"
	"os"
)

// ErrUnsupported is returned (wrapped) on platforms other than Linux.
var ErrUnsupported = errors.New("tunnet: not supported on this platform")

// Plan says what Apply sets up.
type Plan struct {
	// TUN is the name of the TUN device (default "psnat0").
	TUN string
	// MTU of the TUN device (default 1500).
	MTU int
	// Queues is the number of TUN queues opened (IFF_MULTI_QUEUE; default 1).
	Queues int
	// TxQueueLen of the TUN device (default 1000; the kernel's default of
	// 500 drops bursts before the gateway reads them).
	TxQueueLen int
	// Table is the routing table holding the default route into the TUN
	// (default 7300); Priority the priority of the policy rules (default 7300).
	Table, Priority int
	// Inside are the inside networks. Packets arriving on the interfaces
	// that route them are sent into the TUN.
	Inside []netip.Prefix
	// External are the external addresses: each gets a /32 route into the
	// TUN and a proxy-ARP entry on the interface its network is on.
	External []netip.Addr
	// Passthrough routes the inside networks' traffic in both directions
	// through the TUN (for a gateway that forwards without translating):
	// packets to the inside networks from anywhere but the TUN go into it,
	// and no external routes or proxy entries are set up.
	Passthrough bool
	// StateDir holds the state file (default /run/portspace).
	StateDir string
}

// Setup is what Apply set up. Queues are the TUN queues, opened
// non-blocking with IFF_TUN|IFF_NO_PI|IFF_VNET_HDR; Remove closes them.
type Setup struct {
	Queues []*os.File
	// InsideDevs and OutsideDevs name the interfaces found for the inside
	// networks and the external addresses.
	InsideDevs, OutsideDevs []string
	plan                    Plan
	st                      *state
}

// state is the list of everything added, as written to the state file.
type state struct {
	TUN     string   `json:"tun"`
	Rules   []rule   `json:"rules,omitempty"`
	Routes  []route  `json:"routes,omitempty"`
	Neighs  []neigh  `json:"neighs,omitempty"`
	Sysctls []sysctl `json:"sysctls,omitempty"`
}

type rule struct {
	Priority int    `json:"priority"`
	Table    int    `json:"table"`
	Iif      string `json:"iif,omitempty"`
	Dst      string `json:"dst,omitempty"`
}

type route struct {
	Dst   string `json:"dst"`
	Dev   string `json:"dev"`
	Table int    `json:"table"`
}

type neigh struct {
	Addr string `json:"addr"`
	Dev  string `json:"dev"`
}

type sysctl struct {
	Path string `json:"path"`
	Old  string `json:"old"`
}

func (p Plan) withDefaults() Plan {
	if p.TUN == "" {
		p.TUN = "psnat0"
	}
	if p.MTU == 0 {
		p.MTU = 1500
	}
	if p.Queues <= 0 {
		p.Queues = 1
	}
	if p.TxQueueLen == 0 {
		p.TxQueueLen = 1000
	}
	if p.Table == 0 {
		p.Table = 7300
	}
	if p.Priority == 0 {
		p.Priority = 7300
	}
	if p.StateDir == "" {
		p.StateDir = "/run/portspace"
	}
	return p
}
