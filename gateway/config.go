package gateway

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"time"
	"unicode"

	"go.yaml.in/yaml/v3"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/portalloc"
	"github.com/portspace/portspace/tuple"
)

// ConfigError is a bad setting in a --config file, with its position.
type ConfigError struct {
	File string
	Line int
	Key  string
	Err  error
}

// Error returns "FILE:LINE: KEY: message".
func (e *ConfigError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s:%d: %s: %v", e.File, e.Line, e.Key, e.Err)
}

// Unwrap returns the underlying error.
func (e *ConfigError) Unwrap() error { return e.Err }

// ErrUnknownSetting is wrapped by the ConfigError of a key that names no
// nat.Config field.
var ErrUnknownSetting = errors.New("unknown setting")

// ConfigKey returns the YAML key of a nat.Config field: its yaml tag
// ("UDPTimeout" is "udp_timeout", "MaxPortsPerSubscriber" is
// "max_ports_per_subscriber"), or "" for a field a file cannot set.
func ConfigKey(field string) string {
	f, ok := reflect.TypeFor[nat.Config]().FieldByName(field)
	if !ok {
		return ""
	}
	if tag, ok := f.Tag.Lookup("yaml"); ok {
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" {
			return ""
		}
		if name != "" {
			return name
		}
	}
	return snake(field)
}

// snake is a Go name in lower-case words joined by '_'.
func snake(field string) string {
	var b strings.Builder
	r := []rune(field)
	for i, c := range r {
		if unicode.IsUpper(c) && i > 0 && (unicode.IsLower(r[i-1]) || i+1 < len(r) && unicode.IsLower(r[i+1])) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}

// settable reports whether a file can set the nat.Config field f (not the
// Go values tagged yaml:"-": the event sink and the logger).
func settable(f reflect.StructField) bool { return f.IsExported() && ConfigKey(f.Name) != "" }

// ConfigKeys lists the keys a --config file accepts, in nat.Config order:
// "preset" and one per settable nat.Config field.
func ConfigKeys() []string {
	keys := []string{"preset"}
	t := reflect.TypeFor[nat.Config]()
	for i := range t.NumField() {
		f := t.Field(i)
		if settable(f) {
			keys = append(keys, ConfigKey(f.Name))
		}
	}
	return keys
}

// ParseConfig reads a --config file: a YAML mapping whose keys are
// "preset" (the base configuration, nat.Preset) and the nat.Config fields
// by their yaml tags (ConfigKey), with values written as their flags would
// be (durations "30s", port sets "1024-65535", names such as
// "endpoint-independent" or "eim", lists of addresses and prefixes). base is used when the file names no
// preset. Every error is a *ConfigError naming file:line.
func ParseConfig(file string, data []byte, base nat.Config) (nat.Config, string, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		line := 1
		var te *yaml.TypeError
		if errors.As(err, &te) {
			err = errors.New(strings.Join(te.Errors, "; "))
		}
		msg := err.Error()
		if i := strings.Index(msg, "line "); i >= 0 {
			fmt.Sscanf(msg[i:], "line %d", &line)
		}
		return nat.Config{}, "", &ConfigError{File: file, Line: line, Err: err}
	}
	if len(root.Content) == 0 {
		return base, "", nil
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return nat.Config{}, "", &ConfigError{File: file, Line: doc.Line, Err: errors.New("want a mapping of settings")}
	}
	fields := map[string]int{}
	t := reflect.TypeFor[nat.Config]()
	for i := range t.NumField() {
		if f := t.Field(i); settable(f) {
			fields[ConfigKey(f.Name)] = i
		}
	}
	cfg, preset := base, ""
	seen := map[string]int{}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		if prev, ok := seen[k.Value]; ok {
			return nat.Config{}, "", &ConfigError{file, k.Line, k.Value, fmt.Errorf("set twice (first on line %d)", prev)}
		}
		seen[k.Value] = k.Line
		if k.Value == "preset" {
			c, err := nat.Preset(v.Value)
			if err != nil {
				return nat.Config{}, "", &ConfigError{file, v.Line, k.Value, err}
			}
			cfg, preset = c, v.Value
			if i != 0 {
				return nat.Config{}, "", &ConfigError{file, k.Line, k.Value, errors.New("must be the first key (the settings after it change the preset)")}
			}
		}
	}
	rv := reflect.ValueOf(&cfg).Elem()
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		if k.Value == "preset" {
			continue
		}
		idx, ok := fields[k.Value]
		if !ok {
			return nat.Config{}, "", &ConfigError{file, k.Line, k.Value, fmt.Errorf("%w (known: %s)", ErrUnknownSetting, strings.Join(ConfigKeys(), ", "))}
		}
		if err := setField(rv.Field(idx), v); err != nil {
			return nat.Config{}, "", &ConfigError{file, v.Line, k.Value, err}
		}
	}
	return cfg, preset, nil
}

