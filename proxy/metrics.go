package proxy

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the proxy's Prometheus metrics, registered on their own
// registry (no global state). Names follow portspace_proxy_<thing>[_total].
type Metrics struct {
	Registry *prometheus.Registry

	// Connections counts finished connections by protocol (socks5, http)
	// and result (ok, auth_failed, refused, bad_request, exhausted,
	// dial_failed, timeout, unsupported, no_egress, limit).
	Connections *prometheus.CounterVec
	// Active is the number of open client connections by protocol.
	Active *prometheus.GaugeVec
	// Bytes counts relayed bytes by direction (up: client to destination,
	// down: destination to client).
	Bytes *prometheus.CounterVec
	// DialSeconds is the latency of outgoing dials by network and result.
	DialSeconds *prometheus.HistogramVec
	// UDPDatagrams counts UDP ASSOCIATE datagrams by direction and result
	// (relayed, dropped_fragment, dropped_source, dropped_guard,
	// dropped_malformed, dropped_peers, dropped_dial).
	UDPDatagrams *prometheus.CounterVec
	// LeasesHeld is the number of slices held, by pool.
	LeasesHeld *prometheus.GaugeVec
	// SlicePorts is the number of connections open from each held slice
	// (slice occupancy), by pool and slice ID.
	SlicePorts *prometheus.GaugeVec
	// Exhausted counts dials refused because every matching pool was
	// exhausted, by pool traits.
	Exhausted *prometheus.CounterVec
	// Reloads counts configuration reloads by result (ok, error).
	Reloads *prometheus.CounterVec
	// ShortHopSwitched counts the sockets of bulk tunnel directions on
	// short hops switched from BBR (Options.ShortHopCC).
	ShortHopSwitched prometheus.Counter

	up, down                prometheus.Counter
	activeSOCKS, activeHTTP prometheus.Gauge
	upFn, downFn            func(int) // countUp and countDown, bound once (a method value allocates)

	// The children of Connections and DialSeconds that connections use,
	// each looked up once (WithLabelValues hashes its labels on every
	// call, and its stack grew the relay goroutine that counts a
	// finished tunnel).
	conns [len(protoNames)][len(resultNames)]atomic.Pointer[prometheus.Counter]
	dials [2][len(resultNames)]atomic.Pointer[prometheus.Observer]
}

// protoNames and resultNames are the values of the protocol and result
// labels that conn and dial cache.
var (
	protoNames  = [...]string{"socks5", "http", "unknown"}
	resultNames = [...]string{resultOK, resultAuth, resultRefused, resultBad, resultExhausted, resultDialFailed, resultTimeout, resultUnsupported, resultNoEgress, resultLimit}
)

func nameIndex(names []string, s string) int {
	for i, n := range names {
		if n == s {
			return i
		}
	}
	return -1
}

// conn returns Connections' counter of proto and result.
func (m *Metrics) conn(proto, result string) prometheus.Counter {
	i, j := nameIndex(protoNames[:], proto), nameIndex(resultNames[:], result)
	if i < 0 || j < 0 {
		return m.Connections.WithLabelValues(proto, result)
	}
	if c := m.conns[i][j].Load(); c != nil {
		return *c
	}
	c := m.Connections.WithLabelValues(proto, result)
	m.conns[i][j].Store(&c)
	return c
}

// dial returns DialSeconds' observer of network and result.
func (m *Metrics) dial(network, result string) prometheus.Observer {
	i, j := 0, nameIndex(resultNames[:], result)
	switch network {
	case "tcp":
	case "udp":
		i = 1
	default:
		j = -1
	}
	if j < 0 {
		return m.DialSeconds.WithLabelValues(network, result)
	}
	if o := m.dials[i][j].Load(); o != nil {
		return *o
	}
	o := m.DialSeconds.WithLabelValues(network, result)
	m.dials[i][j].Store(&o)
	return o
}

// NewMetrics creates the metrics on a new registry, with the Go and process
// collectors.
func NewMetrics() *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.Connections = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portspace_proxy_connections_total", Help: "Finished client connections by protocol and result."}, []string{"protocol", "result"})
	m.Active = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "portspace_proxy_active_connections", Help: "Open client connections by protocol."}, []string{"protocol"})
	m.Bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portspace_proxy_bytes_total", Help: "Relayed bytes by direction (up: client to destination)."}, []string{"direction"})
	m.DialSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "portspace_proxy_dial_duration_seconds", Help: "Outgoing dial latency by network and result.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"network", "result"})
	m.UDPDatagrams = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portspace_proxy_udp_datagrams_total", Help: "UDP ASSOCIATE datagrams by direction and result."}, []string{"direction", "result"})
	m.LeasesHeld = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "portspace_proxy_leases_held", Help: "Port slices held, by pool."}, []string{"pool"})
	m.SlicePorts = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "portspace_proxy_slice_connections", Help: "Connections open from each held slice (occupancy)."}, []string{"pool", "slice"})
	m.Exhausted = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portspace_proxy_exhausted_total", Help: "Dials refused because every matching pool was exhausted, by requested traits."}, []string{"traits"})
	m.Reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portspace_proxy_reloads_total", Help: "Configuration reloads by result."}, []string{"result"})
	m.ShortHopSwitched = prometheus.NewCounter(prometheus.CounterOpts{Name: "portspace_proxy_short_hop_switched_total", Help: "Sockets of bulk tunnel directions on short hops switched from BBR."})
	m.Registry.MustRegister(m.Connections, m.Active, m.Bytes, m.DialSeconds, m.UDPDatagrams, m.LeasesHeld, m.SlicePorts, m.Exhausted, m.Reloads, m.ShortHopSwitched,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.up = m.Bytes.WithLabelValues("up")
	m.down = m.Bytes.WithLabelValues("down")
	m.activeSOCKS = m.Active.WithLabelValues("socks5")
	m.activeHTTP = m.Active.WithLabelValues("http")
	m.upFn, m.downFn = m.countUp, m.countDown
	return m
}

func (m *Metrics) countUp(n int)   { m.up.Add(float64(n)) }
func (m *Metrics) countDown(n int) { m.down.Add(float64(n)) }
