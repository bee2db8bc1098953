// Package metrics exports a data plane's state and counters to Prometheus.
//
// The Collector reads the data plane when scraped (Dataplane.Status): the
// hot path is not touched, and nothing is counted twice. Series:
//
//	fourover6_dataplane_info{id,version,instance_id}            gauge, always 1
//	fourover6_dataplane_start_time_seconds                      gauge, Unix time
//	fourover6_dataplane_sessions                                gauge: open client connections
//	fourover6_dataplane_sessions_leased                         gauge: of those, holding an address
//	fourover6_dataplane_sessions_accepted_total                 counter
//	fourover6_dataplane_sessions_closed_total                   counter
//	fourover6_dataplane_bytes_total{direction}                  counter: IPv4 bytes, from_client (102) / to_client (103)
//	fourover6_dataplane_packets_total{direction}                counter: IPv4 packets, same directions
//	fourover6_dataplane_drops_total{reason}                     counter: every session.Drop reason, 0 included
//	fourover6_dataplane_connections_refused_total{reason}       counter: draining and each limit, 0 included
//	fourover6_dataplane_keepalive_timeouts_total                counter: clients cut for silence (when the source counts them)
//	fourover6_dataplane_controller_reachable                    gauge: 1 while the controller answers
//	fourover6_dataplane_draining                                gauge: 1 while new clients are refused
//	fourover6_dataplane_registered                              gauge: 1 once the controller accepted this instance
//	fourover6_dataplane_releases_pending                        gauge: releases waiting to reach the controller
//	fourover6_dataplane_address_requests_merged_total           counter: 100s answered by the 101 of a lease already pending
//	fourover6_dataplane_process_start_time_seconds              gauge, Unix time: this process (a hand-off changes it, not start_time_seconds)
//	fourover6_dataplane_handoffs_total                          counter: live hand-offs in the instance's life
//	fourover6_dataplane_handoff_failures_total                  counter: hand-offs this process attempted that did not happen
//	fourover6_dataplane_handoff_pause_seconds                   gauge: how long the last hand-off into this process froze traffic
//	fourover6_dataplane_audit_total{method,result}              counter: state-changing API calls (AuditCollector)
//
// With BGP on (BGPCollector), per configured peer and for the speaker:
//
//	fourover6_dataplane_bgp_session_up{peer,peer_asn}             gauge: 1 while established
//	fourover6_dataplane_bgp_session_uptime_seconds{peer,peer_asn} gauge
//	fourover6_dataplane_bgp_prefixes_sent{peer,peer_asn}          gauge: routes the peer has from us
//	fourover6_dataplane_bgp_session_flaps_total{peer,peer_asn}    counter
//	fourover6_dataplane_bgp_routes_announced                      gauge: client /32s in the speaker's table
//	fourover6_dataplane_bgp_route_changes_pending                 gauge
//	fourover6_dataplane_bgp_route_changes_failed_total            counter
//
// Byte and packet counters include the sessions already closed, so they only
// grow for the life of the process.
package metrics

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/limit"
	"github.com/fourover6/fourover6/dataplane/session"
)

// Source is what the collector reads; *dataplane.Dataplane is one.
type Source interface {
	Status() dataplane.Status
}

// KeepaliveTimeoutCounter is implemented by a source that counts the
// clients cut for silence. When the source has it, the collector exports
// fourover6_dataplane_keepalive_timeouts_total; without it the series is
// absent rather than a misleading zero.
type KeepaliveTimeoutCounter interface {
	KeepaliveTimeouts() uint64
}

// Directions of the traffic counters.
const (
	FromClient = "from_client" // 102: client -> TUN
	ToClient   = "to_client"   // 103: TUN -> client
)

// RefusalReasons are the reasons a connection is refused at accept:
// draining, then the limits of package limit. They are exported at 0 until
// they happen; a reason the data plane reports beyond these is exported too.
// "lease_limit" counts clients whose 100 the controller refused for their
// address's or prefix's lease limit (their connection is closed).
var RefusalReasons = []string{"draining", limit.ReasonMaxClients, limit.ReasonPerIP, limit.ReasonPerPrefix, limit.ReasonRate,
	limit.ReasonPrefixRate, "lease_limit"}

const ns, sub = "fourover6", "dataplane"

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(ns, sub, name), help, labels, nil)
}

