//go:build !linux

package gateway

import (
	"context"
	"errors"
)

// ErrUnsupported is returned by New on platforms other than Linux.
var ErrUnsupported = errors.New("gateway: the TUN gateway runs on Linux only")

type system struct{}

// New validates opts and, on Linux, sets up the datapath; elsewhere it
// returns ErrUnsupported.
func New(opts Options) (*Gateway, error) {
	opts = opts.withDefaults()
	if err := opts.check(); err != nil {
		return nil, err
	}
	return nil, ErrUnsupported
}

// Run runs the datapath (Linux only).
func (g *Gateway) Run(ctx context.Context) error { return ErrUnsupported }

// Close releases a gateway that was not Run (Linux only).
func (g *Gateway) Close() error { return ErrUnsupported }
