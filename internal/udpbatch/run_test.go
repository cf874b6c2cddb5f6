package udpbatch

import (
	"slices"
	"testing"
)

// TestNext cuts runs as a GRO reader returns them: one datagram (seg 0), a
// run with a shorter last datagram, and a run of whole datagrams.
func TestNext(t *testing.T) {
	for _, c := range []struct {
		run  string
		seg  int
		want []string
	}{
		{"abcde", 0, []string{"abcde"}},
		{"abcde", 2, []string{"ab", "cd", "e"}},
		{"abcdef", 3, []string{"abc", "def"}},
		{"abc", 5, []string{"abc"}},
	} {
		var got []string
		for d := []byte(c.run); len(d) > 0; {
			var one []byte
			one, d = Next(d, c.seg)
			got = append(got, string(one))
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("Next(%q, %d): %q, want %q", c.run, c.seg, got, c.want)
		}
	}
}
