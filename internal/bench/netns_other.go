//go:build !linux

package bench

import (
	"context"
	"errors"
	"io"
	"net/netip"
)

// RunInNamespace is supported only on Linux.
func RunInNamespace(ctx context.Context, addrs []netip.Addr, args []string, stdout, stderr io.Writer) error {
	return errors.New("bench: network namespaces are supported only on Linux")
}
