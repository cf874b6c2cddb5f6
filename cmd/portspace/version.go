package main

import (
	"runtime/debug"
	"strings"
)

// version describes this binary from the module's build information: the
// module version ("v1.2.0", or "(devel)" for a build from a checkout), the
// VCS revision and whether the tree was modified, when the build recorded
// them, and the Go version.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown (no build information)"
	}
	return versionOf(info)
}

// versionOf renders info as "v1.2.0 (rev 0123abcd4567, modified, go1.26.8)".
func versionOf(info *debug.BuildInfo) string {
	v := info.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var extra []string
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev != "" {
		extra = append(extra, "rev "+rev[:min(12, len(rev))])
	}
	if modified == "true" {
		extra = append(extra, "modified")
	}
	if info.GoVersion != "" {
		extra = append(extra, info.GoVersion)
	}
	if len(extra) == 0 {
		return v
	}
	return v + " (" + strings.Join(extra, ", ") + ")"
}
