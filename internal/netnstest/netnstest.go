// Package netnstest runs tests in network namespaces they create and remove.
//
// Tests that need root (namespaces, veth pairs, routing rules, nftables) call
// RequireRoot, which skips them when not root, except under CI=true, where a
// skip would hide a missing tier and so fails the test instead.
//
// InNetNS moves a whole test into a fresh namespace by re-executing the test
// binary there, so every goroutine and socket of the test lives in it and
// per-namespace sysctls (net.ipv4.ip_local_port_range) can be changed freely.
package netnstest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// envInside names the test that the re-executed binary must run inside the
// namespace, and envNS the namespace it runs in.
const (
	envInside = "PORTSPACE_NETNSTEST_INSIDE"
	envNS     = "PORTSPACE_NETNSTEST_NS"
)

// RequireRoot skips tb unless the process runs as root. When the
// environment has CI=true, it fails tb instead: CI runs as root, and a
// privileged test that skips there is a broken tier.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatal("netnstest: this test needs root, and under CI=true a skip is a failure")
	}
	tb.Skip("netnstest: needs root (network namespaces)")
}

// RequireCommand skips tb (fails under CI=true) when the named program is
// not on PATH.
func RequireCommand(tb testing.TB, name string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("netnstest: %s is not installed, and under CI=true a skip is a failure (.ci/run installs it)", name)
	}
	tb.Skipf("netnstest: %s is not installed", name)
}

// NS is a named network namespace created for one test.
type NS struct {
	Name string
}

// New creates a network namespace with a unique name, brings its loopback
// up, and removes it when tb ends.
func New(tb testing.TB) *NS {
	tb.Helper()
	RequireRoot(tb)
	RequireCommand(tb, "ip")
	var b [4]byte
	_, _ = rand.Read(b[:])
	ns := &NS{Name: "pstest-" + hex.EncodeToString(b[:])}
	if out, err := exec.Command("ip", "netns", "add", ns.Name).CombinedOutput(); err != nil {
		tb.Fatalf("netnstest: ip netns add %s: %v: %s", ns.Name, err, out)
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
			tb.Errorf("netnstest: ip netns del %s: %v: %s", ns.Name, err, out)
		}
	})
	ns.MustRun(tb, "ip", "link", "set", "lo", "up")
	return ns
}

// Run runs a command inside the namespace and returns its combined output.
func (ns *NS) Run(name string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("netnstest: in %s: %s %s: %w: %s", ns.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails tb on error.
func (ns *NS) MustRun(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := ns.Run(name, args...)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// Inside reports whether this process is the copy of the test binary that
// InNetNS started inside a namespace, and returns that namespace's name.
func Inside() (string, bool) {
	ns := os.Getenv(envNS)
	return ns, ns != "" && os.Getenv(envInside) != ""
}

// InNetNS runs the calling test inside a fresh network namespace (loopback
// up). Called outside, it creates the namespace, runs setup commands in it
// (each a command line split on spaces, such as
// "sysctl -w net.ipv4.ip_local_port_range=40000 40099" written as separate
// arguments via SetupCmd), re-executes the test binary there for this test
// alone, reports its output, and returns false: the caller must return.
// Inside the namespace it returns true and the test body runs.
//
//	func TestX(t *testing.T) {
//		if !netnstest.InNetNS(t) {
//			return
//		}
//		// runs in a fresh namespace
//	}
func InNetNS(t *testing.T, setup ...[]string) bool {
	t.Helper()
	if os.Getenv(envInside) == t.Name() {
		return true
	}
	ns := New(t)
	for _, c := range setup {
		ns.MustRun(t, c[0], c[1:]...)
	}
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	args := []string{"netns", "exec", ns.Name, os.Args[0],
		"-test.run=" + strings.Join(parts, "/"), "-test.count=1", "-test.v"}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), envInside+"="+t.Name(), envNS+"="+ns.Name)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if testing.Verbose() || err != nil {
		t.Logf("inside namespace %s:\n%s", ns.Name, out.String())
	}
	if err != nil {
		t.Fatalf("netnstest: test failed inside namespace %s: %v", ns.Name, err)
	}
	// A skip inside the namespace is a skip of this test: under CI=true a
	// failure, as for RequireRoot.
	if strings.Contains(out.String(), "--- SKIP: ") {
		if os.Getenv("CI") == "true" {
			t.Fatalf("netnstest: the test skipped inside namespace %s, and under CI=true a skip is a failure", ns.Name)
		}
		t.Skipf("netnstest: the test skipped inside namespace %s", ns.Name)
	}
	if !strings.Contains(out.String(), "--- PASS: "+t.Name()+" (") {
		t.Fatalf("netnstest: the test did not run inside namespace %s", ns.Name)
	}
	return false
}

// SetupCmd is a convenience for InNetNS setup arguments.
func SetupCmd(args ...string) []string { return args }
