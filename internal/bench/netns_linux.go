package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// RunInNamespace creates a network namespace, brings its loopback up, adds
// addrs to it (as /128 or /32 host addresses), runs args (args[0] is the
// executable) inside it with stdout and stderr passed through, and removes
// the namespace. It needs root and the ip command (iproute2).
func RunInNamespace(ctx context.Context, addrs []netip.Addr, args []string, stdout, stderr io.Writer) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("bench: a run in its own network namespace needs root")
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	ns := "psbench-" + hex.EncodeToString(b[:])
	ip := func(a ...string) error {
		if out, err := exec.CommandContext(ctx, "ip", a...).CombinedOutput(); err != nil {
			return fmt.Errorf("bench: ip %s: %w: %s", strings.Join(a, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := ip("netns", "add", ns); err != nil {
		return err
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	if err := ip("-n", ns, "link", "set", "lo", "up"); err != nil {
		return err
	}
	for _, a := range addrs {
		p := netip.PrefixFrom(a, a.BitLen()).String()
		extra := []string{}
		if a.Is6() {
			extra = append(extra, "nodad")
		}
		if err := ip(append([]string{"-n", ns, "addr", "add", p, "dev", "lo"}, extra...)...); err != nil {
			return err
		}
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	return cmd.Run()
}
