package controller

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
)

// TestStoredSettingsOverrideWarns: a DNS list or pool range set at run
// time wins over the configuration at the next start, with one WARN line
// each naming both values and where the configured one came from; the
// settings in effect say they are the store's.
func TestStoredSettingsOverrideWarns(t *testing.T) {
	st := store.NewMemory()
	flagDNS := [3]netip.Addr{ip("192.0.2.53"), ip("192.0.2.54"), ip("192.0.2.55")}
	cfgRange := pool.Range{First: ip("13.8.0.2"), Last: ip("13.8.0.100")}
	start := func() (*Controller, *syncBuffer) {
		logs := &syncBuffer{}
		c, err := New(Config{
			Pool:      pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/24"), Range: cfgRange},
			DNS:       flagDNS,
			DNSFrom:   "file /etc/fourover6/controller.yaml:4",
			RangeFrom: "flag",
			Store:     st,
			Logger:    slog.New(slog.NewJSONHandler(logs, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		return c, logs
	}

	c, logs := start()
	s, err := c.Settings()
	if err != nil || s.DNSStored || s.RangeStored || s.DNS != flagDNS || s.Range != cfgRange {
		t.Fatalf("fresh store: settings %+v, %v", s, err)
	}
	if w := logs.records(t, "the DNS servers set at run time (dns set, apply) override the configured ones"); len(w) != 0 {
		t.Fatalf("nothing stored yet, but: %v", w)
	}
	if _, _, err := c.SetDNS(ctx, []netip.Addr{ip("198.51.100.53")}); err != nil {
		t.Fatal(err)
	}
	newRange := pool.Range{First: ip("13.8.0.10"), Last: ip("13.8.0.20")}
	if _, _, err := c.UpdatePool(ctx, newRange); err != nil {
		t.Fatal(err)
	}
	if s, _ := c.Settings(); !s.DNSStored || !s.RangeStored || s.Range != newRange || s.DNS[0] != ip("198.51.100.53") {
		t.Fatalf("after dns set and pool set-range: %+v", s)
	}

	// The next start: the stored values win, loudly.
	c, logs = start()
	s, _ = c.Settings()
	if !s.DNSStored || !s.RangeStored || s.Range != newRange || s.DNS[0] != ip("198.51.100.53") {
		t.Fatalf("restart: %+v", s)
	}
	d := logs.records(t, "the DNS servers set at run time (dns set, apply) override the configured ones")
	if len(d) != 1 || d[0]["level"] != "WARN" || d[0]["configured"] != "192.0.2.53,192.0.2.54,192.0.2.55" ||
		d[0]["configured_from"] != "file /etc/fourover6/controller.yaml:4" || d[0]["dns"] == "" {
		t.Errorf("DNS override log = %v", d)
	}
	r := logs.records(t, "the pool range set at run time (pool set-range, apply) overrides the configured one")
	if len(r) != 1 || r[0]["level"] != "WARN" || r[0]["range"] != "13.8.0.10-13.8.0.20" || r[0]["configured"] != "13.8.0.2-13.8.0.100" || r[0]["configured_from"] != "flag" {
		t.Errorf("range override log = %v", r)
	}
	if l := logs.records(t, "state loaded"); len(l) != 1 || l[0]["dns"] != "198.51.100.53,8.8.8.8,1.1.1.1" {
		t.Errorf("state loaded = %v: want the DNS in effect", l)
	}

	// Set back to the configured values: no longer an override, no warning.
	if _, _, err := c.SetDNS(ctx, flagDNS[:]); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.UpdatePool(ctx, cfgRange); err != nil {
		t.Fatal(err)
	}
	if s, _ := c.Settings(); s.DNSStored || s.RangeStored {
		t.Fatalf("set back to the configuration: %+v", s)
	}
	_, logs = start()
	if w := append(logs.records(t, "the DNS servers set at run time (dns set, apply) override the configured ones"),
		logs.records(t, "the pool range set at run time (pool set-range, apply) overrides the configured one")...); len(w) != 0 {
		t.Errorf("stored values equal to the configuration warned: %v", w)
	}
}

// TestStoredWholePrefixWarns: "the whole prefix" set at run time over a
// configured --pool-range is an override too.
func TestStoredWholePrefixWarns(t *testing.T) {
	st := store.NewMemory()
	cfg := Config{
		Pool:      pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/24"), Range: pool.Range{First: ip("13.8.0.2"), Last: ip("13.8.0.9")}},
		RangeFrom: "file c.yaml:2",
		Store:     st,
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.UpdatePool(ctx, pool.Range{}); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	if c, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	w := logs.records(t, "the whole prefix, as set at run time (pool set-range, apply), overrides the configured pool range")
	if len(w) != 1 || w[0]["level"] != "WARN" || w[0]["configured"] != "13.8.0.2-13.8.0.9" || w[0]["configured_from"] != "file c.yaml:2" {
		t.Errorf("whole prefix override: %v", w)
	}
	if s, _ := c.Settings(); !s.RangeStored || s.Range.First != ip("13.8.0.2") || s.Range.Last != ip("13.8.0.254") {
		t.Errorf("settings: %+v", s)
	}
}

func TestSettingsStandby(t *testing.T) {
	c, err := New(Config{Pool: pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/24")}, Standby: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Settings(); err == nil {
		t.Fatal("a standby has settings in effect")
	}
}

// TestStuck: the watchdog's check is quiet before Run and while Run
// reconciles, and fails once no reconcile finished for long.
func TestStuck(t *testing.T) {
	f := newFixture(t, "13.8.0.0/24", "")
	if err := f.c.Stuck(); err != nil {
		t.Fatalf("before Run: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { f.c.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for f.c.ranAt.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := f.c.Stuck(); err != nil {
		t.Fatalf("running: %v", err)
	}
	cancel()
	<-done
	f.c.ranAt.Store(time.Now().Add(-time.Minute).UnixNano())
	if err := f.c.Stuck(); err == nil || !strings.Contains(err.Error(), "reconcile loop last finished 1m") {
		t.Fatalf("a minute without a reconcile: %v", err)
	}
}
