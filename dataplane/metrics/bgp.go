package metrics

import (
	"net/netip"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fourover6/fourover6/dataplane/bgp"
)

// BGPSource is the data plane's BGP speaker (*bgp.Speaker is one).
type BGPSource interface {
	Status() bgp.Status
}

var (
	descBGPUp       = desc("bgp_session_up", "1 while the BGP session with the peer is established.", "peer", "peer_asn")
	descBGPUptime   = desc("bgp_session_uptime_seconds", "How long the BGP session with the peer has been established (0 while down).", "peer", "peer_asn")
	descBGPSent     = desc("bgp_prefixes_sent", "Routes the peer has from us: the clients' /32s, and the pool with --bgp-aggregate.", "peer", "peer_asn")
	descBGPFlaps    = desc("bgp_session_flaps_total", "Times the BGP session with the peer went down after being established.", "peer", "peer_asn")
	descBGPRoutes   = desc("bgp_routes_announced", "Client /32s in the BGP speaker's table, sent to every established session.")
	descBGPPending  = desc("bgp_route_changes_pending", "Route changes asked for and not yet in the BGP speaker's table.")
	descBGPFailures = desc("bgp_route_changes_failed_total", "Route changes the BGP speaker refused (each is logged).")
)

// BGPCollector exports the BGP speaker's sessions and routes. It asks the
// speaker when scraped, never on the data plane's lease path.
type BGPCollector struct{ src BGPSource }

// NewBGP returns the collector of src.
func NewBGP(src BGPSource) *BGPCollector { return &BGPCollector{src: src} }

// Describe implements prometheus.Collector.
func (c *BGPCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBGPUp, descBGPUptime, descBGPSent, descBGPFlaps, descBGPRoutes, descBGPPending, descBGPFailures} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *BGPCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, p := range st.Peers {
		peer, asn := peerLabel(p.Peer), strconv.FormatUint(uint64(p.ASN), 10)
		up := 0.0
		if p.Established() {
			up = 1
		}
		gauge(descBGPUp, up, peer, asn)
		gauge(descBGPUptime, p.Uptime.Seconds(), peer, asn)
		gauge(descBGPSent, float64(p.PrefixesSent), peer, asn)
		ch <- prometheus.MustNewConstMetric(descBGPFlaps, prometheus.CounterValue, float64(p.Flaps), peer, asn)
	}
	gauge(descBGPRoutes, float64(st.Announced))
	gauge(descBGPPending, float64(st.Pending))
	ch <- prometheus.MustNewConstMetric(descBGPFailures, prometheus.CounterValue, float64(st.Failed))
}

// peerLabel is the peer's address, with its port when it is not 179.
func peerLabel(p bgp.Peer) string {
	if p.Port == 0 || p.Port == bgp.BGPPort {
		return p.Addr.String()
	}
	return netip.AddrPortFrom(p.Addr, p.Port).String()
}
