//go:build !linux

package bench

// TakeCensus is not supported outside Linux: it returns a Census that says so.
func TakeCensus(f CensusFilter) Census {
	return Census{Err: "bench: census: sock_diag is supported only on Linux"}
}
