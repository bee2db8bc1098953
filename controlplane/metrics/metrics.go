// Package metrics exports the controller's pool and lease activity to
// Prometheus.
//
// A Collector reads two snapshots at scrape time, either of which may be
// left out:
//
//   - a Source: the pool's size and use, the reservations and the data
//     planes. The Source is a small interface (or a SourceFunc) so this
//     package does not follow every change of the controller core.
//   - the controller's counters (controller.Controller.Counts): the core
//     keeps them itself, as plain atomics with failure reasons it assigns,
//     and knows nothing of Prometheus.
//
// Series:
//
//	fourover6_controller_info{id,version}                        gauge, always 1
//	fourover6_controller_leader                                  gauge: 1 on the leader, 0 on a standby
//	fourover6_controller_pool_info{prefix,gateway,first,last}    gauge, always 1
//	fourover6_controller_pool_size                               gauge: client addresses in the pool
//	fourover6_controller_pool_addresses{state}                   gauge: leased, free, reserved (reserved: every reservation in the range, in use or not)
//	fourover6_controller_pool_reserved_in_use                    gauge: reserved addresses leased right now (leased + free + reserved - this = size)
//	fourover6_controller_reservations                            gauge: reservation entries
//	fourover6_controller_dataplanes{state}                       gauge: data planes known, by state (up, draining, down, stopped)
//	fourover6_controller_dataplane_up{dataplane_id}              gauge: 1 while the data plane is up (draining counts), 0 down or stopped
//	fourover6_controller_dataplane_last_heartbeat_timestamp_seconds{dataplane_id}  gauge: when its registered instance last called (heartbeat, report, lease), Unix seconds
//	fourover6_controller_allocations_total                       counter: fresh leases
//	fourover6_controller_allocations_repeated_total              counter: retries answered with the same lease
//	fourover6_controller_allocation_choices_total{choice}        counter: fresh leases by address chosen: sticky (the client's remembered one), reserved, new (they sum to allocations_total)
//	fourover6_controller_pool_free_remembered                    gauge: free addresses whose last holder is remembered (of pool_addresses{state="free"})
//	fourover6_controller_allocation_failures_total{reason}       counter: exhausted, invalid, not_leader, unavailable, canceled, other, limit, not_registered
//	fourover6_controller_releases_total                          counter: addresses given back by data planes
//	fourover6_controller_releases_ignored_total                  counter: releases of leases the session did not hold
//	fourover6_controller_leases_reclaimed_total                  counter: leases the controller freed on its own
//	fourover6_controller_lease_limit_refusals_total{limit}       counter: allocations refused by a lease limit: ip (per client address), prefix
//	fourover6_controller_dataplane_id_conflicts_total            counter: registrations refused because another instance of the id is live
//	fourover6_controller_dataplane_stops_total                   counter: data planes that stopped on purpose (StopDataplane)
//	fourover6_controller_dataplane_removals_total                counter: data planes removed by an operator
//	fourover6_controller_stalls_total                            counter: times the controller found it had not run for a while (its liveness clock left that out)
//	fourover6_controller_bytes_total{direction}                  counter: traffic the data planes reported, by direction (from_client, to_client)
//	fourover6_controller_packets_total{direction}                counter: the same in packets
//	fourover6_controller_audit_total{method,result}              counter: state-changing API calls (AuditCollector)
package metrics

import (
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/pool"
)

// PoolStats is the pool's use. Size = Leased + Free + Reserved.
type PoolStats struct {
	Prefix      netip.Prefix
	Gateway     netip.Addr
	First, Last netip.Addr // the client range
	Size        uint32
	Leased      uint32
	Free        uint32
	Reserved    uint32 // every reservation in the range, in use or not
	// ReservedInUse: of Reserved, those leased.
	ReservedInUse uint32
	// FreeRemembered: of Free, those whose last holder is remembered.
	FreeRemembered uint32
}

// FromPool converts the pool package's snapshot.
func FromPool(s pool.Stats) PoolStats {
	return PoolStats{Prefix: s.Prefix, Gateway: s.Gateway, First: s.First, Last: s.Last,
		Size: s.Size, Leased: s.Leased, Free: s.Free, Reserved: s.Reserved, ReservedInUse: s.ReservedInUse, FreeRemembered: s.FreeRemembered}
}

