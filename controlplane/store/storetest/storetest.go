// Package storetest is the conformance suite every store.Store passes:
// bbolt, etcd and the in-memory store run the same tests.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/store"
)

// Opener opens the store under test. Every call opens the same underlying
// storage (the same file, the same etcd prefix), so the suite can check
// that what was committed survives a close and reopen; the suite closes
// each store it opens.
type Opener func() (store.Store, error)

// Factory returns a fresh, empty storage for one test. Durable is false
// for stores that lose everything on close (the memory store): the
// reopening checks are skipped for them.
type Factory func(t *testing.T) (open Opener, durable bool)

// Run runs the whole suite.
func Run(t *testing.T, f Factory) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open Opener, durable bool)
	}{
		{"Empty", testEmpty},
		{"ClaimAndRelease", testClaimAndRelease},
		{"ClaimIsIdempotentPerOwner", testIdempotent},
		{"ClaimTaken", testTaken},
		{"ConcurrentClaimsOneAddress", testConcurrentOneAddress},
		{"ConcurrentClaimsManyAddresses", testConcurrentMany},
		{"ReleaseOnlyByHolder", testReleaseOnlyByHolder},
		{"ReleaseTimes", testReleaseTimes},
		{"LastHolders", testLastHolders},
		{"LastHoldersBatch", testLastHoldersBatch},
		{"ReleaseMany", testReleaseMany},
		{"ReleaseManyLarge", testReleaseManyLarge},
		{"DeleteDataplane", testDeleteDataplane},
		{"Reservations", testReservations},
		{"Settings", testSettings},
		{"Dataplanes", testDataplanes},
		{"Durable", testDurable},
		{"CanceledContext", testCanceled},
		{"Closed", testClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			open, durable := f(t)
			tc.fn(t, open, durable)
		})
	}
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)

func mustOpen(t *testing.T, open Opener) store.Store {
	t.Helper()
	s, err := open()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func addr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{13, 8, byte(i >> 8), byte(i)})
}

func lease(i int, dp, session string) store.Lease {
	return store.Lease{
		Addr:       addr(i),
		Owner:      store.Owner{Dataplane: dp, Session: session},
		InstanceID: "inst-" + dp,
		ClientIPv6: netip.MustParseAddr(fmt.Sprintf("fd00:46::%x", i)),
		ClientPort: uint16(40000 + i),
		LeasedAt:   t0.Add(time.Duration(i) * time.Second),
	}
}

func same(a, b store.Lease) bool {
	return a.Addr == b.Addr && a.Owner == b.Owner && a.InstanceID == b.InstanceID &&
		a.ClientIPv6 == b.ClientIPv6 && a.ClientPort == b.ClientPort && a.LeasedAt.Equal(b.LeasedAt) &&
		a.Sticky == b.Sticky
}

func load(t *testing.T, s store.Store) store.State {
	t.Helper()
	st, err := s.Load(context.Background())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return st
}

func testEmpty(t *testing.T, open Opener, _ bool) {
	s := mustOpen(t, open)
	st := load(t, s)
	if len(st.Leases) != 0 || len(st.Released) != 0 || len(st.Holders) != 0 || len(st.Reservations) != 0 || len(st.Dataplanes) != 0 ||
		len(st.Settings.DNS) != 0 || st.Settings.RangeFirst.IsValid() || st.Settings.WholePrefix {
		t.Fatalf("fresh store is not empty: %+v", st)
	}
	if _, ok, err := s.Lease(context.Background(), addr(2)); ok || err != nil {
		t.Fatalf("Lease on empty store: %v %v", ok, err)
	}
	if s.String() == "" {
		t.Fatal("String() is empty")
	}
}

func testClaimAndRelease(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	l := lease(2, "dp1", "s1")
	held, existing, err := s.Claim(ctx, l)
	if err != nil || existing || !same(held, l) {
		t.Fatalf("Claim = %+v %v %v", held, existing, err)
	}
	got, ok, err := s.Lease(ctx, l.Addr)
	if err != nil || !ok || !same(got, l) {
		t.Fatalf("Lease = %+v %v %v, want %+v", got, ok, err, l)
	}
	st := load(t, s)
	if len(st.Leases) != 1 || !same(st.Leases[0], l) {
		t.Fatalf("Load leases = %+v", st.Leases)
	}
	ok, err = s.Release(ctx, l.Addr, l.Owner, t0)
	if err != nil || !ok {
		t.Fatalf("Release = %v %v", ok, err)
	}
	if _, ok, _ := s.Lease(ctx, l.Addr); ok {
		t.Fatal("lease still there after release")
	}
	// The owner can lease again, any address.
	l2 := lease(3, "dp1", "s1")
	if held, existing, err := s.Claim(ctx, l2); err != nil || existing || !same(held, l2) {
		t.Fatalf("claim after release = %+v %v %v", held, existing, err)
	}
	if err := store.CheckLease(store.Lease{Addr: addr(4)}); err == nil {
		t.Fatal("CheckLease accepted a lease without owner")
	}
	if _, _, err := s.Claim(ctx, store.Lease{Addr: addr(4), Owner: store.Owner{Dataplane: "dp1"}}); err == nil {
		t.Fatal("Claim accepted a lease without session")
	}
}

