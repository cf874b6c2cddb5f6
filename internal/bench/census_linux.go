package bench

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/portspace/portspace/tuple"
)

// tcpEstablished is the TCP_ESTABLISHED state, which connected UDP sockets
// also report through sock_diag.
const tcpEstablished = 1

// TakeCensus dumps every socket of f.Proto through NETLINK_SOCK_DIAG (with
// vishvananda/netlink, independently of the dialer's own code) and counts
// the ESTABLISHED ones that f selects.
func TakeCensus(f CensusFilter) Census {
	family := uint8(unix.AF_INET)
	if len(f.Sources) > 0 && f.Sources[0].Unmap().Is6() {
		family = unix.AF_INET6
	}
	var socks []*netlink.Socket
	var err error
	for try := 0; try < 3; try++ {
		switch f.Proto {
		case tuple.TCP:
			socks, err = netlink.SocketDiagTCP(family)
		case tuple.UDP:
			socks, err = netlink.SocketDiagUDP(family)
		default:
			return Census{Err: fmt.Sprintf("bench: census: proto %v: want tcp or udp", f.Proto)}
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return Census{Err: fmt.Sprintf("bench: census: sock_diag dump: %v", err)}
	}
	match := f.matcher()
	var tuples []tuple.Tuple
	for _, s := range socks {
		if s.State != tcpEstablished {
			continue
		}
		local := netip.AddrPortFrom(addrOf(s.ID.Source), s.ID.SourcePort)
		remote := netip.AddrPortFrom(addrOf(s.ID.Destination), s.ID.DestinationPort)
		if match(local, remote) {
			tuples = append(tuples, tuple.From(f.Proto, local, remote))
		}
	}
	return f.count(tuples)
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