var (
	descInfo      = desc("info", "Data plane identity: always 1, labeled with its id, version and instance_id (random per process start).", "id", "version", "instance_id")
	descStart     = desc("start_time_seconds", "When this data plane started, in Unix seconds.")
	descSessions  = desc("sessions", "Open client connections (leased or not yet).")
	descLeased    = desc("sessions_leased", "Open client connections holding an address.")
	descAccepted  = desc("sessions_accepted_total", "Client connections accepted (refused ones are not counted).")
	descClosed    = desc("sessions_closed_total", "Client connections closed, for any reason.")
	descBytes     = desc("bytes_total", "IPv4 bytes carried (without the 5-byte header): from_client is 102 traffic, to_client is 103.", "direction")
	descPackets   = desc("packets_total", "IPv4 packets carried: from_client is 102 traffic, to_client is 103.", "direction")
	descDrops     = desc("drops_total", "Messages and packets dropped, by reason.", "reason")
	descRefused   = desc("connections_refused_total", "Client connections refused at accept, by reason (draining or the limit hit).", "reason")
	descKATimeout = desc("keepalive_timeouts_total", "Clients disconnected because they were silent longer than the keepalive timeout.")
	descCtrl      = desc("controller_reachable", "1 while the controller answers, 0 while it is unreachable.")
	descDraining  = desc("draining", "1 while the data plane refuses new clients, else 0.")

	descRegistered = desc("registered", "1 once the controller accepted this data plane instance, else 0.")
	descPending    = desc("releases_pending", "Releases waiting to reach the controller (queued, retried until delivered).")
	descProcStart  = desc("process_start_time_seconds", "When the process serving this data plane started, in Unix seconds (a live hand-off starts a new one; start_time_seconds stays the instance's).")
	descHandoffs   = desc("handoffs_total", "Live hand-offs to a new process in this data plane instance's life.")
	descHandoffErr = desc("handoff_failures_total", "Hand-offs this process attempted that did not happen (it served on).")
	descPause      = desc("handoff_pause_seconds", "How long the last hand-off into this process froze the clients' traffic (0: none).")
	descMerged     = desc("address_requests_merged_total", "100s that arrived while the client's lease was pending, answered by its one 101.")
)

// Collector is a prometheus.Collector over one data plane.
type Collector struct {
	src Source
}

// New returns a collector reading src at every scrape.
func New(src Source) *Collector { return &Collector{src: src} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descStart, descSessions, descLeased, descAccepted, descClosed,
		descBytes, descPackets, descDrops, descRefused, descCtrl, descDraining, descRegistered, descPending, descMerged,
		descProcStart, descHandoffs, descHandoffErr, descPause} {
		ch <- d
	}
	if _, ok := c.src.(KeepaliveTimeoutCounter); ok {
		ch <- descKATimeout
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}

	gauge(descInfo, 1, st.ID, st.Version, st.InstanceID)
	if !st.StartedAt.IsZero() {
		gauge(descStart, float64(st.StartedAt.UnixNano())/1e9)
	}
	gauge(descSessions, float64(st.Sessions))
	gauge(descLeased, float64(st.LeasedSessions))
	counter(descAccepted, st.Accepted)
	counter(descClosed, st.Closed)
	counter(descBytes, st.Traffic.BytesFromClient, FromClient)
	counter(descBytes, st.Traffic.BytesToClient, ToClient)
	counter(descPackets, st.Traffic.PacketsFromClient, FromClient)
	counter(descPackets, st.Traffic.PacketsToClient, ToClient)

	for r := range session.NumDrops {
		name := r.String()
		counter(descDrops, st.Drops[name], name)
	}
	refused := maps.Clone(st.Refused)
	if refused == nil {
		refused = map[string]uint64{}
	}
	for _, r := range RefusalReasons {
		refused[r] += 0
	}
	for _, r := range slices.Sorted(maps.Keys(refused)) {
		counter(descRefused, refused[r], r)
	}

	if k, ok := c.src.(KeepaliveTimeoutCounter); ok {
		counter(descKATimeout, k.KeepaliveTimeouts())
	}
	gauge(descCtrl, b2f(st.ControllerConnected))
	gauge(descDraining, b2f(st.Draining))
	gauge(descRegistered, b2f(st.Registered))
	gauge(descPending, float64(st.ReleasesPending))
	counter(descMerged, st.RepeatedAddrReqs)
	if !st.ProcessStartedAt.IsZero() {
		gauge(descProcStart, float64(st.ProcessStartedAt.UnixNano())/1e9)
	}
	counter(descHandoffs, st.Handoffs)
	counter(descHandoffErr, st.HandoffFailures)
	gauge(descPause, st.LastHandoffPause.Seconds())
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
