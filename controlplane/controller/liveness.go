package controller

import (
	"sync"
	"time"
)

// liveClock is the controller's liveness clock: the clock every judgement
// of a data plane's silence is made on (DOWN, the grace period, leases a
// complete report stopped listing). It follows the wall clock, but the
// reconcile loop advances it by at most step per tick, so time during
// which the controller itself did not run (SIGSTOP, a VM paused, a slow
// restart, a wall clock jump) counts as one tick: a controller that
// resumes gives every data plane the time it would have had, instead of
// blaming them for its own silence. A restarted controller (or a new
// leader) starts a term in which every data plane is heard from at its
// start, which is the same rule applied to a controller that was down.
//
// It is not a wall clock: its readings are compared only with each other.
type liveClock struct {
	mu   sync.Mutex
	wall time.Time // wall time of the last advance
	live time.Time // the clock at that moment
	step time.Duration
}

func newLiveClock(wall time.Time, step time.Duration) *liveClock {
	return &liveClock{wall: wall, live: wall, step: step}
}

// at reads the clock at wall time w, between two advances: the last
// advance's reading plus the wall time since, at most step (and never
// less than the last reading).
func (k *liveClock) at(w time.Time) time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.atLocked(w)
}

func (k *liveClock) atLocked(w time.Time) time.Time {
	d := w.Sub(k.wall)
	return k.live.Add(min(max(d, 0), k.step))
}

// advance moves the clock to its reading at w and returns that reading and
// how much wall time it left out (0 unless the controller stalled or the
// wall clock jumped since the last advance).
func (k *liveClock) advance(w time.Time) (live time.Time, skipped time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	live = k.atLocked(w)
	if d := w.Sub(k.wall); d > k.step {
		skipped = d - k.step
	}
	k.live, k.wall = live, w
	return live, skipped
}
