package dataplane

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// releaseQueue delivers the data plane's releases to the controller: in
// the order they were made, in batches (one ReleaseBatch call takes all
// that waited, up to maxBatch), each batch retried until the controller
// took it, however long it is away. A release is queued only after the
// allocation it undoes has answered, so it never overtakes it.
//
// An allocation that was given up without an answer (the controller did
// not answer in time, or the session closed meanwhile) may still have
// leased an address that nobody here knows. It is queued as an unresolved
// entry: when its turn comes, the queue asks for the session's lease again
// (allocation is idempotent per session: the controller answers with the
// lease it made, or makes one) and releases that. So every lease the
// controller made for a session of this instance ends with a release.
//
// Invariants: entries leave the queue only from the front, only after the
// controller acknowledged them (or refused them for good); the worker is
// the only one that removes or rewrites entries, producers only append.
type releaseQueue struct {
	send    func(ctx context.Context, rs []ReleaseRequest) (int, error)
	resolve func(ctx context.Context, sessionID string, client netip.AddrPort) (netip.Addr, error)
	log     *slog.Logger

	maxBatch int
	timeout  time.Duration // per attempt
	minWait  time.Duration // backoff after a failed attempt, doubling...
	maxWait  time.Duration // ... up to this

	mu      sync.Mutex
	pending []queued
	gen     uint64 // counts Drops: a batch taken before one is gone
	wake    chan struct{}
	idle    chan struct{} // closed and replaced when pending empties; nil while empty
	stats   releaseStats
}

type queued struct {
	ReleaseRequest
	client     netip.AddrPort
	unresolved bool // an allocation of unknown outcome: Addr is not known yet
}

// releaseStats counts what the queue did.
type releaseStats struct {
	Queued    uint64 // releases and unresolved allocations queued
	Delivered uint64 // acknowledged by the controller
	Freed     uint64 // ... of which freed an address
	Resolved  uint64 // unresolved allocations that turned out to hold a lease
	Failures  uint64 // failed attempts
	Dropped   uint64 // refused by the controller for good
}

// maxRefusals is how often a batch the controller refuses (with an answer
// other than "unavailable") is tried before it is dropped: a batch the
// controller can never take must not hold up every later release.
const maxRefusals = 3

func newReleaseQueue(log *slog.Logger, timeout time.Duration,
	send func(context.Context, []ReleaseRequest) (int, error),
	resolve func(context.Context, string, netip.AddrPort) (netip.Addr, error)) *releaseQueue {
	return &releaseQueue{
		send: send, resolve: resolve, log: log,
		maxBatch: 1000, timeout: timeout,
		minWait: 50 * time.Millisecond, maxWait: time.Second,
		wake: make(chan struct{}, 1),
	}
}

// Add queues a release.
func (q *releaseQueue) Add(r ReleaseRequest) { q.add(queued{ReleaseRequest: r}) }

// AddUnresolved queues the release of whatever lease the session may have
// got from an allocation that ended without an answer.
func (q *releaseQueue) AddUnresolved(sessionID string, client netip.AddrPort, reason string) {
	q.add(queued{ReleaseRequest: ReleaseRequest{SessionID: sessionID, Reason: reason}, client: client, unresolved: true})
}

func (q *releaseQueue) add(e queued) {
	q.mu.Lock()
	q.pending = append(q.pending, e)
	q.stats.Queued++
	if q.idle == nil {
		q.idle = make(chan struct{})
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Len returns how many entries wait (the batch in flight included).
func (q *releaseQueue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

// Stats returns the counters.
func (q *releaseQueue) Stats() releaseStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stats
}

// Idle returns a channel closed once nothing waits (closed already when
// nothing does).
func (q *releaseQueue) Idle() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.idle == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return q.idle
}

// Drop empties the queue and returns how many entries it held; the batch
// in flight, if any, is dropped when its attempt ends. For a data plane
// that stopped: the controller released all its leases at once.
func (q *releaseQueue) Drop() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := len(q.pending)
	q.gen++
	q.pending = nil
	if q.idle != nil {
		close(q.idle)
		q.idle = nil
	}
	q.stats.Dropped += uint64(n)
	return n
}

