package lease

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrURL is wrapped by the error for a store URL that ParseURL cannot read.
var ErrURL = errors.New("lease: bad store URL")

// Location is a parsed store URL.
type Location struct {
	// Kind is "bolt" or "etcd" (also for etcds://).
	Kind string
	// TLS is set by the etcds:// scheme: the client speaks TLS to every
	// member.
	TLS bool
	// CACert is the PEM file of the CA certificates that sign the members'
	// server certificates (cacert=); empty means the system's roots.
	CACert string
	// Cert and Key are the PEM files of the client's certificate and key
	// (cert=, key=), both or neither, for members that want client
	// certificates.
	Cert, Key string
	// User and Password authenticate with etcd's user/role authentication
	// (the URL's USER:PASSWORD@). Redacted in String.
	User, Password string
	// PasswordFile names a file whose first line is the password
	// (password-file=), to keep it out of command lines; Open reads it.
	PasswordFile string
	// Path is the bolt database file (absolute once Open resolves the
	// default); empty means the default file in the state directory.
	Path string
	// Endpoints are the etcd members' host:port, in the order given.
	Endpoints []string
	// Prefix is the etcd key prefix under which the store keeps its keys
	// ("/portspace/lease/" unless the URL has a path).
	Prefix string
}

// DefaultEtcdPrefix is the key prefix of an etcd store whose URL has no path.
const DefaultEtcdPrefix = "/portspace/lease/"

// ParseURL parses a store URL: "bolt:PATH" (an embedded database file;
// "bolt:" alone is DefaultBoltPath) or
//
//	etcd://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...][/PREFIX][?OPTIONS]
//	etcds://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...][/PREFIX][?OPTIONS]
//
// (etcd v3 members; HOST is an IP literal or a name, PORT is required;
// etcds speaks TLS). USER and PASSWORD are percent-encoded (RFC 3986
// section 3.2.1 userinfo). OPTIONS are KEY=VALUE pairs joined by &,
// percent-encoded as in a query: cacert=FILE, cert=FILE and key=FILE (etcds
// only; cert and key together) and password-file=FILE (instead of
// PASSWORD; needs USER@). ParseURL reads no file: Open does. The empty
// string is the default bolt store. Errors quote the URL with its password
// replaced by xxxxx.
func ParseURL(s string) (Location, error) {
	bad := func(format string, args ...any) (Location, error) {
		return Location{}, fmt.Errorf("%w %q: %s", ErrURL, redactURL(s), fmt.Sprintf(format, args...))
	}
	switch {
	case s == "":
		return Location{Kind: "bolt"}, nil
	case strings.HasPrefix(s, "bolt:"):
		p := strings.TrimPrefix(s, "bolt:")
		if strings.HasPrefix(p, "//") {
			// bolt:///var/lib/x.db, the URL form with an empty host.
			p = strings.TrimPrefix(p, "//")
			if !strings.HasPrefix(p, "/") {
				return bad("bolt:// wants an absolute path (bolt:///var/lib/portspace/leases.db), or use bolt:PATH")
			}
		}
		if strings.ContainsRune(p, 0) {
			return bad("the path has a NUL byte")
		}
		if p != "" && strings.HasSuffix(p, "/") {
			return bad("the path names a directory; give the database file")
		}
		return Location{Kind: "bolt", Path: p}, nil
	case strings.HasPrefix(s, "etcd://"), strings.HasPrefix(s, "etcds://"):
		loc := Location{Kind: "etcd", TLS: strings.HasPrefix(s, "etcds://")}
		scheme := "etcd"
		if loc.TLS {
			scheme = "etcds"
		}
		rest := strings.TrimPrefix(s, scheme+"://")
		if strings.ContainsRune(rest, '#') {
			return bad("fragments (#) are not supported")
		}
		rest, query, hasQuery := strings.Cut(rest, "?")
		prefix := DefaultEtcdPrefix
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			prefix = rest[i:]
			rest = rest[:i]
			if prefix == "/" {
				prefix = DefaultEtcdPrefix
			} else if !strings.HasSuffix(prefix, "/") {
				prefix += "/"
			}
		}
		loc.Prefix = prefix
		if i := strings.LastIndexByte(rest, '@'); i >= 0 {
			if err := loc.parseUserinfo(rest[:i]); err != nil {
				return bad("%v", err)
			}
			rest = rest[i+1:]
		}
		if rest == "" {
			return bad("no endpoints (want %s://127.0.0.1:2379[,HOST:PORT...])", scheme)
		}
		for _, ep := range strings.Split(rest, ",") {
			if err := checkEndpoint(ep); err != nil {
				return bad("endpoint %q: %v", ep, err)
			}
			loc.Endpoints = append(loc.Endpoints, ep)
		}
		if hasQuery {
			if err := loc.parseOptions(query); err != nil {
				return bad("%v", err)
			}
		}
		if loc.User != "" && loc.Password == "" && loc.PasswordFile == "" {
			return bad("user %q has no password (want USER:PASSWORD@, or USER@ with ?password-file=FILE)", loc.User)
		}
		return loc, nil
	}
	if i := strings.Index(s, "://"); i > 0 {
		return bad("unknown scheme %q (want bolt:, etcd:// or etcds://)", s[:i])
	}
	return bad("want bolt:PATH or etcd://HOST:PORT[,HOST:PORT...]")
}

