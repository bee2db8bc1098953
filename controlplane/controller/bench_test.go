package controller

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
)

// benchController is a controller on the in-memory store with a pool big
// enough for any b.N (a /12: a million addresses), so what is measured is
// the core: its index and locks, not a disk or a network.
func benchController(b *testing.B) *Controller {
	b.Helper()
	c, err := New(Config{Pool: pool.Config{Prefix: netip.MustParsePrefix("10.0.0.0/12")}, Store: store.NewMemory()})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkAllocateCore: fresh allocations from many concurrent sessions.
func BenchmarkAllocateCore(b *testing.B) {
	c := benchController(b)
	var seq atomic.Int64
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := seq.Add(1)
			if _, err := c.Allocate(ctx, "dp1", fmt.Sprint("s", n), client1, 1); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkAllocateReleaseCore: sessions come and go (allocate, then
// release), so addresses cycle through the free queue.
func BenchmarkAllocateReleaseCore(b *testing.B) {
	c := benchController(b)
	var seq atomic.Int64
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s := fmt.Sprint("s", seq.Add(1))
			l, err := c.Allocate(ctx, "dp1", s, client1, 1)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := c.Release(ctx, "dp1", s, l.Addr, "eof"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkReport10k: a complete report of 10,000 sessions.
func BenchmarkReport10k(b *testing.B) {
	c := benchController(b)
	const n = 10000
	reports := make([]SessionReport, n)
	for i := range reports {
		l, err := c.Allocate(ctx, "dp1", fmt.Sprint("s", i), client1, 1)
		if err != nil {
			b.Fatal(err)
		}
		reports[i] = SessionReport{SessionID: l.SessionID, Addr: l.Addr, ClientIPv6: client1}
	}
	b.ResetTimer()
	for i := range b.N {
		for j := range reports {
			reports[j].Traffic.BytesFromClient = uint64(i)
		}
		if u, err := c.Report(ctx, "dp1", "", true, reports); err != nil || len(u) != 0 {
			b.Fatal(u, err)
		}
	}
}

// BenchmarkReconnectStorm: 10,000 sessions of one IPv6 address (a load
// generator, a big NAT) on one data plane, whose instance stops; a new
// instance registers and all 10,000 come back at once, 64 at a time. An
// op is one such storm; leases/s is its rate of allocations.
func BenchmarkReconnectStorm(b *testing.B) {
	c := benchController(b)
	const n, callers = 10000, 64
	var took time.Duration
	storm := func(inst string) {
		if _, err := c.RegisterDataplane(ctx, Registration{DataplaneID: "dp1", InstanceID: inst}); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		var next atomic.Int64
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				for k := next.Add(1); k <= n; k = next.Add(1) {
					if _, err := c.AllocateFor(ctx, AllocateRequest{DataplaneID: "dp1", InstanceID: inst,
						SessionID: fmt.Sprint(inst, "-", k), ClientIPv6: client1, ClientPort: uint16(k)}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		took += time.Since(start)
		if _, err := c.StopDataplane(ctx, "dp1", inst, "bench"); err != nil {
			b.Fatal(err)
		}
	}
	storm("first") // the addresses to come back to
	took = 0
	b.ResetTimer()
	for i := range b.N {
		storm(fmt.Sprint("i", i))
	}
	b.ReportMetric(float64(n*b.N)/took.Seconds(), "leases/s")
}
