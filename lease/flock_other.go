//go:build !unix

package lease

import (
	"context"
	"errors"
	"time"
)

// lockFile is not supported without flock(2): the bolt store needs it.
func lockFile(ctx context.Context, path string, shared bool, timeout time.Duration) (func(), error) {
	return nil, errors.New("lease: the bolt store needs flock(2), which this platform lacks")
}
