package metrics_test

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/metrics"
	"github.com/fourover6/fourover6/controlplane/pool"
)

// fakeSource is a controller as the collector sees it.
type fakeSource struct {
	mu   sync.Mutex
	snap metrics.Snapshot
}

func (f *fakeSource) Snapshot() metrics.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snap
}

func TestCollector(t *testing.T) {
	stats := metrics.FromPool(pool.Stats{
		Prefix: netip.MustParsePrefix("13.8.0.0/24"), Gateway: netip.MustParseAddr("13.8.0.1"),
		First: netip.MustParseAddr("13.8.0.2"), Last: netip.MustParseAddr("13.8.0.11"),
		Size: 10, Leased: 3, Free: 5, Reserved: 3, ReservedInUse: 1, FreeRemembered: 4,
	})
	src := &fakeSource{snap: metrics.Snapshot{
		ID:           "ctl1",
		Version:      "v9",
		Leader:       true,
		Pool:         &stats,
		Reservations: 2,
		Dataplanes:   map[string]int{"up": 2, "down": 1, "stopped": 1},
		DataplaneList: []metrics.Dataplane{
			{ID: "dp1", Up: true, LastHeartbeat: time.Unix(1767225600, 500e6)},
			{ID: "dp2", Up: false, LastHeartbeat: time.Unix(1767225500, 0)},
			{ID: "dp3"}, // not heard from in this term
		},
	}}
	counts := controller.ActivityCounts{
		Allocated: 3, Repeated: 1, AllocatedSticky: 2, AllocatedReserved: 0, AllocatedNew: 1, Released: 1, ReleaseIgnored: 2, Reclaimed: 4,
		LimitRefused: [2]uint64{5, 6}, IDConflicts: 7, Stops: 8, Removals: 9, Stalls: 10,
		Traffic: controller.Traffic{BytesFromClient: 1500, PacketsFromClient: 15, BytesToClient: 5000, PacketsToClient: 20},
	}
	counts.AllocateFailed[controller.FailExhausted] = 2
	counts.AllocateFailed[controller.FailInvalid] = 1
	counts.AllocateFailed[controller.FailOther] = 1
	counts.AllocateFailed[controller.FailNotLeader] = 1
	counts.AllocateFailed[controller.FailUnavailable] = 1
	counts.AllocateFailed[controller.FailLimit] = 11

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(metrics.New(src, func() controller.ActivityCounts { return counts }))

	want := `
# HELP fourover6_controller_info Controller identity: always 1, labeled with its --controller-id and version.
# TYPE fourover6_controller_info gauge
fourover6_controller_info{id="ctl1",version="v9"} 1
# HELP fourover6_controller_dataplane_up 1 while the data plane is up (heard from within --dataplane-timeout; draining counts), 0 while it is down or stopped.
# TYPE fourover6_controller_dataplane_up gauge
fourover6_controller_dataplane_up{dataplane_id="dp1"} 1
fourover6_controller_dataplane_up{dataplane_id="dp2"} 0
fourover6_controller_dataplane_up{dataplane_id="dp3"} 0
# HELP fourover6_controller_dataplane_last_heartbeat_timestamp_seconds When the data plane's registered instance last called the controller (heartbeat, report or lease), in Unix seconds.
# TYPE fourover6_controller_dataplane_last_heartbeat_timestamp_seconds gauge
fourover6_controller_dataplane_last_heartbeat_timestamp_seconds{dataplane_id="dp1"} 1.7672256005e+09
fourover6_controller_dataplane_last_heartbeat_timestamp_seconds{dataplane_id="dp2"} 1.7672255e+09
# HELP fourover6_controller_leader 1 while this controller is the leader (serves leases), 0 while it is a standby.
# TYPE fourover6_controller_leader gauge
fourover6_controller_leader 1
# HELP fourover6_controller_pool_info The address pool: always 1, labeled with its prefix, gateway and client range.
# TYPE fourover6_controller_pool_info gauge
fourover6_controller_pool_info{first="13.8.0.2",gateway="13.8.0.1",last="13.8.0.11",prefix="13.8.0.0/24"} 1
# HELP fourover6_controller_pool_size Client addresses in the pool (the gateway excluded).
# TYPE fourover6_controller_pool_size gauge
fourover6_controller_pool_size 10
# HELP fourover6_controller_pool_addresses Client addresses of the pool by state: leased, free (neither leased nor reserved) or reserved (every reservation in the client range, in use or not: a reserved address in use counts as leased too, see pool_reserved_in_use).
# TYPE fourover6_controller_pool_addresses gauge
fourover6_controller_pool_addresses{state="free"} 5
fourover6_controller_pool_addresses{state="leased"} 3
fourover6_controller_pool_addresses{state="reserved"} 3
# HELP fourover6_controller_pool_reserved_in_use Reserved addresses leased right now (of pool_addresses{state="reserved"}); leased + free + reserved - this = pool_size.
# TYPE fourover6_controller_pool_reserved_in_use gauge
fourover6_controller_pool_reserved_in_use 1
# HELP fourover6_controller_pool_free_remembered Free addresses whose last holder (client IPv6 address) is remembered: that client gets its address back when it returns. The other free addresses were never used or their holder is forgotten.
# TYPE fourover6_controller_pool_free_remembered gauge
fourover6_controller_pool_free_remembered 4
# HELP fourover6_controller_reservations Reservations configured (IPv6 address or prefix to IPv4 address).
# TYPE fourover6_controller_reservations gauge
fourover6_controller_reservations 2
# HELP fourover6_controller_dataplanes Data planes the controller knows, by state.
# TYPE fourover6_controller_dataplanes gauge
fourover6_controller_dataplanes{state="down"} 1
fourover6_controller_dataplanes{state="stopped"} 1
fourover6_controller_dataplanes{state="up"} 2
# HELP fourover6_controller_allocations_total Addresses leased to client sessions (fresh leases; repeats of a lease are counted apart).
# TYPE fourover6_controller_allocations_total counter
fourover6_controller_allocations_total 3
# HELP fourover6_controller_allocations_repeated_total Allocation retries answered with the lease the session already held.
# TYPE fourover6_controller_allocations_repeated_total counter
fourover6_controller_allocations_repeated_total 1
# HELP fourover6_controller_allocation_choices_total Fresh leases by how the address was chosen: sticky (the address the client's IPv6 address held last, given back), reserved (the client's reservation), new (the least recently used free address).
# TYPE fourover6_controller_allocation_choices_total counter
fourover6_controller_allocation_choices_total{choice="new"} 1
fourover6_controller_allocation_choices_total{choice="reserved"} 0
fourover6_controller_allocation_choices_total{choice="sticky"} 2
# HELP fourover6_controller_allocation_failures_total Allocations that failed, by reason.
# TYPE fourover6_controller_allocation_failures_total counter
fourover6_controller_allocation_failures_total{reason="canceled"} 0
fourover6_controller_allocation_failures_total{reason="exhausted"} 2
fourover6_controller_allocation_failures_total{reason="invalid"} 1
fourover6_controller_allocation_failures_total{reason="limit"} 11
fourover6_controller_allocation_failures_total{reason="not_leader"} 1
fourover6_controller_allocation_failures_total{reason="not_registered"} 0
fourover6_controller_allocation_failures_total{reason="other"} 1
fourover6_controller_allocation_failures_total{reason="unavailable"} 1
# HELP fourover6_controller_releases_total Leases released by their data plane.
# TYPE fourover6_controller_releases_total counter
fourover6_controller_releases_total 1
# HELP fourover6_controller_releases_ignored_total Releases ignored because the session did not hold that address (duplicates, stale releases).
# TYPE fourover6_controller_releases_ignored_total counter
fourover6_controller_releases_ignored_total 2
# HELP fourover6_controller_leases_reclaimed_total Leases the controller freed on its own (a data plane restarted, or no longer reports the session).
# TYPE fourover6_controller_leases_reclaimed_total counter
fourover6_controller_leases_reclaimed_total 4
# HELP fourover6_controller_lease_limit_refusals_total Allocations refused because the client's IPv6 address (limit=ip) or prefix (limit=prefix) holds as many leases as allowed.
# TYPE fourover6_controller_lease_limit_refusals_total counter
fourover6_controller_lease_limit_refusals_total{limit="ip"} 5
fourover6_controller_lease_limit_refusals_total{limit="prefix"} 6
# HELP fourover6_controller_dataplane_id_conflicts_total Data plane registrations refused because another instance (process) with the same id is live.
# TYPE fourover6_controller_dataplane_id_conflicts_total counter
fourover6_controller_dataplane_id_conflicts_total 7
# HELP fourover6_controller_dataplane_stops_total Data planes that told the controller they stopped on purpose (their leases released at once).
# TYPE fourover6_controller_dataplane_stops_total counter
fourover6_controller_dataplane_stops_total 8
# HELP fourover6_controller_dataplane_removals_total Data planes an operator removed from the registry.
# TYPE fourover6_controller_dataplane_removals_total counter
fourover6_controller_dataplane_removals_total 9
# HELP fourover6_controller_stalls_total Times the controller found it had not run for a while (stopped, paused, or its clock jumped); that time is not counted against the data planes.
# TYPE fourover6_controller_stalls_total counter
fourover6_controller_stalls_total 10
# HELP fourover6_controller_bytes_total IPv4 packet bytes the data planes reported for their clients, by direction (from_client: 102, to_client: 103).
# TYPE fourover6_controller_bytes_total counter
fourover6_controller_bytes_total{direction="from_client"} 1500
fourover6_controller_bytes_total{direction="to_client"} 5000
# HELP fourover6_controller_packets_total IPv4 packets the data planes reported for their clients, by direction.
# TYPE fourover6_controller_packets_total counter
fourover6_controller_packets_total{direction="from_client"} 15
fourover6_controller_packets_total{direction="to_client"} 20
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if probs, err := testutil.GatherAndLint(reg); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}

	// The source is read at every scrape.
	src.mu.Lock()
	src.snap.Pool.Leased++
	src.snap.Pool.Free--
	src.mu.Unlock()
	want2 := `
# HELP fourover6_controller_pool_addresses Client addresses of the pool by state: leased, free (neither leased nor reserved) or reserved (every reservation in the client range, in use or not: a reserved address in use counts as leased too, see pool_reserved_in_use).
# TYPE fourover6_controller_pool_addresses gauge
fourover6_controller_pool_addresses{state="free"} 4
fourover6_controller_pool_addresses{state="leased"} 4
fourover6_controller_pool_addresses{state="reserved"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want2), "fourover6_controller_pool_addresses"); err != nil {
		t.Error(err)
	}
}

