package pool

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/store"
)

// client is the IPv6 address of test client n.
func client(n int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("fd00:5::%x", n)) }

// grant acquires and commits an address for o, whose client is c, at now,
// as the controller does around a store that agrees.
func grant(t *testing.T, x *Index, o store.Owner, c netip.Addr, now time.Time) Grant {
	t.Helper()
	g, err := x.Acquire(o, c, now)
	if err != nil {
		t.Fatalf("acquire for %s (%s): %v", o, c, err)
	}
	if g.Wait != nil || g.Existing {
		t.Fatalf("acquire for %s: %+v", o, g)
	}
	if !x.Commit(store.Lease{Addr: g.Addr, Owner: o, ClientIPv6: c, LeasedAt: now, Sticky: g.Sticky}, now, now, true) {
		t.Fatalf("commit of %s for %s refused", g.Addr, o)
	}
	mustCheck(t, x)
	return g
}

func mustRelease(t *testing.T, x *Index, a netip.Addr, o store.Owner, at time.Time) {
	t.Helper()
	if !release(x, a, o, at) {
		t.Fatalf("release of %s by %s refused", a, o)
	}
	mustCheck(t, x)
}

func sec(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }

// A client that comes back gets its address again, on any data plane, and
// newcomers meanwhile get never-used addresses first.
func TestStickyReturningClient(t *testing.T) {
	x := mustNew(t, "10.0.0.0/24", "")
	a := grant(t, x, ow("a1"), client(1), sec(0)) // .2
	b := grant(t, x, ow("b1"), client(2), sec(0)) // .3
	if a.Sticky || b.Sticky {
		t.Fatalf("first grants sticky: %+v %+v", a, b)
	}
	mustRelease(t, x, a.Addr, ow("a1"), sec(1))
	if h, ok := x.LastHolder(a.Addr); !ok || h != client(1) {
		t.Fatalf("last holder of %s: %v %v", a.Addr, h, ok)
	}
	if st := x.Stats(); st.FreeRemembered != 1 || st.Free != 252 {
		t.Fatalf("stats %+v", st)
	}
	n := grant(t, x, ow("n1"), client(9), sec(2))
	if n.Addr == a.Addr || n.Sticky {
		t.Fatalf("newcomer got %+v while never-used addresses are free", n)
	}
	// Back through another data plane, after the cooldown or not.
	back := grant(t, x, store.Owner{Dataplane: "dp2", Session: "a2"}, client(1), sec(2))
	if back.Addr != a.Addr || !back.Sticky || !back.ReleasedAt.Equal(sec(1)) || back.EarlyReuse {
		t.Fatalf("returning client got %+v, want %s sticky", back, a.Addr)
	}
	if r, _ := x.Row(back.Addr); !r.Sticky {
		t.Fatalf("row %+v: not marked sticky", r)
	}
	if _, ok := x.LastHolder(a.Addr); ok {
		t.Fatal("a held address still has a remembered holder")
	}
	if st := x.Stats(); st.FreeRemembered != 0 {
		t.Fatalf("stats %+v", st)
	}
	// The client's /64 neighbour is another client.
	mustRelease(t, x, back.Addr, store.Owner{Dataplane: "dp2", Session: "a2"}, sec(3))
	if g := grant(t, x, ow("nb"), netip.MustParseAddr("fd00:5::1:1"), sec(4)); g.Addr == a.Addr || g.Sticky {
		t.Fatalf("neighbour got %+v", g)
	}
}

