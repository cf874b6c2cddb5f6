package nat

import (
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/portspace/portspace/portalloc"
	"github.com/portspace/portspace/tuple"
	"go.yaml.in/yaml/v3"
)

// TestConfigFieldsHaveYAMLNames pins that every Config field has one
// snake_case yaml name (or "-" for the Go-only sinks), distinct from the
// others, so that a configuration file can set every setting.
func TestConfigFieldsHaveYAMLNames(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	seen := map[string]string{}
	typ := reflect.TypeOf(Config{})
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag, ok := f.Tag.Lookup("yaml")
		if !ok {
			t.Errorf("Config.%s has no yaml tag", f.Name)
			continue
		}
		if tag == "-" {
			if f.Name != "Events" && f.Name != "Logger" {
				t.Errorf("Config.%s is not settable from YAML", f.Name)
			}
			continue
		}
		if !snake.MatchString(tag) {
			t.Errorf("Config.%s: yaml name %q is not snake_case", f.Name, tag)
		}
		if other, dup := seen[tag]; dup {
			t.Errorf("Config.%s and Config.%s share yaml name %q", f.Name, other, tag)
		}
		seen[tag] = f.Name
	}
}

// TestConfigFromYAML decodes a configuration that sets the typed fields by
// name (mapping, filtering, pooling, algorithm, ports, durations, secret)
// and checks each value and that New accepts it.
func TestConfigFromYAML(t *testing.T) {
	doc := `
external: [192.0.2.1, 192.0.2.2]
internal: [10.0.0.0/8]
mapping: eim
filtering: address-and-port-dependent
tcp_filtering: adf
pooling: arbitrary
algorithm: double-hash
ports: 1024-65535
preserve_port: true
udp_timeout: 2m
syn_hold: -1s
fragment_hold: 3s
quarantine: 120s
max_ports_per_subscriber: 2000
no_translate: [198.51.100.0/24]
no_translate_ports: "53,443"
secret: 000102030405060708090a0b0c0d0e0f
seed: 7
`
	var cfg Config
	if err := yaml.Unmarshal([]byte(doc), &cfg); err != nil {
		t.Fatal(err)
	}
	want := Config{
		External: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")},
		Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		Mapping:  MappingEIM, Filtering: FilterAPDF, TCPFiltering: FilterADF,
		Pooling: PoolingArbitrary, Algorithm: portalloc.DoubleHash,
		Ports: tuple.PortSetOf(tuple.PortRangeFrom(1024, 65535)), PreservePort: true,
		UDPTimeout: 2 * time.Minute, SYNHold: -time.Second, FragmentHold: 3 * time.Second,
		Quarantine: 120 * time.Second, MaxPortsPerSubscriber: 2000,
		NoTranslate:      []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		NoTranslatePorts: tuple.PortSetOf(tuple.PortRangeFrom(53, 53), tuple.PortRangeFrom(443, 443)),
		Secret:           portalloc.Secret{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, Seed: 7,
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", cfg, want)
	}
	if _, err := New(cfg); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"mapping: cone", "filtering: 3", "pooling: any", "algorithm: fast", "secret: 0011"} {
		var c Config
		err := yaml.Unmarshal([]byte(bad), &c)
		if err == nil || !strings.Contains(err.Error(), strings.Fields(bad)[1]) && !strings.Contains(err.Error(), "secret") {
			t.Errorf("%q: err %v, want an error naming the value", bad, err)
		}
	}
}