// parseUserinfo reads USER[:PASSWORD], percent-encoded.
func (l *Location) parseUserinfo(ui string) error {
	user, pass, hasPass := strings.Cut(ui, ":")
	var err error
	if l.User, err = url.PathUnescape(user); err != nil {
		return fmt.Errorf("user: %v", err)
	}
	if l.User == "" {
		return errors.New("empty user before @ (want USER:PASSWORD@ or USER@ with password-file=)")
	}
	if hasPass {
		if l.Password, err = url.PathUnescape(pass); err != nil {
			return errors.New("password: bad percent-encoding")
		}
		if l.Password == "" {
			return errors.New("empty password after USER: (want USER:PASSWORD@ or USER@ with password-file=)")
		}
	}
	return nil
}

// etcdOptions are the option keys of an etcd URL, in String's order.
var etcdOptions = []string{"cacert", "cert", "key", "password-file"}

// parseOptions reads the URL's KEY=VALUE&... options.
func (l *Location) parseOptions(query string) error {
	if query == "" {
		return errors.New("empty options after ?")
	}
	seen := map[string]bool{}
	for _, kv := range strings.Split(query, "&") {
		k, v, ok := strings.Cut(kv, "=")
		var err error
		if k, err = url.QueryUnescape(k); err != nil {
			return fmt.Errorf("option %q: %v", kv, err)
		}
		if v, err = url.QueryUnescape(v); err != nil {
			return fmt.Errorf("option %s: %v", k, err)
		}
		if !ok || v == "" {
			return fmt.Errorf("option %q: want %s=VALUE", kv, k)
		}
		if seen[k] {
			return fmt.Errorf("option %s given twice", k)
		}
		seen[k] = true
		switch k {
		case "cacert":
			l.CACert = v
		case "cert":
			l.Cert = v
		case "key":
			l.Key = v
		case "password-file":
			l.PasswordFile = v
		default:
			return fmt.Errorf("unknown option %q (want %s)", k, strings.Join(etcdOptions, ", "))
		}
	}
	if !l.TLS {
		for _, k := range []string{"cacert", "cert", "key"} {
			if seen[k] {
				return fmt.Errorf("option %s needs TLS: use etcds://", k)
			}
		}
	}
	if (l.Cert == "") != (l.Key == "") {
		return errors.New("options cert and key go together")
	}
	if l.PasswordFile != "" {
		if l.User == "" {
			return errors.New("option password-file needs a user (etcd://USER@HOST:PORT?password-file=FILE)")
		}
		if l.Password != "" {
			return errors.New("a password and option password-file: give one")
		}
	}
	return nil
}

