package tunnet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// statePath names the state file by the network namespace's inode and the
// TUN name, so gateways in different namespaces never share one.
func statePath(dir, tun string) string {
	var st unix.Stat_t
	id := "0"
	if unix.Stat("/proc/self/ns/net", &st) == nil {
		id = strconv.FormatUint(st.Ino, 10)
	}
	return filepath.Join(dir, "gateway-"+id+"-"+tun+".json")
}

// LocalAddrs returns every address configured on this namespace's
// interfaces, with the interface's name.
func LocalAddrs() (map[netip.Addr]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("tunnet: list links: %w", err)
	}
	out := map[netip.Addr]string{}
	for _, l := range links {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("tunnet: list addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
				out[ip] = l.Attrs().Name
			}
		}
	}
	return out, nil
}

// Recover removes what a previous run with this TUN name in this network
// namespace left behind (after a SIGKILL), as listed in its state file.
func Recover(stateDir, tun string) error {
	p := Plan{TUN: tun, StateDir: stateDir}.withDefaults()
	path := statePath(p.StateDir, p.TUN)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tunnet: read state: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("tunnet: state file %s: %w", path, err)
	}
	if err := undo(&st); err != nil {
		return err
	}
	return os.Remove(path)
}

// Apply recovers a previous run's leftovers, then creates the TUN device and
// installs the rules, routes, proxy entries and sysctls of p. On error it
// removes what it added.
func Apply(p Plan) (_ *Setup, err error) {
	p = p.withDefaults()
	if _, err := netlink.LinkByName(p.TUN); err == nil {
		// A second gateway would attach to the running one's queues.
		return nil, fmt.Errorf("tunnet: interface %s exists: another gateway runs with this TUN name (choose another with --tun)", p.TUN)
	}
	if err := Recover(p.StateDir, p.TUN); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(p.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("tunnet: state directory: %w", err)
	}
	s := &Setup{plan: p, st: &state{TUN: p.TUN}}
	defer func() {
		if err != nil {
			s.Remove()
		}
	}()
	// Find the interfaces before any route of ours changes the answers.
	insideDevs := map[string]bool{}
	for _, pr := range p.Inside {
		dev, err := routeDev(pr.Addr())
		if err != nil {
			return nil, fmt.Errorf("tunnet: inside network %v: %w", pr, err)
		}
		if !insideDevs[dev] {
			insideDevs[dev] = true
			s.InsideDevs = append(s.InsideDevs, dev)
		}
	}
	outsideDevs := map[netip.Addr]string{}
	if !p.Passthrough {
		for _, a := range p.External {
			if dev, err := routeDev(a); err == nil && !insideDevs[dev] {
				outsideDevs[a] = dev
				s.OutsideDevs = append(s.OutsideDevs, dev)
			}
		}
	}
	for i := 0; i < p.Queues; i++ {
		f, err := openQueue(p.TUN)
		if err != nil {
			return nil, err
		}
		s.Queues = append(s.Queues, f)
	}
	link, err := netlink.LinkByName(p.TUN)
	if err != nil {
		return nil, fmt.Errorf("tunnet: TUN %s: %w", p.TUN, err)
	}
	if err := netlink.LinkSetMTU(link, p.MTU); err != nil {
		return nil, fmt.Errorf("tunnet: TUN %s: set MTU %d: %w", p.TUN, p.MTU, err)
	}
	if err := netlink.LinkSetTxQLen(link, p.TxQueueLen); err != nil {
		return nil, fmt.Errorf("tunnet: TUN %s: set txqueuelen: %w", p.TUN, err)
	}
	// The kernel would otherwise send router solicitations into the TUN.
	_ = writeSysctl("/proc/sys/net/ipv6/conf/"+p.TUN+"/disable_ipv6", "1")
	// ICMP errors the kernel itself sends about packets leaving the TUN come
	// back through it with a source address of this host: accept them.
	if err := writeSysctl("/proc/sys/net/ipv4/conf/"+p.TUN+"/accept_local", "1"); err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("tunnet: TUN %s: set up: %w", p.TUN, err)
	}

	// Plan everything, write the state file, then add.
	st := s.st
	st.Sysctls = append(st.Sysctls, sysctl{Path: "/proc/sys/net/ipv4/ip_forward"})
	st.Routes = append(st.Routes, route{Dst: "0.0.0.0/0", Dev: p.TUN, Table: p.Table})
	prio := p.Priority
	if p.Passthrough {
		// Packets written back to the TUN leave by the main table.
		st.Rules = append(st.Rules, rule{Priority: prio, Table: unix.RT_TABLE_MAIN, Iif: p.TUN})
		prio++
	}
	for _, dev := range s.InsideDevs {
		st.Rules = append(st.Rules, rule{Priority: prio, Table: p.Table, Iif: dev})
	}
	if p.Passthrough {
		for _, pr := range p.Inside {
			st.Rules = append(st.Rules, rule{Priority: prio + 1, Table: p.Table, Dst: pr.String()})
		}
	} else {
		for _, a := range p.External {
			st.Routes = append(st.Routes, route{Dst: netip.PrefixFrom(a, 32).String(), Dev: p.TUN, Table: unix.RT_TABLE_MAIN})
			if dev, ok := outsideDevs[a]; ok {
				st.Neighs = append(st.Neighs, neigh{Addr: a.String(), Dev: dev})
			}
		}
		done := map[string]bool{}
		for _, dev := range s.OutsideDevs {
			if !done[dev] {
				done[dev] = true
				st.Sysctls = append(st.Sysctls, sysctl{Path: "/proc/sys/net/ipv4/neigh/" + dev + "/proxy_delay"})
			}
		}
	}
	for i := range st.Sysctls {
		old, err := os.ReadFile(st.Sysctls[i].Path)
		if err != nil {
			return nil, fmt.Errorf("tunnet: read %s: %w", st.Sysctls[i].Path, err)
		}
		st.Sysctls[i].Old = strings.TrimSpace(string(old))
	}
	if err := s.save(); err != nil {
		return nil, err
	}
	for _, sc := range st.Sysctls {
		v := "1"
		if strings.HasSuffix(sc.Path, "proxy_delay") {
			v = "0" // answer ARP at once, not after up to 0.8 s
		}
		if err := writeSysctl(sc.Path, v); err != nil {
			return nil, err
		}
	}
	for _, r := range st.Routes {
		nr, err := r.netlink()
		if err != nil {
			return nil, err
		}
		if err := netlink.RouteReplace(nr); err != nil {
			return nil, fmt.Errorf("tunnet: route %s dev %s table %d: %w", r.Dst, r.Dev, r.Table, err)
		}
	}
	for _, r := range st.Rules {
		if err := netlink.RuleAdd(r.netlink()); err != nil {
			return nil, fmt.Errorf("tunnet: rule %+v: %w", r, err)
		}
	}
	for _, n := range st.Neighs {
		nn, err := n.netlink()
		if err != nil {
			return nil, err
		}
		if err := netlink.NeighSet(nn); err != nil {
			return nil, fmt.Errorf("tunnet: proxy ARP for %s on %s: %w", n.Addr, n.Dev, err)
		}
	}
	return s, nil
}

