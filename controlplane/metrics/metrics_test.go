package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

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
	p, err := pool.New(pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/24"), Range: pool.Range{
		First: netip.MustParseAddr("13.8.0.2"), Last: netip.MustParseAddr("13.8.0.11"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, _, err := p.Allocate(pool.Owner{Dataplane: "dp1", Session: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	stats := metrics.FromPool(p.Stats())
	src := &fakeSource{snap: metrics.Snapshot{
		Version:      "v9",
		Leader:       true,
		Pool:         &stats,
		Reservations: 2,
		Dataplanes:   map[string]int{"up": 2, "down": 1},
	}}
	stats.Reserved, stats.Free = 2, stats.Free-2 // as if two were reserved

	var counters metrics.Counters
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(metrics.New(src, &counters))

	for range 3 {
		counters.Allocated()
	}
	counters.AllocateRepeated()
	counters.AllocateFailed(metrics.ReasonExhausted)
	counters.AllocateFailed(metrics.ReasonExhausted)
	counters.AllocateFailed(metrics.ReasonInvalid)
	counters.AllocateFailed(metrics.Reason(200)) // out of range: other
	counters.Released()
	counters.ReleaseIgnored()
	counters.ReleaseIgnored()
	counters.Reclaimed(4)
	counters.Reclaimed(0)
	counters.AllocateFailed(metrics.ReasonNotLeader)
	counters.AllocateFailed(metrics.ReasonUnavailable)
	counters.Traffic(1000, 10, 5000, 20)
	counters.Traffic(500, 5, 0, 0)

	want := `
# HELP fourover6_controller_info Controller identity: always 1, labeled with its version.
# TYPE fourover6_controller_info gauge
fourover6_controller_info{version="v9"} 1
# HELP fourover6_controller_leader 1 while this controller is the leader (serves leases), 0 while it is a standby.
# TYPE fourover6_controller_leader gauge
fourover6_controller_leader 1
# HELP fourover6_controller_pool_info The address pool: always 1, labeled with its prefix, gateway and client range.
# TYPE fourover6_controller_pool_info gauge
fourover6_controller_pool_info{first="13.8.0.2",gateway="13.8.0.1",last="13.8.0.11",prefix="13.8.0.0/24"} 1
# HELP fourover6_controller_pool_size Client addresses in the pool (the gateway excluded).
# TYPE fourover6_controller_pool_size gauge
fourover6_controller_pool_size 10
# HELP fourover6_controller_pool_addresses Client addresses of the pool by state: leased, free or reserved (they sum to pool_size).
# TYPE fourover6_controller_pool_addresses gauge
fourover6_controller_pool_addresses{state="free"} 5
fourover6_controller_pool_addresses{state="leased"} 3
fourover6_controller_pool_addresses{state="reserved"} 2
# HELP fourover6_controller_reservations Reservations configured (IPv6 address or prefix to IPv4 address).
# TYPE fourover6_controller_reservations gauge
fourover6_controller_reservations 2
# HELP fourover6_controller_dataplanes Data planes the controller knows, by state.
# TYPE fourover6_controller_dataplanes gauge
fourover6_controller_dataplanes{state="down"} 1
fourover6_controller_dataplanes{state="up"} 2
# HELP fourover6_controller_allocations_total Addresses leased to client sessions (fresh leases; repeats of a lease are counted apart).
# TYPE fourover6_controller_allocations_total counter
fourover6_controller_allocations_total 3
# HELP fourover6_controller_allocations_repeated_total Allocation retries answered with the lease the session already held.
# TYPE fourover6_controller_allocations_repeated_total counter
fourover6_controller_allocations_repeated_total 1
# HELP fourover6_controller_allocation_failures_total Allocations that failed, by reason.
# TYPE fourover6_controller_allocation_failures_total counter
fourover6_controller_allocation_failures_total{reason="canceled"} 0
fourover6_controller_allocation_failures_total{reason="exhausted"} 2
fourover6_controller_allocation_failures_total{reason="invalid"} 1
fourover6_controller_allocation_failures_total{reason="not_leader"} 1
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
# HELP fourover6_controller_pool_addresses Client addresses of the pool by state: leased, free or reserved (they sum to pool_size).
# TYPE fourover6_controller_pool_addresses gauge
fourover6_controller_pool_addresses{state="free"} 4
fourover6_controller_pool_addresses{state="leased"} 4
fourover6_controller_pool_addresses{state="reserved"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want2), "fourover6_controller_pool_addresses"); err != nil {
		t.Error(err)
	}
}

func TestNilCountersAndSourceFunc(t *testing.T) {
	var c *metrics.Counters
	c.Allocated() // no-ops, no panic
	c.AllocateRepeated()
	c.AllocateFailed(metrics.ReasonUnavailable)
	c.Released()
	c.ReleaseIgnored()
	c.Reclaimed(3)
	if s := c.Snapshot(); s.Allocated != 0 || len(s.Failed) != int(metrics.NumReasons) {
		t.Errorf("nil snapshot = %+v", s)
	}

	calls := 0
	src := metrics.SourceFunc(func() metrics.Snapshot {
		calls++
		return metrics.Snapshot{Version: "v1", Pool: &metrics.PoolStats{Size: 253, Free: 253}}
	})
	col := metrics.New(src, nil)
	// No counters, no dataplane states: only the source's fixed series.
	if n := testutil.CollectAndCount(col); n != 8 {
		t.Errorf("series = %d, want 8", n)
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
	// Counters alone, registered on their own.
	var own metrics.Counters
	own.Allocated()
	if got := testutil.ToFloat64(prometheus.Collector(counterOnly{&own, "fourover6_controller_allocations_total"})); got != 1 {
		t.Errorf("allocations_total = %v", got)
	}
}

// counterOnly narrows a collector to one series for testutil.ToFloat64.
type counterOnly struct {
	c    *metrics.Counters
	name string
}

func (o counterOnly) Describe(ch chan<- *prometheus.Desc) { o.c.Describe(ch) }
func (o counterOnly) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric, 64)
	o.c.Collect(all)
	close(all)
	for m := range all {
		if strings.Contains(m.Desc().String(), `"`+o.name+`"`) {
			ch <- m
		}
	}
}

func TestReasonFor(t *testing.T) {
	errInvalid := errors.New("invalid argument")
	errStore := errors.New("store unavailable")
	errNotLeader := errors.New("not the leader")
	for _, tc := range []struct {
		err  error
		want metrics.Reason
	}{
		{&pool.ExhaustedError{Size: 1, Leased: 1}, metrics.ReasonExhausted},
		{fmt.Errorf("allocate: %w", pool.ErrExhausted), metrics.ReasonExhausted},
		{context.Canceled, metrics.ReasonCanceled},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), metrics.ReasonCanceled},
		{fmt.Errorf("session id is empty: %w", errInvalid), metrics.ReasonInvalid},
		{fmt.Errorf("bolt: %w", errStore), metrics.ReasonUnavailable},
		{fmt.Errorf("x: %w", errNotLeader), metrics.ReasonNotLeader},
		{errors.New("boom"), metrics.ReasonOther},
	} {
		got := metrics.ReasonFor(tc.err,
			metrics.ErrorReason{Err: errInvalid, Reason: metrics.ReasonInvalid},
			metrics.ErrorReason{Err: errNotLeader, Reason: metrics.ReasonNotLeader},
			metrics.ErrorReason{Err: errStore, Reason: metrics.ReasonUnavailable})
		if got != tc.want {
			t.Errorf("ReasonFor(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestCountersConcurrent(t *testing.T) {
	var c metrics.Counters
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				c.Allocated()
				c.Released()
			}
		})
	}
	wg.Wait()
	if s := c.Snapshot(); s.Allocated != 8000 || s.Released != 8000 {
		t.Errorf("snapshot = %+v", s)
	}
}
