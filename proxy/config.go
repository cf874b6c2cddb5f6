package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"
)

// Defaults for the zero values of Config's fields.
const (
	DefaultListen           = "127.0.0.1:1080"
	DefaultMaxSlices        = 4
	DefaultHandshakeTimeout = 10 * time.Second // RFC 1928 section 6: close a failed request within 10 s
	DefaultIdleTimeout      = 5 * time.Minute
	DefaultDialTimeout      = 10 * time.Second
	DefaultDrainTimeout     = 30 * time.Second
	DefaultMaxHeaderBytes   = 16 << 10
	DefaultSessionIdle      = 10 * time.Minute
	DefaultMaxUDPPeers      = 256
)

// Config is the proxy's configuration, as read from YAML by LoadConfig or
// ParseConfig. Every zero value is a documented default.
type Config struct {
	// Listen are the proxy listeners (SOCKS5 and HTTP on each). Empty:
	// DefaultListen.
	Listen []netip.AddrPort
	// Metrics is the listener of /metrics, /healthz and /readyz; the zero
	// value serves none.
	Metrics netip.AddrPort
	// Store is the lease store URL (lease.Open); empty: the embedded store
	// the command chooses.
	Store string
	// Holder names this host in the lease store; empty: the host name.
	Holder string
	// Pools is a lease pools file applied to the store at start; empty:
	// none (the store's pools are used as they are).
	Pools string
	// MaxSlices is the number of slices held at most per pool; zero:
	// DefaultMaxSlices.
	MaxSlices int
	// Users may authenticate (SOCKS5 RFC 1929, HTTP Proxy-Authorization
	// Basic). With none, clients need no authentication.
	Users []User
	// Clients give traits by the client's own address; every matching rule
	// adds its traits (earlier rules win on a conflict).
	Clients []ClientRule
	// GeoIP is an MMDB file; when set, trait geo is the client address's
	// ISO country code (lower case) unless a client rule set it.
	GeoIP string
	// Destinations are the guard's exceptions.
	Destinations Destinations
	// Timeouts of the handshake, idle tunnels, dials and the drain.
	Timeouts Timeouts
	// MaxHeaderBytes bounds an HTTP request's header section; zero:
	// DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// SessionIdle is how long a sticky session without connections keeps
	// its egress address; zero: DefaultSessionIdle.
	SessionIdle time.Duration
	// MaxUDPPeers bounds the destinations of one UDP association; zero:
	// DefaultMaxUDPPeers.
	MaxUDPPeers int
	// AccessLog is a file that gets one JSON line per finished connection;
	// "-" is standard error; empty: no access log.
	AccessLog string
	// AllowOpen lets the proxy listen on a non-loopback address without
	// authentication.
	AllowOpen bool

	file string
}

// User is one account that may authenticate.
type User struct {
	// Name is the user name, without traits (no comma, no '=').
	Name string
	// Password is the clear-text password; PasswordHash a bcrypt hash.
	// Exactly one is set.
	Password     string
	PasswordHash string
	// Traits every connection of the user gets.
	Traits map[string]string
	// MaxConnections bounds the user's concurrent connections; zero: no
	// bound.
	MaxConnections int

	line int
}

// ClientRule gives traits to clients whose address is in CIDR.
type ClientRule struct {
	CIDR   netip.Prefix
	Traits map[string]string

	line int
}

// Destinations are exceptions to the guard's built-in refusals, by prefix.
// Deny wins over Allow.
type Destinations struct {
	Allow []netip.Prefix
	Deny  []netip.Prefix
}

// Timeouts bound the phases of a connection; zero values are the Default
// constants.
type Timeouts struct {
	// Handshake bounds everything before the tunnel or the first forwarded
	// request: greeting, authentication, request, resolution and dial.
	Handshake time.Duration
	// Idle closes a tunnel after this long with no byte in either
	// direction, and a UDP association after this long without datagrams
	// (its TCP connection closes then too).
	Idle time.Duration
	// Dial bounds one outgoing dial.
	Dial time.Duration
	// Drain bounds how long SIGTERM waits for connections to finish.
	Drain time.Duration
}

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("proxy: bad configuration")

func (c *Config) handshakeTimeout() time.Duration {
	return orDur(c.Timeouts.Handshake, DefaultHandshakeTimeout)
}
func (c *Config) idleTimeout() time.Duration { return orDur(c.Timeouts.Idle, DefaultIdleTimeout) }
func (c *Config) dialTimeout() time.Duration { return orDur(c.Timeouts.Dial, DefaultDialTimeout) }