func (s *Setup) save() error {
	b, err := json.MarshalIndent(s.st, "", "  ")
	if err != nil {
		return err
	}
	path := statePath(s.plan.StateDir, s.plan.TUN)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("tunnet: write state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("tunnet: write state: %w", err)
	}
	return nil
}

// Remove closes the TUN queues (which deletes the device) and removes every
// rule, route, proxy entry and sysctl change Apply made, then the state file.
func (s *Setup) Remove() error {
	var errs []error
	for _, f := range s.Queues {
		if err := f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
	}
	s.Queues = nil
	if err := undo(s.st); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(statePath(s.plan.StateDir, s.plan.TUN)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// undo removes what st lists; entries already gone are not errors.
func undo(st *state) error {
	var errs []error
	gone := func(err error) bool {
		return err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV)
	}
	for _, r := range st.Rules {
		if err := netlink.RuleDel(r.netlink()); !gone(err) {
			errs = append(errs, fmt.Errorf("tunnet: delete rule %+v: %w", r, err))
		}
	}
	for _, r := range st.Routes {
		if nr, err := r.netlink(); err == nil {
			if err := netlink.RouteDel(nr); !gone(err) {
				errs = append(errs, fmt.Errorf("tunnet: delete route %s: %w", r.Dst, err))
			}
		}
	}
	for _, n := range st.Neighs {
		if nn, err := n.netlink(); err == nil {
			if err := netlink.NeighDel(nn); !gone(err) {
				errs = append(errs, fmt.Errorf("tunnet: delete proxy ARP %s on %s: %w", n.Addr, n.Dev, err))
			}
		}
	}
	for _, sc := range st.Sysctls {
		if sc.Old != "" {
			if err := writeSysctl(sc.Path, sc.Old); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (r rule) netlink() *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = unix.AF_INET
	nr.Priority, nr.Table, nr.IifName = r.Priority, r.Table, r.Iif
	if r.Dst != "" {
		if _, n, err := net.ParseCIDR(r.Dst); err == nil {
			nr.Dst = n
		}
	}
	return nr
}

func (r route) netlink() (*netlink.Route, error) {
	_, dst, err := net.ParseCIDR(r.Dst)
	if err != nil {
		return nil, fmt.Errorf("tunnet: route %q: %w", r.Dst, err)
	}
	l, err := netlink.LinkByName(r.Dev)
	if err != nil {
		return nil, fmt.Errorf("tunnet: route %s dev %s: %w", r.Dst, r.Dev, err)
	}
	return &netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Table: r.Table, Scope: netlink.SCOPE_LINK}, nil
}

func (n neigh) netlink() (*netlink.Neigh, error) {
	l, err := netlink.LinkByName(n.Dev)
	if err != nil {
		return nil, fmt.Errorf("tunnet: proxy ARP %s dev %s: %w", n.Addr, n.Dev, err)
	}
	return &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: unix.AF_INET, Flags: netlink.NTF_PROXY,
		IP: net.ParseIP(n.Addr).To4()}, nil
}

// routeDev returns the interface the main table routes a to.
func routeDev(a netip.Addr) (string, error) {
	rs, err := netlink.RouteGet(a.AsSlice())
	if err != nil {
		return "", fmt.Errorf("no route to %v: %w", a, err)
	}
	if len(rs) == 0 {
		return "", fmt.Errorf("no route to %v", a)
	}
	l, err := netlink.LinkByIndex(rs[0].LinkIndex)
	if err != nil {
		return "", err
	}
	if l.Attrs().Name == "lo" {
		return "", fmt.Errorf("%v is a local address", a)
	}
	return l.Attrs().Name, nil
}

func writeSysctl(path, v string) error {
	if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
		return fmt.Errorf("tunnet: sysctl %s=%s: %w", path, v, err)
	}
	return nil
}

// openQueue opens one queue of the multi-queue TUN device name, creating
// the device with the first one.
func openQueue(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tunnet: cannot create TUN device %s: open /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tunnet: TUN name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_MULTI_QUEUE)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tunnet: cannot create TUN device %s: TUNSETIFF: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tunnet: TUN %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}
