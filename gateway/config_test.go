package gateway

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/portalloc"
)

func TestConfigKey(t *testing.T) {
	for field, key := range map[string]string{
		"UDPTimeout": "udp_timeout", "MaxPortsPerSubscriber": "max_ports_per_subscriber",
		"NoTranslate": "no_translate", "TCPFiltering": "tcp_filtering", "Mapping": "mapping",
		"ICMPTimeout": "icmp_timeout", "NoICMPReplies": "no_icmp_replies", "Events": "", "Logger": "",
	} {
		if got := ConfigKey(field); got != key {
			t.Errorf("ConfigKey(%s) = %s, want %s", field, got, key)
		}
	}
}

func TestParseConfig(t *testing.T) {
	in := `preset: symmetric
mapping: endpoint-independent
filtering: adf
udp_timeout: 30s
preserve_port: true
algorithm: sequential
pooling: arbitrary
ports: 1024-65535
max_ports_per_subscriber: 100
external: [192.0.2.1, 192.0.2.2]
internal: 10.0.0.0/24,10.1.0.0/24
no_translate:
  - 198.51.100.0/24
`
	cfg, preset, err := ParseConfig("gw.yaml", []byte(in), nat.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if preset != "symmetric" || cfg.Mapping != nat.MappingEIM || cfg.Filtering != nat.FilterADF ||
		cfg.UDPTimeout != 30*time.Second || !cfg.PreservePort || cfg.Algorithm != portalloc.Sequential ||
		cfg.Pooling != portalloc.Arbitrary || cfg.Ports.String() != "1024-65535" || cfg.MaxPortsPerSubscriber != 100 ||
		len(cfg.External) != 2 || len(cfg.Internal) != 2 || len(cfg.NoTranslate) != 1 {
		t.Fatalf("parsed %+v", cfg)
	}
	if _, err := nat.New(cfg); err != nil {
		t.Fatal(err)
	}
	// Every settable field has a key that parses (zero-ish values).
	if len(ConfigKeys()) < 30 {
		t.Fatalf("only %d keys", len(ConfigKeys()))
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"udp_timeout: 30s\nmapping: cone\n", "gw.yaml:2: mapping: nat: unknown mapping \"cone\""},
		{"udp_timeout: soon\n", "gw.yaml:1: udp_timeout: want a duration"},
		{"# c\n\nudp_timout: 30s\n", "gw.yaml:3: udp_timout: unknown setting"},
		{"preset: nope\n", "gw.yaml:1: preset: nat: unknown preset \"nope\""},
		{"mapping: endpoint-independent\npreset: full-cone\n", "gw.yaml:2: preset: must be the first key"},
		{"parity: maybe\n", "gw.yaml:1: parity: want true or false"},
		{"ports: 70000\n", "gw.yaml:1: ports:"},
		{"external: [1.2.3]\n", "gw.yaml:1: external:"},
		{"parity: true\nparity: false\n", "gw.yaml:2: parity: set twice (first on line 1)"},
		{"a: [\n", "gw.yaml:"},
		{"- 1\n", "gw.yaml:1: want a mapping"},
		{"events: x\n", "gw.yaml:1: events: unknown setting"},
	} {
		_, _, err := ParseConfig("gw.yaml", []byte(c.in), nat.Config{})
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want %q", c.in, err, c.want)
		}
	}
	_, _, err := ParseConfig("gw.yaml", []byte("udp_timout: 1s\n"), nat.Config{})
	if !errors.Is(err, ErrUnknownSetting) {
		t.Errorf("unknown key: %v does not match ErrUnknownSetting", err)
	}
}

func TestConfigDiff(t *testing.T) {
	base, _ := nat.Preset("full-cone")
	cfg, _, _ := ParseConfig("a", []byte("external: 192.0.2.1\ninternal: 10.0.0.0/24\n"), base)
	e, err := nat.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if d := ConfigDiff(e.Config(), cfg); len(d) != 0 {
		t.Fatalf("same config differs in %v", d)
	}
	next := cfg
	next.UDPTimeout = time.Minute
	if d := ConfigDiff(e.Config(), next); len(d) != 1 || d[0] != "udp_timeout" {
		t.Fatalf("diff %v, want [udp_timeout]", d)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add("preset: cgn\nudp_timeout: 30s\nports: 1024-2047\n")
	f.Add("external: [192.0.2.1]\nmapping: address-dependent\n")
	f.Add("a: [\n")
	f.Fuzz(func(t *testing.T, in string) {
		_, _, err := ParseConfig("f.yaml", []byte(in), nat.Config{})
		var ce *ConfigError
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("error %v is not a *ConfigError", err)
		}
	})
}