// A remembered address goes to a newcomer only when nothing else is free,
// and then it is forgotten: its holder is the newcomer.
func TestRememberedGoesToNewcomerLast(t *testing.T) {
	x, err := New(Config{Prefix: netip.MustParsePrefix("10.0.0.0/29")}, Options{Cooldown: time.Minute}) // .2-.6
	if err != nil {
		t.Fatal(err)
	}
	var gs []Grant
	for i := range 3 {
		gs = append(gs, grant(t, x, ow(fmt.Sprint("c", i)), client(i), sec(0))) // .2 .3 .4
	}
	mustRelease(t, x, gs[1].Addr, ow("c1"), sec(10)) // .3 remembered for client 1
	mustRelease(t, x, gs[0].Addr, ow("c0"), sec(20)) // .2 remembered for client 0
	got := []string{}
	for i := range 4 {
		g := grant(t, x, ow(fmt.Sprint("n", i)), client(100+i), sec(30))
		if g.Sticky {
			t.Fatalf("newcomer %d: sticky grant %+v", i, g)
		}
		got = append(got, fmt.Sprintf("%s early=%v", g.Addr, g.EarlyReuse))
	}
	// Never used first, then least recently released: .3 before .2.
	want := []string{"10.0.0.5 early=false", "10.0.0.6 early=false", "10.0.0.3 early=true", "10.0.0.2 early=true"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	// Both are forgotten: client 0 comes back to a full pool.
	if _, err := x.Acquire(ow("c0b"), client(0), sec(40)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full pool: %v", err)
	}
	mustRelease(t, x, ip("10.0.0.5"), ow("n0"), sec(50))
	if g := grant(t, x, ow("c0b"), client(0), sec(60)); g.Sticky || g.Addr != ip("10.0.0.5") {
		t.Fatalf("client 0, whose address went to another: %+v", g)
	}
}

// A returning client's address comes out of the middle of the free order;
// the others keep theirs.
func TestStickyKeepsLRUOrder(t *testing.T) {
	x := mustNew(t, "10.0.0.0/29", "") // .2-.6
	for i := range 5 {
		grant(t, x, ow(fmt.Sprint("c", i)), client(i), sec(0))
	}
	for i := range 5 { // released .2 .3 .4 .5 .6, in that order
		mustRelease(t, x, addr(u32(ip("10.0.0.2"))+uint32(i)), ow(fmt.Sprint("c", i)), sec(10+i))
	}
	if g := grant(t, x, ow("c2b"), client(2), sec(20)); g.Addr != ip("10.0.0.4") || !g.Sticky {
		t.Fatalf("returning client 2: %+v", g)
	}
	var got []string
	for i := range 4 {
		got = append(got, grant(t, x, ow(fmt.Sprint("n", i)), client(50+i), sec(30)).Addr.String())
	}
	if want := "[10.0.0.2 10.0.0.3 10.0.0.5 10.0.0.6]"; fmt.Sprint(got) != want {
		t.Fatalf("order %v, want %v", got, want)
	}
}

// Of several remembered addresses (a client with two sessions), the one
// released last comes back first.
func TestStickyLatestFirst(t *testing.T) {
	x := mustNew(t, "10.0.0.0/24", "")
	g1 := grant(t, x, ow("s1"), client(1), sec(0))
	g2 := grant(t, x, ow("s2"), client(1), sec(0))
	mustRelease(t, x, g2.Addr, ow("s2"), sec(1))
	mustRelease(t, x, g1.Addr, ow("s1"), sec(2))
	if g := grant(t, x, ow("s3"), client(1), sec(3)); g.Addr != g1.Addr || !g.Sticky {
		t.Fatalf("first return: %+v, want %s", g, g1.Addr)
	}
	if g := grant(t, x, ow("s4"), client(1), sec(3)); g.Addr != g2.Addr || !g.Sticky {
		t.Fatalf("second return: %+v, want %s", g, g2.Addr)
	}
	if g := grant(t, x, ow("s5"), client(1), sec(3)); g.Sticky {
		t.Fatalf("third session: %+v", g)
	}
}

// Reservations win: a client with a reservation gets it rather than its
// remembered address, and a remembered address reserved for another
// client goes to that client only.
func TestStickyReservationsWin(t *testing.T) {
	x := mustNew(t, "10.0.0.0/24", "")
	a := grant(t, x, ow("a1"), client(1), sec(0)) // .2
	b := grant(t, x, ow("b1"), client(2), sec(0)) // .3
	mustRelease(t, x, a.Addr, ow("a1"), sec(1))
	mustRelease(t, x, b.Addr, ow("b1"), sec(1))
	if err := x.SetReservation(Reservation{Client: netip.PrefixFrom(client(1), 128), Addr: ip("10.0.0.9")}, sec(2)); err != nil {
		t.Fatal(err)
	}
	if err := x.SetReservation(Reservation{Client: netip.PrefixFrom(client(3), 128), Addr: b.Addr}, sec(2)); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, x)
	if st := x.Stats(); st.FreeRemembered != 1 { // .2; .3 is reserved
		t.Fatalf("stats %+v", st)
	}
	if g := grant(t, x, ow("a2"), client(1), sec(3)); g.Addr != ip("10.0.0.9") || !g.Reserved || g.Sticky {
		t.Fatalf("client with a reservation: %+v", g)
	}
	if g := grant(t, x, ow("b2"), client(2), sec(3)); g.Addr == b.Addr || g.Sticky {
		t.Fatalf("client whose address is reserved for another: %+v", g)
	}
	if g := grant(t, x, ow("c1"), client(3), sec(3)); g.Addr != b.Addr || !g.Reserved {
		t.Fatalf("the reservation's client: %+v", g)
	}
	// With its reservation busy, a client gets its remembered address.
	mustRelease(t, x, ip("10.0.0.9"), ow("a2"), sec(4))
	grant(t, x, ow("a3"), client(1), sec(5)) // the reservation again
	if g := grant(t, x, ow("a4"), client(1), sec(5)); g.Addr != a.Addr || !g.Sticky || !g.ReservationBusy {
		t.Fatalf("second session of the reserved client: %+v, want %s", g, a.Addr)
	}
}