// Snapshot is what the collector reads from the controller at each scrape.
type Snapshot struct {
	// ID is the controller's --controller-id.
	ID      string
	Version string
	// Leader is true on the controller that serves (always, without
	// leader election).
	Leader bool
	// Pool is nil when unknown (a standby, or the store is unreachable):
	// then the pool and reservation series are left out of the scrape
	// rather than shown as zero.
	Pool         *PoolStats
	Reservations int
	// Dataplanes counts the known data planes by state ("up", "draining",
	// "down", "stopped"). Nil omits the series.
	Dataplanes map[string]int
	// DataplaneList is each known data plane (its up and last heartbeat
	// series); a standby knows none.
	DataplaneList []Dataplane
}

// Dataplane is one data plane as the controller sees it.
type Dataplane struct {
	ID string
	// Up: heard from within --dataplane-timeout and not stopped (a
	// draining data plane is up).
	Up bool
	// LastHeartbeat is when its registered instance last called; zero
	// when it has not since this controller started leading.
	LastHeartbeat time.Time
}

// Source gives the controller's state at scrape time. It is called from
// the scraping goroutine and must be safe for concurrent use.
type Source interface {
	Snapshot() Snapshot
}

// SourceFunc adapts a function to Source.
type SourceFunc func() Snapshot

// Snapshot implements Source.
func (f SourceFunc) Snapshot() Snapshot { return f() }

const ns, sub = "fourover6", "controller"

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(ns, sub, name), help, labels, nil)
}

var (
	descInfo       = desc("info", "Controller identity: always 1, labeled with its --controller-id and version.", "id", "version")
	descLeader     = desc("leader", "1 while this controller is the leader (serves leases), 0 while it is a standby.")
	descPoolInfo   = desc("pool_info", "The address pool: always 1, labeled with its prefix, gateway and client range.", "prefix", "gateway", "first", "last")
	descPoolSize   = desc("pool_size", "Client addresses in the pool (the gateway excluded).")
	descPoolAddrs  = desc("pool_addresses", "Client addresses of the pool by state: leased, free (neither leased nor reserved) or reserved (every reservation in the client range, in use or not: a reserved address in use counts as leased too, see pool_reserved_in_use).", "state")
	descResvInUse  = desc("pool_reserved_in_use", "Reserved addresses leased right now (of pool_addresses{state=\"reserved\"}); leased + free + reserved - this = pool_size.")
	descResv       = desc("reservations", "Reservations configured (IPv6 address or prefix to IPv4 address).")
	descDataplanes = desc("dataplanes", "Data planes the controller knows, by state.", "state")
	descDPUp       = desc("dataplane_up", "1 while the data plane is up (heard from within --dataplane-timeout; draining counts), 0 while it is down or stopped.", "dataplane_id")
	descDPBeat     = desc("dataplane_last_heartbeat_timestamp_seconds", "When the data plane's registered instance last called the controller (heartbeat, report or lease), in Unix seconds.", "dataplane_id")
	descRemembered = desc("pool_free_remembered", "Free addresses whose last holder (client IPv6 address) is remembered: that client gets its address back when it returns. The other free addresses were never used or their holder is forgotten.")

	descAllocs    = desc("allocations_total", "Addresses leased to client sessions (fresh leases; repeats of a lease are counted apart).")
	descRepeated  = desc("allocations_repeated_total", "Allocation retries answered with the lease the session already held.")
	descChoices   = desc("allocation_choices_total", "Fresh leases by how the address was chosen: sticky (the address the client's IPv6 address held last, given back), reserved (the client's reservation), new (the least recently used free address).", "choice")
	descFailures  = desc("allocation_failures_total", "Allocations that failed, by reason.", "reason")
	descReleases  = desc("releases_total", "Leases released by their data plane.")
	descIgnored   = desc("releases_ignored_total", "Releases ignored because the session did not hold that address (duplicates, stale releases).")
	descReclaimed = desc("leases_reclaimed_total", "Leases the controller freed on its own (a data plane restarted, or no longer reports the session).")
	descLimit     = desc("lease_limit_refusals_total", "Allocations refused because the client's IPv6 address (limit=ip) or prefix (limit=prefix) holds as many leases as allowed.", "limit")
	descConflicts = desc("dataplane_id_conflicts_total", "Data plane registrations refused because another instance (process) with the same id is live.")
	descStops     = desc("dataplane_stops_total", "Data planes that told the controller they stopped on purpose (their leases released at once).")
	descRemovals  = desc("dataplane_removals_total", "Data planes an operator removed from the registry.")
	descStalls    = desc("stalls_total", "Times the controller found it had not run for a while (stopped, paused, or its clock jumped); that time is not counted against the data planes.")
	descBytes     = desc("bytes_total", "IPv4 packet bytes the data planes reported for their clients, by direction (from_client: 102, to_client: 103).", "direction")
	descPackets   = desc("packets_total", "IPv4 packets the data planes reported for their clients, by direction.", "direction")
)