func testIdempotent(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	l := lease(2, "dp1", "s1")
	if _, _, err := s.Claim(ctx, l); err != nil {
		t.Fatal(err)
	}
	// The same owner asking again, even for another address, gets its
	// lease back unchanged; the other address stays free.
	again := lease(5, "dp1", "s1")
	again.LeasedAt = t0.Add(time.Hour)
	held, existing, err := s.Claim(ctx, again)
	if err != nil || !existing || !same(held, l) {
		t.Fatalf("repeated claim = %+v %v %v, want the first lease", held, existing, err)
	}
	if _, ok, _ := s.Lease(ctx, addr(5)); ok {
		t.Fatal("repeated claim took a second address")
	}
	// Same session id on another data plane is another owner.
	other := lease(5, "dp2", "s1")
	if _, existing, err := s.Claim(ctx, other); err != nil || existing {
		t.Fatalf("same session id on another data plane: %v %v", existing, err)
	}
	if n := len(load(t, s).Leases); n != 2 {
		t.Fatalf("%d leases, want 2", n)
	}
}

func testTaken(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	if _, _, err := s.Claim(ctx, lease(2, "dp1", "s1")); err != nil {
		t.Fatal(err)
	}
	_, _, err := s.Claim(ctx, lease(2, "dp2", "s9"))
	if !errors.Is(err, store.ErrTaken) {
		t.Fatalf("claim of a leased address: %v, want ErrTaken", err)
	}
	got, _, _ := s.Lease(ctx, addr(2))
	if got.Owner != (store.Owner{Dataplane: "dp1", Session: "s1"}) {
		t.Fatalf("holder changed to %v", got.Owner)
	}
	// The loser holds nothing.
	if n := len(load(t, s).Leases); n != 1 {
		t.Fatalf("%d leases, want 1", n)
	}
}

// testConcurrentOneAddress: many sessions race for one address; exactly
// one gets it.
func testConcurrentOneAddress(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	const n = 32
	var wg sync.WaitGroup
	var mu sync.Mutex
	var winners []string
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := lease(7, fmt.Sprintf("dp%d", i%3), fmt.Sprintf("s%d", i))
			_, _, err := s.Claim(ctx, l)
			switch {
			case err == nil:
				mu.Lock()
				winners = append(winners, l.Owner.String())
				mu.Unlock()
			case !errors.Is(err, store.ErrTaken):
				t.Errorf("claim: %v", err)
			}
		}()
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d sessions won one address: %v", len(winners), winners)
	}
	got, ok, _ := s.Lease(ctx, addr(7))
	if !ok || got.Owner.String() != winners[0] {
		t.Fatalf("stored holder %v, winner %v", got.Owner, winners[0])
	}
}

// testConcurrentMany: concurrent claims of distinct addresses all commit
// (this is where stores batch).
func testConcurrentMany(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	const n = 300
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := s.Claim(ctx, lease(i+2, "dp1", fmt.Sprintf("s%d", i))); err != nil {
				t.Errorf("claim %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	st := load(t, s)
	if len(st.Leases) != n {
		t.Fatalf("%d leases, want %d", len(st.Leases), n)
	}
	seen := map[netip.Addr]bool{}
	for _, l := range st.Leases {
		if seen[l.Addr] {
			t.Fatalf("%s held twice", l.Addr)
		}
		seen[l.Addr] = true
	}
	// And concurrent releases.
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := s.Release(ctx, addr(i+2), store.Owner{Dataplane: "dp1", Session: fmt.Sprintf("s%d", i)}, t0)
			if err != nil || !ok {
				t.Errorf("release %d: %v %v", i, ok, err)
			}
		}()
	}
	wg.Wait()
	if st := load(t, s); len(st.Leases) != 0 || len(st.Released) != n {
		t.Fatalf("after releases: %d leases, %d release times", len(st.Leases), len(st.Released))
	}
}

