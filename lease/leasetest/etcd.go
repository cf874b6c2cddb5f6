// Package leasetest starts real etcd clusters (the etcd binary, which
// .ci/run installs) on loopback for the tests and benchmarks of package
// lease and of the commands and packages built on it.
package leasetest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/internal/netnstest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Etcd is a real etcd cluster (/usr/bin/etcd) on loopback with
// free ports and a temporary data directory, for tests and benchmarks.
type Etcd struct {
	t testing.TB
	// Clients are the members' client endpoints, host:port.
	Clients []string
	cmds    []*exec.Cmd
	names   []string
	dead    []bool
}

// FreePorts returns n loopback TCP ports that were free a moment ago.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// StartEtcd starts an n-member cluster and waits until it has a leader.
// The members are killed (only these processes) when the test ends. A
// port taken by someone else between freePorts and etcd's bind shows as no
// leader; the start is then tried again on new ports.
func StartEtcd(t testing.TB, n int) *Etcd {
	t.Helper()
	netnstest.RequireCommand(t, "etcd")
	for try := 1; ; try++ {
		c, log := tryStartEtcd(t, n)
		if c != nil {
			return c
		}
		if try == 3 {
			t.Fatalf("etcd cluster has no leader after 3 starts; m0 log:\n%s", log)
		}
	}
}

func tryStartEtcd(t testing.TB, n int) (*Etcd, []byte) {
	dir := t.TempDir()
	ports := FreePorts(t, 2*n)
	c := &Etcd{t: t, dead: make([]bool, n)}
	var initial []string
	for i := range n {
		c.names = append(c.names, fmt.Sprintf("m%d", i))
		c.Clients = append(c.Clients, fmt.Sprintf("127.0.0.1:%d", ports[2*i]))
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	for i := range n {
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		client := "http://" + c.Clients[i]
		log, err := os.Create(filepath.Join(dir, c.names[i]+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("etcd",
			"--name", c.names[i],
			"--data-dir", filepath.Join(dir, c.names[i]),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new", "--initial-cluster-token", filepath.Base(dir),
			"--heartbeat-interval", "100", "--election-timeout", "1000",
			"--logger", "zap", "--log-level", "error")
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c.cmds = append(c.cmds, cmd)
	}
	stop := func() {
		for i, cmd := range c.cmds {
			if !c.dead[i] {
				cmd.Process.Kill()
				cmd.Wait()
				c.dead[i] = true
			}
		}
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(15 * time.Second)
	for c.Leader() < 0 {
		if time.Now().After(deadline) {
			stop()
			b, _ := os.ReadFile(filepath.Join(dir, "m0.log"))
			return nil, b
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c, nil
}

// URL returns the store URL for the cluster under prefix.
func (c *Etcd) URL(prefix string) string {
	return "etcd://" + strings.Join(c.Clients, ",") + "/" + prefix
}

// Leader returns the index of the current leader among live members, or -1.
func (c *Etcd) Leader() int {
	for i, ep := range c.Clients {
		if c.dead[i] {
			continue
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: time.Second, Logger: zap.NewNop()})
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := cli.Status(ctx, ep)
		cancel()
		cli.Close()
		if err == nil && st.Leader != 0 && st.Header.MemberId == st.Leader {
			return i
		}
	}
	return -1
}

// Kill kills member i (a process this test started).
func (c *Etcd) Kill(i int) {
	c.cmds[i].Process.Kill()
	c.cmds[i].Wait()
	c.dead[i] = true
}
