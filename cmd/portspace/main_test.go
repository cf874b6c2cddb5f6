package main

import (
	"bytes"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
)

// runCLI runs the portspace root command with args, as the binary would, and
// returns what it wrote to standard output and standard error. Every
// subcommand's test uses this one helper.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), errb.String(), err
}

// TestRootListsNoUnknownCommand checks that an unknown subcommand is an error
// that names it.
func TestRootListsNoUnknownCommand(t *testing.T) {
	_, _, err := runCLI(t, "no-such-command")
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("no-such-command")) {
		t.Fatalf("unknown subcommand: err = %v", err)
	}
}

// TestVersion checks that --version prints the module's build information
// and that versionOf renders the module version, revision and Go version.
func TestVersion(t *testing.T) {
	out, _, err := runCLI(t, "--version")
	if err != nil || !strings.HasPrefix(out, "portspace ") || strings.TrimSpace(out) == "portspace" {
		t.Fatalf("--version: %q, %v", out, err)
	}
	info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.0"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}}}
	if got, want := versionOf(info), "v1.2.0 (rev 0123456789ab, modified, go1.26.8)"; got != want {
		t.Errorf("versionOf = %q, want %q", got, want)
	}
	if got := versionOf(&debug.BuildInfo{}); got != "(devel)" {
		t.Errorf("versionOf(empty) = %q, want (devel)", got)
	}
}

// TestFlagValueCompletion asks the hidden __complete command, as the shell
// scripts of "portspace completion" do, for flag values: formats,
// protocols, profiles (as a comma-separated list) and sharing modes.
func TestFlagValueCompletion(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
		not  string
	}{
		{[]string{"acl", "generate", "p.yaml", "--format", ""}, []string{"terraform", "aws-json", "cloudformation", "nftables", "table"}, ""},
		{[]string{"acl", "generate", "p.yaml", "--format", "n"}, []string{"nftables"}, "table"},
		{[]string{"bench", "dial", "--proto", ""}, []string{"tcp", "udp"}, ""},
		{[]string{"bench", "dial", "--dialers", "portspace,"}, []string{"portspace,net.Dialer"}, ""},
		{[]string{"capacity", "--ports", "win"}, []string{"windows", "windows-legacy"}, "linux"},
		{[]string{"capacity", "--ports", "8080,li"}, []string{"8080,linux"}, ""},
		{[]string{"capacity", "--sharing", ""}, []string{"4-tuple", "exclusive"}, ""},
	} {
		out, _, err := runCLI(t, append([]string{"__complete"}, c.args...)...)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		got := lines[:len(lines)-1] // the last line is the directive
		for _, w := range c.want {
			if !slices.Contains(got, w) {
				t.Errorf("%v: completions %q lack %q", c.args, got, w)
			}
		}
		if c.not != "" && slices.Contains(got, c.not) {
			t.Errorf("%v: completions %q offer %q", c.args, got, c.not)
		}
	}
}
