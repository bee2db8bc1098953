package table

import (
	"net/netip"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// leased is the row a lease alone gives.
func leased() Row {
	return Row{
		Addr:        netip.MustParseAddr("13.8.0.2"),
		ClientIPv6:  netip.MustParseAddr("2001:db8::1"),
		ClientPort:  40000,
		DataplaneID: "dp1",
		SessionID:   "s1",
		LeasedAt:    t0,
		ConnectedAt: t0,
		LastHeard:   t0,
	}
}

func view(r Session) Row {
	row := leased()
	r.Fill(&row)
	return row
}

func TestReportedFillsTheRow(t *testing.T) {
	rep := NewSession()
	if got := view(rep); got != leased() {
		t.Fatalf("nothing reported: %+v", got)
	}
	c := Traffic{BytesFromClient: 100, PacketsFromClient: 2, BytesToClient: 300, PacketsToClient: 4}
	connected := t0.Add(-time.Second)
	rep.Apply(Report{
		ClientIPv6: netip.MustParseAddr("2001:db8::2"), ClientPort: 40001,
		ConnectedAt: connected, LastHeard: t0.Add(time.Minute), Traffic: c,
	})
	r := view(rep)
	if r.Traffic != c || !r.LastHeard.Equal(t0.Add(time.Minute)) || !r.ConnectedAt.Equal(connected) ||
		r.ClientIPv6.String() != "2001:db8::2" || r.ClientPort != 40001 || !r.LeasedAt.Equal(t0) {
		t.Fatalf("row = %+v", r)
	}

	// Zero fields keep their values; counters are absolute and replaced.
	c2 := Traffic{BytesFromClient: 200}
	rep.Apply(Report{Traffic: c2})
	r = view(rep)
	if !r.LastHeard.Equal(t0.Add(time.Minute)) || r.Traffic != c2 || r.ClientPort != 40001 || !r.ConnectedAt.Equal(connected) {
		t.Fatalf("row = %+v", r)
	}
	// The data plane's clock wins even when it is behind the lease time.
	rep.Apply(Report{LastHeard: t0.Add(-time.Hour), Traffic: c2})
	if r = view(rep); !r.LastHeard.Equal(t0.Add(-time.Hour)) {
		t.Fatalf("row = %+v", r)
	}
}

func TestApplyDeltas(t *testing.T) {
	fresh, rebuilt := NewSession(), Session{} // rebuilt: after a controller restart
	c1 := Traffic{BytesFromClient: 100, PacketsFromClient: 1, BytesToClient: 200, PacketsToClient: 2}
	c2 := Traffic{BytesFromClient: 150, PacketsFromClient: 2, BytesToClient: 700, PacketsToClient: 3}
	if d := fresh.Apply(Report{Traffic: c1}); d != c1 {
		t.Fatalf("a new session's first report counts from zero: %+v", d)
	}
	if d := fresh.Apply(Report{Traffic: c2}); d != (Traffic{50, 1, 500, 1}) {
		t.Fatalf("second report delta %+v", d)
	}
	if d := rebuilt.Apply(Report{Traffic: c1}); d != (Traffic{}) {
		t.Fatalf("a rebuilt session's first report must not count its history: %+v", d)
	}
	if d := rebuilt.Apply(Report{Traffic: c2}); d != (Traffic{50, 1, 500, 1}) {
		t.Fatalf("rebuilt session, second report delta %+v", d)
	}
	if d := rebuilt.Apply(Report{Traffic: c1}); d != (Traffic{}) {
		t.Fatalf("counters running back count nothing: %+v", d)
	}
	if s := c1.Add(c2); s != (Traffic{250, 3, 900, 5}) {
		t.Fatalf("sum %+v", s)
	}
}

func TestFilter(t *testing.T) {
	r := leased()
	for _, c := range []struct {
		f    Filter
		want bool
	}{
		{Filter{}, true},
		{Filter{DataplaneID: "dp1"}, true},
		{Filter{DataplaneID: "dp2"}, false},
		{Filter{IPv6Prefix: netip.MustParsePrefix("2001:db8::/64")}, true},
		{Filter{IPv6Prefix: netip.MustParsePrefix("2001:db9::/64")}, false},
		{Filter{DataplaneID: "dp1", IPv6Prefix: netip.MustParsePrefix("2001:db9::/64")}, false},
	} {
		if got := c.f.Match(r); got != c.want {
			t.Errorf("%+v.Match = %v, want %v", c.f, got, c.want)
		}
	}
}

func TestSessionRates(t *testing.T) {
	s := NewSession()
	s.Apply(Report{ReceivedAt: t0, Traffic: Traffic{BytesFromClient: 1000, PacketsFromClient: 10}})
	if s.Rates != (Rates{}) {
		t.Errorf("rates after one report = %+v, want zero", s.Rates)
	}
	s.Apply(Report{ReceivedAt: t0.Add(5 * time.Second), Traffic: Traffic{
		BytesFromClient: 6000, PacketsFromClient: 20, BytesToClient: 50000, PacketsToClient: 50,
	}})
	want := Rates{BytesFromClient: 1000, PacketsFromClient: 2, BytesToClient: 10000, PacketsToClient: 10}
	if s.Rates != want {
		t.Errorf("rates = %+v, want %+v", s.Rates, want)
	}
	if s.Rates.Total() != 11000 {
		t.Errorf("total = %v, want 11000", s.Rates.Total())
	}
	// A report without a time (or not later) leaves the rates as they are.
	s.Apply(Report{Traffic: Traffic{BytesFromClient: 7000}})
	if s.Rates != want {
		t.Errorf("rates after an untimed report = %+v, want %+v", s.Rates, want)
	}
	// ... and is no base for the next: that one sets the base again.
	s.Apply(Report{ReceivedAt: t0.Add(9 * time.Second), Traffic: Traffic{BytesFromClient: 7000, PacketsFromClient: 20, BytesToClient: 50000, PacketsToClient: 50}})
	if s.Rates != want {
		t.Errorf("rates after a report following an untimed one = %+v, want %+v", s.Rates, want)
	}
	// Idle: the rate falls to zero.
	s.Apply(Report{ReceivedAt: t0.Add(10 * time.Second), Traffic: Traffic{BytesFromClient: 7000, PacketsFromClient: 20, BytesToClient: 50000, PacketsToClient: 50}})
	if s.Rates != (Rates{}) {
		t.Errorf("rates of an idle session = %+v, want zero", s.Rates)
	}
	var row Row
	s.Fill(&row)
	if row.Rates != s.Rates {
		t.Errorf("Fill: row rates %+v, want %+v", row.Rates, s.Rates)
	}

	// A rebuilt session's first report sets no totals' delta; its second
	// has a rate.
	var r Session
	if d := r.Apply(Report{ReceivedAt: t0, Traffic: Traffic{BytesToClient: 1 << 20}}); d != (Traffic{}) {
		t.Errorf("first delta of a rebuilt session = %+v", d)
	}
	r.Apply(Report{ReceivedAt: t0.Add(2 * time.Second), Traffic: Traffic{BytesToClient: 1<<20 + 2000}})
	if r.Rates.BytesToClient != 1000 {
		t.Errorf("rebuilt session's rate = %+v, want 1000 B/s to the client", r.Rates)
	}
}