// The lease limits hold for returning clients too.
func TestStickyLimits(t *testing.T) {
	x, err := New(Config{Prefix: netip.MustParsePrefix("10.0.0.0/24")}, Options{Limits: Limits{PerIP: 1}})
	if err != nil {
		t.Fatal(err)
	}
	g := grant(t, x, ow("s1"), client(1), sec(0))
	mustRelease(t, x, g.Addr, ow("s1"), sec(1))
	grant(t, x, ow("s2"), client(1), sec(2)) // its address back
	var le *LimitError
	if _, err := x.Acquire(ow("s3"), client(1), sec(3)); !errors.As(err, &le) {
		t.Fatalf("second lease of a client at its limit: %v", err)
	}
}

// A sticky claim the store refused leaves the address where it was:
// remembered, in its place in the free order.
func TestStickyAbort(t *testing.T) {
	x := mustNew(t, "10.0.0.0/29", "") // .2-.6
	for i := range 5 {
		grant(t, x, ow(fmt.Sprint("c", i)), client(i), sec(0))
	}
	mustRelease(t, x, ip("10.0.0.2"), ow("c0"), sec(1))
	mustRelease(t, x, ip("10.0.0.3"), ow("c1"), sec(2))
	g, err := x.Acquire(ow("c0b"), client(0), sec(3))
	if err != nil || !g.Sticky || g.Addr != ip("10.0.0.2") {
		t.Fatalf("grant %+v %v", g, err)
	}
	mustCheck(t, x)
	x.Abort(ow("c0b"), g.Addr, sec(3))
	mustCheck(t, x)
	if h, ok := x.LastHolder(g.Addr); !ok || h != client(0) {
		t.Fatalf("after abort: holder %v %v", h, ok)
	}
	// Still the oldest: a newcomer gets it (nothing older), not .3.
	if n := grant(t, x, ow("n"), client(9), sec(4)); n.Addr != ip("10.0.0.2") {
		t.Fatalf("newcomer after abort: %+v", n)
	}
}

// Remember (at load) skips leased addresses, and the memory counts only
// free addresses within the range.
func TestRememberAndStats(t *testing.T) {
	x := mustNew(t, "10.0.0.0/24", "10.0.0.2-10.0.0.20")
	if err := x.Adopt(store.Lease{Addr: ip("10.0.0.5"), Owner: ow("h"), ClientIPv6: client(5)}, t0, t0); err != nil {
		t.Fatal(err)
	}
	x.Released(map[netip.Addr]time.Time{ip("10.0.0.3"): sec(1), ip("10.0.0.4"): sec(2), ip("10.0.0.5"): sec(3), ip("10.0.0.30"): sec(4)})
	x.Remember(map[netip.Addr]netip.Addr{
		ip("10.0.0.3"): client(3), ip("10.0.0.4"): client(4), ip("10.0.0.5"): client(6), ip("10.0.0.30"): client(30),
		ip("192.0.2.1"): client(7), // outside the pool
	})
	mustCheck(t, x)
	if _, ok := x.LastHolder(ip("10.0.0.5")); ok {
		t.Fatal("a leased address got a remembered holder")
	}
	if st := x.Stats(); st.FreeRemembered != 2 || st.Free != 18 {
		t.Fatalf("stats %+v", st)
	}
	if _, err := x.SetRange(Range{First: ip("10.0.0.2"), Last: ip("10.0.0.40")}); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, x)
	if st := x.Stats(); st.FreeRemembered != 3 {
		t.Fatalf("stats after widening %+v", st)
	}
	if g := grant(t, x, ow("r"), client(30), sec(5)); g.Addr != ip("10.0.0.30") || !g.Sticky {
		t.Fatalf("returning client 30: %+v", g)
	}
	if g := grant(t, x, ow("n"), client(99), sec(5)); g.Addr != ip("10.0.0.2") {
		t.Fatalf("newcomer: %+v", g) // never used: ahead of every release
	}
}

