package bench

import (
	"testing"
	"time"
)

func ms(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x) * time.Millisecond
	}
	return out
}

// TestPercentileNearestRank checks the nearest-rank definition on samples
// whose answers are known by hand.
func TestPercentileNearestRank(t *testing.T) {
	tests := []struct {
		name    string
		samples []time.Duration
		q       float64
		want    time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one sample", ms(7), 0.99, 7 * time.Millisecond},
		{"median of 10 is the 5th", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.5, 5 * time.Millisecond},
		{"median of 11 is the 6th", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11), 0.5, 6 * time.Millisecond},
		{"p90 of 10 is the 9th", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.9, 9 * time.Millisecond},
		{"p99 of 10 is the max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.99, 10 * time.Millisecond},
		{"p11 of 10 rounds up to the 2nd", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.11, 2 * time.Millisecond},
		{"q=1 is the max", ms(3, 1, 2), 1, 3 * time.Millisecond},
		{"q=0 is the min", ms(3, 1, 2), 0, 1 * time.Millisecond},
		{"unsorted input is sorted", ms(10, 9, 8, 7, 6, 5, 4, 3, 2, 1), 0.5, 5 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.samples, tt.q); got != tt.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.samples, tt.q, got, tt.want)
			}
		})
	}
}

// TestPercentileP99OfHundred checks that p99 of 1..100 is 99 and p50 is 50.
func TestPercentileP99OfHundred(t *testing.T) {
	s := make([]time.Duration, 100)
	for i := range s {
		s[i] = time.Duration(100-i) * time.Microsecond
	}
	if got := Percentile(s, 0.99); got != 99*time.Microsecond {
		t.Errorf("p99 = %v, want 99µs", got)
	}
	if got := Percentile(s, 0.50); got != 50*time.Microsecond {
		t.Errorf("p50 = %v, want 50µs", got)
	}
}

func TestSummarize(t *testing.T) {
	l := Summarize(ms(4, 1, 3, 2))
	want := Latency{N: 4, P50: 2 * time.Millisecond, P99: 4 * time.Millisecond, Max: 4 * time.Millisecond, Mean: 2500 * time.Microsecond}
	if l != want {
		t.Errorf("Summarize = %+v, want %+v", l, want)
	}
	if (Summarize(nil) != Latency{}) {
		t.Errorf("Summarize(nil) is not zero")
	}
}

func TestRate(t *testing.T) {
	if got := Rate(500, 250*time.Millisecond); got != 2000 {
		t.Errorf("Rate(500, 250ms) = %v, want 2000", got)
	}
	if got := Rate(5, 0); got != 0 {
		t.Errorf("Rate(5, 0) = %v, want 0", got)
	}
}
