package packet

import (
	"os/exec"
	"strings"
	"testing"
)

// TestInlining pins the hot accessors and rewrites as inlinable (as
// net/netip does for its own): losing inlining would cost the NAT engine a
// call per field. It asks the compiler (go build -gcflags=-m).
func TestInlining(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	out, err := exec.Command(goBin, "build", "-gcflags=-m", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build -gcflags=-m: %v\n%s", err, out)
	}
	got := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if _, name, ok := strings.Cut(line, ": can inline "); ok {
			got[strings.Fields(name)[0]] = true
		}
	}
	for _, want := range []string{
		"(*Packet).Proto", "(*Packet).Src", "(*Packet).Dst", "(*Packet).SrcPort", "(*Packet).DstPort",
		"(*Packet).TCPFlags", "(*Packet).IsFragment", "(*Packet).HasTransport", "(*Packet).IsICMPError",
		"(*Packet).IsICMPQueryRequest", "(*Packet).Inner", "Embedded.Src", "Embedded.SrcPort",
		"(*Packet).SetSrc", "(*Packet).SetDst", "(*Packet).SetInnerSrc", "Update16", "Fold",
	} {
		if !got[want] {
			t.Errorf("%s is no longer inlinable", want)
		}
	}
}
