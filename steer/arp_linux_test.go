package steer

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// arpAnswered sends an ARP request "who has target, tell src" out of dev in
// the namespace at path and reports whether anyone answered within
// 500 ms.
func arpAnswered(t *testing.T, path, dev string, src, target netip.Addr) bool {
	t.Helper()
	var answered bool
	err := inNS(t, path, func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index}); err != nil {
			return err
		}
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		req := make([]byte, 28)
		binary.BigEndian.PutUint16(req[0:], 1)      // Ethernet
		binary.BigEndian.PutUint16(req[2:], 0x0800) // IPv4
		req[4], req[5] = 6, 4
		binary.BigEndian.PutUint16(req[6:], 1) // request
		copy(req[8:14], ifi.HardwareAddr)
		s4, t4 := src.As4(), target.As4()
		copy(req[14:18], s4[:])
		copy(req[24:28], t4[:])
		to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6,
			Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
		if err := unix.Sendto(fd, req, 0, to); err != nil {
			return err
		}
		buf := make([]byte, 64)
		for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue // the receive timeout: look at the clock again
			}
			if n >= 28 && binary.BigEndian.Uint16(buf[6:]) == 2 && netip.AddrFrom4([4]byte(buf[14:18])) == target {
				answered = true
				return nil
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return answered
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
