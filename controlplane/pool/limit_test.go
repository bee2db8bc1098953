package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/fourover6/fourover6/controlplane/store"
)

func TestLimits(t *testing.T) {
	x, err := New(Config{Prefix: netip.MustParsePrefix("10.0.0.0/24")}, Options{Limits: Limits{PerIP: 2, PerPrefix: 3}})
	if err != nil {
		t.Fatal(err)
	}
	if x.Limits().PrefixLen != 64 {
		t.Fatalf("default prefix length %d", x.Limits().PrefixLen)
	}
	n := 0
	grant := func(client string) error {
		t.Helper()
		n++
		o := store.Owner{Dataplane: "dp1", Session: fmt.Sprint("s", n)}
		g, err := x.Acquire(o, ip(client), t0)
		if err != nil {
			return err
		}
		if !x.Commit(store.Lease{Addr: g.Addr, Owner: o, ClientIPv6: ip(client)}, t0, t0, true) {
			t.Fatal("commit")
		}
		return nil
	}
	var le *LimitError
	for range 2 {
		if err := grant("fd00::1"); err != nil {
			t.Fatal(err)
		}
	}
	// The third lease of one address: refused, by the address limit.
	if err := grant("fd00::1"); !errors.As(err, &le) || le.Kind != LimitIP || le.Max != 2 || le.Client.String() != "fd00::1/128" || !errors.Is(err, ErrLimit) {
		t.Fatalf("third lease of one address: %v", err)
	}
	// Another address of the same /64 gets one more, then the prefix is full.
	if err := grant("fd00::2"); err != nil {
		t.Fatal(err)
	}
	if err := grant("fd00::3"); !errors.As(err, &le) || le.Kind != LimitPrefix || le.Client.String() != "fd00::/64" {
		t.Fatalf("fourth lease of one /64: %v", err)
	}
	if ipN, pfxN := x.ClientLeases(ip("fd00::9")); ipN != 0 || pfxN != 3 {
		t.Fatalf("counts %d %d", ipN, pfxN)
	}
	// Another /64 is counted apart. A retry of a held lease is not refused.
	if err := grant("fd00:0:0:1::1"); err != nil {
		t.Fatal(err)
	}
	if g, err := x.Acquire(store.Owner{Dataplane: "dp1", Session: "s1"}, ip("fd00::1"), t0); err != nil || !g.Existing {
		t.Fatalf("retry at the limit: %+v %v", g, err)
	}
	// A reservation is exempt: its client gets it at the limit.
	if err := x.SetReservation(Reservation{Client: netip.MustParsePrefix("fd00::1/128"), Addr: ip("10.0.0.99")}, t0); err != nil {
		t.Fatal(err)
	}
	if err := grant("fd00::1"); err != nil {
		t.Fatalf("reserved client at its limit: %v", err)
	}
	if ipN, _ := x.ClientLeases(ip("fd00::1")); ipN != 3 {
		t.Fatalf("reserved lease not counted: %d", ipN)
	}
	// Releases make room again.
	for _, a := range []string{"10.0.0.2", "10.0.0.3"} {
		l, _ := x.Lease(ip(a))
		release(x, l.Addr, l.Owner, t0)
	}
	if err := grant("fd00::4"); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	// Clients without an IPv6 address are not counted (nor limited).
	for range 5 {
		n++
		if _, err := x.Acquire(store.Owner{Dataplane: "dp1", Session: fmt.Sprint("s", n)}, netip.Addr{}, t0); err != nil {
			t.Fatal(err)
		}
	}
	mustCheck(t, x)
	for _, bad := range []Limits{{PerIP: -1}, {PrefixLen: 129}} {
		if _, err := New(Config{Prefix: netip.MustParsePrefix("10.0.0.0/24")}, Options{Limits: bad}); err == nil {
			t.Errorf("limits %+v accepted", bad)
		}
	}
}

func TestReleaseMany(t *testing.T) {
	x := mustNew(t, "10.0.0.0/24", "")
	a1, a2, a3 := ip(alloc(t, x, owner(1))), ip(alloc(t, x, owner(2))), ip(alloc(t, x, owner(3)))
	g, _ := x.Acquire(owner(4), netip.Addr{}, t0) // in flight
	started, busy := x.BeginReleaseMany([]store.Release{
		{Addr: a1, Owner: owner(1)},
		{Addr: a2, Owner: owner(9)}, // not the holder
		{Addr: g.Addr, Owner: owner(4)},
		{Addr: a3, Owner: owner(3)},
		{Addr: a3, Owner: owner(3)}, // twice: once
	})
	if len(started) != 2 || started[0].Addr != a1 || started[1].Addr != a3 || len(busy) != 1 || busy[0].Owner != owner(4) {
		t.Fatalf("started %v busy %v", started, busy)
	}
	if _, w, ok := x.BeginRelease(owner(1), a1); ok || w == nil {
		t.Fatal("a lease in a batch release could be released again")
	}
	x.CancelReleaseMany(started[1:])
	x.EndReleaseMany(started[:1], t0, "batch")
	mustCheck(t, x)
	if _, ok := x.Lease(a1); ok {
		t.Fatal("released lease still there")
	}
	if _, ok := x.Lease(a3); !ok {
		t.Fatal("cancelled release lost its lease")
	}
}
