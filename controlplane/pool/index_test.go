package pool

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/store"
	"github.com/fourover6/fourover6/controlplane/table"
)

// check verifies the invariants written at Index.
func (x *Index) check() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	committed, filed := 0, 0
	for v, e := range x.byAddr {
		switch {
		case e.v != v || e.lease.Addr != addr(v):
			return fmt.Errorf("entry at %s says %s / %s", addr(v), addr(e.v), e.lease.Addr)
		case x.byOwner[e.lease.Owner] != e:
			return fmt.Errorf("%s: owner %s maps elsewhere", addr(v), e.lease.Owner)
		case x.byDataplane[e.lease.Dataplane][v] != e:
			return fmt.Errorf("%s: not filed under data plane %q", addr(v), e.lease.Dataplane)
		case e.phase != claiming && e.phase != held && e.phase != releasing:
			return fmt.Errorf("%s: phase %d", addr(v), e.phase)
		case e.phase == held && e.done != nil:
			return fmt.Errorf("%s: held with waiters not woken", addr(v))
		}
		if e.committed() {
			committed++
		}
	}
	for o, e := range x.byOwner {
		if e.lease.Owner != o || x.byAddr[e.v] != e {
			return fmt.Errorf("owner %s: entry %s is not filed by address", o, addr(e.v))
		}
	}
	for dp, es := range x.byDataplane {
		if len(es) == 0 {
			return fmt.Errorf("data plane %q filed with no entries", dp)
		}
		for v, e := range es {
			if x.byAddr[v] != e || e.lease.Dataplane != dp {
				return fmt.Errorf("data plane %q files %s wrongly", dp, addr(v))
			}
			filed++
		}
	}
	if filed != len(x.byAddr) || len(x.byOwner) != len(x.byAddr) {
		return fmt.Errorf("%d entries by address, %d by owner, %d by data plane", len(x.byAddr), len(x.byOwner), filed)
	}
	if committed != x.committed {
		return fmt.Errorf("committed = %d, counted %d", x.committed, committed)
	}
	perDP := map[string]int{}
	for _, e := range x.byAddr {
		if e.committed() {
			perDP[e.lease.Dataplane]++
		}
	}
	if !maps.Equal(perDP, x.committedOf) {
		return fmt.Errorf("committed per data plane %v, counted %v", x.committedOf, perDP)
	}
	for v, c := range x.reserved {
		if x.byClient[c] != v {
			return fmt.Errorf("reservation of %s for %s not filed by client", addr(v), c)
		}
	}
	if len(x.reserved) != len(x.byClient) {
		return fmt.Errorf("%d reserved addresses, %d reserved clients", len(x.reserved), len(x.byClient))
	}
	byIP, byPrefix := map[netip.Addr]int{}, map[netip.Prefix]int{}
	for _, e := range x.byAddr {
		if k := x.keysLocked(e.lease.ClientIPv6); k.ok {
			byIP[k.ip]++
			byPrefix[k.prefix]++
		}
	}
	if !maps.Equal(byIP, x.byIP) || !maps.Equal(byPrefix, x.byPrefix) {
		return fmt.Errorf("client counts %v %v, counted %v %v", x.byIP, x.byPrefix, byIP, byPrefix)
	}
	return x.checkFreeLocked()
}

