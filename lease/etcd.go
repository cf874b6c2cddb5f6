package lease

import (
	"context"
	"errors"
	"time"
)

// EtcdOptions configures an etcd store. The zero value is the defaults.
type EtcdOptions struct {
	// DialTimeout bounds the wait for a member to answer; zero is 3 s.
	DialTimeout time.Duration
}

// OpenEtcd opens the etcd store at loc.
func OpenEtcd(ctx context.Context, loc Location, o EtcdOptions) (Store, error) {
	return nil, errors.New("lease: " + loc.String() + ": the etcd store is not built yet")
}
