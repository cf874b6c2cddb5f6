package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/portspace/portspace/internal/bench"
	"github.com/portspace/portspace/tuple"
)

// fleetFigures are the results of the fleet run.
type fleetFigures struct {
	Procs       int          `json:"procs"`
	ConnsEach   int          `json:"conns_each"`
	Dests       int          `json:"dests"`
	Opened      int          `json:"opened"`
	Errors      int          `json:"errors"`
	OpenSeconds float64      `json:"open_seconds"`
	ProxyMiB    float64      `json:"proxy_pss_mib"`
	Census      bench.Census `json:"census"`
	Load        string       `json:"load"`
}

const fleetPort = 9000

func fleetDest(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 1, byte(1 + i)}) }

// runBenchProxyFleet runs --fleet: procs proxy processes, each holding
// its own 1,000-port slice of 127.0.0.1 (ports 20000 up, below the
// ephemeral range), carry conns tunnels each to dests loopback
// destinations; origin and client worker processes (this binary, --role)
// hold the other ends, so no process exceeds the 20,000-file limit. A
// sock_diag census counts the proxies' outgoing 4-tuples.
func runBenchProxyFleet(cmd *cobra.Command, f benchProxyFlags) error {
	if f.fleetProcs < 1 || f.fleetProcs > 16 || f.fleetConns < 1 || f.fleetConns > 9500 || f.fleetDests < 1 || f.fleetDests > 200 {
		return fmt.Errorf("bench proxy --fleet: --fleet-procs 1-16, --fleet-conns 1-9500, --fleet-dests 1-200")
	}
	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()
	dir, err := os.MkdirTemp("", "portspace-bench-fleet-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	exe, pre, err := ourExecutable()
	if err != nil {
		return err
	}
	lo := 20000
	ports := tuple.PortSetOf(tuple.PortRangeFrom(uint16(lo), uint16(lo+1000*f.fleetProcs-1)))
	pools := filepath.Join(dir, "pools.yaml")
	os.WriteFile(pools, []byte(fmt.Sprintf("pools:\n  - {name: fleet, addresses: [127.0.0.1], ports: %s, slice: 1000, quarantine: 1s}\n", ports)), 0o600)
	store := "bolt:" + filepath.Join(dir, "leases.db")
	var children []*exec.Cmd
	defer func() {
		for _, c := range children {
			c.Process.Signal(os.Interrupt)
		}
		for _, c := range children {
			c.Wait()
		}
	}()
	start := func(args ...string) (*exec.Cmd, *bufio.Reader, io.WriteCloser, error) {
		c := exec.CommandContext(ctx, exe, append(append([]string{}, pre...), args...)...)
		c.Stderr = os.Stderr
		in, _ := c.StdinPipe()
		out, _ := c.StdoutPipe()
		if err := c.Start(); err != nil {
			return nil, nil, nil, err
		}
		children = append(children, c)
		return c, bufio.NewReader(out), in, nil
	}
	// Origins: one worker per proxy, each serving its share of the
	// destinations.
	var dests []netip.AddrPort
	for i := range f.fleetDests {
		dests = append(dests, netip.AddrPortFrom(fleetDest(i), fleetPort))
	}
	var stdins []io.WriteCloser
	defer func() {
		for _, w := range stdins {
			w.Close()
		}
	}()
	for k := range f.fleetProcs {
		var mine []string
		for i := k; i < f.fleetDests; i += f.fleetProcs {
			mine = append(mine, dests[i].String())
		}
		if len(mine) == 0 {
			continue
		}
		_, out, in, err := start("bench", "proxy", "--role", "origin", "--role-arg", strings.Join(mine, ","))
		if err != nil {
			return err
		}
		stdins = append(stdins, in)
		if line, err := out.ReadString('\n'); err != nil || !strings.HasPrefix(line, "ready") {
			return fmt.Errorf("bench proxy --fleet: origin worker: %q %v", line, err)
		}
	}
	// Proxies.
	var proxyAddrs []string
	var proxyPids []int
	for k := range f.fleetProcs {
		addr, err := freeLoopbackPort()
		if err != nil {
			return err
		}
		cfg := filepath.Join(dir, fmt.Sprintf("proxy%d.yaml", k))
		os.WriteFile(cfg, []byte(fmt.Sprintf("listen: [%s]\npools: %s\nmax-slices: 1\ndestinations: {allow: [127.0.1.0/24]}\ntimeouts: {idle: 1h}\n", addr, pools)), 0o600)
		c, _, _, err := start("proxy", "--config", cfg, "--store", store, "--holder", fmt.Sprintf("fleet-%d", k), "--log-level", "error")
		if err != nil {
			return err
		}
		p := &proxyFigures{socks: addr}
		deadline := time.Now().Add(20 * time.Second)
		for {
			if conn, err := net.Dial("tcp", addr); err == nil {
				conn.Close()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("bench proxy --fleet: proxy %d did not start", k)
			}
			time.Sleep(20 * time.Millisecond)
		}
		_ = p
		proxyAddrs = append(proxyAddrs, addr)
		proxyPids = append(proxyPids, c.Process.Pid)
	}
	// Clients: one worker per proxy, all at once.
	t0 := time.Now()
	type result struct {
		opened, errors int
		err            error
	}
	results := make([]result, f.fleetProcs)
	var wg sync.WaitGroup
	for k := range f.fleetProcs {
		_, out, in, err := start("bench", "proxy", "--role", "client", "--role-arg", fmt.Sprintf("%s;%d;%s", proxyAddrs[k], f.fleetConns, joinAddrPorts(dests)))
		if err != nil {
			return err
		}
		stdins = append(stdins, in)
		wg.Add(1)
		go func() {
			defer wg.Done()
			line, err := out.ReadString('\n')
			var r result
			if _, serr := fmt.Sscanf(line, "ready %d %d", &r.opened, &r.errors); serr != nil {
				r.err = fmt.Errorf("client worker %d: %q %v", k, line, err)
			}
			results[k] = r
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	fig := fleetFigures{Procs: f.fleetProcs, ConnsEach: f.fleetConns, Dests: f.fleetDests, OpenSeconds: el.Seconds(), Load: loadavg()}
	for _, r := range results {
		if r.err != nil {
			return r.err
		}
		fig.Opened += r.opened
		fig.Errors += r.errors
	}
	for _, pid := range proxyPids {
		fig.ProxyMiB += float64(treePSS(pid)) / 1024
	}
	fig.Census = bench.TakeCensus(bench.CensusFilter{Proto: tuple.TCP, Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Dests: dests, Ports: ports})
	if f.json {
		return printJSONObject(cmd, fig)
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "fleet: %d proxy processes x %d tunnels to %d destinations\n", fig.Procs, fig.ConnsEach, fig.Dests)
	fmt.Fprintf(w, "opened %d tunnels (%d errors) in %.1f s; proxies' PSS %.0f MiB (%.1f KiB per tunnel)\n", fig.Opened, fig.Errors, fig.OpenSeconds, fig.ProxyMiB, fig.ProxyMiB*1024/float64(max(fig.Opened, 1)))
	c := fig.Census
	if c.Taken {
		fmt.Fprintf(w, "census: %d sockets from 127.0.0.1 to the destinations, %d distinct 4-tuples, %d duplicates, %d outside the slices\n", c.Seen, c.Distinct, c.Duplicates, c.OutsidePorts)
	} else {
		fmt.Fprintf(w, "census: not taken: %s\n", c.Err)
	}
	fmt.Fprintf(w, "load average: %s\n", fig.Load)
	return nil
}

func joinAddrPorts(a []netip.AddrPort) string {
	s := make([]string, len(a))
	for i, x := range a {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func parseAddrPorts(s string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, x := range strings.Split(s, ",") {
		ap, err := netip.ParseAddrPort(x)
		if err != nil {
			return nil, err
		}
		out = append(out, ap)
	}
	return out, nil
}

// runFleetRole is a worker of --fleet: "origin ADDR,..." accepts on each
// address, writes one byte and holds the connection; "client
// PROXY;N;DEST,..." opens N tunnels through PROXY round robin over the
// destinations and holds them. Each prints "ready ..." and exits when its
// standard input closes.
func runFleetRole(cmd *cobra.Command, role, arg string) error {
	out := cmd.OutOrStdout()
	switch role {
	case "origin":
		aps, err := parseAddrPorts(arg)
		if err != nil {
			return err
		}
		var held sync.Mutex
		var conns []net.Conn
		for _, ap := range aps {
			ln, err := net.Listen("tcp", ap.String())
			if err != nil {
				return err
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Write([]byte{'o'})
					held.Lock()
					conns = append(conns, c)
					held.Unlock()
				}
			}()
		}
		fmt.Fprintln(out, "ready")
		io.Copy(io.Discard, os.Stdin)
		return nil
	case "client":
		parts := strings.SplitN(arg, ";", 3)
		if len(parts) != 3 {
			return fmt.Errorf("--role-arg %q: want PROXY;N;DESTS", arg)
		}
		n, err := strconv.Atoi(parts[1])
		if err != nil {
			return err
		}
		dests, err := parseAddrPorts(parts[2])
		if err != nil {
			return err
		}
		var next, errs atomic.Int64
		var mu sync.Mutex
		var conns []net.Conn
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var b [1]byte
				for {
					i := next.Add(1) - 1
					if i >= int64(n) {
						return
					}
					c, err := socksConnect(parts[0], dests[int(i)%len(dests)])
					if err == nil {
						c.SetDeadline(time.Now().Add(20 * time.Second))
						if _, err = io.ReadFull(c, b[:]); err != nil {
							c.Close()
						}
					}
					if err != nil {
						errs.Add(1)
						continue
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		fmt.Fprintf(out, "ready %d %d\n", len(conns), errs.Load())
		io.Copy(io.Discard, os.Stdin)
		return nil
	}
	return fmt.Errorf("--role %q: want origin or client", role)
}
