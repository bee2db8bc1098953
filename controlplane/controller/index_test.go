package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
	"github.com/fourover6/fourover6/controlplane/store/etcdtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	etcdtest.StopShared()
	os.Exit(code)
}

// TestLearnsOtherWritersLeases: two controllers that both believe they
// lead share one store. The second one's index does not know the first
// one's lease: its claim fails with ErrTaken, it learns the holder from
// the store and chooses again; a session the store knows gets its lease.
func TestLearnsOtherWritersLeases(t *testing.T) {
	stores := map[string]func(t *testing.T) store.Store{
		"memory": func(*testing.T) store.Store { return store.NewMemory() },
		"etcd": func(t *testing.T) store.Store {
			ep, prefix := etcdtest.Shared(t)
			st, err := store.OpenEtcd(context.Background(), store.EtcdConfig{Endpoints: []string{ep}, Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			st := open(t)
			start := func() (*Controller, *syncBuffer) {
				logs := &syncBuffer{}
				c, err := New(Config{
					Pool:   pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/24")},
					Store:  st,
					Logger: slog.New(slog.NewJSONHandler(logs, nil)),
				})
				if err != nil {
					t.Fatal(err)
				}
				return c, logs
			}
			c1, _ := start()
			c2, logs2 := start() // loaded before c1 leased anything
			l1, err := c1.Allocate(ctx, "dp1", "s1", client1, 1)
			if err != nil || l1.Addr != ip("13.8.0.2") {
				t.Fatalf("c1: %+v %v", l1, err)
			}
			l2, err := c2.Allocate(ctx, "dp2", "t1", ip("2001:db8::2"), 2)
			if err != nil || l2.Addr != ip("13.8.0.3") {
				t.Fatalf("c2 got %+v %v, want 13.8.0.3", l2, err)
			}
			if n := len(logs2.records(t, "the store holds a lease this controller did not know; learning it")); n != 1 {
				t.Fatalf("%d learning log lines", n)
			}
			if row, err := c2.Client(ctx, l1.Addr); err != nil || row.DataplaneID != "dp1" || row.SessionID != "s1" {
				t.Fatalf("c2 did not learn the holder: %+v %v", row, err)
			}
			// A session the store holds a lease for gets that lease, not a
			// new one, from the controller that did not know it.
			l3, err := c1.Allocate(ctx, "dp2", "t1", ip("2001:db8::2"), 2)
			if err != nil || l3.Addr != l2.Addr || !l3.LeasedAt.Equal(l2.LeasedAt) {
				t.Fatalf("c1 for c2's session: %+v %v, want %+v", l3, err, l2)
			}
			if n := c1.Counts(); n.Allocated != 1 || n.Repeated != 1 {
				t.Fatalf("c1 counts %+v", n)
			}
			if err := c1.term.idx.Adopt(store.Lease{Addr: l2.Addr, Owner: store.Owner{Dataplane: "dp2", Session: "t1"}}, time.Now(), time.Now()); err != nil {
				t.Fatalf("c1 did not index the store's lease: %v", err)
			}
		})
	}
}

// gatedStore holds every Claim until its gate opens.
type gatedStore struct {
	store.Store
	claims atomic.Int32
	mu     sync.Mutex
	gate   chan struct{}
}

func (g *gatedStore) Claim(ctx context.Context, l store.Lease) (store.Lease, bool, error) {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	g.claims.Add(1)
	<-gate
	return g.Store.Claim(ctx, l)
}

// hold installs a closed-later gate and returns its opener.
func (g *gatedStore) hold() func() {
	ch := make(chan struct{})
	g.mu.Lock()
	g.gate = ch
	g.mu.Unlock()
	return func() { close(ch) }
}

func (g *gatedStore) waitClaims(n int32) {
	for g.claims.Load() < n {
		time.Sleep(time.Millisecond)
	}
}

// TestOneStoreCallPerSession: while a session's claim is at the store, its
// retries and its release wait for it (and may give up with their
// context); no second claim is made.
func TestOneStoreCallPerSession(t *testing.T) {
	gs := &gatedStore{Store: store.NewMemory()}
	open := gs.hold()
	c, err := New(Config{Pool: pool.Config{Prefix: pool.DefaultPrefix}, Store: gs})
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	leases := make(chan Lease, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			l, err := c.Allocate(ctx, "dp1", "s1", client1, 1)
			if err != nil {
				t.Error(err)
			}
			leases <- l
		})
	}
	gs.waitClaims(1)
	// A retry that gives up while it waits.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := c.Allocate(short, "dp1", "s1", client1, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting retry: %v", err)
	}
	open()
	wg.Wait()
	close(leases)
	first := <-leases
	for l := range leases {
		if l != first {
			t.Fatalf("leases differ: %+v, %+v", l, first)
		}
	}
	if got := gs.claims.Load(); got != 1 {
		t.Fatalf("%d claims for one session", got)
	}

	// A release of an address being claimed waits for the claim, then
	// finds it held and releases it.
	open = gs.hold()
	allocated := make(chan Lease, 1)
	go func() {
		l, err := c.Allocate(ctx, "dp1", "s2", client1, 1)
		if err != nil {
			t.Error(err)
		}
		allocated <- l
	}()
	gs.waitClaims(2)
	released := make(chan bool, 1)
	go func() {
		ok, err := c.Release(ctx, "dp1", "s2", ip("13.8.0.3"), "eof")
		if err != nil {
			t.Error(err)
		}
		released <- ok
	}()
	select {
	case <-released:
		t.Fatal("release did not wait for the claim")
	case <-time.After(20 * time.Millisecond):
	}
	open()
	if l := <-allocated; l.Addr != ip("13.8.0.3") {
		t.Fatalf("s2 got %s", l.Addr)
	}
	if ok := <-released; !ok {
		t.Fatal("release after the claim did not release")
	}
	cnt := c.Counts()
	if cnt.Allocated != 2 || cnt.Repeated != n-1 || cnt.AllocateFailed[FailCanceled] != 1 || cnt.Released != 1 {
		t.Fatalf("counts %+v", cnt)
	}
}