// A released lease without an IPv6 client address (none, or IPv4-mapped:
// the store keeps no such holder either) leaves nothing remembered.
func TestReleaseWithoutClient(t *testing.T) {
	x := mustNew(t, "10.0.0.0/24", "")
	a := alloc(t, x, owner(1))
	grant(t, x, ow("c"), client(1), sec(0))
	m := grant(t, x, ow("m"), ip("::ffff:192.0.2.1"), sec(0))
	mustRelease(t, x, ip("10.0.0.3"), ow("c"), sec(1))
	mustRelease(t, x, ip(a), owner(1), sec(2))
	mustRelease(t, x, m.Addr, ow("m"), sec(2))
	for _, v := range []netip.Addr{ip(a), m.Addr} {
		if _, ok := x.LastHolder(v); ok {
			t.Fatalf("%s: remembered a holder without an IPv6 address", v)
		}
	}
	if st := x.Stats(); st.FreeRemembered != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// One client that held many addresses (a load generator, a big NAT) gets
// back, session by session, the latest released of those still free,
// however the releases were ordered in time and whatever newcomers took
// meanwhile: the brute-force choice over all its remembered addresses.
func TestStickyManyOfOneClient(t *testing.T) {
	x := mustNew(t, "10.0.0.0/22", "")
	const n = 300
	rng := rand.New(rand.NewPCG(1, 2))
	gs := make([]Grant, n)
	for i := range gs {
		gs[i] = grant(t, x, ow(fmt.Sprint("s", i)), client(1), sec(0))
	}
	// Released out of time order (a batch of many, then stragglers),
	// some at the same moment.
	for _, i := range rng.Perm(n) {
		mustRelease(t, x, gs[i].Addr, ow(fmt.Sprint("s", i)), sec(1+rng.IntN(n/3)))
	}
	want := func() (netip.Addr, bool) {
		var best netip.Addr
		var bestAt time.Time
		for _, g := range gs {
			h, ok := x.LastHolder(g.Addr)
			if !ok || h != client(1) {
				continue
			}
			x.mu.Lock()
			free := x.isFreeLocked(u32(g.Addr))
			at, _ := x.free.releasedAt(u32(g.Addr))
			x.mu.Unlock()
			if !free {
				continue
			}
			if !best.IsValid() || at.After(bestAt) || (at.Equal(bestAt) && !g.Addr.Less(best)) {
				best, bestAt = g.Addr, at
			}
		}
		return best, best.IsValid()
	}
	holder := map[netip.Addr]string{} // every address granted from here on, and to whom
	take := func(g Grant, who string) {
		if prev, dup := holder[g.Addr]; dup {
			t.Fatalf("%s granted to %s while %s holds it", g.Addr, who, prev)
		}
		holder[g.Addr] = who
	}
	for i := 0; ; i++ {
		if i%7 == 3 {
			who := fmt.Sprint("newcomer", i)
			take(grant(t, x, ow(who), client(1000+i), sec(n)), who) // takes the oldest
		}
		w, ok := want()
		who := fmt.Sprint("back", i)
		g := grant(t, x, ow(who), client(1), sec(n))
		take(g, who)
		if !ok {
			if g.Sticky {
				t.Fatalf("return %d: sticky %s, but none of its addresses is free", i, g.Addr)
			}
			break
		}
		if !g.Sticky || g.Addr != w {
			t.Fatalf("return %d: got %s (sticky %v), want %s", i, g.Addr, g.Sticky, w)
		}
	}
}
