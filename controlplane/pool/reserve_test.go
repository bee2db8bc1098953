package pool

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/store"
)

// ow is session s on data plane "dp".
func ow(s string) store.Owner { return store.Owner{Dataplane: "dp", Session: s} }

func TestCooldownAndReleaseOrder(t *testing.T) {
	p, err := New(Config{Prefix: netip.MustParsePrefix("10.0.0.0/29")}, Options{Cooldown: 10 * time.Second}) // .2-.6
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		o := ow(string(rune('a' + i)))
		g, err := p.Acquire(o, netip.Addr{}, t0)
		if err != nil || g.EarlyReuse {
			t.Fatalf("acquire %d: %+v %v", i, g, err)
		}
		p.Commit(store.Lease{Addr: g.Addr, Owner: o}, t0, t0, true)
	}
	if _, err := p.Acquire(ow("z"), netip.Addr{}, t0); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full pool: %v", err)
	}
	// Released .4 then .2: reused in that order; within the cooldown only
	// because nothing else is free.
	release(p, netip.MustParseAddr("10.0.0.4"), ow("c"), t0.Add(time.Second))
	release(p, netip.MustParseAddr("10.0.0.2"), ow("a"), t0.Add(2*time.Second))
	g, _ := p.Acquire(ow("x"), netip.Addr{}, t0.Add(3*time.Second))
	if g.Addr.String() != "10.0.0.4" || !g.EarlyReuse {
		t.Fatalf("grant %+v", g)
	}
	g, _ = p.Acquire(ow("y"), netip.Addr{}, t0.Add(time.Minute))
	if g.Addr.String() != "10.0.0.2" || g.EarlyReuse {
		t.Fatalf("grant %+v", g)
	}
	// Abort puts the address back at the front.
	p.Abort(ow("y"), g.Addr, t0.Add(time.Minute))
	if g2, _ := p.Acquire(ow("w"), netip.Addr{}, t0.Add(time.Minute)); g2.Addr != g.Addr {
		t.Fatalf("after abort got %s, want %s", g2.Addr, g.Addr)
	}
}

func TestReleasedOrderSurvivesRestore(t *testing.T) {
	p, _ := New(Config{Prefix: netip.MustParsePrefix("10.0.0.0/29")})
	if err := p.Adopt(store.Lease{Addr: netip.MustParseAddr("10.0.0.3"), Owner: ow("a")}, t0, t0); err != nil {
		t.Fatal(err)
	}
	p.Released(map[netip.Addr]time.Time{
		netip.MustParseAddr("10.0.0.2"): t0.Add(2 * time.Second),
		netip.MustParseAddr("10.0.0.5"): t0.Add(time.Second),
	})
	var order []string
	for i := range 4 {
		g, err := p.Acquire(ow(string(rune('b'+i))), netip.Addr{}, t0)
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, g.Addr.String())
	}
	want := []string{"10.0.0.4", "10.0.0.6", "10.0.0.5", "10.0.0.2"} // never used first, then by release time
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("order %v, want %v", order, want)
		}
	}
}

func TestReservationsInPool(t *testing.T) {
	p, _ := New(Config{Prefix: netip.MustParsePrefix("10.0.0.0/24")})
	r64 := Reservation{Client: netip.MustParsePrefix("fd00::/64"), Addr: netip.MustParseAddr("10.0.0.9")}
	r128 := Reservation{Client: netip.MustParsePrefix("fd00::5/128"), Addr: netip.MustParseAddr("10.0.0.10")}
	for _, r := range []Reservation{r64, r128} {
		if err := p.SetReservation(r, t0); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.SetReservation(Reservation{Client: netip.MustParsePrefix("fd01::/64"), Addr: r64.Addr}, t0); err == nil {
		t.Fatal("one address reserved for two clients")
	}
	if err := p.SetReservation(Reservation{Client: netip.MustParsePrefix("fd01::/64"), Addr: netip.MustParseAddr("10.0.0.1")}, t0); err == nil {
		t.Fatal("gateway reserved")
	}
	if m, ok := p.Match(netip.MustParseAddr("fd00::5")); !ok || m != r128 {
		t.Fatalf("match %v", m)
	}
	if m, ok := p.Match(netip.MustParseAddr("fd00::6")); !ok || m != r64 {
		t.Fatalf("match %v", m)
	}
	if st := p.Stats(); st.Reserved != 2 || st.Free != st.Size-2 {
		t.Fatalf("stats %+v", st)
	}
	// Nobody else gets them.
	for i := range 251 {
		g, err := p.Acquire(ow(string(rune(i+100))), netip.MustParseAddr("fd02::1"), time.Now())
		if err != nil {
			if errors.Is(err, ErrExhausted) {
				break
			}
			t.Fatal(err)
		}
		if g.Addr == r64.Addr || g.Addr == r128.Addr {
			t.Fatalf("reserved %s given away", g.Addr)
		}
	}
	// The reserved client still gets its address.
	if g, err := p.Acquire(ow("mine"), netip.MustParseAddr("fd00::7"), time.Now()); err != nil || g.Addr != r64.Addr || !g.Reserved {
		t.Fatalf("reserved client: %+v %v", g, err)
	}
	// A reservation in use still counts as reserved (and as leased): one
	// definition whether its client is connected or not.
	if st := p.Stats(); st.Reserved != 2 || st.ReservedInUse != 1 || st.Free != 0 || st.Size != st.Leased+st.Free+st.Reserved-st.ReservedInUse {
		t.Fatalf("stats with a reservation in use: %+v", st)
	}
	// Range changes may not leave out leases or reservations.
	if _, err := p.SetRange(Range{First: netip.MustParseAddr("10.0.0.20"), Last: netip.MustParseAddr("10.0.0.30")}); err == nil {
		t.Fatal("range leaving out leases accepted")
	}
	if a, ok := p.DeleteReservation(r128.Client, t0); !ok || a != r128.Addr {
		t.Fatal("delete")
	}
}
