package controller

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fourover6/fourover6/controlplane/pool"
)

// AllocateFailure is why an allocation failed; the core assigns it where
// the error arises (see failureOf).
type AllocateFailure uint8

// Failure reasons. Their names (String) are the values of the reason label
// of fourover6_controller_allocation_failures_total: a contract.
const (
	FailExhausted     AllocateFailure = iota // no free address
	FailInvalid                              // a bad request (empty id, wrong address family...)
	FailNotLeader                            // this controller is a standby
	FailUnavailable                          // the lease store could not be reached
	FailCanceled                             // the caller went away or its deadline passed
	FailOther                                // anything else
	FailLimit                                // the client is at its lease limit (per address or prefix)
	FailNotRegistered                        // the calling instance is not the registered one
	NumAllocateFailures
)

var failureNames = [NumAllocateFailures]string{
	FailExhausted:     "exhausted",
	FailInvalid:       "invalid",
	FailNotLeader:     "not_leader",
	FailUnavailable:   "unavailable",
	FailCanceled:      "canceled",
	FailOther:         "other",
	FailLimit:         "limit",
	FailNotRegistered: "not_registered",
}

func (f AllocateFailure) String() string {
	if f < NumAllocateFailures {
		return failureNames[f]
	}
	return failureNames[FailOther]
}

// failureOf classifies an error of allocate.
func failureOf(err error) AllocateFailure {
	switch {
	case errors.Is(err, ErrInvalidArgument):
		return FailInvalid
	case errors.Is(err, ErrNotLeader):
		return FailNotLeader
	case errors.Is(err, pool.ErrLimit):
		return FailLimit
	case errors.Is(err, ErrNotRegistered):
		return FailNotRegistered
	case errors.Is(err, ErrUnavailable):
		return FailUnavailable
	case errors.Is(err, pool.ErrExhausted):
		return FailExhausted
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return FailCanceled
	}
	return FailOther
}

// ActivityCounts is a snapshot of the controller's counters since it
// started (across leadership terms).
type ActivityCounts struct {
	Allocated uint64 // fresh leases
	// The fresh leases by how their address was chosen: a returning
	// client's remembered address (sticky), a client's reservation, or
	// a new address for the client (the least recently used free one).
	AllocatedSticky   uint64
	AllocatedReserved uint64
	AllocatedNew      uint64
	Repeated          uint64 // allocation retries answered with the session's lease
	AllocateFailed    [NumAllocateFailures]uint64
	Released          uint64 // leases given back by their data plane
	ReleaseIgnored    uint64 // releases of leases the session did not hold
	Reclaimed         uint64 // leases the controller freed on its own
	// LimitRefused counts allocations refused by a lease limit, by kind:
	// [0] per client address, [1] per client prefix.
	LimitRefused [2]uint64
	IDConflicts  uint64 // registrations refused: another instance of the id is live
	Stops        uint64 // data planes that stopped on purpose (StopDataplane)
	Removals     uint64 // data planes removed by an operator
	// Stalls counts the times the liveness clock left time out: the
	// controller did not run (stopped, paused) or its clock jumped.
	Stalls uint64
	// Traffic is the sum of what the data planes' session reports showed
	// moving (each report's growth over the previous one).
	Traffic Traffic
}

// activityCounters are the atomics behind ActivityCounts.
type activityCounters struct {
	allocated, repeated          atomic.Uint64
	sticky, reservedGrants       atomic.Uint64
	newGrants                    atomic.Uint64
	failed                       [NumAllocateFailures]atomic.Uint64
	released, ignored, reclaimed atomic.Uint64
	limitIP, limitPrefix         atomic.Uint64
	idConflicts, stops, removals atomic.Uint64
	stalls                       atomic.Uint64
	bytesFrom, pktsFrom          atomic.Uint64
	bytesTo, pktsTo              atomic.Uint64
}

func (c *activityCounters) allocateFailed(f AllocateFailure) {
	if f >= NumAllocateFailures {
		f = FailOther
	}
	c.failed[f].Add(1)
}

func (c *activityCounters) traffic(t Traffic) {
	c.bytesFrom.Add(t.BytesFromClient)
	c.pktsFrom.Add(t.PacketsFromClient)
	c.bytesTo.Add(t.BytesToClient)
	c.pktsTo.Add(t.PacketsToClient)
}

func (c *activityCounters) snapshot() ActivityCounts {
	s := ActivityCounts{
		Allocated: c.allocated.Load(), Repeated: c.repeated.Load(),
		AllocatedSticky: c.sticky.Load(), AllocatedReserved: c.reservedGrants.Load(), AllocatedNew: c.newGrants.Load(),
		Released: c.released.Load(), ReleaseIgnored: c.ignored.Load(), Reclaimed: c.reclaimed.Load(),
		LimitRefused: [2]uint64{c.limitIP.Load(), c.limitPrefix.Load()},
		IDConflicts:  c.idConflicts.Load(), Stops: c.stops.Load(), Removals: c.removals.Load(),
		Stalls: c.stalls.Load(),
		Traffic: Traffic{
			BytesFromClient: c.bytesFrom.Load(), PacketsFromClient: c.pktsFrom.Load(),
			BytesToClient: c.bytesTo.Load(), PacketsToClient: c.pktsTo.Load(),
		},
	}
	for f := range NumAllocateFailures {
		s.AllocateFailed[f] = c.failed[f].Load()
	}
	return s
}

// Counts returns the controller's counters. It works on standbys too.
func (c *Controller) Counts() ActivityCounts { return c.counters.snapshot() }

// limitLogEvery throttles the log line of allocations refused by a lease
// limit, per kind.
const limitLogEvery = 10 * time.Second

// throttles are the limit refusals' log throttles.
type throttles struct {
	mu         sync.Mutex
	ip, prefix throttle
}

// limitRefused counts and (throttled) logs an allocation a limit refused.
func (c *Controller) limitRefused(r AllocateRequest, le *pool.LimitError) {
	th := &c.limitLog.ip
	if le.Kind == pool.LimitPrefix {
		c.counters.limitPrefix.Add(1)
		th = &c.limitLog.prefix
	} else {
		c.counters.limitIP.Add(1)
	}
	c.limitLog.mu.Lock()
	logNow, suppressed := th.note(c.now(), limitLogEvery)
	c.limitLog.mu.Unlock()
	if logNow {
		c.log.Warn("lease refused: the client is at its lease limit", "limit", le.Kind.String(), "max", le.Max,
			"counted", le.Client.String(), "client", netip.AddrPortFrom(r.ClientIPv6, r.ClientPort),
			"dataplane", r.DataplaneID, "session", r.SessionID, "refused_since_last_log", suppressed)
	}
}
