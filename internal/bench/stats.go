package bench

import (
	"math"
	"slices"
	"time"
)

// Percentile returns the q-quantile (0 < q <= 1) of samples by the
// nearest-rank method: the smallest sample such that at least q of all
// samples are at most it. It sorts samples in place. It returns 0 for no
// samples.
func Percentile(samples []time.Duration, q float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	if !slices.IsSorted(samples) {
		slices.Sort(samples)
	}
	return samples[rank(len(samples), q)]
}

// rank is the 0-based nearest rank of quantile q among n sorted samples.
func rank(n int, q float64) int {
	if q <= 0 {
		return 0
	}
	if q >= 1 {
		return n - 1
	}
	// ceil(q*n); the epsilon keeps 0.5*10 from rounding up to 6 when the
	// product is not exact.
	r := int(math.Ceil(q*float64(n) - 1e-9))
	if r < 1 {
		r = 1
	}
	return r - 1
}

// Latency summarises connect latencies.
type Latency struct {
	N    int
	P50  time.Duration
	P99  time.Duration
	Max  time.Duration
	Mean time.Duration
}

// Summarize computes the Latency of samples (sorting them in place).
func Summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	slices.Sort(samples)
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	return Latency{
		N:    len(samples),
		P50:  Percentile(samples, 0.50),
		P99:  Percentile(samples, 0.99),
		Max:  samples[len(samples)-1],
		Mean: sum / time.Duration(len(samples)),
	}
}

// Rate returns n events over d as events per second (0 when d is 0).
func Rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}
