package capacity

import (
	"github.com/portspace/portspace/acl"
	"github.com/portspace/portspace/tuple"
)

// PlatformProfiles is the Profiles source backed by the acl package's table
// of platform ephemeral ranges ("linux" 32768-60999, "windows" 49152-65535,
// "freebsd" 10000-65535, ...; see acl.Profiles).
type PlatformProfiles struct{}

// Profile returns acl.Profile(name).
func (PlatformProfiles) Profile(name string) (tuple.PortSet, bool) { return acl.Profile(name) }

// ProfileNames returns acl.Profiles(), sorted.
func (PlatformProfiles) ProfileNames() []string { return acl.Profiles() }