// DrainTimeout is Timeouts.Drain or its default.
func (c *Config) DrainTimeout() time.Duration { return orDur(c.Timeouts.Drain, DefaultDrainTimeout) }
func (c *Config) maxHeaderBytes() int {
	if c.MaxHeaderBytes > 0 {
		return c.MaxHeaderBytes
	}
	return DefaultMaxHeaderBytes
}
func (c *Config) maxUDPPeers() int {
	if c.MaxUDPPeers > 0 {
		return c.MaxUDPPeers
	}
	return DefaultMaxUDPPeers
}

// MaxSlicesOrDefault is MaxSlices or DefaultMaxSlices.
func (c *Config) MaxSlicesOrDefault() int {
	if c.MaxSlices > 0 {
		return c.MaxSlices
	}
	return DefaultMaxSlices
}

// Listeners returns Listen, or DefaultListen when it is empty.
func (c *Config) Listeners() []netip.AddrPort {
	if len(c.Listen) == 0 {
		return []netip.AddrPort{netip.MustParseAddrPort(DefaultListen)}
	}
	return c.Listen
}

func orDur(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// File is the path the configuration was read from, or empty.
func (c *Config) File() string { return c.file }

// CheckOpen returns an error naming the first listener that is not on a
// loopback address while no user is configured and AllowOpen is not set.
func (c *Config) CheckOpen() error {
	if len(c.Users) > 0 || c.AllowOpen {
		return nil
	}
	for _, l := range c.Listeners() {
		if !l.Addr().Unmap().IsLoopback() {
			return fmt.Errorf("%w: listener %s is not a loopback address and no users are configured: anyone who reaches it could use the proxy (add users, or pass --allow-open)", ErrConfig, l)
		}
	}
	return nil
}

// LoadConfig reads and checks a YAML configuration file (see ParseConfig).
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c, err := ParseConfig(path, b)
	if err != nil {
		return nil, err
	}
	return c, nil
}

var lineRE = regexp.MustCompile(`(?m)^(?:yaml: )?(?:unmarshal errors:\n\s*)?line (\d+): `)

// ParseConfig decodes YAML configuration text (unknown keys are errors) and
// checks it: addresses, CIDRs, durations, users (exactly one of password
// and password-hash, a valid bcrypt hash, unique names), and trait names.
// Errors wrap ErrConfig and start with name:line.
func ParseConfig(name string, data []byte) (*Config, error) {
	var raw rawConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&raw); err != nil && !errors.Is(err, io.EOF) {
		msg := err.Error()
		msg = lineRE.ReplaceAllString(msg, name+":$1: ")
		msg = strings.TrimPrefix(msg, "yaml: ")
		if !strings.HasPrefix(msg, name+":") {
			msg = name + ": " + msg
		}
		return nil, fmt.Errorf("%w: %s", ErrConfig, msg)
	}
	c, err := raw.build(name)
	if err != nil {
		return nil, err
	}
	c.file = name
	return c, nil
}

type rawConfig struct {
	Listen       []pos[string] `yaml:"listen"`
	Metrics      pos[string]   `yaml:"metrics"`
	Store        string        `yaml:"store"`
	Holder       string        `yaml:"holder"`
	Pools        string        `yaml:"pools"`
	MaxSlices    pos[int]      `yaml:"max-slices"`
	Users        []rawUser     `yaml:"users"`
	Clients      []rawClient   `yaml:"clients"`
	GeoIP        string        `yaml:"geoip"`
	Destinations struct {
		Allow []pos[string] `yaml:"allow"`
		Deny  []pos[string] `yaml:"deny"`
	} `yaml:"destinations"`
	Timeouts struct {
		Handshake pos[string] `yaml:"handshake"`
		Idle      pos[string] `yaml:"idle"`
		Dial      pos[string] `yaml:"dial"`
		Drain     pos[string] `yaml:"drain"`
	} `yaml:"timeouts"`
	MaxHeaderBytes pos[int]    `yaml:"max-header-bytes"`
	SessionIdle    pos[string] `yaml:"session-idle"`
	MaxUDPPeers    pos[int]    `yaml:"max-udp-peers"`
	AccessLog      string      `yaml:"access-log"`
	AllowOpen      bool        `yaml:"allow-open"`
}

