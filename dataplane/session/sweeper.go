package session

import (
	"container/heap"
	"context"
	"math"
	"sync"
	"time"
)

// Sweeper runs the keepalive rules (Session.Tick) of many sessions, each
// when it is due: a min-heap of sessions ordered by the time Tick asked to
// be called next, and one goroutine (Run) that sleeps until the earliest.
// A 104 therefore goes out at its due time, give or take the timer's
// wake-up latency, not at the first tick of a periodic sweep after it; and
// an idle session costs one heap entry and one wake-up per interval rather
// than a visit on every sweep. (A heap and not a timing wheel: exact due
// times with no granularity to choose, O(log n) per 104, and 10,000
// sessions at a 20 s interval are 500 heap operations a second.)
//
// Silence is checked lazily: a message from the client moves lastHeard
// without touching the heap; when the old deadline comes, Tick sees the
// newer lastHeard and asks to be called at its deadline instead.
//
// Invariants (under mu): a session is in the heap at most once, at index
// sched.idx (-1 when not in it); a session being ticked (popped) is not in
// the heap and goes back after its Tick unless it was removed meanwhile;
// a removed (gone) session never goes back.
type Sweeper struct {
	now func() int64

	mu   sync.Mutex
	h    sweepHeap
	wake chan struct{}
}

// schedEntry is a session's place in its Sweeper.
type schedEntry struct {
	due    int64 // cfg.Now() when Tick is due
	idx    int   // index in the heap, -1 when not in it
	popped bool  // being ticked
	gone   bool  // removed: never scheduled again
}

// NewSweeper returns a sweeper on the clock now (Config.Now).
func NewSweeper(now func() int64) *Sweeper {
	return &Sweeper{now: now, wake: make(chan struct{}, 1)}
}

// Len returns how many sessions are scheduled.
func (w *Sweeper) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.h)
}

// schedule makes s due at t at the latest.
func (w *Sweeper) schedule(s *Session, t int64) {
	w.mu.Lock()
	e := &s.sched
	head := false
	switch {
	case e.gone:
	case e.idx >= 0:
		if t < e.due {
			e.due = t
			heap.Fix(&w.h, e.idx)
			head = e.idx == 0
		}
	case e.popped:
		e.due = min(e.due, t) // taken into account when it goes back
	default:
		e.due = t
		heap.Push(&w.h, s)
		head = e.idx == 0
	}
	w.mu.Unlock()
	if head {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// remove takes s out for good.
func (w *Sweeper) remove(s *Session) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s.sched.gone = true
	if s.sched.idx >= 0 {
		heap.Remove(&w.h, s.sched.idx)
	}
}

// Run ticks sessions as they fall due, until ctx ends.
func (w *Sweeper) Run(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	var due []*Session
	for {
		now := w.now()
		due = w.popDue(now, due[:0])
		for _, s := range due {
			w.reschedule(s, s.Tick(now))
		}
		clear(due)
		wait := w.untilNext()
		if wait <= 0 {
			continue
		}
		t.Reset(wait) // no stale fire to drain: Go 1.23 timers
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.wake:
		}
	}
}

// popDue takes every session due at now out of the heap.
func (w *Sweeper) popDue(now int64, dst []*Session) []*Session {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.h) > 0 && w.h[0].sched.due <= now {
		s := heap.Pop(&w.h).(*Session)
		s.sched.popped, s.sched.due = true, math.MaxInt64
		dst = append(dst, s)
	}
	return dst
}

// reschedule puts a ticked session back, due at next (0: not at all) or
// earlier if schedule asked for that while it was being ticked.
func (w *Sweeper) reschedule(s *Session, next int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	e := &s.sched
	e.popped = false
	due := e.due
	if next > 0 {
		due = min(due, next)
	}
	if e.gone || due == math.MaxInt64 {
		e.due = 0
		return
	}
	e.due = due
	heap.Push(&w.h, s)
}

// untilNext returns how long until the earliest session is due (an hour
// when none is scheduled: schedule wakes Run for a new earliest).
func (w *Sweeper) untilNext() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.h) == 0 {
		return time.Hour
	}
	return time.Duration(w.h[0].sched.due - w.now())
}

// sweepHeap is a min-heap of sessions by due time (container/heap).
type sweepHeap []*Session

func (h sweepHeap) Len() int           { return len(h) }
func (h sweepHeap) Less(i, j int) bool { return h[i].sched.due < h[j].sched.due }
func (h sweepHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].sched.idx, h[j].sched.idx = i, j
}
func (h *sweepHeap) Push(x any) {
	s := x.(*Session)
	s.sched.idx = len(*h)
	*h = append(*h, s)
}
func (h *sweepHeap) Pop() any {
	old := *h
	n := len(old)
	s := old[n-1]
	old[n-1] = nil
	s.sched.idx = -1
	*h = old[:n-1]
	return s
}
