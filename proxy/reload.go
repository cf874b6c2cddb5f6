package proxy

import "slices"

// RestartOnly compares the settings a reload cannot change (Server.Reload
// changes users, client rules, traits, limits, timeouts, the guard, GeoIP
// and the access log, but not what was opened or claimed at start) between
// running and next. It copies the running values into next, so that next
// describes what the process does after the reload (and CheckOpen judges
// the listeners that are really open), and returns the YAML names of the
// settings that differed: listen, metrics, store, holder, pools,
// max-slices, session-idle. The caller logs that these need a restart.
func RestartOnly(running, next *Config) []string {
	var changed []string
	if !slices.Equal(running.Listeners(), next.Listeners()) {
		changed = append(changed, "listen")
	}
	next.Listen = slices.Clone(running.Listen)
	if running.Metrics != next.Metrics {
		changed = append(changed, "metrics")
	}
	next.Metrics = running.Metrics
	if running.Store != next.Store {
		changed = append(changed, "store")
	}
	next.Store = running.Store
	if running.Holder != next.Holder {
		changed = append(changed, "holder")
	}
	next.Holder = running.Holder
	if running.Pools != next.Pools {
		changed = append(changed, "pools")
	}
	next.Pools = running.Pools
	if running.MaxSlicesOrDefault() != next.MaxSlicesOrDefault() {
		changed = append(changed, "max-slices")
	}
	next.MaxSlices = running.MaxSlices
	if orDur(running.SessionIdle, DefaultSessionIdle) != orDur(next.SessionIdle, DefaultSessionIdle) {
		changed = append(changed, "session-idle")
	}
	next.SessionIdle = running.SessionIdle
	return changed
}
