package main

import (
	"bytes"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
)

// The test binary can act as the portspace binary, for tests that start it
// as a child process: envRunCLI=1 runs the command line given as the
// binary's arguments (bench proxy starts "portspace proxy" this way), and
// envMain runs the arguments after "--" (the nat gateway tests re-execute
// it inside a namespace).
const (
	envRunCLI = "PORTSPACE_TEST_RUN_CLI"
	envMain   = "PORTSPACE_CLI_TEST_MAIN"
)

func TestMain(m *testing.M) {
	if os.Getenv(envMain) != "" {
		for i, a := range os.Args {
			if a == "--" {
				os.Args = append([]string{"portspace"}, os.Args[i+1:]...)
				break
			}
		}
		main()
		os.Exit(0)
	}
	if os.Getenv(envRunCLI) == "1" {
		root := newRootCmd()
		root.SetArgs(os.Args[1:])
		if err := root.Execute(); err != nil {
			os.Stderr.WriteString("portspace: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	ourExecutable = func() (string, []string, error) {
		exe, err := os.Executable()
		return exe, nil, err
	}
	os.Setenv(envRunCLI, "1") // inherited by the child processes only
	os.Exit(m.Run())
}

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
