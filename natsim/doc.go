// Package natsim runs a nat.Engine against a synthetic workload on a fake
// clock (Poisson flow arrivals, exponential lifetimes, TCP, UDP and ICMP echo
// flows) and reports what it measured: flows refused and broken, peak and
// steady state, external ports used, engine table size and the volume of the
// RFC 6888 REQ-12 event log (package natlog). `portspace nat simulate` is a
// thin command over Simulate.
//
// The package uses only the exported API of packages nat and natlog.
package natsim
