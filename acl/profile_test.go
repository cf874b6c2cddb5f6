package acl

import (
	"errors"
	"testing"

	"github.com/portspace/portspace/tuple"
)

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
