package acl

import (
	"errors"
	"testing"

	"github.com/portspace/portspace/tuple"
)

func TestProfiles(t *testing.T) {
	want := map[string]string{
		"strict":          "32768-65535",
		"loose":           "1024-65535",
		"linux":           "32768-60999",
		"iana":            "49152-65535",
		"windows":         "49152-65535",
		"windows-legacy":  "1025-5000",
		"freebsd":         "10000-65535",
		"macos":           "49152-65535",
		"aws-nat-gateway": "1024-65535",
		"elb":             "1024-65535",
		"lambda":          "1024-65535",
	}
	names := Profiles()
	if len(names) != len(want) {
		t.Fatalf("Profiles() = %v, want %d names", names, len(want))
	}
	for i, n := range names {
		if i > 0 && names[i-1] >= n {
			t.Errorf("Profiles() not sorted: %v", names)
		}
		got, ok := Profile(n)
		if !ok || got.String() != want[n] {
			t.Errorf("Profile(%q) = %v, %v; want %s", n, got, ok, want[n])
		}
	}
	if p, ok := Profile("LINUX"); !ok || p.String() != "32768-60999" {
		t.Errorf("Profile is not case-insensitive: %v %v", p, ok)
	}
	if _, ok := Profile("solaris"); ok {
		t.Error("Profile(solaris) ok")
	}
}

func TestParseEphemeral(t *testing.T) {
	// The union of FreeBSD and Windows-legacy plus a custom range merges
	// overlapping and adjacent ranges.
	got, err := ParseEphemeral("windows-legacy", "freebsd", "5001-6000", "linux")
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != "1025-6000,10000-65535" {
		t.Errorf("union = %v", got)
	}
	if _, err := ParseEphemeral("linux", "bogus"); err == nil {
		t.Error("unknown profile accepted")
	} else if !errors.Is(err, tuple.ErrSyntax) {
		t.Errorf("error %v does not wrap tuple.ErrSyntax", err)
	}
	if s, err := ParseEphemeral(); err != nil || s.IsValid() {
		t.Errorf("empty = %v, %v", s, err)
	}
}
