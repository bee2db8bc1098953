package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
)

// clock is a fake time source that moves only when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// records returns the JSON log lines with the given msg.
func (s *syncBuffer) records(t *testing.T, msg string) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

type fixture struct {
	c    *Controller
	clk  *clock
	logs *syncBuffer
}

func newFixture(t *testing.T, prefix, rng string) fixture {
	t.Helper()
	r, err := pool.ParseRange(rng)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)}
	logs := &syncBuffer{}
	c, err := New(Config{
		Pool:    pool.Config{Prefix: netip.MustParsePrefix(prefix), Range: r},
		DNS:     [3]netip.Addr{ip("202.38.120.242"), ip("8.8.8.8"), ip("202.106.0.20")},
		Version: "v9.9.9",
		Logger:  slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Now:     clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return fixture{c: c, clk: clk, logs: logs}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func (f fixture) poolInfo() PoolInfo {
	info, err := f.c.PoolInfo(ctx)
	if err != nil {
		panic(err)
	}
	return info
}

func (f fixture) dps() []Dataplane {
	d, err := f.c.Dataplanes(ctx)
	if err != nil {
		panic(err)
	}
	return d
}

var (
	ctx     = context.Background()
	client1 = ip("2001:db8::1")
)

func TestRegister(t *testing.T) {
	f := newFixture(t, "13.8.0.0/24", "")
	reg, err := f.c.RegisterDataplane(ctx, Registration{DataplaneID: "dp1", Version: "v1", Listen: "[::]:5678"})
	if err != nil {
		t.Fatal(err)
	}
	if reg.Gateway.String() != "13.8.0.1" || reg.Prefix.String() != "13.8.0.0/24" || reg.ControllerVersion != "v9.9.9" {
		t.Fatalf("registration = %+v", reg)
	}
	at := f.clk.Now()
	f.clk.Add(time.Minute)
	// Again: harmless, updates version and contact time.
	if _, err := f.c.RegisterDataplane(ctx, Registration{DataplaneID: "dp1", Version: "v2", Listen: "[::]:5678"}); err != nil {
		t.Fatal(err)
	}
	dps := f.dps()
	if len(dps) != 1 || dps[0].Version != "v2" || !dps[0].RegisteredAt.Equal(at.Add(time.Minute)) {
		t.Fatalf("dataplanes = %+v", dps)
	}
	if _, err := f.c.RegisterDataplane(ctx, Registration{DataplaneID: "", Version: "v1", Listen: ""}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("empty id: %v", err)
	}
	// Allocating without registering records the data plane too.
	f.clk.Add(time.Minute)
	if _, err := f.c.Allocate(ctx, "dp0", "s1", client1, 1); err != nil {
		t.Fatal(err)
	}
	dps = f.dps()
	if len(dps) != 2 || dps[0].ID != "dp0" || !dps[0].RegisteredAt.IsZero() || !dps[0].LastContact.Equal(f.clk.Now()) {
		t.Fatalf("dataplanes = %+v", dps)
	}
}

func TestAllocateReportRelease(t *testing.T) {
	f := newFixture(t, "13.8.0.0/24", "")
	t0 := f.clk.Now()
	l, err := f.c.Allocate(ctx, "dp1", "s1", client1, 40000)
	if err != nil {
		t.Fatal(err)
	}
	if l.Addr.String() != "13.8.0.2" || l.Route.String() != "0.0.0.0" ||
		l.DNS != [3]netip.Addr{ip("202.38.120.242"), ip("8.8.8.8"), ip("202.106.0.20")} ||
		!l.LeasedAt.Equal(t0) || l.DataplaneID != "dp1" || l.SessionID != "s1" {
		t.Fatalf("lease = %+v", l)
	}
	// Retry: same lease, same time, no second log line.
	f.clk.Add(3 * time.Second)
	l2, err := f.c.Allocate(ctx, "dp1", "s1", client1, 40000)
	if err != nil || l2 != l {
		t.Fatalf("retry = %+v %v, want %+v", l2, err, l)
	}
	l3, _ := f.c.Allocate(ctx, "dp1", "s2", ip("2001:db8::2"), 40001)
	if l3.Addr.String() != "13.8.0.3" {
		t.Fatalf("second client got %s", l3.Addr)
	}
	if n := len(f.logs.records(t, "lease")); n != 2 {
		t.Fatalf("%d lease log lines, want 2", n)
	}
	rec := f.logs.records(t, "lease")[0]
	if rec["address"] != "13.8.0.2" || rec["dataplane"] != "dp1" || rec["session"] != "s1" || rec["client"] != "[2001:db8::1]:40000" {
		t.Fatalf("lease log = %v", rec)
	}

	row, err := f.c.Client(ctx, l.Addr)
	if err != nil || row.SessionID != "s1" || row.ClientIPv6 != client1 || row.ClientPort != 40000 || !row.LastHeard.Equal(t0) {
		t.Fatalf("row = %+v %v", row, err)
	}

	// Report: one good, one with the wrong address, one unknown session.
	heard := t0.Add(10 * time.Second)
	cnt := Traffic{BytesFromClient: 1000, PacketsFromClient: 10, BytesToClient: 2000, PacketsToClient: 20}
	unknown, err := f.c.Report(ctx, "dp1", "", false, []SessionReport{
		{SessionID: "s1", Addr: l.Addr, ClientIPv6: client1, ClientPort: 40000, ConnectedAt: t0.Add(-time.Second), LastHeard: heard, Traffic: cnt},
		{SessionID: "s2", Addr: ip("13.8.0.99"), LastHeard: heard, Traffic: cnt},
		{SessionID: "ghost", LastHeard: heard},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(unknown, []string{"s2", "ghost"}) {
		t.Fatalf("unknown = %v", unknown)
	}
	row, _ = f.c.Client(ctx, l.Addr)
	if row.Traffic != cnt || !row.LastHeard.Equal(heard) || !row.ConnectedAt.Equal(t0.Add(-time.Second)) {
		t.Fatalf("row after report = %+v", row)
	}
	row3, _ := f.c.Client(ctx, l3.Addr)
	if row3.Traffic != (Traffic{}) {
		t.Fatalf("mismatched report updated the row: %+v", row3)
	}
	// The same session id from another data plane is someone else.
	if unknown, _ := f.c.Report(ctx, "dp2", "", false, []SessionReport{{SessionID: "s1", Traffic: Traffic{BytesToClient: 1}}}); !slices.Equal(unknown, []string{"s1"}) {
		t.Fatalf("unknown = %v", unknown)
	}
	if row, _ = f.c.Client(ctx, l.Addr); row.Traffic != cnt {
		t.Fatalf("report from another data plane updated the row: %+v", row)
	}

	clients, _ := f.c.Clients(ctx, Filter{})
	if len(clients) != 2 || clients[0].Addr != l.Addr || clients[1].Addr != l3.Addr {
		t.Fatalf("clients = %+v", clients)
	}
	if clients, _ := f.c.Clients(ctx, Filter{DataplaneID: "dp2"}); len(clients) != 0 {
		t.Fatalf("clients of dp2 = %+v", clients)
	}

	// Release by the wrong session, or of the wrong address: no-op.
	for _, bad := range []struct{ dp, s, a string }{{"dp1", "s2", "13.8.0.2"}, {"dp2", "s1", "13.8.0.2"}, {"dp1", "s1", "13.8.0.3"}, {"dp1", "s1", "13.8.0.200"}} {
		ok, err := f.c.Release(ctx, bad.dp, bad.s, ip(bad.a), "eof")
		if err != nil || ok {
			t.Fatalf("Release(%v) = %v %v", bad, ok, err)
		}
	}
	if _, err := f.c.Client(ctx, l.Addr); err != nil {
		t.Fatalf("client gone after wrong releases: %v", err)
	}
	f.clk.Add(time.Minute)
	ok, err := f.c.Release(ctx, "dp1", "s1", l.Addr, "keepalive timeout")
	if err != nil || !ok {
		t.Fatalf("Release = %v %v", ok, err)
	}
	if ok, _ := f.c.Release(ctx, "dp1", "s1", l.Addr, "eof"); ok {
		t.Fatal("second release succeeded")
	}
	_, err = f.c.Client(ctx, l.Addr)
	if !errors.Is(err, ErrNotFound) || err.Error() != "no client holds 13.8.0.2" {
		t.Fatalf("Client after release: %v", err)
	}
	rel := f.logs.records(t, "release")
	if len(rel) != 1 || rel[0]["address"] != "13.8.0.2" || rel[0]["reason"] != "keepalive timeout" ||
		rel[0]["client"] != "[2001:db8::1]:40000" || rel[0]["level"] != "INFO" {
		t.Fatalf("release log = %v", rel)
	}
	// A report after release names the session as unknown.
	if unknown, _ := f.c.Report(ctx, "dp1", "", false, []SessionReport{{SessionID: "s1"}}); !slices.Equal(unknown, []string{"s1"}) {
		t.Fatalf("unknown = %v", unknown)
	}
	info := f.poolInfo()
	if info.Leased != 1 || info.Free != 252 || info.Size != 253 || info.Gateway.String() != "13.8.0.1" || info.Route.String() != "0.0.0.0" {
		t.Fatalf("pool info = %+v", info)
	}
	if info.FreeRemembered != 1 {
		t.Fatalf("pool info = %+v: want the freed address remembered", info)
	}
	// The freed address goes to the back of the queue for newcomers, and
	// back to its client when it returns.
	if l4, _ := f.c.Allocate(ctx, "dp1", "s4", ip("2001:db8::4"), 1); l4.Addr.String() != "13.8.0.4" {
		t.Fatalf("next lease = %s", l4.Addr)
	}
	if l5, _ := f.c.Allocate(ctx, "dp1", "s5", client1, 1); l5.Addr != l.Addr {
		t.Fatalf("returning client's lease = %s, want %s", l5.Addr, l.Addr)
	}
	if r := f.logs.records(t, "lease"); r[len(r)-1]["sticky"] != true || r[len(r)-1]["address"] != "13.8.0.2" {
		t.Fatalf("lease log = %v", r[len(r)-1])
	}
}

func TestExhaustion(t *testing.T) {
	f := newFixture(t, "13.8.0.0/24", "13.8.0.2-13.8.0.3")
	for i := range 2 {
		if _, err := f.c.Allocate(ctx, "dp1", fmt.Sprint(i), client1, 1); err != nil {
			t.Fatal(err)
		}
	}
	_, err := f.c.Allocate(ctx, "dp1", "x", client1, 1)
	if !errors.Is(err, pool.ErrExhausted) || !strings.Contains(err.Error(), "2 of 2 addresses leased") {
		t.Fatalf("err = %v", err)
	}
	w := f.logs.records(t, "address pool exhausted")
	if len(w) != 1 || w[0]["level"] != "WARN" {
		t.Fatalf("exhaustion log = %v", w)
	}
	if f.c.term.idx.Len() != 2 {
		t.Fatalf("index has %d leases", f.c.term.idx.Len())
	}
}

func TestInvalidArguments(t *testing.T) {
	f := newFixture(t, "13.8.0.0/24", "")
	c := f.c
	long := strings.Repeat("x", MaxIDLen+1)
	second := func(_ any, err error) error { return err }
	cases := map[string]error{
		"allocate empty dp":      second(c.Allocate(ctx, "", "s", client1, 1)),
		"allocate empty session": second(c.Allocate(ctx, "dp", "", client1, 1)),
		"allocate long dp":       second(c.Allocate(ctx, long, "s", client1, 1)),
		"allocate ipv4 client":   second(c.Allocate(ctx, "dp", "s", ip("192.0.2.1"), 1)),
		"allocate no client":     second(c.Allocate(ctx, "dp", "s", netip.Addr{}, 1)),
		"release ipv6":           second(c.Release(ctx, "dp", "s", ip("2001:db8::1"), "")),
		"release none":           second(c.Release(ctx, "dp", "s", netip.Addr{}, "")),
		"release empty session":  second(c.Release(ctx, "dp", "", ip("13.8.0.2"), "")),
		"report empty dp":        second(c.Report(ctx, "", "", false, nil)),
		"report empty session":   second(c.Report(ctx, "dp", "", false, []SessionReport{{SessionID: ""}})),
		"report ipv6 address":    second(c.Report(ctx, "dp", "", false, []SessionReport{{SessionID: "s", Addr: ip("2001:db8::1")}})),
		"client ipv6":            second(c.Client(ctx, ip("2001:db8::1"))),
		"register long id":       second(c.RegisterDataplane(ctx, Registration{DataplaneID: long, Version: "", Listen: ""})),
	}
	for name, err := range cases {
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want ErrInvalidArgument", name, err)
		}
	}
	if n := f.poolInfo().Leased; n != 0 {
		t.Fatalf("invalid requests leased %d addresses", n)
	}
}

func TestCanceledContext(t *testing.T) {
	f := newFixture(t, "13.8.0.0/24", "")
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := f.c.Allocate(cctx, "dp", "s", client1, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if n := f.poolInfo().Leased; n != 0 {
		t.Fatalf("canceled allocation leased %d", n)
	}
}

func TestNewValidation(t *testing.T) {
	if _, err := New(Config{Pool: pool.Config{Prefix: netip.MustParsePrefix("fd00::/64")}}); err == nil {
		t.Error("IPv6 pool accepted")
	}
	if _, err := New(Config{Pool: pool.Config{Prefix: pool.DefaultPrefix}, Route: ip("::")}); err == nil {
		t.Error("IPv6 route accepted")
	}
	if _, err := New(Config{Pool: pool.Config{Prefix: pool.DefaultPrefix}, DNS: [3]netip.Addr{ip("1.1.1.1")}}); err == nil {
		t.Error("partial DNS accepted")
	}
	c, err := New(Config{Pool: pool.Config{Prefix: pool.DefaultPrefix}, Route: ip("13.8.0.0")})
	if err != nil {
		t.Fatal(err)
	}
	info := fixture{c: c}.poolInfo()
	if info.Route.String() != "13.8.0.0" || info.DNS[0].String() != "8.8.8.8" || c.Version() != "dev" {
		t.Fatalf("info = %+v", info)
	}
}

// Allocations and releases racing for the same sessions must leave the pool
// and the table in agreement.
func TestConcurrentAllocateRelease(t *testing.T) {
	f := newFixture(t, "10.0.0.0/22", "")
	const n = 300
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(2)
		sess := fmt.Sprint("s", i)
		go func() {
			defer wg.Done()
			if _, err := f.c.Allocate(ctx, "dp", sess, client1, uint16(i)); err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			// Releases whichever address the session may hold by now.
			if a, ok := f.c.term.idx.Lookup(store.Owner{Dataplane: "dp", Session: sess}); ok {
				f.c.Release(ctx, "dp", sess, a, "race")
			}
		}()
	}
	wg.Wait()
	info := f.poolInfo()
	rows, _ := f.c.Clients(ctx, Filter{})
	if int(info.Leased) != len(rows) {
		t.Fatalf("pool has %d leases, table %d rows", info.Leased, len(rows))
	}
	for _, r := range rows {
		if l, ok := f.c.term.idx.Lease(r.Addr); !ok || l.Session != r.SessionID {
			t.Fatalf("row %+v has no matching lease", r)
		}
	}
}