// Collector is a prometheus.Collector over a Source and the controller's
// counters.
type Collector struct {
	src    Source
	counts func() controller.ActivityCounts
}

// New returns a collector over src and counts (say, a Controller's Counts
// method); either may be nil.
func New(src Source, counts func() controller.ActivityCounts) *Collector {
	return &Collector{src: src, counts: counts}
}

var counterDescs = []*prometheus.Desc{descAllocs, descRepeated, descChoices, descFailures, descReleases, descIgnored, descReclaimed,
	descLimit, descConflicts, descStops, descRemovals, descStalls, descBytes, descPackets}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	if c.src != nil {
		for _, d := range []*prometheus.Desc{descInfo, descLeader, descPoolInfo, descPoolSize, descPoolAddrs, descResvInUse, descRemembered, descResv, descDataplanes, descDPUp, descDPBeat} {
			ch <- d
		}
	}
	if c.counts != nil {
		for _, d := range counterDescs {
			ch <- d
		}
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if c.src != nil {
		s := c.src.Snapshot()
		gauge := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
		}
		gauge(descInfo, 1, s.ID, s.Version)
		leader := 0.0
		if s.Leader {
			leader = 1
		}
		gauge(descLeader, leader)
		if p := s.Pool; p != nil {
			gauge(descPoolInfo, 1, str(p.Prefix), str(p.Gateway), str(p.First), str(p.Last))
			gauge(descPoolSize, float64(p.Size))
			gauge(descPoolAddrs, float64(p.Leased), "leased")
			gauge(descPoolAddrs, float64(p.Free), "free")
			gauge(descPoolAddrs, float64(p.Reserved), "reserved")
			gauge(descResvInUse, float64(p.ReservedInUse))
			gauge(descRemembered, float64(p.FreeRemembered))
			gauge(descResv, float64(s.Reservations))
		}
		for _, state := range slices.Sorted(maps.Keys(s.Dataplanes)) {
			gauge(descDataplanes, float64(s.Dataplanes[state]), state)
		}
		for _, d := range s.DataplaneList {
			up := 0.0
			if d.Up {
				up = 1
			}
			gauge(descDPUp, up, d.ID)
			if !d.LastHeartbeat.IsZero() {
				gauge(descDPBeat, float64(d.LastHeartbeat.UnixNano())/1e9, d.ID)
			}
		}
	}
	if c.counts != nil {
		collectCounts(ch, c.counts())
	}
}

func collectCounts(ch chan<- prometheus.Metric, s controller.ActivityCounts) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descAllocs, s.Allocated)
	counter(descRepeated, s.Repeated)
	counter(descChoices, s.AllocatedSticky, "sticky")
	counter(descChoices, s.AllocatedReserved, "reserved")
	counter(descChoices, s.AllocatedNew, "new")
	for f := range controller.NumAllocateFailures {
		counter(descFailures, s.AllocateFailed[f], f.String())
	}
	counter(descReleases, s.Released)
	counter(descIgnored, s.ReleaseIgnored)
	counter(descReclaimed, s.Reclaimed)
	counter(descLimit, s.LimitRefused[0], "ip")
	counter(descLimit, s.LimitRefused[1], "prefix")
	counter(descConflicts, s.IDConflicts)
	counter(descStops, s.Stops)
	counter(descRemovals, s.Removals)
	counter(descStalls, s.Stalls)
	counter(descBytes, s.Traffic.BytesFromClient, "from_client")
	counter(descBytes, s.Traffic.BytesToClient, "to_client")
	counter(descPackets, s.Traffic.PacketsFromClient, "from_client")
	counter(descPackets, s.Traffic.PacketsToClient, "to_client")
}

func str[T interface {
	IsValid() bool
	String() string
}](v T) string {
	if !v.IsValid() {
		return ""
	}
	return v.String()
}