func testReleaseOnlyByHolder(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	l := lease(2, "dp1", "s1")
	if _, _, err := s.Claim(ctx, l); err != nil {
		t.Fatal(err)
	}
	for _, o := range []store.Owner{{Dataplane: "dp1", Session: "s2"}, {Dataplane: "dp2", Session: "s1"}} {
		if ok, err := s.Release(ctx, l.Addr, o, t0); ok || err != nil {
			t.Fatalf("release by %v = %v %v", o, ok, err)
		}
	}
	if ok, err := s.Release(ctx, addr(3), l.Owner, t0); ok || err != nil {
		t.Fatalf("release of a free address = %v %v", ok, err)
	}
	if _, ok, _ := s.Lease(ctx, l.Addr); !ok {
		t.Fatal("lease gone after foreign releases")
	}
	if ok, _ := s.Release(ctx, l.Addr, l.Owner, t0); !ok {
		t.Fatal("holder could not release")
	}
	if ok, err := s.Release(ctx, l.Addr, l.Owner, t0); ok || err != nil {
		t.Fatalf("second release = %v %v", ok, err)
	}
}

func testReleaseTimes(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	for i := 2; i < 5; i++ {
		if _, _, err := s.Claim(ctx, lease(i, "dp1", fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := 2; i < 5; i++ {
		if _, err := s.Release(ctx, addr(i), store.Owner{Dataplane: "dp1", Session: fmt.Sprint(i)}, t0.Add(time.Duration(10-i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	st := load(t, s)
	if len(st.Released) != 3 {
		t.Fatalf("release times %v", st.Released)
	}
	for i := 2; i < 5; i++ {
		if want := t0.Add(time.Duration(10-i) * time.Second); !st.Released[addr(i)].Equal(want) {
			t.Fatalf("release time of %s = %v, want %v", addr(i), st.Released[addr(i)], want)
		}
	}
	// Claiming an address forgets its release time.
	if _, _, err := s.Claim(ctx, lease(3, "dp1", "new")); err != nil {
		t.Fatal(err)
	}
	if _, ok := load(t, s).Released[addr(3)]; ok {
		t.Fatal("release time kept after a claim")
	}
}

// testLastHolders: a release records the lease's client as its address's
// last holder (or forgets it, for a lease without one), a claim forgets
// it, and it survives a reopen; the sticky mark of a lease is kept.
func testLastHolders(t *testing.T, open Opener, durable bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	for i := 2; i < 6; i++ {
		l := lease(i, "dp1", fmt.Sprint(i))
		l.Sticky = i == 3
		if i == 5 {
			l.ClientIPv6 = netip.Addr{}
		}
		if _, _, err := s.Claim(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	if st := load(t, s); len(st.Holders) != 0 || !st.Leases[1].Sticky || st.Leases[0].Sticky {
		t.Fatalf("holders of held addresses %v, leases %+v", st.Holders, st.Leases)
	}
	for i := 2; i < 6; i++ {
		if ok, err := s.Release(ctx, addr(i), store.Owner{Dataplane: "dp1", Session: fmt.Sprint(i)}, t0); err != nil || !ok {
			t.Fatalf("release %d: %v %v", i, ok, err)
		}
	}
	want := map[netip.Addr]netip.Addr{}
	for i := 2; i < 5; i++ {
		want[addr(i)] = lease(i, "", "").ClientIPv6
	}
	check := func(s store.Store, what string) {
		t.Helper()
		st := load(t, s)
		if len(st.Holders) != len(want) {
			t.Fatalf("%s: holders %v, want %v", what, st.Holders, want)
		}
		for a, c := range want {
			if st.Holders[a] != c {
				t.Fatalf("%s: holder of %s = %v, want %v", what, a, st.Holders[a], c)
			}
		}
	}
	check(s, "after releases")
	// A claim forgets the holder; the new lease's release records its own.
	l := lease(3, "dp2", "other")
	l.ClientIPv6 = netip.MustParseAddr("fd00:47::1")
	if _, _, err := s.Claim(ctx, l); err != nil {
		t.Fatal(err)
	}
	delete(want, addr(3))
	check(s, "after a claim")
	// A claim that fails (the address is taken) changes nothing.
	if _, _, err := s.Claim(ctx, lease(3, "dp3", "x")); !errors.Is(err, store.ErrTaken) {
		t.Fatalf("claim of a leased address: %v", err)
	}
	if _, err := s.Release(ctx, addr(3), l.Owner, t0); err != nil {
		t.Fatal(err)
	}
	want[addr(3)] = l.ClientIPv6
	check(s, "after the second release")
	// A lease without a client forgets the previous holder.
	nl := lease(4, "dp1", "anon")
	nl.ClientIPv6 = netip.Addr{}
	if _, _, err := s.Claim(ctx, nl); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Release(ctx, nl.Addr, nl.Owner, t0); err != nil {
		t.Fatal(err)
	}
	delete(want, addr(4))
	check(s, "after a release without a client")
	if durable {
		s.Close()
		check(mustOpen(t, open), "after a reopen")
	}
}

// testLastHoldersBatch: ReleaseMany records the holders as Release does.
func testLastHoldersBatch(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	const n = 70 // more than one etcd transaction
	var rs []store.Release
	for i := range n {
		l := lease(i+2, "dp1", fmt.Sprint(i))
		if _, _, err := s.Claim(ctx, l); err != nil {
			t.Fatal(err)
		}
		rs = append(rs, store.Release{Addr: l.Addr, Owner: l.Owner})
	}
	done, err := s.ReleaseMany(ctx, rs, t0)
	if err != nil || len(done) != n {
		t.Fatalf("ReleaseMany: %v %v", done, err)
	}
	st := load(t, s)
	if len(st.Holders) != n {
		t.Fatalf("%d holders, want %d", len(st.Holders), n)
	}
	for i := range n {
		if c := st.Holders[addr(i+2)]; c != lease(i+2, "", "").ClientIPv6 {
			t.Fatalf("holder of %s = %v", addr(i+2), c)
		}
	}
}

func testReservations(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	r1 := store.Reservation{Client: netip.MustParsePrefix("fd00:46::2/128"), Addr: addr(9)}
	r2 := store.Reservation{Client: netip.MustParsePrefix("fd00:47::/64"), Addr: addr(10)}
	for _, r := range []store.Reservation{r1, r2} {
		if changed, err := s.PutReservation(ctx, r); err != nil || !changed {
			t.Fatalf("put %v: %v %v", r, changed, err)
		}
	}
	if changed, err := s.PutReservation(ctx, r1); err != nil || changed {
		t.Fatalf("same reservation again: changed=%v %v", changed, err)
	}
	r1b := store.Reservation{Client: r1.Client, Addr: addr(11)}
	if changed, err := s.PutReservation(ctx, r1b); err != nil || !changed {
		t.Fatalf("replace: changed=%v %v", changed, err)
	}
	st := load(t, s)
	if len(st.Reservations) != 2 || st.Reservations[0] != r1b || st.Reservations[1] != r2 {
		t.Fatalf("reservations %v", st.Reservations)
	}
	if ok, err := s.DeleteReservation(ctx, r2.Client); err != nil || !ok {
		t.Fatalf("delete: %v %v", ok, err)
	}
	if ok, err := s.DeleteReservation(ctx, r2.Client); err != nil || ok {
		t.Fatalf("delete again: %v %v", ok, err)
	}
	if st := load(t, s); len(st.Reservations) != 1 || st.Reservations[0] != r1b {
		t.Fatalf("reservations after delete %v", st.Reservations)
	}
}

func testSettings(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	want := store.Settings{
		DNS:        []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("192.0.2.54"), netip.MustParseAddr("192.0.2.55")},
		RangeFirst: addr(2), RangeLast: addr(100),
	}
	if err := s.PutSettings(ctx, want); err != nil {
		t.Fatal(err)
	}
	got := load(t, s).Settings
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("settings %+v, want %+v", got, want)
	}
	want = store.Settings{DNS: want.DNS[:1], WholePrefix: true}
	if err := s.PutSettings(ctx, want); err != nil {
		t.Fatal(err)
	}
	if got := load(t, s).Settings; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("settings %+v, want %+v", got, want)
	}
}

func testDataplanes(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	d1 := store.Dataplane{ID: "dp1", InstanceID: "a", Version: "v1", ClientListen: "[::]:5678", APIAddress: "unix:///run/dp1.sock", RegisteredAt: t0}
	d2 := store.Dataplane{ID: "dp/2 odd", InstanceID: "b", Draining: true, RegisteredAt: t0, StoppedAt: t0.Add(time.Minute)}
	for _, d := range []store.Dataplane{d2, d1} {
		if err := s.PutDataplane(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	d1.InstanceID = "c"
	if err := s.PutDataplane(ctx, d1); err != nil {
		t.Fatal(err)
	}
	st := load(t, s)
	if len(st.Dataplanes) != 2 || fmt.Sprint(st.Dataplanes[0]) != fmt.Sprint(d2) || fmt.Sprint(st.Dataplanes[1]) != fmt.Sprint(d1) {
		t.Fatalf("data planes %+v", st.Dataplanes)
	}
	if err := s.PutDataplane(ctx, store.Dataplane{}); err == nil {
		t.Fatal("data plane without id accepted")
	}
}

// testReleaseMany: a batch frees exactly the leases their owners hold,
// once each, records the release time, and repeating it is a no-op.
func testReleaseMany(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	if got, err := s.ReleaseMany(ctx, nil, t0); err != nil || len(got) != 0 {
		t.Fatalf("empty batch = %v %v", got, err)
	}
	for i := 2; i < 7; i++ {
		if _, _, err := s.Claim(ctx, lease(i, "dp1", fmt.Sprint("s", i))); err != nil {
			t.Fatal(err)
		}
	}
	own := func(i int) store.Owner { return store.Owner{Dataplane: "dp1", Session: fmt.Sprint("s", i)} }
	at := t0.Add(time.Hour)
	batch := []store.Release{
		{Addr: addr(2), Owner: own(2)},                                      // held: freed
		{Addr: addr(3), Owner: store.Owner{Dataplane: "dp1", Session: "x"}}, // another holder: kept
		{Addr: addr(4), Owner: own(4)},                                      // freed
		{Addr: addr(4), Owner: own(4)},                                      // the same again: once
		{Addr: addr(99), Owner: own(99)},                                    // free
		{Addr: netip.MustParseAddr("2001:db8::1"), Owner: own(5)},           // not IPv4
		{Addr: addr(6), Owner: own(6)},                                      // freed
	}
	got, err := s.ReleaseMany(ctx, batch, at)
	if want := []bool{true, false, true, false, false, false, true}; err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ReleaseMany = %v %v, want %v", got, err, want)
	}
	st := load(t, s)
	if len(st.Leases) != 2 || st.Leases[0].Addr != addr(3) || st.Leases[1].Addr != addr(5) {
		t.Fatalf("leases after the batch: %+v", st.Leases)
	}
	for _, i := range []int{2, 4, 6} {
		if !st.Released[addr(i)].Equal(at) {
			t.Fatalf("release time of %s = %v, want %v", addr(i), st.Released[addr(i)], at)
		}
	}
	// The owners are free to lease again.
	if _, existing, err := s.Claim(ctx, lease(9, "dp1", "s2")); err != nil || existing {
		t.Fatalf("claim by a released owner: %v %v", existing, err)
	}
	// Repeating the batch frees nothing more.
	again, err := s.ReleaseMany(ctx, batch[:1], at)
	if err != nil || again[0] {
		t.Fatalf("repeated batch = %v %v", again, err)
	}
}

// testReleaseManyLarge: more releases than one etcd transaction takes.
func testReleaseManyLarge(t *testing.T, open Opener, _ bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	const n = 300
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := s.Claim(ctx, lease(i+2, "dp1", fmt.Sprint(i))); err != nil {
				t.Errorf("claim %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	var batch []store.Release
	for i := range n {
		if i%3 != 0 { // every third stays
			batch = append(batch, store.Release{Addr: addr(i + 2), Owner: store.Owner{Dataplane: "dp1", Session: fmt.Sprint(i)}})
		}
	}
	got, err := s.ReleaseMany(ctx, batch, t0)
	if err != nil || len(got) != len(batch) {
		t.Fatalf("ReleaseMany: %d results, %v", len(got), err)
	}
	for i, ok := range got {
		if !ok {
			t.Fatalf("release %d (%s) not made", i, batch[i].Addr)
		}
	}
	st := load(t, s)
	if len(st.Leases) != n/3 || len(st.Released) != len(batch) {
		t.Fatalf("%d leases and %d release times left, want %d and %d", len(st.Leases), len(st.Released), n/3, len(batch))
	}
	for _, l := range st.Leases {
		if i := int(l.Addr.As4()[2])<<8 | int(l.Addr.As4()[3]) - 2; i%3 != 0 {
			t.Fatalf("%s kept %s, which the batch released", l.Owner, l.Addr)
		}
	}
}

func testDeleteDataplane(t *testing.T, open Opener, durable bool) {
	ctx := context.Background()
	s := mustOpen(t, open)
	for _, id := range []string{"dp1", "dp/2 odd"} {
		if err := s.PutDataplane(ctx, store.Dataplane{ID: id, InstanceID: "a", RegisteredAt: t0}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.Claim(ctx, lease(2, "dp1", "s1")); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.DeleteDataplane(ctx, "dp/2 odd"); err != nil || !ok {
		t.Fatalf("delete = %v %v", ok, err)
	}
	if ok, err := s.DeleteDataplane(ctx, "dp/2 odd"); err != nil || ok {
		t.Fatalf("delete again = %v %v", ok, err)
	}
	if ok, err := s.DeleteDataplane(ctx, "never"); err != nil || ok {
		t.Fatalf("delete of an unknown id = %v %v", ok, err)
	}
	if ok, err := s.DeleteDataplane(ctx, "dp1"); err != nil || !ok {
		t.Fatalf("delete dp1 = %v %v", ok, err)
	}
	st := load(t, s)
	if len(st.Dataplanes) != 0 {
		t.Fatalf("data planes after delete: %+v", st.Dataplanes)
	}
	if len(st.Leases) != 1 {
		t.Fatalf("deleting a data plane touched its leases: %+v", st.Leases)
	}
	if durable {
		s.Close()
		if st := load(t, mustOpen(t, open)); len(st.Dataplanes) != 0 {
			t.Fatalf("data planes after reopen: %+v", st.Dataplanes)
		}
	}
}

// testDurable: everything acknowledged is there after a reopen.
func testDurable(t *testing.T, open Opener, durable bool) {
	if !durable {
		t.Skip("volatile store")
	}
	ctx := context.Background()
	s, err := open()
	if err != nil {
		t.Fatal(err)
	}
	var want []store.Lease
	for i := 2; i < 50; i++ {
		l := lease(i, "dp1", fmt.Sprint(i))
		if _, _, err := s.Claim(ctx, l); err != nil {
			t.Fatal(err)
		}
		want = append(want, l)
	}
	if _, err := s.Release(ctx, addr(2), want[0].Owner, t0); err != nil {
		t.Fatal(err)
	}
	want = want[1:]
	r := store.Reservation{Client: netip.MustParsePrefix("fd00:46::/64"), Addr: addr(200)}
	if _, err := s.PutReservation(ctx, r); err != nil {
		t.Fatal(err)
	}
	set := store.Settings{DNS: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}
	if err := s.PutSettings(ctx, set); err != nil {
		t.Fatal(err)
	}
	dp := store.Dataplane{ID: "dp1", InstanceID: "x", Draining: true, RegisteredAt: t0}
	if err := s.PutDataplane(ctx, dp); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := mustOpen(t, open)
	st := load(t, s2)
	if len(st.Leases) != len(want) {
		t.Fatalf("%d leases after reopen, want %d", len(st.Leases), len(want))
	}
	for i := range want {
		if !same(st.Leases[i], want[i]) {
			t.Fatalf("lease %d after reopen: %+v, want %+v", i, st.Leases[i], want[i])
		}
	}
	if !st.Released[addr(2)].Equal(t0) || len(st.Reservations) != 1 || st.Reservations[0] != r ||
		fmt.Sprint(st.Settings) != fmt.Sprint(set) || len(st.Dataplanes) != 1 || fmt.Sprint(st.Dataplanes[0]) != fmt.Sprint(dp) {
		t.Fatalf("state after reopen: %+v", st)
	}
	// Idempotency holds across the reopen too.
	if held, existing, err := s2.Claim(ctx, lease(99, "dp1", "3")); err != nil || !existing || held.Addr != addr(3) {
		t.Fatalf("claim after reopen: %+v %v %v", held, existing, err)
	}
}

func testCanceled(t *testing.T, open Opener, _ bool) {
	s := mustOpen(t, open)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := s.Claim(ctx, lease(2, "dp1", "s1")); err == nil {
		t.Fatal("Claim with a canceled context succeeded")
	}
	if _, err := s.Load(ctx); err == nil {
		t.Fatal("Load with a canceled context succeeded")
	}
}

func testClosed(t *testing.T, open Opener, _ bool) {
	s, err := open()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := s.Claim(ctx, lease(2, "dp1", "s1")); err == nil {
		t.Fatal("Claim on a closed store succeeded")
	}
}