type rawUser struct {
	Name           string            `yaml:"name"`
	Password       string            `yaml:"password"`
	PasswordHash   string            `yaml:"password-hash"`
	Traits         map[string]string `yaml:"traits"`
	MaxConnections int               `yaml:"max-connections"`
	line           int
}

func (u *rawUser) UnmarshalYAML(n *yaml.Node) error {
	type plain rawUser
	var p plain
	if err := decodeStrict(n, &p); err != nil {
		return err
	}
	*u = rawUser(p)
	u.line = n.Line
	return nil
}

type rawClient struct {
	CIDR   pos[string]       `yaml:"cidr"`
	Traits map[string]string `yaml:"traits"`
	line   int
}

func (r *rawClient) UnmarshalYAML(n *yaml.Node) error {
	type plain rawClient
	var p plain
	if err := decodeStrict(n, &p); err != nil {
		return err
	}
	*r = rawClient(p)
	r.line = n.Line
	return nil
}

// decodeStrict decodes a mapping node refusing unknown keys (a custom
// unmarshaler does not inherit the decoder's KnownFields).
func decodeStrict(n *yaml.Node, v any) error {
	if n.Kind == yaml.MappingNode {
		known := yamlKeys(v)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if !known[k.Value] {
				return fmt.Errorf("line %d: unknown key %q (want one of %s)", k.Line, k.Value, strings.Join(sortedKeys(known), ", "))
			}
		}
	}
	return n.Decode(v)
}

func sortedKeys(m map[string]bool) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// pos is a scalar with the line it was read from.
type pos[T any] struct {
	V    T
	Line int
	Set  bool
}

func (p *pos[T]) UnmarshalYAML(n *yaml.Node) error {
	if err := n.Decode(&p.V); err != nil {
		return err
	}
	p.Line, p.Set = n.Line, true
	return nil
}

func (r *rawConfig) build(name string) (*Config, error) {
	errf := func(line int, format string, args ...any) error {
		return fmt.Errorf("%w: %s:%d: %s", ErrConfig, name, line, fmt.Sprintf(format, args...))
	}
	c := &Config{Store: r.Store, Holder: r.Holder, Pools: r.Pools, GeoIP: r.GeoIP, AccessLog: r.AccessLog, AllowOpen: r.AllowOpen}
	for _, l := range r.Listen {
		ap, err := netip.ParseAddrPort(l.V)
		if err != nil {
			return nil, errf(l.Line, "listen %q: want ADDRESS:PORT, for example 127.0.0.1:1080 or [::1]:1080", l.V)
		}
		c.Listen = append(c.Listen, ap)
	}
	if r.Metrics.Set && r.Metrics.V != "" {
		ap, err := netip.ParseAddrPort(r.Metrics.V)
		if err != nil {
			return nil, errf(r.Metrics.Line, "metrics %q: want ADDRESS:PORT, for example 127.0.0.1:9180", r.Metrics.V)
		}
		c.Metrics = ap
	}
	ints := []struct {
		p    pos[int]
		key  string
		dst  *int
		maxV int
	}{
		{r.MaxSlices, "max-slices", &c.MaxSlices, 1 << 16},
		{r.MaxHeaderBytes, "max-header-bytes", &c.MaxHeaderBytes, 1 << 20},
		{r.MaxUDPPeers, "max-udp-peers", &c.MaxUDPPeers, 1 << 16},
	}
	for _, x := range ints {
		if !x.p.Set {
			continue
		}
		if x.p.V < 1 || x.p.V > x.maxV {
			return nil, errf(x.p.Line, "%s %d: want 1 to %d", x.key, x.p.V, x.maxV)
		}
		*x.dst = x.p.V
	}
	durs := []struct {
		p   pos[string]
		key string
		dst *time.Duration
	}{
		{r.Timeouts.Handshake, "timeouts.handshake", &c.Timeouts.Handshake},
		{r.Timeouts.Idle, "timeouts.idle", &c.Timeouts.Idle},
		{r.Timeouts.Dial, "timeouts.dial", &c.Timeouts.Dial},
		{r.Timeouts.Drain, "timeouts.drain", &c.Timeouts.Drain},
		{r.SessionIdle, "session-idle", &c.SessionIdle},
	}
	for _, x := range durs {
		if !x.p.Set {
			continue
		}
		d, err := time.ParseDuration(x.p.V)
		if err != nil || d <= 0 {
			return nil, errf(x.p.Line, "%s %q: want a positive duration such as 10s or 5m", x.key, x.p.V)
		}
		*x.dst = d
	}
	names := map[string]int{}
	for _, u := range r.Users {
		switch {
		case u.Name == "":
			return nil, errf(u.line, "user without a name")
		case strings.ContainsAny(u.Name, ",=:") || len(u.Name) > 255:
			return nil, errf(u.line, "user name %q: no ',', '=' or ':' (they separate traits and the password), at most 255 bytes", u.Name)
		case names[u.Name] != 0:
			return nil, errf(u.line, "user %q is already defined at line %d", u.Name, names[u.Name])
		case (u.Password == "") == (u.PasswordHash == ""):
			return nil, errf(u.line, "user %q: set exactly one of password and password-hash", u.Name)
		case len(u.Password) > 255:
			return nil, errf(u.line, "user %q: a password is at most 255 bytes (RFC 1929)", u.Name)
		case u.MaxConnections < 0:
			return nil, errf(u.line, "user %q: max-connections %d is negative", u.Name, u.MaxConnections)
		}
		if u.PasswordHash != "" {
			if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
				return nil, errf(u.line, "user %q: password-hash is not a bcrypt hash: %v", u.Name, err)
			}
		}
		if err := checkTraits(u.Traits); err != nil {
			return nil, errf(u.line, "user %q: %v", u.Name, err)
		}
		names[u.Name] = u.line
		c.Users = append(c.Users, User(u))
	}
	for _, cl := range r.Clients {
		p, err := netip.ParsePrefix(cl.CIDR.V)
		if err != nil {
			return nil, errf(cl.line, "clients: cidr %q: want a prefix such as 10.0.0.0/8", cl.CIDR.V)
		}
		if p != p.Masked() {
			return nil, errf(cl.CIDR.Line, "clients: cidr %q has host bits set (did you mean %s?)", cl.CIDR.V, p.Masked())
		}
		if err := checkTraits(cl.Traits); err != nil {
			return nil, errf(cl.line, "clients %s: %v", p, err)
		}
		c.Clients = append(c.Clients, ClientRule{CIDR: p, Traits: cl.Traits, line: cl.line})
	}
	for _, x := range []struct {
		in  []pos[string]
		key string
		dst *[]netip.Prefix
	}{{r.Destinations.Allow, "destinations.allow", &c.Destinations.Allow}, {r.Destinations.Deny, "destinations.deny", &c.Destinations.Deny}} {
		for _, s := range x.in {
			p, err := parsePrefixOrAddr(s.V)
			if err != nil {
				return nil, errf(s.Line, "%s %q: want a prefix such as 127.0.0.10/32 or an address", x.key, s.V)
			}
			*x.dst = append(*x.dst, p)
		}
	}
	return c, nil
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return p.Masked(), nil
}

