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
	// TLS, when the members serve clients over TLS (StartEtcdTLS), is what
	// a client needs: the CA and a client certificate.
	TLS   *TLSFiles
	cmds  []*exec.Cmd
	names []string
	dead  []bool
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
		c, log := tryStartEtcd(t, n, nil)
		if c != nil {
			return c
		}
		if try == 3 {
			t.Fatalf("etcd cluster has no leader after 3 starts; m0 log:\n%s", log)
		}
	}
}

// StartEtcdTLS starts a one-member cluster that serves clients only over
// TLS with a certificate of a throwaway CA (for 127.0.0.1) and requires
// client certificates of that CA; c.TLS names the files a client needs.
func StartEtcdTLS(t testing.TB) *Etcd {
	t.Helper()
	netnstest.RequireCommand(t, "etcd")
	f := NewTLSFiles(t, "127.0.0.1")
	for try := 1; ; try++ {
		c, log := tryStartEtcd(t, 1, f)
		if c != nil {
			return c
		}
		if try == 3 {
			t.Fatalf("etcd (TLS) has no leader after 3 starts; log:\n%s", log)
		}
	}
}

func tryStartEtcd(t testing.TB, n int, tf *TLSFiles) (*Etcd, []byte) {
	dir := t.TempDir()
	ports := FreePorts(t, 2*n)
	c := &Etcd{t: t, dead: make([]bool, n), TLS: tf}
	scheme := "http://"
	var extra []string
	if tf != nil {
		scheme = "https://"
		extra = []string{"--cert-file", tf.ServerCert, "--key-file", tf.ServerKey,
			"--client-cert-auth", "--trusted-ca-file", tf.CA}
	}
	var initial []string
	for i := range n {
		c.names = append(c.names, fmt.Sprintf("m%d", i))
		c.Clients = append(c.Clients, fmt.Sprintf("127.0.0.1:%d", ports[2*i]))
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	for i := range n {
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		client := scheme + c.Clients[i]
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
		cmd.Args = append(cmd.Args, extra...)
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

// URL returns the store URL for the cluster under prefix (etcds:// with
// the CA and client certificate options for a TLS cluster).
func (c *Etcd) URL(prefix string) string {
	if c.TLS != nil {
		return "etcds://" + strings.Join(c.Clients, ",") + "/" + prefix +
			"?cacert=" + c.TLS.CA + "&cert=" + c.TLS.ClientCert + "&key=" + c.TLS.ClientKey
	}
	return "etcd://" + strings.Join(c.Clients, ",") + "/" + prefix
}

// client returns a client of member ep (with the root user's credentials
// when user is set).
func (c *Etcd) client(ep, user, password string) (*clientv3.Client, error) {
	cfg := clientv3.Config{Endpoints: []string{ep}, DialTimeout: time.Second, Logger: zap.NewNop(), Username: user, Password: password}
	if c.TLS != nil {
		tc, err := c.TLS.ClientConfig()
		if err != nil {
			return nil, err
		}
		cfg.TLS = tc
		cfg.Endpoints = []string{"https://" + ep}
	}
	return clientv3.New(cfg)
}

// EnableAuth turns on etcd's authentication: a root user (password
// rootPassword), and user with password whose role may read and write the
// keys under prefix only.
func (c *Etcd) EnableAuth(user, password, prefix, rootPassword string) {
	c.t.Helper()
	cli, err := c.client(c.Clients[0], "", "")
	if err != nil {
		c.t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	steps := []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", rootPassword); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, user); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, user, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, user, password); return err },
		func() error { _, err := cli.UserGrantRole(ctx, user, user); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			c.t.Fatalf("etcd auth setup step %d: %v", i, err)
		}
	}
}

// Leader returns the index of the current leader among live members, or -1.
func (c *Etcd) Leader() int {
	for i, ep := range c.Clients {
		if c.dead[i] {
			continue
		}
		cli, err := c.client(ep, "", "")
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