var (
	tDuration  = reflect.TypeFor[time.Duration]()
	tPortSet   = reflect.TypeFor[tuple.PortSet]()
	tAddr      = reflect.TypeFor[netip.Addr]()
	tAddrs     = reflect.TypeFor[[]netip.Addr]()
	tPrefixes  = reflect.TypeFor[[]netip.Prefix]()
	tMapping   = reflect.TypeFor[nat.Mapping]()
	tFiltering = reflect.TypeFor[nat.Filtering]()
	tPooling   = reflect.TypeFor[portalloc.Pooling]()
	tAlgorithm = reflect.TypeFor[portalloc.Algorithm]()
	tSecret    = reflect.TypeFor[portalloc.Secret]()
)

// scalars returns the values of a scalar or a sequence of scalars.
func scalars(v *yaml.Node) ([]string, error) {
	switch v.Kind {
	case yaml.ScalarNode:
		var out []string
		for _, s := range strings.Split(v.Value, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		return out, nil
	case yaml.SequenceNode:
		var out []string
		for _, c := range v.Content {
			if c.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: want a scalar in the list", c.Line)
			}
			out = append(out, c.Value)
		}
		return out, nil
	}
	return nil, errors.New("want a value or a list")
}

func setField(f reflect.Value, v *yaml.Node) error {
	switch f.Type() {
	case tDuration:
		d, err := time.ParseDuration(v.Value)
		if err != nil {
			return fmt.Errorf("want a duration such as 30s or 2h4m: %q", v.Value)
		}
		f.SetInt(int64(d))
		return nil
	case tPortSet:
		ps, err := tuple.ParsePortSet(v.Value)
		if err != nil {
			return err
		}
		f.Set(reflect.ValueOf(ps))
		return nil
	case tAddr:
		a, err := netip.ParseAddr(v.Value)
		if err != nil {
			return err
		}
		f.Set(reflect.ValueOf(a))
		return nil
	case tAddrs:
		ss, err := scalars(v)
		if err != nil {
			return err
		}
		var out []netip.Addr
		for _, s := range ss {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return err
			}
			out = append(out, a)
		}
		f.Set(reflect.ValueOf(out))
		return nil
	case tPrefixes:
		ss, err := scalars(v)
		if err != nil {
			return err
		}
		var out []netip.Prefix
		for _, s := range ss {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return err
			}
			out = append(out, p)
		}
		f.Set(reflect.ValueOf(out))
		return nil
	case tMapping:
		m, err := nat.ParseMapping(v.Value)
		if err != nil {
			return err
		}
		f.Set(reflect.ValueOf(m))
		return nil
	case tFiltering:
		m, err := nat.ParseFiltering(v.Value)
		if err != nil {
			return err
		}
		f.Set(reflect.ValueOf(m))
		return nil
	case tAlgorithm:
		a, err := portalloc.ParseAlgorithm(v.Value)
		if err != nil {
			return err
		}
		f.Set(reflect.ValueOf(a))
		return nil
	case tPooling:
		switch v.Value {
		case "paired":
			f.Set(reflect.ValueOf(portalloc.Paired))
		case "arbitrary":
			f.Set(reflect.ValueOf(portalloc.Arbitrary))
		default:
			return fmt.Errorf("unknown pooling %q (known: paired, arbitrary)", v.Value)
		}
		return nil
	case tSecret:
		var s portalloc.Secret
		b, err := hex.DecodeString(v.Value)
		if err != nil || len(b) != len(s) {
			return errors.New("want 32 hex digits")
		}
		copy(s[:], b)
		f.Set(reflect.ValueOf(s))
		return nil
	}
	if v.Kind != yaml.ScalarNode {
		return errors.New("want a single value")
	}
	switch f.Kind() {
	case reflect.Bool:
		var b bool
		if err := v.Decode(&b); err != nil {
			return fmt.Errorf("want true or false: %q", v.Value)
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int32, reflect.Int64:
		var n int64
		if err := v.Decode(&n); err != nil {
			return fmt.Errorf("want an integer: %q", v.Value)
		}
		f.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		var n uint64
		if err := v.Decode(&n); err != nil {
			return fmt.Errorf("want a non-negative integer: %q", v.Value)
		}
		f.SetUint(n)
	default:
		return fmt.Errorf("gateway: setting of type %v is not supported in a file", f.Type())
	}
	return nil
}

// ConfigDiff returns the ConfigKey names of the settings in which next
// differs from running (a running engine's Config, defaults filled in).
// next is normalised by building an engine from it; an invalid next is
// reported as the one entry "invalid: ...".
func ConfigDiff(running, next nat.Config) []string {
	next.Events, next.Logger, next.Secret, next.Seed = running.Events, running.Logger, running.Secret, running.Seed
	e, err := nat.New(next)
	if err != nil {
		return []string{"invalid: " + err.Error()}
	}
	n := e.Config()
	rv, nv := reflect.ValueOf(running), reflect.ValueOf(n)
	var out []string
	t := rv.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !settable(f) || f.Name == "Secret" || f.Name == "Seed" {
			continue
		}
		if !reflect.DeepEqual(rv.Field(i).Interface(), nv.Field(i).Interface()) {
			out = append(out, ConfigKey(f.Name))
		}
	}
	return out
}
