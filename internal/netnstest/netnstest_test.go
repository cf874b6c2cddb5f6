package netnstest

import (
	"os"
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
