package main

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func pfx(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, v := range s {
		out[i] = netip.MustParsePrefix(v)
	}
	return out
}

func TestParseLease(t *testing.T) {
	cases := []struct {
		data  string
		addr  string
		route string
		bad   bool
	}{
		{data: "13.8.0.2 0.0.0.0 8.8.8.8 8.8.4.4 1.1.1.1 ", addr: "13.8.0.2", route: "0.0.0.0/0"},
		{data: "13.8.0.2 0.0.0.0 8.8.8.8 8.8.4.4 1.1.1.1\x00\x00garbage", addr: "13.8.0.2", route: "0.0.0.0/0"},
		{data: "13.8.0.2  13.8.0.1\t8.8.8.8 8.8.4.4 1.1.1.1", addr: "13.8.0.2", route: "13.8.0.1/32"},
		{data: "13.8.0.2 10.1.0.0/16 8.8.8.8 8.8.4.4 1.1.1.1 ", addr: "13.8.0.2", route: "10.1.0.0/16"},
		{data: "13.8.0.2 10.1.2.3/16 8.8.8.8 8.8.4.4 1.1.1.1 ", addr: "13.8.0.2", route: "10.1.0.0/16"},
		{data: "13.8.0.2 0.0.0.0/0 8.8.8.8 8.8.4.4 1.1.1.1 ", addr: "13.8.0.2", route: "0.0.0.0/0"},
		{data: "13.8.0.2 0.0.0.0 8.8.8.8 8.8.4.4", bad: true},
		{data: "13.8.0.2 fd00::/8 8.8.8.8 8.8.4.4 1.1.1.1", bad: true},
		{data: "13.8.0.2 10.0.0.0/99 8.8.8.8 8.8.4.4 1.1.1.1", bad: true},
		{data: "0.0.0.0 0.0.0.0 8.8.8.8 8.8.4.4 1.1.1.1", bad: true},
		{data: "", bad: true},
	}
	for _, tc := range cases {
		l, err := parseLease([]byte(tc.data))
		if tc.bad {
			if err == nil {
				t.Errorf("%q: accepted as %v", tc.data, l)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.data, err)
			continue
		}
		if l.Addr != netip.MustParseAddr(tc.addr) || l.route != netip.MustParsePrefix(tc.route) {
			t.Errorf("%q: got %v", tc.data, l)
		}
		if l.DNS != [3]netip.Addr{netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("8.8.4.4"), netip.MustParseAddr("1.1.1.1")} {
			t.Errorf("%q: dns %v", tc.data, l.DNS)
		}
	}
}

func TestPlanRoutes(t *testing.T) {
	mk := func(data string) lease {
		l, err := parseLease([]byte(data))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	def := mk("13.8.0.2 0.0.0.0 8.8.8.8 8.8.4.4 1.1.1.1 ")
	host := mk("13.8.0.2 13.8.0.1 8.8.8.8 8.8.4.4 1.1.1.1 ")
	net16 := mk("13.8.0.2 10.1.0.0/16 8.8.8.8 8.8.4.4 1.1.1.1 ")
	cases := []struct {
		name string
		l    lease
		cfg  config
		want []netip.Prefix
	}{
		{"default route taken", def, config{}, pfx("0.0.0.0/0")},
		{"default route plus extras", def, config{routes: pfx("10.0.0.0/8")}, pfx("0.0.0.0/0", "10.0.0.0/8")},
		{"keep default: the /24 of the lease", def, config{keepDefaultRoute: true}, pfx("13.8.0.0/24")},
		{"keep default: --pool", def, config{keepDefaultRoute: true, pool: netip.MustParsePrefix("13.8.0.0/25")}, pfx("13.8.0.0/25")},
		{"keep default: pool and extras, no duplicates", def,
			config{keepDefaultRoute: true, routes: pfx("13.8.0.0/24", "192.0.2.0/24")}, pfx("13.8.0.0/24", "192.0.2.0/24")},
		{"bare address is a host route, pool kept reachable", host, config{}, pfx("13.8.0.0/24", "13.8.0.1/32")},
		{"prefix route", net16, config{}, pfx("13.8.0.0/24", "10.1.0.0/16")},
		{"prefix route with keep default", net16, config{keepDefaultRoute: true}, pfx("13.8.0.0/24", "10.1.0.0/16")},
		{"--route may ask for everything", net16, config{routes: pfx("0.0.0.0/0")}, pfx("13.8.0.0/24", "10.1.0.0/16", "0.0.0.0/0")},
	}
	for _, tc := range cases {
		if got := planRoutes(tc.l, &tc.cfg); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestBackoffGrowthAndBounds(t *testing.T) {
	const lo, hi = 100 * time.Millisecond, 3 * time.Second
	// Without jitter (rand returns 0) the delays double from min to max.
	b := newBackoff(lo, hi)
	b.rand = func(int64) int64 { return 0 }
	var got []time.Duration
	for range 8 {
		got = append(got, b.next())
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3000, 3000, 3000}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !slices.Equal(got, want) {
		t.Errorf("delays %v, want %v", got, want)
	}
	b.reset()
	if d := b.next(); d != lo {
		t.Errorf("after reset: %v, want %v", d, lo)
	}

	// With the largest jitter, each delay is base*1.5, still capped at max.
	b = newBackoff(lo, hi)
	b.rand = func(n int64) int64 { return n - 1 }
	for i, w := range []time.Duration{150, 300, 600, 1200, 2400, 3000, 3000} {
		if d := b.next(); d != w*time.Millisecond {
			t.Errorf("max jitter, attempt %d: %v, want %v", i, d, w*time.Millisecond)
		}
	}

	// With the real random source every delay stays in [min, max] and the
	// sequence does not shrink below the un-jittered base.
	b = newBackoff(lo, hi)
	for i := range 1000 {
		base := b.base(b.n)
		d := b.next()
		if d < lo || d > hi || d < base {
			t.Fatalf("attempt %d: %v outside [%v, %v] or below base %v", i, d, lo, hi, base)
		}
	}

	// Degenerate settings hold too: min == max, and huge attempt counts.
	b = newBackoff(time.Second, time.Second)
	for range 100 {
		if d := b.next(); d != time.Second {
			t.Fatalf("min == max: %v", d)
		}
	}
	b = newBackoff(time.Nanosecond, time.Hour)
	b.n = 1 << 20
	if d := b.next(); d != time.Hour {
		t.Errorf("attempt 2^20: %v, want the cap", d)
	}
}
