package metrics_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fourover6/fourover6/dataplane/bgp"
	dpmetrics "github.com/fourover6/fourover6/dataplane/metrics"
)

type bgpSource bgp.Status

func (s bgpSource) Status() bgp.Status { return bgp.Status(s) }

// One series per configured peer, labelled with its address (and port
// when not 179) and AS; the speaker's totals once.
func TestBGPCollector(t *testing.T) {
	src := bgpSource{Announced: 3, Pending: 1, Failed: 2, Peers: []bgp.PeerStatus{
		{Peer: bgp.Peer{Addr: netip.MustParseAddr("198.51.100.2"), ASN: 65001}, State: "established",
			Uptime: 90 * time.Second, PrefixesSent: 4, Flaps: 1},
		{Peer: bgp.Peer{Addr: netip.MustParseAddr("2001:db8::2"), Port: 1179, ASN: 65002}, State: "active"},
	}}
	col := dpmetrics.NewBGP(src)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(col)
	want := `
# HELP fourover6_dataplane_bgp_prefixes_sent Routes the peer has from us: the clients' /32s, and the pool with --bgp-aggregate.
# TYPE fourover6_dataplane_bgp_prefixes_sent gauge
fourover6_dataplane_bgp_prefixes_sent{peer="198.51.100.2",peer_asn="65001"} 4
fourover6_dataplane_bgp_prefixes_sent{peer="[2001:db8::2]:1179",peer_asn="65002"} 0
# HELP fourover6_dataplane_bgp_routes_announced Client /32s in the BGP speaker's table, sent to every established session.
# TYPE fourover6_dataplane_bgp_routes_announced gauge
fourover6_dataplane_bgp_routes_announced 3
# HELP fourover6_dataplane_bgp_route_changes_failed_total Route changes the BGP speaker refused (each is logged).
# TYPE fourover6_dataplane_bgp_route_changes_failed_total counter
fourover6_dataplane_bgp_route_changes_failed_total 2
# HELP fourover6_dataplane_bgp_session_up 1 while the BGP session with the peer is established.
# TYPE fourover6_dataplane_bgp_session_up gauge
fourover6_dataplane_bgp_session_up{peer="198.51.100.2",peer_asn="65001"} 1
fourover6_dataplane_bgp_session_up{peer="[2001:db8::2]:1179",peer_asn="65002"} 0
# HELP fourover6_dataplane_bgp_session_uptime_seconds How long the BGP session with the peer has been established (0 while down).
# TYPE fourover6_dataplane_bgp_session_uptime_seconds gauge
fourover6_dataplane_bgp_session_uptime_seconds{peer="198.51.100.2",peer_asn="65001"} 90
fourover6_dataplane_bgp_session_uptime_seconds{peer="[2001:db8::2]:1179",peer_asn="65002"} 0
`
	names := []string{"fourover6_dataplane_bgp_prefixes_sent", "fourover6_dataplane_bgp_routes_announced",
		"fourover6_dataplane_bgp_route_changes_failed_total", "fourover6_dataplane_bgp_session_up",
		"fourover6_dataplane_bgp_session_uptime_seconds"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(col, "fourover6_dataplane_bgp_session_flaps_total"); n != 2 {
		t.Fatalf("flap series: %d, want one per peer", n)
	}
}
