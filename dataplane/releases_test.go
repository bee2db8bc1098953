package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"
)

// fakeReleaser records the batches a releaseQueue sends and fails them
// while down.
type fakeReleaser struct {
	mu       sync.Mutex
	down     bool
	refuse   error // a definite refusal, returned while set
	batches  [][]ReleaseRequest
	attempts int
	leases   map[string]netip.Addr // what resolve answers; sessions not in it hold none
	resolved []string
	gate     chan struct{} // when set, each send waits for a value...
	entered  chan int      // ... after saying how many it carries
}

func (f *fakeReleaser) send(ctx context.Context, rs []ReleaseRequest) (int, error) {
	if f.gate != nil {
		f.entered <- len(rs)
		select {
		case <-f.gate:
		case <-ctx.Done():
			return 0, fmt.Errorf("release: %w: %v", ErrControllerUnavailable, ctx.Err())
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts++
	if f.down {
		return 0, fmt.Errorf("release: %w: connection refused", ErrControllerUnavailable)
	}
	if f.refuse != nil {
		return 0, f.refuse
	}
	f.batches = append(f.batches, append([]ReleaseRequest(nil), rs...))
	return len(rs), nil
}

func (f *fakeReleaser) resolve(_ context.Context, session string, _ netip.AddrPort) (netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return netip.Addr{}, fmt.Errorf("allocate: %w: connection refused", ErrControllerUnavailable)
	}
	f.resolved = append(f.resolved, session)
	a, ok := f.leases[session]
	if !ok {
		return netip.Addr{}, fmt.Errorf("allocate: %w", ErrPoolExhausted)
	}
	return a, nil
}

func (f *fakeReleaser) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

// sent returns the releases delivered, in order, and the batch count.
func (f *fakeReleaser) sent() ([]ReleaseRequest, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var all []ReleaseRequest
	for _, b := range f.batches {
		all = append(all, b...)
	}
	return all, len(f.batches)
}

func newTestQueue(t *testing.T, f *fakeReleaser, maxBatch ...int) (*releaseQueue, func()) {
	t.Helper()
	q := newReleaseQueue(slog.New(slog.NewTextHandler(io.Discard, nil)), time.Second, f.send, f.resolve)
	q.minWait, q.maxWait = time.Millisecond, 10*time.Millisecond
	if len(maxBatch) > 0 {
		q.maxBatch = maxBatch[0]
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); q.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return q, stop
}

func rel(i int) ReleaseRequest {
	return ReleaseRequest{SessionID: "s" + strconv.Itoa(i), Addr: netip.AddrFrom4([4]byte{13, 8, byte(i >> 8), byte(i)}), Reason: "test"}
}

func waitIdle(t *testing.T, q *releaseQueue) {
	t.Helper()
	select {
	case <-q.Idle():
	case <-time.After(10 * time.Second):
		t.Fatalf("queue not idle: %d waiting", q.Len())
	}
}

// TestReleaseQueueBatchesInOrder: releases made while one batch is in
// flight go together in the next, and everything arrives in the order made.
func TestReleaseQueueBatchesInOrder(t *testing.T) {
	f := &fakeReleaser{gate: make(chan struct{}), entered: make(chan int)}
	q, _ := newTestQueue(t, f, 100)
	q.Add(rel(0)) // goes out alone and waits at the gate
	if n := <-f.entered; n != 1 {
		t.Fatalf("first batch of %d, want 1", n)
	}
	for i := 1; i <= 250; i++ {
		q.Add(rel(i))
	}
	f.gate <- struct{}{}
	for _, want := range []int{100, 100, 50} {
		if n := <-f.entered; n != want {
			t.Fatalf("batch of %d, want %d", n, want)
		}
		f.gate <- struct{}{}
	}
	waitIdle(t, q)
	got, batches := f.sent()
	if batches != 4 {
		t.Errorf("%d batches, want 4 (one, then the 250 that waited, 100 at most a batch)", batches)
	}
	if len(got) != 251 {
		t.Fatalf("%d releases delivered, want 251", len(got))
	}
	for i, r := range got {
		if r != rel(i) {
			t.Fatalf("release %d is %v, want %v: order lost", i, r, rel(i))
		}
	}
	if st := q.Stats(); st.Delivered != 251 || st.Freed != 251 || st.Queued != 251 {
		t.Errorf("stats %+v", st)
	}
}

// TestReleaseQueueRetriesUntilDelivered: while the controller is down the
// releases wait, in order; once it is back they all arrive, once each.
func TestReleaseQueueRetriesUntilDelivered(t *testing.T) {
	f := &fakeReleaser{}
	f.setDown(true)
	q, _ := newTestQueue(t, f)
	for i := range 500 {
		q.Add(rel(i))
	}
	time.Sleep(100 * time.Millisecond) // many failed attempts
	if q.Len() != 500 {
		t.Fatalf("%d waiting while down, want 500", q.Len())
	}
	f.mu.Lock()
	failedAttempts := f.attempts
	f.mu.Unlock()
	if failedAttempts < 3 {
		t.Fatalf("%d attempts while down, want retries", failedAttempts)
	}
	f.setDown(false)
	waitIdle(t, q)
	got, _ := f.sent()
	if len(got) != 500 {
		t.Fatalf("%d delivered, want 500", len(got))
	}
	for i, r := range got {
		if r != rel(i) {
			t.Fatalf("release %d is %v, want %v", i, r, rel(i))
		}
	}
	if st := q.Stats(); st.Failures == 0 || st.Delivered != 500 {
		t.Errorf("stats %+v", st)
	}
}

// TestReleaseQueueUnresolved: an allocation of unknown outcome is resolved
// in its place in the order: its release (when it leased) goes out after
// what was queued before it and before what came after.
func TestReleaseQueueUnresolved(t *testing.T) {
	f := &fakeReleaser{leases: map[string]netip.Addr{"lost": netip.MustParseAddr("13.8.0.77")}}
	f.setDown(true)
	q, _ := newTestQueue(t, f)
	q.Add(rel(1))
	q.AddUnresolved("lost", netip.MustParseAddrPort("[fd00::2]:4000"), "allocation given up")
	q.AddUnresolved("never", netip.MustParseAddrPort("[fd00::3]:4000"), "allocation given up")
	q.Add(rel(2))
	time.Sleep(20 * time.Millisecond)
	f.setDown(false)
	waitIdle(t, q)
	got, _ := f.sent()
	want := []ReleaseRequest{rel(1), {SessionID: "lost", Addr: netip.MustParseAddr("13.8.0.77"), Reason: "allocation given up"}, rel(2)}
	if len(got) != len(want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delivered %v, want %v", got, want)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.resolved) != 2 {
		t.Errorf("resolved %v, want each unresolved entry asked once", f.resolved)
	}
	if st := q.Stats(); st.Resolved != 1 || st.Delivered != 4 {
		t.Errorf("stats %+v", st)
	}
}

// TestReleaseQueueDropsARefusedBatch: a batch the controller refuses for
// good (not "unavailable") is tried a few times and dropped, so that the
// releases behind it go on.
func TestReleaseQueueDropsARefusedBatch(t *testing.T) {
	f := &fakeReleaser{refuse: errors.New("release: controller said InvalidArgument: bad")}
	q, _ := newTestQueue(t, f)
	q.Add(rel(1))
	waitIdle(t, q)
	if st := q.Stats(); st.Dropped != 1 || st.Failures != maxRefusals {
		t.Fatalf("stats %+v, want 1 dropped after %d failures", st, maxRefusals)
	}
	f.mu.Lock()
	f.refuse = nil
	f.mu.Unlock()
	q.Add(rel(2))
	waitIdle(t, q)
	if got, _ := f.sent(); len(got) != 1 || got[0] != rel(2) {
		t.Fatalf("delivered %v, want only the later release", got)
	}
}

// TestReleaseQueueDrop: after a stop the queue is dropped, the batch in
// flight included; later releases are delivered as usual.
func TestReleaseQueueDrop(t *testing.T) {
	f := &fakeReleaser{}
	f.setDown(true)
	q, _ := newTestQueue(t, f)
	for i := range 10 {
		q.Add(rel(i))
	}
	time.Sleep(10 * time.Millisecond)
	if n := q.Drop(); n != 10 {
		t.Fatalf("dropped %d, want 10", n)
	}
	waitIdle(t, q)
	f.setDown(false)
	q.Add(rel(99))
	waitIdle(t, q)
	if got, _ := f.sent(); len(got) != 1 || got[0] != rel(99) {
		t.Fatalf("delivered %v, want only the release made after the drop", got)
	}
}