var traitRE = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,31}$`)

// checkTraits checks trait keys and values: lower-case names, values
// without ',' or '=' (the username syntax), and no key "session".
func checkTraits(t map[string]string) error {
	for k, v := range t {
		if !traitRE.MatchString(k) {
			return fmt.Errorf("trait name %q: want lower-case letters, digits, '_', '.', '-', starting with a letter, at most 32 bytes", k)
		}
		if k == "session" {
			return fmt.Errorf("trait name %q is reserved for sticky sessions", k)
		}
		if v == "" || strings.ContainsAny(v, ",=: ") || len(v) > 64 {
			return fmt.Errorf("trait %s value %q: want 1 to 64 bytes without ',', '=', ':' or spaces", k, v)
		}
	}
	return nil
}

// CheckTraits reports, with file:line, the first trait a user or client
// rule names that no egress offers (offered maps a trait name to the values
// pools offer); nil offered skips the check.
func (c *Config) CheckTraits(offered map[string]map[string]bool) error {
	if offered == nil {
		return nil
	}
	check := func(line int, who string, t map[string]string) error {
		for _, k := range sortedMapKeys(t) {
			if !offered[k][t[k]] {
				return fmt.Errorf("%w: %s:%d: %s: trait %s=%s is offered by no pool", ErrConfig, c.file, line, who, k, t[k])
			}
		}
		return nil
	}
	for _, u := range c.Users {
		if err := check(u.line, "user "+strconvQuote(u.Name), u.Traits); err != nil {
			return err
		}
	}
	for _, cl := range c.Clients {
		if err := check(cl.line, "clients "+cl.CIDR.String(), cl.Traits); err != nil {
			return err
		}
	}
	return nil
}

func strconvQuote(s string) string { return fmt.Sprintf("%q", s) }

func sortedMapKeys(m map[string]string) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}
