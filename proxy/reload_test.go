package proxy

import (
	"slices"
	"testing"
)

// TestRestartOnly: each setting a reload cannot apply is named when it
// changes and keeps its running value in the new configuration; settings
// a reload applies are not named and keep their new values.
func TestRestartOnly(t *testing.T) {
	run, err := ParseConfig("run.yaml", []byte("listen: [127.0.0.1:1080]\nmetrics: 127.0.0.1:9180\nstore: bolt:/a.db\nholder: h\npools: p.yaml\nmax-slices: 4\nsession-idle: 10m\nusers: [{name: alice, password: a}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	same, _ := ParseConfig("same.yaml", []byte("metrics: 127.0.0.1:9180\nstore: bolt:/a.db\nholder: h\npools: p.yaml\nusers: [{name: bob, password: b, max-connections: 3}]\ntimeouts: {idle: 1m}\n"))
	if got := RestartOnly(run, same); len(got) != 0 {
		t.Errorf("defaults spelled differently and reloadable changes: %v, want none", got)
	}
	if same.Users[0].Name != "bob" || same.Timeouts.Idle == 0 {
		t.Errorf("RestartOnly touched reloadable settings: %+v", same)
	}
	next, _ := ParseConfig("next.yaml", []byte("listen: [127.0.0.1:1081]\nmetrics: 127.0.0.1:9181\nstore: bolt:/b.db\nholder: g\npools: q.yaml\nmax-slices: 2\nsession-idle: 1m\nusers: [{name: bob, password: b}]\n"))
	got := RestartOnly(run, next)
	want := []string{"listen", "metrics", "store", "holder", "pools", "max-slices", "session-idle"}
	if !slices.Equal(got, want) {
		t.Errorf("changed %v, want %v", got, want)
	}
	if !slices.Equal(next.Listeners(), run.Listeners()) || next.Metrics != run.Metrics || next.Store != run.Store || next.Holder != run.Holder ||
		next.Pools != run.Pools || next.MaxSlices != run.MaxSlices || next.SessionIdle != run.SessionIdle {
		t.Errorf("restart-only settings not kept: %+v", next)
	}
	if next.Users[0].Name != "bob" {
		t.Error("users not taken from the new file")
	}
}
