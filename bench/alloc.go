package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// runAlloc measures address allocations per second through a real
// controller, once per -alloc-callers count, each against a fresh
// controller (its default durable store, bbolt): that many concurrent gRPC
// clients on its unix socket, each allocating an address for a fresh
// session and releasing it again, as data planes do when clients come and
// go. Holding at most `callers` leases at once keeps the pool from running
// dry whatever the rate.
func (l *lab) runAlloc(ctx context.Context, rep *Report) {
	a := &Alloc{Method: "grpc-unix", Runs: []AllocRun{}}
	rep.Alloc = a
	for i, callers := range l.o.allocCallers {
		if ctx.Err() != nil {
			break
		}
		r := l.allocOnce(ctx, callers, false)
		if r.Error != "" {
			rep.addError(secAlloc, fmt.Sprintf("grpc %d callers", callers), fmt.Errorf("%s", r.Error))
		}
		a.Runs = append(a.Runs, r)
		if ctx.Err() == nil {
			rb := l.allocOnce(ctx, callers, true)
			if rb.Error != "" {
				rep.addError(secAlloc, fmt.Sprintf("grpc %d callers, releases batched", callers), fmt.Errorf("%s", rb.Error))
			}
			a.Runs = append(a.Runs, rb)
		}
		if i == 0 {
			// The top-level numbers are the first run's, as before runs existed.
			a.Callers, a.DurationS, a.Allocations, a.AllocsPerS = r.Callers, r.DurationS, r.Allocations, r.AllocsPerS
			a.AllocP50Us, a.AllocP99Us, a.Failures, a.FirstFailure, a.Error = r.AllocP50Us, r.AllocP99Us, r.Failures, r.FirstFailure, r.Error
		}
	}
}

// Releases of an allocation run: each caller's own ReleaseAddress after
// each allocation, or batches of everyone's (ReleaseAddresses, one call at
// a time), as a data plane's release queue sends them.
const (
	releasesPerCall = "per-call"
	releasesBatched = "batched"
)

// releaseBatchMax bounds one ReleaseAddresses call of the batched runs.
const releaseBatchMax = 1024

func (l *lab) allocOnce(ctx context.Context, callers int, batched bool) (a AllocRun) {
	a.Callers = callers
	a.Releases = releasesPerCall
	if batched {
		a.Releases = releasesBatched
	}
	l.log.Info("controller allocations", "callers", a.Callers, "releases", a.Releases, "duration", l.o.allocDuration)
	if err := l.startController(ctx); err != nil {
		a.Error = err.Error()
		return a
	}
	defer l.stopController()
	cc, err := grpc.NewClient("unix://"+l.ctlSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		a.Error = err.Error()
		return a
	}
	defer cc.Close()
	lc := cpv1.NewLeaseServiceClient(cc)
	const dpID = "bench-alloc"
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = lc.RegisterDataplane(rctx, &cpv1.RegisterDataplaneRequest{DataplaneId: dpID, InstanceId: "bench", Version: "bench"})
	cancel()
	if err != nil {
		a.Error = fmt.Sprintf("RegisterDataplane: %v", err)
		return a
	}

	ctlPid := l.ctl.cmd.Process.Pid
	ticks0, ticksErr := cpuTicks(ctlPid)
	var count, failures atomic.Int64
	var firstFail atomic.Value
	fail := func(err error) bool {
		failures.Add(1)
		firstFail.CompareAndSwap(nil, err.Error())
		return failures.Load() > 100 // something is broken; a flood of errors measures nothing
	}
	// The batched runs' releaser: whatever the callers released since its
	// last call, in one call.
	toRelease := make(chan *cpv1.ReleaseAddressRequest, 4*releaseBatchMax)
	releaserDone := make(chan struct{})
	go func() {
		defer close(releaserDone)
		for r := range toRelease {
			batch := []*cpv1.ReleaseAddressRequest{r}
		more:
			for len(batch) < releaseBatchMax {
				select {
				case r, ok := <-toRelease:
					if !ok {
						break more
					}
					batch = append(batch, r)
				default:
					break more
				}
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := lc.ReleaseAddresses(rctx, &cpv1.ReleaseAddressesRequest{DataplaneId: dpID, Releases: batch})
			cancel()
			if err != nil {
				fail(err)
			}
		}
	}()
	lat := make([][]time.Duration, a.Callers)
	start := time.Now()
	deadline := start.Add(l.o.allocDuration)
	var wg sync.WaitGroup
	for g := range a.Callers {
		wg.Go(func() {
			for k := 0; time.Now().Before(deadline) && ctx.Err() == nil; k++ {
				sid := fmt.Sprintf("s%d-%d", g, k)
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				t0 := time.Now()
				resp, err := lc.AllocateAddress(cctx, &cpv1.AllocateAddressRequest{DataplaneId: dpID, SessionId: sid, ClientIpv6: clientV6, ClientPort: uint32(10000 + k%50000)})
				if err == nil {
					lat[g] = append(lat[g], time.Since(t0))
					count.Add(1)
					rel := &cpv1.ReleaseAddressRequest{DataplaneId: dpID, SessionId: sid, Address: resp.GetLease().GetAddress(), Reason: "bench"}
					if batched {
						toRelease <- rel
					} else {
						_, err = lc.ReleaseAddress(cctx, rel)
					}
				}
				cancel()
				if err != nil && fail(err) {
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(toRelease)
	<-releaserDone
	if ticks1, err := cpuTicks(ctlPid); err == nil && ticksErr == nil && count.Load() > 0 {
		a.ControllerCPUUsPerAlloc = round1(float64(ticks1-ticks0) * 1e6 / clockTicks / float64(count.Load()))
	}
	a.DurationS = round3(elapsed.Seconds())
	a.Allocations = count.Load()
	a.Failures = failures.Load()
	a.AllocsPerS = round2(float64(a.Allocations) / elapsed.Seconds())
	if v, ok := firstFail.Load().(string); ok {
		a.FirstFailure = v
	}
	var all []float64
	for _, ls := range lat {
		for _, d := range ls {
			all = append(all, float64(d.Nanoseconds())/1e3)
		}
	}
	slices.Sort(all)
	a.AllocP50Us, a.AllocP99Us = round1(percentile(all, 50)), round1(percentile(all, 99))
	if a.Allocations == 0 {
		a.Error = "no allocation succeeded: " + a.FirstFailure
	}
	l.log.Info("controller allocations done", "callers", a.Callers, "releases", a.Releases, "allocs_per_s", a.AllocsPerS, "p50_us", a.AllocP50Us, "controller_cpu_us_per_alloc", a.ControllerCPUUsPerAlloc, "failures", a.Failures)
	return a
}
