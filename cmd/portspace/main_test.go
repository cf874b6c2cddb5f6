package main

import (
	"bytes"
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
