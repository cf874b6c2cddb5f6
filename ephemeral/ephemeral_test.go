package ephemeral

import "testing"

// TestProfiles checks every profile's range, that Names is sorted and
// complete, and that look-up ignores case and rejects unknown names.
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
	names := Names()
	if len(names) != len(want) {
		t.Fatalf("Names() = %v, want %d names", names, len(want))
	}
	for i, n := range names {
		if i > 0 && names[i-1] >= n {
			t.Errorf("Names() not sorted: %v", names)
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
