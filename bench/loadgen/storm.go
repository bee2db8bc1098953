package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// storm waits for the server to drop the n connections of the connect
// phase (the harness kills it) and brings each client back as soon as it
// notices, the way a fleet of lab clients returns after a server restart:
// the first attempt at once, then with exponential backoff and jitter. It
// emits storm_done with the moment each client had its 101 again, and
// returns the new connections (the caller closes them).
func storm(ctx context.Context, c config, log *slog.Logger, n int, st *stats, lost <-chan *client, emit func(event)) ([]*client, error) {
	log.Info("storm: waiting for the server to drop the connections", "n", n)
	var first *client
	select {
	case first = <-lost:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	log.Info("storm: first connection lost; reconnecting", "timeout", c.stormTimeout)
	sctx, cancel := context.WithTimeout(ctx, c.stormTimeout)
	defer cancel()

	var (
		mu       sync.Mutex
		back     []*client
		times    []int64
		failed   int
		firstErr error
		attempts atomic.Int64
		wg       sync.WaitGroup
	)
	comeBack := func(old *client) {
		wg.Go(func() {
			cl, err := reconnect(sctx, c, old.id, st, &attempts)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			times = append(times, time.Now().UnixNano())
			back = append(back, cl)
		})
	}
	comeBack(first)
	nlost := 1
wait:
	for nlost < n {
		select {
		case old := <-lost:
			comeBack(old)
			nlost++
		case <-sctx.Done():
			break wait
		}
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(times)
	e := event{Event: "storm_done", N: n, Connected: n, Lost: nlost, Reconnected: len(back),
		Failed: failed + n - nlost, ReconnectAttempts: attempts.Load(), ReconnectUnixNano: times}
	if firstErr != nil {
		e.FirstError = firstErr.Error()
	} else if nlost < n {
		e.FirstError = fmt.Sprintf("%d connections were never dropped by the server", n-nlost)
	}
	emit(e)
	log.Info("storm over", "lost", nlost, "reconnected", len(back), "failed", e.Failed, "attempts", e.ReconnectAttempts, "first_error", e.FirstError)
	return back, nil
}

// reconnect tries until ctx ends: one dial and one 100 per attempt, the
// first at once, then after -reconnect-min, doubling with 0-50% jitter up
// to -reconnect-max (the policy of 4over6-client, with shorter delays so
// the measurement is of the server, not of the clients' patience).
func reconnect(ctx context.Context, c config, id int, st *stats, attempts *atomic.Int64) (*client, error) {
	delay := c.reconnectMin
	for {
		attempts.Add(1)
		cl, err := connect(ctx, c, id, st, 1, nil)
		if err == nil {
			return cl, nil
		}
		d := min(delay+time.Duration(rand.Int64N(int64(delay/2)+1)), c.reconnectMax)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no 101 within -storm-timeout %s: last attempt: %w", c.stormTimeout, err)
		case <-time.After(d):
		}
		delay = min(2*delay, c.reconnectMax)
	}
}