// Run delivers releases until ctx ends.
func (q *releaseQueue) Run(ctx context.Context) {
	wait := q.minWait
	var failures, refusals int
	var lastLog time.Time
	for {
		batch, gen := q.front()
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-q.wake:
				continue
			}
		}
		err := q.deliver(ctx, gen, batch)
		if ctx.Err() != nil {
			q.finish(gen, 0)
			return
		}
		if err == nil {
			if failures > 0 {
				q.log.Info("releases reach the controller again", "failed_attempts", failures, "delivered", len(batch))
			}
			q.finish(gen, len(batch))
			failures, refusals, wait = 0, 0, q.minWait
			continue
		}
		failures++
		q.mu.Lock()
		q.stats.Failures++
		q.mu.Unlock()
		if !errors.Is(err, ErrControllerUnavailable) && !errors.Is(err, ErrNotRegistered) {
			if refusals++; refusals >= maxRefusals {
				q.log.Error("controller refuses a batch of releases; dropping it (the controller frees those leases when no report lists them)",
					"releases", len(batch), "attempts", refusals, "err", err)
				q.mu.Lock()
				q.stats.Dropped += uint64(len(batch))
				q.mu.Unlock()
				q.finish(gen, len(batch))
				failures, refusals, wait = 0, 0, q.minWait
				continue
			}
		}
		q.finish(gen, 0)
		if failures == 1 || time.Since(lastLog) >= 10*time.Second {
			q.log.Warn("releases not delivered to the controller; retrying until they are",
				"waiting", q.Len(), "failed_attempts", failures, "retry_in", wait, "err", err)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, q.maxWait)
	}
}

// front returns a copy of the first entries and the queue's generation.
func (q *releaseQueue) front() ([]queued, uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(len(q.pending), q.maxBatch)
	if n == 0 {
		return nil, q.gen
	}
	return append([]queued(nil), q.pending[:n]...), q.gen
}

// finish removes the first n entries (the batch delivered), or none, unless
// the queue was dropped since the batch was taken.
func (q *releaseQueue) finish(gen uint64, n int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if gen != q.gen {
		return
	}
	q.pending = q.pending[:copy(q.pending, q.pending[n:])]
	clear(q.pending[len(q.pending):cap(q.pending)])
	if len(q.pending) == 0 {
		if cap(q.pending) > 4096 {
			q.pending = nil // a long outage's queue is not kept
		}
		if q.idle != nil {
			close(q.idle)
			q.idle = nil
		}
	}
}

// deliver resolves the batch's unresolved entries, in order, then sends
// its releases in one call.
func (q *releaseQueue) deliver(ctx context.Context, gen uint64, batch []queued) error {
	rs := make([]ReleaseRequest, 0, len(batch))
	for i := range batch {
		e := &batch[i]
		if e.unresolved {
			addr, err := q.resolveOne(ctx, e)
			if err != nil {
				return err
			}
			q.mu.Lock()
			if gen == q.gen {
				// Resolved for good: a retry of this batch does not ask again.
				q.pending[i].unresolved, q.pending[i].Addr = false, addr
			}
			q.mu.Unlock()
			e.unresolved, e.Addr = false, addr
		}
		if e.Addr.IsValid() {
			rs = append(rs, e.ReleaseRequest)
		}
	}
	if len(rs) == 0 {
		q.count(len(batch), 0)
		return nil
	}
	actx, cancel := context.WithTimeout(ctx, q.timeout)
	defer cancel()
	freed, err := q.send(actx, rs)
	if err == nil {
		q.count(len(batch), freed)
	}
	return err
}

// resolveOne learns the lease an unresolved allocation made, if any: the
// zero Addr when it made none.
func (q *releaseQueue) resolveOne(ctx context.Context, e *queued) (netip.Addr, error) {
	actx, cancel := context.WithTimeout(ctx, q.timeout)
	defer cancel()
	addr, err := q.resolve(actx, e.SessionID, e.client)
	switch {
	case err == nil:
		q.mu.Lock()
		q.stats.Resolved++
		q.mu.Unlock()
		return addr, nil
	case errors.Is(err, ErrControllerUnavailable), errors.Is(err, ErrNotRegistered):
		return netip.Addr{}, err
	}
	// A definite refusal (pool exhausted, lease limit, ...): the session
	// holds no lease.
	return netip.Addr{}, nil
}

func (q *releaseQueue) count(delivered, freed int) {
	q.mu.Lock()
	q.stats.Delivered += uint64(delivered)
	q.stats.Freed += uint64(freed)
	q.mu.Unlock()
}

// export returns what waits, for a successor process (the queue's Run has
// stopped).
func (q *releaseQueue) export() []PendingRelease {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]PendingRelease, 0, len(q.pending))
	for _, e := range q.pending {
		out = append(out, PendingRelease{ReleaseRequest: e.ReleaseRequest, Client: e.client, Unresolved: e.unresolved})
	}
	return out
}

// load queues a predecessor's pending releases, before anything else.
func (q *releaseQueue) load(rs []PendingRelease) {
	for _, r := range rs {
		q.add(queued{ReleaseRequest: r.ReleaseRequest, client: r.Client, unresolved: r.Unresolved})
	}
}
