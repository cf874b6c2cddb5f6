package lease

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrURL is wrapped by the error for a store URL that ParseURL cannot read.
var ErrURL = errors.New("lease: bad store URL")

// Location is a parsed store URL.
type Location struct {
	// Kind is "bolt" or "etcd".
	Kind string
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
// "bolt:" alone is DefaultBoltPath) or "etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"
// (etcd v3 members; HOST is an IP literal or a name, PORT is required).
// The empty string is the default bolt store.
func ParseURL(s string) (Location, error) {
	bad := func(format string, args ...any) (Location, error) {
		return Location{}, fmt.Errorf("%w %q: %s", ErrURL, s, fmt.Sprintf(format, args...))
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
	case strings.HasPrefix(s, "etcd://"):
		rest := strings.TrimPrefix(s, "etcd://")
		prefix := DefaultEtcdPrefix
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			prefix = rest[i:]
			rest = rest[:i]
			if prefix == "/" {
				prefix = DefaultEtcdPrefix
			} else if !strings.HasSuffix(prefix, "/") {
				prefix += "/"
			}
			if strings.ContainsAny(prefix, "?#") {
				return bad("query strings and fragments are not supported")
			}
		}
		if rest == "" {
			return bad("no endpoints (want etcd://127.0.0.1:2379[,HOST:PORT...])")
		}
		var eps []string
		for _, ep := range strings.Split(rest, ",") {
			if err := checkEndpoint(ep); err != nil {
				return bad("endpoint %q: %v", ep, err)
			}
			eps = append(eps, ep)
		}
		return Location{Kind: "etcd", Endpoints: eps, Prefix: prefix}, nil
	}
	if i := strings.Index(s, "://"); i > 0 {
		return bad("unknown scheme %q (want bolt: or etcd://)", s[:i])
	}
	return bad("want bolt:PATH or etcd://HOST:PORT[,HOST:PORT...]")
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

// String returns the URL form of l.
func (l Location) String() string {
	switch l.Kind {
	case "bolt":
		return "bolt:" + l.Path
	case "etcd":
		s := "etcd://" + strings.Join(l.Endpoints, ",")
		if l.Prefix != DefaultEtcdPrefix {
			s += strings.TrimSuffix(l.Prefix, "/")
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
