package main

import (
	"math/rand/v2"
	"time"
)

// backoff yields reconnect delays: min, 2·min, 4·min, ... up to max, each
// stretched by a random 0..50% (capped at max) so that clients cut off
// together by a server restart do not all come back in the same instant.
// Every delay lies in [min, max].
type backoff struct {
	min, max time.Duration
	n        int               // delays handed out since the last reset
	rand     func(int64) int64 // uniform in [0, n); rand.Int64N by default
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, rand: rand.Int64N}
}

// base is the delay before jitter for attempt n.
func (b *backoff) base(n int) time.Duration {
	d := b.min
	for range n {
		if d >= b.max/2 {
			return b.max
		}
		d *= 2
	}
	return min(d, b.max)
}

// next returns the delay before the next attempt and advances.
func (b *backoff) next() time.Duration {
	d := b.base(b.n)
	b.n++
	if j := d / 2; j > 0 {
		d += time.Duration(b.rand(int64(j) + 1))
	}
	return min(d, b.max)
}

// reset starts over from min, after a session that proved the server healthy.
func (b *backoff) reset() { b.n = 0 }
