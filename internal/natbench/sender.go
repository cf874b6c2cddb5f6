package natbench

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/ipv4"
)

// SenderResult is what the UDP sender reports (as JSON on stdout).
type SenderResult struct {
	Sent    uint64  `json:"sent"`
	Seconds float64 `json:"seconds"`
}

// Payload is the UDP payload size: 18 bytes make a 64-byte Ethernet frame
// (14 header + 20 IPv4 + 8 UDP + 18 + 4 FCS).
const Payload = 18

// flowsPerAddr is the number of destination ports per server address.
const flowsPerAddr = 50000

// FlowDest returns flow k's destination: 192.0.2.10 then 192.0.2.11 (and
// so on), ports 10000-59999 each, so that more than 65,535 flows leave one
// source port for distinct 5-tuples.
func FlowDest(k int) netip.AddrPort {
	a := netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + k/flowsPerAddr)})
	return netip.AddrPortFrom(a, uint16(10000+k%flowsPerAddr))
}

// SubscriberAddr returns the client's address i (10.0.0.2 + i).
func SubscriberAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 0, 0, byte(2 + i)})
}

// Send sends 64-byte UDP packets round-robin over flows destinations for
// d, at rate packets/s (0: as fast as sendmmsg goes), in batches of 64,
// from subscribers source addresses (SubscriberAddr), one batch each in
// turn.
func Send(flows, subscribers int, rate float64, d time.Duration) (SenderResult, error) {
	if flows < 1 || flows > 4*flowsPerAddr {
		return SenderResult{}, fmt.Errorf("natbench: --flows %d: want 1 to %d", flows, 4*flowsPerAddr)
	}
	if subscribers < 1 || subscribers > 200 {
		return SenderResult{}, fmt.Errorf("natbench: --subscribers %d: want 1 to 200", subscribers)
	}
	var pcs []*ipv4.PacketConn
	for i := 0; i < subscribers; i++ {
		la := &net.UDPAddr{}
		if subscribers > 1 {
			la = net.UDPAddrFromAddrPort(netip.AddrPortFrom(SubscriberAddr(i), 0))
		}
		c, err := net.ListenUDP("udp4", la)
		if err != nil {
			return SenderResult{}, err
		}
		defer c.Close()
		c.SetWriteBuffer(4 << 20)
		pcs = append(pcs, ipv4.NewPacketConn(c))
	}
	dests := make([]*net.UDPAddr, flows)
	for k := range dests {
		dests[k] = net.UDPAddrFromAddrPort(FlowDest(k))
	}
	const batch = 64
	payload := make([]byte, Payload)
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{payload}
	}
	var sent uint64
	next, turn := 0, 0
	start := time.Now()
	end := start.Add(d)
	for {
		now := time.Now()
		if !now.Before(end) {
			break
		}
		if rate > 0 {
			due := start.Add(time.Duration(float64(sent) / rate * float64(time.Second)))
			if due.After(now) {
				time.Sleep(due.Sub(now))
			}
		}
		for i := range msgs {
			msgs[i].Addr = dests[next]
			next++
			if next == flows {
				next = 0
			}
		}
		pc := pcs[turn]
		turn = (turn + 1) % len(pcs)
		n, err := pc.WriteBatch(msgs, 0)
		if err != nil && n <= 0 {
			continue // ENOBUFS and the like: the packets were not sent
		}
		sent += uint64(n)
	}
	return SenderResult{Sent: sent, Seconds: time.Since(start).Seconds()}, nil
}
