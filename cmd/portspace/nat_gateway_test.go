package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNatGatewayBadInput checks that bad flags and a bad --config file are
// refused before anything is set up, with errors naming the input.
func TestNatGatewayBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "gw.yaml")
	os.WriteFile(bad, []byte("udp_timeout: 30s\nmaping: eim\n"), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--preset", "cone", "--external", "192.0.2.1", "--inside", "10.0.0.0/24"}, `--preset: nat: unknown preset "cone"`},
		{[]string{"--external", "192.0.2", "--inside", "10.0.0.0/24"}, `--external "192.0.2"`},
		{[]string{"--external", "2001:db8::1", "--inside", "10.0.0.0/24"}, `--external "2001:db8::1": want an IPv4 address`},
		{[]string{"--external", "192.0.2.1", "--inside", "10.0.0.0"}, `--inside "10.0.0.0"`},
		{[]string{"--inside", "10.0.0.0/24"}, "--external: at least one"},
		{[]string{"--external", "192.0.2.1"}, "--inside: at least one"},
		{[]string{"--external", "192.0.2.1", "--inside", "10.0.0.0/24", "--config", bad}, bad + ":2: maping: unknown setting"},
		{[]string{"--external", "192.0.2.1", "--inside", "10.0.0.0/24", "--config", filepath.Join(dir, "none.yaml")}, "--config: open"},
		{[]string{"--external", "10.0.0.9", "--inside", "10.0.0.0/24"}, "10.0.0.0/24 contains 10.0.0.9"},
		{[]string{"--external", "192.0.2.1", "--inside", "10.0.0.0/24", "--shards", "2"}, "--shards 2 needs at least 2 external addresses (--external has 1)"},
		{[]string{"--external", "192.0.2.1", "--inside", "10.0.0.0/24", "--shards", "300"}, "--shards 300: at most 255"},
	} {
		_, _, err := runCLI(t, append([]string{"nat", "gateway", "--state-dir", dir}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want %q", c.args, err, c.want)
			continue
		}
		if msg := err.Error(); !strings.HasPrefix(msg, "nat gateway: ") || strings.Contains(msg, "gateway: gateway:") {
			t.Errorf("%v: err = %q, want one \"nat gateway: \" prefix", c.args, msg)
		}
	}
}

// TestNatSessionsNoGateway checks the error when no gateway listens.
func TestNatSessionsNoGateway(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, sub := range []string{"sessions", "stats"} {
		_, _, err := runCLI(t, "nat", sub, "--control", sock)
		if err == nil || !strings.Contains(err.Error(), "nat "+sub+": gateway: control socket "+sock) {
			t.Errorf("nat %s: err = %v", sub, err)
		}
	}
}
