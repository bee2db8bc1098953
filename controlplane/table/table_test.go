package table

import (
	"net/netip"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func row(addr, dp, sess string) Row {
	return Row{
		Addr:        netip.MustParseAddr(addr),
		ClientIPv6:  netip.MustParseAddr("2001:db8::1"),
		ClientPort:  40000,
		DataplaneID: dp,
		SessionID:   sess,
		LeasedAt:    t0,
		ConnectedAt: t0,
		LastHeard:   t0,
	}
}

func TestInsertGetDelete(t *testing.T) {
	tb := New()
	a := netip.MustParseAddr("13.8.0.2")
	tb.Insert(row("13.8.0.2", "dp1", "s1"), true)
	r, ok := tb.Get(a)
	if !ok || r.SessionID != "s1" || r.ClientPort != 40000 {
		t.Fatalf("Get = %+v %v", r, ok)
	}
	// Get returns a copy: changing it does not change the table.
	r.SessionID = "changed"
	if r2, _ := tb.Get(a); r2.SessionID != "s1" {
		t.Fatal("Get returned a reference into the table")
	}
	if tb.Delete(a, "dp1", "s2") || tb.Delete(a, "dp2", "s1") {
		t.Fatal("Delete by the wrong session succeeded")
	}
	if !tb.Delete(a, "dp1", "s1") {
		t.Fatal("Delete failed")
	}
	if _, ok := tb.Get(a); ok || tb.Len() != 0 {
		t.Fatal("row still there")
	}
	if tb.Delete(a, "dp1", "s1") {
		t.Fatal("second Delete succeeded")
	}
}

func TestUpdate(t *testing.T) {
	tb := New()
	a := netip.MustParseAddr("13.8.0.2")
	tb.Insert(row("13.8.0.2", "dp1", "s1"), true)

	c := Traffic{BytesFromClient: 100, PacketsFromClient: 2, BytesToClient: 300, PacketsToClient: 4}
	if _, ok := tb.Update(a, "dp1", "other", Update{Traffic: c, LastHeard: t0.Add(time.Minute)}); ok {
		t.Fatal("update with the wrong session id applied")
	}
	if _, ok := tb.Update(a, "dp2", "s1", Update{Traffic: c}); ok {
		t.Fatal("update from the wrong data plane applied")
	}
	if _, ok := tb.Update(netip.MustParseAddr("13.8.0.3"), "dp1", "s1", Update{Traffic: c}); ok {
		t.Fatal("update of a missing row applied")
	}
	if r, _ := tb.Get(a); r.Traffic != (Traffic{}) || !r.LastHeard.Equal(t0) {
		t.Fatalf("row changed by rejected updates: %+v", r)
	}

	connected := t0.Add(-time.Second)
	if _, ok := tb.Update(a, "dp1", "s1", Update{
		ClientIPv6: netip.MustParseAddr("2001:db8::2"), ClientPort: 40001,
		ConnectedAt: connected, LastHeard: t0.Add(time.Minute), Traffic: c,
	}); !ok {
		t.Fatal("update failed")
	}
	r, _ := tb.Get(a)
	if r.Traffic != c || !r.LastHeard.Equal(t0.Add(time.Minute)) || !r.ConnectedAt.Equal(connected) ||
		r.ClientIPv6.String() != "2001:db8::2" || r.ClientPort != 40001 || !r.LeasedAt.Equal(t0) {
		t.Fatalf("row = %+v", r)
	}

	// Zero fields keep their values; counters are absolute and replaced.
	c2 := Traffic{BytesFromClient: 200}
	tb.Update(a, "dp1", "s1", Update{Traffic: c2})
	r, _ = tb.Get(a)
	if !r.LastHeard.Equal(t0.Add(time.Minute)) || r.Traffic != c2 || r.ClientPort != 40001 || !r.ConnectedAt.Equal(connected) {
		t.Fatalf("row = %+v", r)
	}
	// The data plane's clock wins even when it is behind the lease time.
	tb.Update(a, "dp1", "s1", Update{LastHeard: t0.Add(-time.Hour), Traffic: c2})
	if r, _ = tb.Get(a); !r.LastHeard.Equal(t0.Add(-time.Hour)) {
		t.Fatalf("row = %+v", r)
	}
}

func TestListSortedAndFiltered(t *testing.T) {
	tb := New()
	// Insert out of order, with addresses whose string order differs from
	// their numeric order (13.8.0.10 < 13.8.0.9 as strings).
	tb.Insert(row("13.8.0.10", "dp1", "a"), true)
	tb.Insert(row("13.8.0.9", "dp2", "b"), true)
	tb.Insert(row("13.8.0.2", "dp1", "c"), true)
	tb.Insert(row("13.8.1.1", "dp2", "d"), true)

	got := tb.List(Filter{})
	want := []string{"13.8.0.2", "13.8.0.9", "13.8.0.10", "13.8.1.1"}
	if len(got) != len(want) {
		t.Fatalf("List = %v", got)
	}
	for i := range want {
		if got[i].Addr.String() != want[i] {
			t.Fatalf("List[%d] = %s, want %s", i, got[i].Addr, want[i])
		}
	}
	got = tb.List(Filter{DataplaneID: "dp2"})
	if len(got) != 2 || got[0].SessionID != "b" || got[1].SessionID != "d" {
		t.Fatalf("filtered List = %+v", got)
	}
	if got := tb.List(Filter{DataplaneID: "nope"}); len(got) != 0 {
		t.Fatalf("List for unknown data plane = %+v", got)
	}
}

func TestUpdateDeltas(t *testing.T) {
	tb := New()
	fresh, rebuilt := netip.MustParseAddr("13.8.0.2"), netip.MustParseAddr("13.8.0.3")
	tb.Insert(row("13.8.0.2", "dp1", "s1"), true)
	tb.Insert(row("13.8.0.3", "dp1", "s2"), false) // after a controller restart
	c1 := Traffic{BytesFromClient: 100, PacketsFromClient: 1, BytesToClient: 200, PacketsToClient: 2}
	c2 := Traffic{BytesFromClient: 150, PacketsFromClient: 2, BytesToClient: 700, PacketsToClient: 3}
	if d, _ := tb.Update(fresh, "dp1", "s1", Update{Traffic: c1}); d != c1 {
		t.Fatalf("a new session's first report counts from zero: %+v", d)
	}
	if d, _ := tb.Update(fresh, "dp1", "s1", Update{Traffic: c2}); d != (Traffic{50, 1, 500, 1}) {
		t.Fatalf("second report delta %+v", d)
	}
	if d, _ := tb.Update(rebuilt, "dp1", "s2", Update{Traffic: c1}); d != (Traffic{}) {
		t.Fatalf("a rebuilt row's first report must not count its history: %+v", d)
	}
	if d, _ := tb.Update(rebuilt, "dp1", "s2", Update{Traffic: c2}); d != (Traffic{50, 1, 500, 1}) {
		t.Fatalf("rebuilt row, second report delta %+v", d)
	}
	if d, _ := tb.Update(rebuilt, "dp1", "s2", Update{Traffic: c1}); d != (Traffic{}) {
		t.Fatalf("counters running back count nothing: %+v", d)
	}
}
