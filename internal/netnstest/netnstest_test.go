package netnstest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestInNetNS checks that the test body really runs in a fresh namespace: the
// setup command's sysctl is visible inside and absent outside.
func TestInNetNS(t *testing.T) {
	if !InNetNS(t, SetupCmd("sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40099")) {
		b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
		if err == nil && strings.Fields(string(b))[0] == "40000" {
			t.Error("the namespace's sysctl leaked into the host namespace")
		}
		return
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(string(b)); len(f) != 2 || f[0] != "40000" || f[1] != "40099" {
		t.Errorf("inside the namespace ip_local_port_range = %q", b)
	}
	if _, ok := Inside(); !ok {
		t.Error("Inside() is false inside the namespace")
	}
}

// TestInnerSkipHelper skips inside a namespace; it does something only when
// TestInnerSkipFailsUnderCI starts it.
func TestInnerSkipHelper(t *testing.T) {
	if os.Getenv("PORTSPACE_NETNSTEST_SKIPHELPER") == "" {
		return // only a helper for TestInnerSkipFailsUnderCI
	}
	if !InNetNS(t) {
		return
	}
	t.Skip("skipping inside the namespace")
}

// TestInnerSkipFailsUnderCI checks that a skip inside the namespace is not
// reported as a pass: under CI=true the outer test fails.
func TestInnerSkipFailsUnderCI(t *testing.T) {
	RequireRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestInnerSkipHelper$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "CI=true", "PORTSPACE_NETNSTEST_SKIPHELPER=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "under CI=true a skip is a failure") {
		t.Fatalf("an inner skip under CI=true: err=%v, output:\n%s", err, out)
	}
}
