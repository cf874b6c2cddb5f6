package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/portspace/portspace/nat"
)

// SessionRecord is one session as the control socket returns it (a
// nat.Session with JSON names).
type SessionRecord struct {
	Proto    string         `json:"proto"`
	Internal netip.AddrPort `json:"internal"`
	External netip.AddrPort `json:"external"`
	Remote   netip.AddrPort `json:"remote"`
	State    string         `json:"state,omitempty"`
	Expires  time.Time      `json:"expires"`
	Mapping  bool           `json:"mapping,omitempty"`
	Inbound  bool           `json:"inbound,omitempty"`
}

// ServeControl answers requests on the Unix socket path until ctx is done:
// a client writes one line, "stats" or "sessions", and reads one JSON
// document (Stats, or a list of SessionRecord). The socket is created mode
// 0600 (sessions are subscriber data) and removed when ctx is done.
func (g *Gateway) ServeControl(ctx context.Context, path string) error {
	_ = os.Remove(path) // a socket left by a killed run
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("gateway: control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("gateway: control socket: %w", err)
	}
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	go func() {
		defer os.Remove(path)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go g.answer(c)
		}
	}()
	return nil
}

func (g *Gateway) answer(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(c, 256)).ReadString('\n')
	if err != nil && line == "" {
		return
	}
	enc := json.NewEncoder(c)
	switch strings.TrimSpace(line) {
	case "stats":
		enc.Encode(g.Stats())
	case "sessions":
		enc.Encode(records(g.Sessions()))
	default:
		enc.Encode(map[string]string{"error": fmt.Sprintf("unknown request %q (want stats or sessions)", strings.TrimSpace(line))})
	}
}

func records(ss []nat.Session) []SessionRecord {
	out := make([]SessionRecord, 0, len(ss))
	for _, s := range ss {
		out = append(out, SessionRecord{Proto: s.Proto.String(), Internal: s.Internal, External: s.External,
			Remote: s.Remote, State: s.State, Expires: s.Expires, Mapping: s.Mapping, Inbound: s.Inbound})
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Internal.Compare(out[j].Internal); c != 0 {
			return c < 0
		}
		return out[i].Remote.Compare(out[j].Remote) < 0
	})
	return out
}

// Query sends one request ("stats" or "sessions") to a gateway's control
// socket and decodes the answer into v.
func Query(path, request string, v any) error {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return fmt.Errorf("gateway: control socket %s: %w (is a gateway running? --control names its socket)", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, request+"\n"); err != nil {
		return fmt.Errorf("gateway: control socket %s: %w", path, err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("gateway: control socket %s: %w", path, err)
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return errors.New("gateway: " + e.Error)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("gateway: control socket %s: bad answer: %w", path, err)
	}
	return nil
}

// WriteMetrics writes the gateway's counters in the Prometheus text
// exposition format: packets and bytes by direction and verdict, drops by
// reason, sessions, mappings and port use per external address.
func (g *Gateway) WriteMetrics(w io.Writer) error {
	s := g.Stats()
	var b strings.Builder
	metric := func(name, typ, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	metric("portspace_gateway_packets_total", "counter", "Packets by direction and verdict.")
	for _, r := range []struct {
		dir, verdict string
		n            uint64
	}{
		{"rx", "read", s.RxPackets}, {"outbound", "forward", s.OutForwarded}, {"inbound", "forward", s.InForwarded},
		{"outbound", "hairpin", s.Hairpinned}, {"outbound", "drop", s.OutDropped}, {"inbound", "drop", s.InDropped},
		{"any", "reply", s.Replies}, {"any", "released", s.Released}, {"any", "passthrough", s.Passed},
	} {
		fmt.Fprintf(&b, "portspace_gateway_packets_total{direction=%q,verdict=%q} %d\n", r.dir, r.verdict, r.n)
	}
	metric("portspace_gateway_bytes_total", "counter", "Bytes by direction and verdict.")
	fmt.Fprintf(&b, "portspace_gateway_bytes_total{direction=\"rx\",verdict=\"read\"} %d\n", s.RxBytes)
	fmt.Fprintf(&b, "portspace_gateway_bytes_total{direction=\"outbound\",verdict=\"forward\"} %d\n", s.OutForwardedBytes)
	fmt.Fprintf(&b, "portspace_gateway_bytes_total{direction=\"inbound\",verdict=\"forward\"} %d\n", s.InForwardedBytes)
	fmt.Fprintf(&b, "portspace_gateway_bytes_total{direction=\"outbound\",verdict=\"hairpin\"} %d\n", s.HairpinnedBytes)
	metric("portspace_gateway_drops_total", "counter", "Packets the engine dropped, by reason.")
	reasons := make([]string, 0, len(s.Drops))
	for r := range s.Drops {
		reasons = append(reasons, r)
	}
	slices.Sort(reasons)
	for _, r := range reasons {
		fmt.Fprintf(&b, "portspace_gateway_drops_total{reason=%q} %d\n", r, s.Drops[r])
	}
	metric("portspace_gateway_tun_errors_total", "counter", "Failed TUN reads and writes.")
	fmt.Fprintf(&b, "portspace_gateway_tun_errors_total{op=\"read\"} %d\n", s.ReadErrors)
	fmt.Fprintf(&b, "portspace_gateway_tun_errors_total{op=\"write\"} %d\n", s.WriteErrors)
	metric("portspace_gateway_sessions", "gauge", "Live sessions.")
	fmt.Fprintf(&b, "portspace_gateway_sessions %d\n", s.Engine.Sessions)
	metric("portspace_gateway_mappings", "gauge", "Live mappings.")
	fmt.Fprintf(&b, "portspace_gateway_mappings %d\n", s.Engine.Mappings)
	metric("portspace_gateway_ports_in_use", "gauge", "Mappings (external ports) in use per external address.")
	addrs := make([]netip.Addr, 0, len(s.PortsInUse))
	for a := range s.PortsInUse {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		fmt.Fprintf(&b, "portspace_gateway_ports_in_use{external=%q} %d\n", a, s.PortsInUse[a])
	}
	_, err := io.WriteString(w, b.String())
	return err
}