// checkFreeLocked verifies invariant 8 and the free order's two views.
func (x *Index) checkFreeLocked() error {
	n, in := 0, 0
	for c, vs := range x.holdersOf {
		if len(vs) == 0 {
			return fmt.Errorf("client %s filed with no remembered addresses", c)
		}
		if !slices.IsSortedFunc(vs, rememberedLess) {
			return fmt.Errorf("client %s: remembered addresses out of release order: %v", c, vs)
		}
		for _, r := range vs {
			v := r.v
			if x.holders[v] != c {
				return fmt.Errorf("%s filed under %s, remembered for %s", addr(v), c, x.holders[v])
			}
			if x.holderAt[v] != r.at {
				return fmt.Errorf("%s filed at %d, its holder's time is %d", addr(v), r.at, x.holderAt[v])
			}
			if at, ok := x.free.at[v]; ok && at != r.at {
				return fmt.Errorf("%s filed under %s at %d, released at %d in the free order", addr(v), c, r.at, at)
			}
			n++
		}
	}
	for v := range x.holders {
		if e, ok := x.byAddr[v]; ok && e.committed() {
			return fmt.Errorf("%s is held by %s and remembered for %s", addr(v), e.lease.Owner, x.holders[v])
		}
		if x.inRange(v) {
			in++
		}
	}
	if n != len(x.holders) || len(x.holderAt) != len(x.holders) || in != x.holdersIn {
		return fmt.Errorf("%d holders, %d filed by client; %d in range, counted %d", len(x.holders), n, x.holdersIn, in)
	}
	if x.free.tree.Len() != len(x.free.at) {
		return fmt.Errorf("free order: %d slots, %d addresses", x.free.tree.Len(), len(x.free.at))
	}
	var err error
	x.free.tree.Ascend(func(s slot) bool {
		if at, ok := x.free.at[s.v]; !ok || at != s.at {
			err = fmt.Errorf("free order: slot %s at %d, filed at %d", addr(s.v), s.at, at)
		}
		return err == nil
	})
	if err != nil {
		return err
	}
	remembered := uint32(0)
	for v := range x.holders {
		if x.isFreeLocked(v) {
			remembered++
		}
	}
	if st := x.statsLocked(); st.FreeRemembered != remembered || st.FreeRemembered > st.Free {
		return fmt.Errorf("stats say %d free remembered (of %d free), counted %d", st.FreeRemembered, st.Free, remembered)
	}
	return nil
}