func TestFailureReasons(t *testing.T) {
	for _, c := range []struct {
		err  error
		want AllocateFailure
	}{
		{&pool.ExhaustedError{Size: 1, Leased: 1}, FailExhausted},
		{fmt.Errorf("allocate: %w", pool.ErrExhausted), FailExhausted},
		{context.Canceled, FailCanceled},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), FailCanceled},
		{invalid("session id is empty"), FailInvalid},
		{unavailable("store down"), FailUnavailable},
		{&NotLeaderError{LeaderID: "c2"}, FailNotLeader},
		{errors.New("boom"), FailOther},
	} {
		if got := failureOf(c.err); got != c.want {
			t.Errorf("failureOf(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	names := map[string]bool{}
	for f := range NumAllocateFailures {
		names[f.String()] = true
	}
	if len(names) != int(NumAllocateFailures) || AllocateFailure(200).String() != "other" {
		t.Fatalf("reason names %v", names)
	}
	// A standby counts not_leader.
	c, err := New(Config{Pool: pool.Config{Prefix: pool.DefaultPrefix}, Standby: true})
	if err != nil {
		t.Fatal(err)
	}
	c.Allocate(ctx, "dp", "s", client1, 1)
	if n := c.Counts(); n.AllocateFailed[FailNotLeader] != 1 || n.Allocated != 0 {
		t.Fatalf("standby counts %+v", n)
	}
}

// TestReportTrafficCounted: only growth since a session's previous report
// is counted, and a lease rebuilt from the store does not count its past.
func TestReportTrafficCounted(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	a := w.alloc("dp1", "s1", client1)
	rep := func(b uint64) {
		if _, err := w.c.Report(ctx, "dp1", "i1", true, []SessionReport{{SessionID: "s1", Addr: a, Traffic: Traffic{BytesFromClient: b}}}); err != nil {
			t.Fatal(err)
		}
	}
	rep(100)
	rep(250)
	if got := w.c.Counts().Traffic.BytesFromClient; got != 250 {
		t.Fatalf("counted %d", got)
	}
	w.restart()
	rep(300) // baseline of the rebuilt lease
	rep(400)
	if got := w.c.Counts().Traffic.BytesFromClient; got != 100 {
		t.Fatalf("after restart counted %d, want 100", got)
	}
	if row, _ := w.c.Client(ctx, a); row.Traffic.BytesFromClient != 400 {
		t.Fatalf("row %+v", row)
	}
}

// panickyStore panics in Claim and Release while armed.
type panickyStore struct {
	store.Store
	armed atomic.Bool
}

func (p *panickyStore) Claim(ctx context.Context, l store.Lease) (store.Lease, bool, error) {
	if p.armed.Load() {
		panic("claim")
	}
	return p.Store.Claim(ctx, l)
}

func (p *panickyStore) Release(ctx context.Context, a netip.Addr, o store.Owner, at time.Time) (bool, error) {
	if p.armed.Load() {
		panic("release")
	}
	return p.Store.Release(ctx, a, o, at)
}

// TestStorePanicLeavesNothingInFlight: a store call that panics (the gRPC
// server recovers it) leaves no claim or release in flight: the session
// is not blocked afterwards and its lease is as the store has it.
func TestStorePanicLeavesNothingInFlight(t *testing.T) {
	ps := &panickyStore{Store: store.NewMemory()}
	c, err := New(Config{Pool: pool.Config{Prefix: pool.DefaultPrefix}, Store: ps})
	if err != nil {
		t.Fatal(err)
	}
	recovered := func(f func()) (r any) {
		defer func() { r = recover() }()
		f()
		return nil
	}
	ps.armed.Store(true)
	if r := recovered(func() { c.Allocate(ctx, "dp1", "s1", client1, 1) }); r == nil {
		t.Fatal("no panic")
	}
	ps.armed.Store(false)
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := c.Allocate(short, "dp1", "s1", client1, 1)
	if err != nil {
		t.Fatalf("after a panicking claim: %+v %v", l, err)
	}
	if c.Counts().Allocated != 1 || c.term.idx.Len() != 1 {
		t.Fatalf("counts %+v, %d leases", c.Counts(), c.term.idx.Len())
	}
	ps.armed.Store(true)
	if r := recovered(func() { c.Release(ctx, "dp1", "s1", l.Addr, "eof") }); r == nil {
		t.Fatal("no panic")
	}
	ps.armed.Store(false)
	if _, err := c.Client(ctx, l.Addr); err != nil {
		t.Fatalf("lease lost by a panicking release: %v", err)
	}
	if ok, err := c.Release(short, "dp1", "s1", l.Addr, "eof"); !ok || err != nil {
		t.Fatalf("release after a panicking one: %v %v", ok, err)
	}
}