func TestSourceFuncAndHalves(t *testing.T) {
	calls := 0
	src := metrics.SourceFunc(func() metrics.Snapshot {
		calls++
		return metrics.Snapshot{Version: "v1", Pool: &metrics.PoolStats{Size: 253, Free: 253}}
	})
	col := metrics.New(src, nil)
	// No counters, no dataplane states: only the source's fixed series.
	if n := testutil.CollectAndCount(col); n != 10 {
		t.Errorf("series = %d, want 10", n)
	}
	// A standby knows no pool: info and leader only.
	standby := metrics.New(metrics.SourceFunc(func() metrics.Snapshot { return metrics.Snapshot{Version: "v1"} }), nil)
	if n := testutil.CollectAndCount(standby); n != 2 {
		t.Errorf("standby series = %d, want 2", n)
	}
	if n := testutil.CollectAndCount(standby, "fourover6_controller_pool_size"); n != 0 {
		t.Error("a standby exports a pool size")
	}
	if calls != 1 {
		t.Errorf("source read %d times for one scrape", calls)
	}
	// Counters alone: every series, failure reasons included, from zero.
	own := metrics.New(nil, func() controller.ActivityCounts { return controller.ActivityCounts{Allocated: 1} })
	if n := testutil.CollectAndCount(own); n != 5+3+int(controller.NumAllocateFailures)+2+4+4 {
		t.Errorf("counter series = %d", n)
	}
	if n := testutil.CollectAndCount(own, "fourover6_controller_allocations_total"); n != 1 {
		t.Errorf("allocations_total series = %d", n)
	}
}

