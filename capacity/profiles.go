package capacity

import (
	"github.com/portspace/portspace/ephemeral"
	"github.com/portspace/portspace/tuple"
)

// PlatformProfiles is the Profiles source backed by the ephemeral package's
// table of platform ephemeral ranges ("linux" 32768-60999, "windows"
// 49152-65535, "freebsd" 10000-65535, ...; see ephemeral.Names).
type PlatformProfiles struct{}

// Profile returns ephemeral.Profile(name).
func (PlatformProfiles) Profile(name string) (tuple.PortSet, bool) { return ephemeral.Profile(name) }

// ProfileNames returns ephemeral.Names(), sorted.
func (PlatformProfiles) ProfileNames() []string { return ephemeral.Names() }