// redactURL returns s with the password of its userinfo, if any, replaced
// by xxxxx. It is generous about where the userinfo ends (the last @ before
// the options), so that a password with a stray / does not leak.
func redactURL(s string) string {
	i := strings.Index(s, "://")
	if i < 0 {
		return s
	}
	head, rest := s[:i+3], s[i+3:]
	end := len(rest)
	if q := strings.IndexByte(rest, '?'); q >= 0 {
		end = q
	}
	at := strings.LastIndexByte(rest[:end], '@')
	if at < 0 {
		return s
	}
	colon := strings.IndexByte(rest[:at], ':')
	if colon < 0 {
		return s
	}
	return head + rest[:colon+1] + "xxxxx" + rest[at:]
}

// checkEndpoint checks one host:port.
func checkEndpoint(ep string) error {
	if ap, err := netip.ParseAddrPort(ep); err == nil {
		if ap.Port() == 0 {
			return errors.New("port 0")
		}
		return nil
	}
	i := strings.LastIndexByte(ep, ':')
	if i <= 0 {
		return errors.New("want HOST:PORT")
	}
	host, port := ep[:i], ep[i+1:]
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return fmt.Errorf("port %q: want 1-65535", port)
	}
	if strings.ContainsAny(host, "[]") {
		return errors.New("bad IPv6 literal (want [ADDR]:PORT)")
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("host %q: not a name or an IP address", host)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("host %q: not a name or an IP address", host)
			}
		}
	}
	return nil
}

// String returns the URL form of l, its password (if any) replaced by
// xxxxx.
func (l Location) String() string {
	switch l.Kind {
	case "bolt":
		return "bolt:" + l.Path
	case "etcd":
		s := "etcd://"
		if l.TLS {
			s = "etcds://"
		}
		if l.User != "" {
			s += url.User(l.User).String()
			if l.Password != "" {
				s += ":xxxxx"
			}
			s += "@"
		}
		s += strings.Join(l.Endpoints, ",")
		if l.Prefix != DefaultEtcdPrefix {
			s += strings.TrimSuffix(l.Prefix, "/")
		}
		var opts []string
		for i, v := range []string{l.CACert, l.Cert, l.Key, l.PasswordFile} {
			if v != "" {
				opts = append(opts, etcdOptions[i]+"="+strings.ReplaceAll(url.QueryEscape(v), "%2F", "/"))
			}
		}
		if len(opts) > 0 {
			s += "?" + strings.Join(opts, "&")
		}
		return s
	}
	return ""
}

// StateDir returns portspace's state directory: $PORTSPACE_STATE, else
// /var/lib/portspace when running as root, else $XDG_STATE_HOME/portspace
// (XDG_STATE_HOME defaults to ~/.local/state).
func StateDir() (string, error) {
	if d := os.Getenv("PORTSPACE_STATE"); d != "" {
		return d, nil
	}
	if os.Geteuid() == 0 {
		return "/var/lib/portspace", nil
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "portspace"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("lease: no state directory: set PORTSPACE_STATE (%v)", err)
	}
	return filepath.Join(home, ".local", "state", "portspace"), nil
}

// DefaultBoltPath returns the default store's file, leases.db in StateDir.
func DefaultBoltPath() (string, error) {
	d, err := StateDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "leases.db"), nil
}

// Options configures Open. The zero value is the defaults.
type Options struct {
	// Bolt configures a bolt: store.
	Bolt BoltOptions
	// Etcd configures an etcd:// store.
	Etcd EtcdOptions
}

// Open opens the store at url (see ParseURL) with default options.
func Open(ctx context.Context, url string) (Store, error) {
	return OpenWith(ctx, url, Options{})
}

// OpenWith opens the store at url with opts. An etcd store that no member
// answers within EtcdOptions.DialTimeout is an error naming the URL.
func OpenWith(ctx context.Context, url string, opts Options) (Store, error) {
	loc, err := ParseURL(url)
	if err != nil {
		return nil, err
	}
	switch loc.Kind {
	case "bolt":
		if loc.Path == "" {
			if loc.Path, err = DefaultBoltPath(); err != nil {
				return nil, err
			}
		}
		s, err := OpenBolt(ctx, loc.Path, opts.Bolt)
		if err != nil {
			return nil, err
		}
		return s, nil
	default:
		s, err := OpenEtcd(ctx, loc, opts.Etcd)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
}
