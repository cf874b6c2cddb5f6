package proxy

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netsys"
)

// BenchmarkRelayBulkSockmap is BenchmarkRelayBulk with an in-kernel relay
// (netsys.SockRelay: a BPF stream verdict redirecting each skb of the
// origin's socket to the client's egress), the experiment of issue 8 that
// lost to splice (docs/proxy.md, "A kernel relay: BPF sockmap"). The relay
// is the least a sockmap tunnel needs: join the two sockets, wait for the
// origin's FIN, wait until the client's socket has taken every byte the
// origin's received (tcp_info counters), then pass the FIN on. It needs
// root (CAP_BPF and CAP_NET_ADMIN) and skips without.
func BenchmarkRelayBulkSockmap(b *testing.B) {
	r, err := netsys.SharedSockRelay()
	if err != nil {
		b.Skip(err)
	}
	benchRelayBulk(b, func(src, dst *net.TCPConn) <-chan error {
		fs, fd := connFD(b, src), connFD(b, dst)
		cs, err := netsys.Cookie(int(fs))
		if err != nil {
			b.Fatal(err)
		}
		cd, err := netsys.Cookie(int(fd))
		if err != nil {
			b.Fatal(err)
		}
		// The counters' origins: bytes_acked counts the dialer's SYN, and
		// bytes_received the FIN.
		in0, err := netsys.ReadTCPCounters(fs)
		if err != nil {
			b.Fatal(err)
		}
		out0, err := netsys.ReadTCPCounters(fd)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Join(fs, cs, fd, cd); err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			defer r.Leave(cs, cd)
			var one [1]byte
			if _, err := src.Read(one[:]); err == nil {
				done <- errSockmapPassed
				return
			}
			in, err := netsys.ReadTCPCounters(fs)
			for err == nil {
				var out netsys.TCPCounters
				if out, err = netsys.ReadTCPCounters(fd); err != nil ||
					out.Written()-out0.Written() >= in.Received-1-(in0.Received-uint64(in0.InQ)) {
					break
				}
				time.Sleep(100 * time.Microsecond)
			}
			dst.CloseWrite()
			done <- err
		}()
		return done
	})
}

// errSockmapPassed: the relay's socket read a byte the verdict should
// have redirected.
var errSockmapPassed = errors.New("proxy: sockmap relay: a byte reached user space")

func connFD(t testing.TB, c *net.TCPConn) uintptr {
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd uintptr
	if err := rc.Control(func(f uintptr) { fd = f }); err != nil {
		t.Fatal(err)
	}
	return fd
}