// TestControllerCounts scrapes a real controller after real calls: the
// core's own counters and failure reasons reach the series.
func TestControllerCounts(t *testing.T) {
	ctx := context.Background()
	c, err := controller.New(controller.Config{Pool: pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/30")}}) // one address
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddr("2001:db8::1")
	l, err := c.Allocate(ctx, "dp1", "s1", client, 1)
	if err != nil {
		t.Fatal(err)
	}
	c.Allocate(ctx, "dp1", "s1", client, 1) // repeated
	c.Allocate(ctx, "dp1", "s2", client, 1) // exhausted
	c.Allocate(ctx, "", "s3", client, 1)    // invalid
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	c.Allocate(cctx, "dp1", "s4", client, 1) // canceled
	if _, err := c.Report(ctx, "dp1", "", false, []controller.SessionReport{{SessionID: "s1", Traffic: controller.Traffic{BytesToClient: 700, PacketsToClient: 7}}}); err != nil {
		t.Fatal(err)
	}
	c.Release(ctx, "dp1", "s2", l.Addr, "not the holder") // ignored
	c.Release(ctx, "dp1", "s1", l.Addr, "eof")
	if back, err := c.Allocate(ctx, "dp2", "s5", client, 1); err != nil || back.Addr != l.Addr {
		t.Fatalf("returning client: %v %v", back, err) // sticky
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(metrics.New(nil, c.Counts))
	want := `
# HELP fourover6_controller_allocation_choices_total Fresh leases by how the address was chosen: sticky (the address the client's IPv6 address held last, given back), reserved (the client's reservation), new (the least recently used free address).
# TYPE fourover6_controller_allocation_choices_total counter
fourover6_controller_allocation_choices_total{choice="new"} 1
fourover6_controller_allocation_choices_total{choice="reserved"} 0
fourover6_controller_allocation_choices_total{choice="sticky"} 1
# HELP fourover6_controller_allocation_failures_total Allocations that failed, by reason.
# TYPE fourover6_controller_allocation_failures_total counter
fourover6_controller_allocation_failures_total{reason="canceled"} 1
fourover6_controller_allocation_failures_total{reason="exhausted"} 1
fourover6_controller_allocation_failures_total{reason="invalid"} 1
fourover6_controller_allocation_failures_total{reason="limit"} 0
fourover6_controller_allocation_failures_total{reason="not_leader"} 0
fourover6_controller_allocation_failures_total{reason="not_registered"} 0
fourover6_controller_allocation_failures_total{reason="other"} 0
fourover6_controller_allocation_failures_total{reason="unavailable"} 0
# HELP fourover6_controller_allocations_repeated_total Allocation retries answered with the lease the session already held.
# TYPE fourover6_controller_allocations_repeated_total counter
fourover6_controller_allocations_repeated_total 1
# HELP fourover6_controller_allocations_total Addresses leased to client sessions (fresh leases; repeats of a lease are counted apart).
# TYPE fourover6_controller_allocations_total counter
fourover6_controller_allocations_total 2
# HELP fourover6_controller_bytes_total IPv4 packet bytes the data planes reported for their clients, by direction (from_client: 102, to_client: 103).
# TYPE fourover6_controller_bytes_total counter
fourover6_controller_bytes_total{direction="from_client"} 0
fourover6_controller_bytes_total{direction="to_client"} 700
# HELP fourover6_controller_releases_ignored_total Releases ignored because the session did not hold that address (duplicates, stale releases).
# TYPE fourover6_controller_releases_ignored_total counter
fourover6_controller_releases_ignored_total 1
# HELP fourover6_controller_releases_total Leases released by their data plane.
# TYPE fourover6_controller_releases_total counter
fourover6_controller_releases_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"fourover6_controller_allocation_choices_total",
		"fourover6_controller_allocation_failures_total", "fourover6_controller_allocations_repeated_total",
		"fourover6_controller_allocations_total", "fourover6_controller_bytes_total",
		"fourover6_controller_releases_ignored_total", "fourover6_controller_releases_total"); err != nil {
		t.Error(err)
	}
}