func mustCheck(t *testing.T, x *Index) {
	t.Helper()
	if err := x.check(); err != nil {
		t.Fatal(err)
	}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestPhases(t *testing.T) {
	x := mustNew(t, "10.0.0.0/29", "") // .2-.6
	o := owner(1)
	g, err := x.Acquire(o, ip("fd00::1"), t0)
	if err != nil || g.Existing || g.Wait != nil || g.Addr != ip("10.0.0.2") {
		t.Fatalf("grant %+v %v", g, err)
	}
	mustCheck(t, x)
	// While the claim is in flight: the owner waits, nobody else gets the
	// address, it is not a lease yet, and it counts as leased.
	again, _ := x.Acquire(o, ip("fd00::1"), t0)
	if again.Wait == nil || again.Existing {
		t.Fatalf("second acquire during the claim: %+v", again)
	}
	if _, wait, ok := x.BeginRelease(o, g.Addr); ok || wait == nil {
		t.Fatal("release during the claim did not wait")
	}
	other, _ := x.Acquire(owner(2), netip.Addr{}, t0)
	if other.Addr == g.Addr {
		t.Fatal("address in flight given to another owner")
	}
	x.Abort(owner(2), other.Addr, t0)
	if _, ok := x.Lease(g.Addr); ok {
		t.Fatal("a claim in flight is a lease")
	}
	if _, ok := x.Row(g.Addr); ok || len(x.Rows(table.Filter{})) != 0 || x.Len() != 0 {
		t.Fatal("a claim in flight has a row")
	}
	if st := x.Stats(); st.Leased != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Commit of something else changes nothing.
	if x.Commit(store.Lease{Addr: ip("10.0.0.3"), Owner: o}, t0, t0, true) || x.Commit(store.Lease{Addr: g.Addr, Owner: owner(9)}, t0, t0, true) {
		t.Fatal("commit of a claim never started")
	}
	l := store.Lease{Addr: g.Addr, Owner: o, ClientIPv6: ip("fd00::1"), ClientPort: 9, LeasedAt: t0}
	if !x.Commit(l, t0, t0, true) {
		t.Fatal("commit")
	}
	select {
	case <-again.Wait:
	default:
		t.Fatal("waiter not woken by the commit")
	}
	mustCheck(t, x)
	if g2, _ := x.Acquire(o, ip("fd00::1"), t0); !g2.Existing || g2.Lease != l {
		t.Fatalf("after commit: %+v", g2)
	}
	if x.Commit(l, t0, t0, true) {
		t.Fatal("second commit")
	}
	// Release: in flight, the lease stays (the store may still refuse).
	got, wait, ok := x.BeginRelease(o, g.Addr)
	if !ok || wait != nil || got != l {
		t.Fatalf("begin release: %+v %v", got, ok)
	}
	if _, w, ok := x.BeginRelease(o, g.Addr); ok || w == nil {
		t.Fatal("second release did not wait for the first")
	}
	if g3, _ := x.Acquire(o, netip.Addr{}, t0); g3.Wait == nil {
		t.Fatal("acquire during the release did not wait")
	}
	if _, ok := x.Row(g.Addr); !ok {
		t.Fatal("row gone before the store released it")
	}
	x.CancelRelease(o, g.Addr)
	if _, ok := x.Lease(g.Addr); !ok {
		t.Fatal("lease lost by a cancelled release")
	}
	mustCheck(t, x)
	if _, _, ok := x.BeginRelease(o, g.Addr); !ok {
		t.Fatal("release after cancel")
	}
	x.EndRelease(o, g.Addr, t0.Add(time.Second), "eof")
	mustCheck(t, x)
	if _, ok := x.Lookup(o); ok || x.Len() != 0 {
		t.Fatal("lease still there")
	}
	if _, _, ok := x.BeginRelease(o, g.Addr); ok {
		t.Fatal("double release")
	}
	// Never-used addresses first; then the aborted .3 (put back in front
	// of the released ones), then .2 (released last).
	for i, want := range []string{"10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.3", "10.0.0.2"} {
		if got := alloc(t, x, owner(100+i)); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	mustCheck(t, x)
}

func TestAdopt(t *testing.T) {
	x := mustNew(t, "10.0.0.0/24", "")
	l := store.Lease{Addr: ip("10.0.0.7"), Owner: owner(1), LeasedAt: t0}
	if err := x.Adopt(l, t0, t0); err != nil {
		t.Fatal(err)
	}
	if err := x.Adopt(l, t0, t0); err != nil {
		t.Fatalf("adopting a known lease again: %v", err)
	}
	for _, bad := range []store.Lease{
		{Addr: ip("10.0.0.7"), Owner: owner(2)}, // address held by another
		{Addr: ip("10.0.0.8"), Owner: owner(1)}, // owner holds another
		{Addr: ip("10.0.1.8"), Owner: owner(3)}, // outside
		{Addr: ip("fd00::1"), Owner: owner(3)},
	} {
		if err := x.Adopt(bad, t0, t0); err == nil {
			t.Errorf("Adopt(%v) succeeded", bad)
		}
	}
	// A claim in flight is not adopted over.
	g, _ := x.Acquire(owner(4), netip.Addr{}, t0)
	if err := x.Adopt(store.Lease{Addr: g.Addr, Owner: owner(5)}, t0, t0); err == nil {
		t.Fatal("adopted over a claim in flight")
	}
	if g, _ := x.Acquire(owner(1), netip.Addr{}, t0); !g.Existing || g.Addr != l.Addr {
		t.Fatalf("adopted lease not found by its owner: %+v", g)
	}
	mustCheck(t, x)
}

func TestClaimAt(t *testing.T) {
	x := mustNew(t, "10.0.0.0/24", "10.0.0.2-10.0.0.9")
	if err := x.SetReservation(Reservation{Client: netip.MustParsePrefix("fd00::/64"), Addr: ip("10.0.0.5")}, t0); err != nil {
		t.Fatal(err)
	}
	alloc(t, x, owner(1)) // .2
	var ce *ConflictError
	if _, _, err := x.ClaimAt(owner(2), ip("10.0.0.2"), ip("fd01::1")); !errors.As(err, &ce) || ce.Holder != owner(1) {
		t.Fatalf("held: %v", err)
	}
	if _, _, err := x.ClaimAt(owner(2), ip("10.0.0.5"), ip("fd01::1")); !errors.As(err, &ce) || ce.Reservation.String() != "fd00::/64" {
		t.Fatalf("reserved for another: %v", err)
	}
	for _, a := range []string{"10.0.0.1", "10.0.0.255", "10.0.1.2"} {
		if _, _, err := x.ClaimAt(owner(2), ip(a), ip("fd01::1")); !errors.Is(err, ErrOutside) {
			t.Fatalf("%s: %v", a, err)
		}
	}
	// The owner's own address: known, nothing started.
	if a, started, err := x.ClaimAt(owner(1), ip("10.0.0.7"), netip.Addr{}); err != nil || started || a != ip("10.0.0.2") {
		t.Fatalf("known owner: %s %v %v", a, started, err)
	}
	// The reserved client may claim its reservation; outside the range is
	// fine (the range may have narrowed since the client connected).
	if _, started, err := x.ClaimAt(owner(3), ip("10.0.0.5"), ip("fd00::9")); err != nil || !started {
		t.Fatalf("reserved client: %v %v", started, err)
	}
	if _, started, err := x.ClaimAt(owner(4), ip("10.0.0.200"), ip("fd01::4")); err != nil || !started {
		t.Fatalf("outside the range: %v %v", started, err)
	}
	mustCheck(t, x)
	// Adopted, not fresh: the first report's counters are its baseline.
	if !x.Commit(store.Lease{Addr: ip("10.0.0.200"), Owner: owner(4), LeasedAt: t0}, t0, t0, false) {
		t.Fatal("commit")
	}
	out := make([]Outcome, 1)
	tr := table.Traffic{BytesFromClient: 100}
	if grew := x.ApplyReports("dp1", []table.Report{{SessionID: owner(4).Session, Traffic: tr}}, out); grew != (table.Traffic{}) || out[0] != Known {
		t.Fatalf("adopted session's history counted: %+v %v", grew, out)
	}
	// An aborted ClaimAt goes to the back of the queue, as released then.
	x.Abort(owner(3), ip("10.0.0.5"), t0)
	if err := x.check(); err != nil {
		t.Fatal(err)
	}
	if _, ok := x.DeleteReservation(netip.MustParsePrefix("fd00::/64"), t0); !ok {
		t.Fatal("delete reservation")
	}
	var got []string
	for i := range 7 {
		got = append(got, alloc(t, x, owner(10+i)))
	}
	if want := []string{"10.0.0.3", "10.0.0.4", "10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.9", "10.0.0.5"}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
}

func TestApplyReports(t *testing.T) {
	x := mustNew(t, "10.0.0.0/16", "")
	t1 := t0.Add(time.Minute)
	a := ip(alloc(t, x, owner(1)))
	alloc(t, x, owner(2))
	g, _ := x.Acquire(owner(3), netip.Addr{}, t0) // in flight
	rs := []table.Report{
		{SessionID: owner(1).Session, Addr: a, ClientPort: 7, LastHeard: t1, Traffic: table.Traffic{BytesToClient: 50}},
		{SessionID: owner(2).Session, Addr: ip("10.0.9.9")},
		{SessionID: owner(3).Session},
		{SessionID: "ghost", Addr: ip("10.0.0.99")},
	}
	out := make([]Outcome, len(rs))
	grew := x.ApplyReports("dp1", rs, out)
	if !slices.Equal(out, []Outcome{Known, Mismatch, Known, NoLease}) {
		t.Fatalf("outcomes %v", out)
	}
	// Applying vouches for nothing; Vouch does, for committed leases only.
	if u := x.Unvouched("dp1", t0); len(u) != 2 {
		t.Fatalf("unvouched after apply %v", u)
	}
	if n := x.Vouch("dp1", []string{owner(1).Session, owner(3).Session, "ghost"}, t1); n != 1 {
		t.Fatalf("vouched %d", n)
	}
	if n := x.Vouch("dp1", []string{owner(1).Session}, t0); n != 1 { // an older report: no step back
		t.Fatalf("vouched %d", n)
	}
	if grew != (table.Traffic{BytesToClient: 50}) {
		t.Fatalf("grew %+v", grew)
	}
	// The same session id of another data plane is another session.
	if x.ApplyReports("dp2", rs[:1], out); out[0] != NoLease {
		t.Fatalf("other data plane: %v", out[0])
	}
	r, _ := x.Row(a)
	if r.ClientPort != 7 || !r.LastHeard.Equal(t1) || !r.ConnectedAt.Equal(t0) || r.Traffic.BytesToClient != 50 {
		t.Fatalf("row %+v", r)
	}
	// Vouched: owner(1) at t1, owner(2) (mismatch) not since its commit.
	if u := x.Unvouched("dp1", t0); len(u) != 1 || u[0].Owner != owner(2) {
		t.Fatalf("unvouched %v", u)
	}
	x.Commit(store.Lease{Addr: g.Addr, Owner: owner(3), LeasedAt: t0}, t0, t0, true)
	if n := len(x.LeasesOf("dp1")); n != 3 {
		t.Fatalf("%d leases of dp1", n)
	}
	if c := x.LeaseCounts(); len(c) != 1 || c["dp1"] != 3 {
		t.Fatalf("counts %v", c)
	}
	// A large report is applied in chunks, all of it.
	big := make([]table.Report, 3*reportChunk+7)
	for i := range big {
		big[i] = table.Report{SessionID: fmt.Sprint("b", i)}
		alloc(t, x, store.Owner{Dataplane: "dp3", Session: big[i].SessionID})
		big[i].Traffic.PacketsFromClient = 1
	}
	out = make([]Outcome, len(big))
	if grew := x.ApplyReports("dp3", big, out); grew.PacketsFromClient != uint64(len(big)) {
		t.Fatalf("big report grew %+v", grew)
	}
	for i, o := range out {
		if o != Known {
			t.Fatalf("report %d: %v", i, o)
		}
	}
	mustCheck(t, x)
}

func TestRowsAreAView(t *testing.T) {
	x := mustNew(t, "10.0.0.0/24", "")
	add := func(a, dp, s, client string) {
		g, err := x.Acquire(store.Owner{Dataplane: dp, Session: s}, ip(client), t0)
		if err != nil || g.Addr != ip(a) {
			t.Fatalf("acquire %s: %+v %v", a, g, err)
		}
		x.Commit(store.Lease{Addr: g.Addr, Owner: store.Owner{Dataplane: dp, Session: s}, ClientIPv6: ip(client), ClientPort: 1, LeasedAt: t0}, t0, t0, true)
	}
	// Addresses whose string order differs from their numeric order.
	for i := 2; i <= 10; i++ {
		dp := "dp1"
		if i%2 == 1 {
			dp = "dp2"
		}
		add(fmt.Sprint("10.0.0.", i), dp, fmt.Sprint("s", i), fmt.Sprintf("fd0%d::1", i%3))
	}
	rows := x.Rows(table.Filter{})
	if len(rows) != 9 || rows[0].Addr != ip("10.0.0.2") || rows[8].Addr != ip("10.0.0.10") {
		t.Fatalf("rows %v", rows)
	}
	if rows := x.Rows(table.Filter{DataplaneID: "dp2"}); len(rows) != 4 || rows[0].Addr != ip("10.0.0.3") {
		t.Fatalf("dp2 rows %v", rows)
	}
	if rows := x.Rows(table.Filter{DataplaneID: "dp1", IPv6Prefix: netip.MustParsePrefix("fd01::/16")}); len(rows) != 2 {
		t.Fatalf("filtered rows %v", rows)
	}
	if rows := x.Rows(table.Filter{DataplaneID: "none"}); len(rows) != 0 {
		t.Fatalf("rows of an unknown data plane %v", rows)
	}
	// A row is a copy.
	r, _ := x.Row(ip("10.0.0.2"))
	r.SessionID = "changed"
	if r2, _ := x.Row(ip("10.0.0.2")); r2.SessionID != "s2" {
		t.Fatal("Row returned a reference into the index")
	}
}

func TestSubscribe(t *testing.T) {
	x := mustNew(t, "10.0.0.0/24", "")
	a := ip(alloc(t, x, owner(1)))
	rows, sub := x.Subscribe(table.Filter{DataplaneID: "dp1"}, 2)
	if len(rows) != 1 || rows[0].Addr != a {
		t.Fatalf("rows %v", rows)
	}
	alloc(t, x, store.Owner{Dataplane: "dp2", Session: "x"}) // filtered out
	b := ip(alloc(t, x, owner(2)))
	release(x, a, owner(1), t0.Add(time.Second))
	if c := <-sub.C; c.Kind != Connected || c.Row.Addr != b {
		t.Fatalf("change %+v", c)
	}
	if c := <-sub.C; c.Kind != Disconnected || c.Row.Addr != a || c.Reason != "test" || !c.Time.Equal(t0.Add(time.Second)) {
		t.Fatalf("change %+v", c)
	}
	// Three changes for a queue of two: cut off, not blocked.
	for i := range 3 {
		alloc(t, x, owner(10+i))
	}
	select {
	case <-sub.Lost:
	default:
		t.Fatal("a subscriber that fell behind was not cut off")
	}
	sub.Close()
	_, sub2 := x.Subscribe(table.Filter{}, 1)
	sub2.Close()
	alloc(t, x, owner(20)) // no subscriber left: nothing sent
	if len(sub2.C) != 0 {
		t.Fatal("closed subscription got a change")
	}
}

// TestConcurrentStress runs every operation from many goroutines against a
// small pool and a fake store that sometimes fails, checking throughout
// that no address is ever held by two owners and that the invariants hold.
func TestConcurrentStress(t *testing.T) {
	x, err := New(Config{Prefix: netip.MustParsePrefix("10.0.0.0/27")}, // 29 addresses
		Options{Cooldown: time.Millisecond, Limits: Limits{PerIP: 6, PerPrefix: 9}})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.SetReservation(Reservation{Client: netip.MustParsePrefix("fd00::1/128"), Addr: ip("10.0.0.9")}, t0); err != nil {
		t.Fatal(err)
	}
	// shadow is who holds each address according to the callers: set
	// once the index granted it, cleared before the index is told it is
	// free. Two owners at once is the bug this test hunts.
	var smu sync.Mutex
	shadow := map[netip.Addr]store.Owner{}
	take := func(a netip.Addr, o store.Owner) {
		smu.Lock()
		defer smu.Unlock()
		if h, ok := shadow[a]; ok && h != o {
			t.Errorf("%s granted to %s while %s holds it", a, o, h)
		}
		shadow[a] = o
	}
	drop := func(a netip.Addr, o store.Owner) {
		smu.Lock()
		defer smu.Unlock()
		if shadow[a] != o {
			t.Errorf("%s dropped by %s, held by %s", a, o, shadow[a])
		}
		delete(shadow, a)
	}
	var sticky atomic.Int64
	const workers, owners, rounds = 8, 40, 3000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	checked := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				checked <- nil
				return
			default:
			}
			if err := x.check(); err != nil {
				checked <- err
				return
			}
		}
	}()
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range rounds {
				o := store.Owner{Dataplane: fmt.Sprint("dp", rng.IntN(3)), Session: fmt.Sprint("s", rng.IntN(owners))}
				now := t0.Add(time.Duration(rng.IntN(1000)) * time.Millisecond)
				switch rng.IntN(6) {
				case 0, 1: // allocate
					// Few clients, many sessions: most allocations are
					// returning clients asking for an address they held.
					client := netip.Addr{}
					switch k := rng.IntN(8); k {
					case 0:
						client = ip("fd00::1") // reserved
					case 1:
						client = ip("fd00::2") // its /64 neighbour
					case 7:
					default:
						client = netip.AddrFrom16([16]byte{0: 0xfd, 1: 1, 15: byte(k)})
					}
					g, err := x.Acquire(o, client, now)
					switch {
					case errors.Is(err, ErrExhausted), errors.Is(err, ErrLimit):
					case err != nil:
						t.Error(err)
					case g.Wait != nil:
						<-g.Wait
					case g.Existing:
						// Not checked against shadow: another worker acting
						// for o may release it meanwhile.
						if g.Lease.Owner != o || g.Lease.Addr != g.Addr {
							t.Errorf("existing %s of %s is %+v", g.Addr, o, g.Lease)
						}
					default:
						if g.Sticky {
							sticky.Add(1)
						}
						take(g.Addr, o)
						if rng.IntN(8) == 0 { // the store refused
							drop(g.Addr, o)
							x.Abort(o, g.Addr, now)
						} else if !x.Commit(store.Lease{Addr: g.Addr, Owner: o, ClientIPv6: client, LeasedAt: now, Sticky: g.Sticky}, now, now, true) {
							t.Errorf("commit of %s for %s refused", g.Addr, o)
						}
					}
				case 2: // release
					a, ok := x.Lookup(o)
					if !ok {
						continue
					}
					_, wait, ok := x.BeginRelease(o, a)
					if wait != nil {
						<-wait
						continue
					}
					if !ok {
						continue
					}
					if rng.IntN(8) == 0 { // the store failed
						x.CancelRelease(o, a)
						continue
					}
					drop(a, o)
					x.EndRelease(o, a, now, "stress")
				case 3: // a report claims an address
					a := addr(u32(ip("10.0.0.2")) + uint32(rng.IntN(29)))
					client := netip.AddrFrom16([16]byte{0: 0xfd, 1: 1, 15: byte(rng.IntN(8))})
					_, started, err := x.ClaimAt(o, a, client)
					if err != nil || !started {
						continue
					}
					take(a, o)
					if rng.IntN(2) == 0 {
						drop(a, o)
						x.Abort(o, a, now)
					} else {
						x.Commit(store.Lease{Addr: a, Owner: o, ClientIPv6: client, LeasedAt: now}, now, now, false)
					}
				case 5: // a batch release of two owners
					var rs []store.Release
					for range 2 {
						ob := store.Owner{Dataplane: o.Dataplane, Session: fmt.Sprint("s", rng.IntN(owners))}
						if a, ok := x.Lookup(ob); ok {
							rs = append(rs, store.Release{Addr: a, Owner: ob})
						}
					}
					started, _ := x.BeginReleaseMany(rs)
					if rng.IntN(8) == 0 { // the store failed
						x.CancelReleaseMany(started)
						continue
					}
					for _, l := range started {
						drop(l.Addr, l.Owner)
					}
					x.EndReleaseMany(started, now, "stress batch")
				case 4: // report, read
					rs := []table.Report{{SessionID: o.Session}, {SessionID: fmt.Sprint("s", rng.IntN(owners))}}
					x.ApplyReports(o.Dataplane, rs, make([]Outcome, len(rs)))
					x.Vouch(o.Dataplane, []string{o.Session}, now)
					x.Rows(table.Filter{DataplaneID: o.Dataplane})
					x.Stats()
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	if err := <-checked; err != nil {
		t.Fatal(err)
	}
	mustCheck(t, x)
	st := x.Stats()
	if int(st.Leased) != len(shadow) || st.Size != st.Leased+st.Free+st.Reserved-st.ReservedInUse {
		t.Fatalf("stats %+v, %d held", st, len(shadow))
	}
	for a, o := range shadow {
		if l, ok := x.Lease(a); !ok || l.Owner != o {
			t.Fatalf("%s: index says %v %v, callers %s", a, l, ok, o)
		}
	}
	if sticky.Load() == 0 {
		t.Fatal("no allocation went to a returning client: the stress test missed the sticky path")
	}
	t.Logf("%d sticky grants", sticky.Load())
}
