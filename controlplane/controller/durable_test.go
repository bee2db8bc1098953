package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
)

// world is a controller on a store that survives it, with a fake clock.
type world struct {
	t      *testing.T
	st     store.Store
	clk    *clock
	logs   *syncBuffer
	c      *Controller
	cfg    Config
	reopen func() store.Store
}

func newWorld(t *testing.T, mutate ...func(*Config)) *world {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	open := func() store.Store {
		s, err := store.OpenBolt(path)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	w := &world{t: t, clk: &clock{t: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)}, logs: &syncBuffer{}, reopen: open}
	w.cfg = Config{
		Pool:             pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/24")},
		DNS:              [3]netip.Addr{ip("192.0.2.53"), ip("192.0.2.54"), ip("192.0.2.55")},
		Version:          "v1",
		ID:               "c1",
		Logger:           slog.New(slog.NewJSONHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:              w.clk.Now,
		DataplaneTimeout: 15 * time.Second,
		GracePeriod:      30 * time.Second,
		ReuseCooldown:    5 * time.Second,
	}
	for _, m := range mutate {
		m(&w.cfg)
	}
	w.start()
	t.Cleanup(func() { w.st.Close() })
	return w
}

// start opens the store and a controller on it.
func (w *world) start() {
	w.t.Helper()
	w.st = w.reopen()
	w.cfg.Store = w.st
	c, err := New(w.cfg)
	if err != nil {
		w.t.Fatal(err)
	}
	w.c = c
}

// restart is kill -9 and start again: nothing but the store survives.
func (w *world) restart() {
	w.t.Helper()
	w.st.Close()
	w.start()
}

func (w *world) register(dp, instance string) {
	w.t.Helper()
	if _, err := w.c.RegisterDataplane(ctx, Registration{DataplaneID: dp, InstanceID: instance}); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) alloc(dp, session string, client netip.Addr) netip.Addr {
	w.t.Helper()
	l, err := w.c.Allocate(ctx, dp, session, client, 1000)
	if err != nil {
		w.t.Fatalf("allocate %s/%s: %v", dp, session, err)
	}
	return l.Addr
}

func (w *world) leased() []string {
	w.t.Helper()
	rows, err := w.c.Clients(ctx, Filter{})
	if err != nil {
		w.t.Fatal(err)
	}
	var out []string
	for _, r := range rows {
		out = append(out, fmt.Sprintf("%s=%s/%s", r.Addr, r.DataplaneID, r.SessionID))
	}
	return out
}

func TestRestartKeepsLeases(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	a := w.alloc("dp1", "s1", client1)
	b := w.alloc("dp1", "s2", ip("2001:db8::2"))
	w.alloc("dp1", "s3", ip("2001:db8::3"))
	if ok, _ := w.c.Release(ctx, "dp1", "s3", ip("13.8.0.4"), "eof"); !ok {
		t.Fatal("release")
	}
	before := w.leased()
	w.restart()
	if after := w.leased(); !slices.Equal(before, after) {
		t.Fatalf("leases after restart %v, before %v", after, before)
	}
	// Idempotency survives: the same session gets the same lease.
	if got := w.alloc("dp1", "s1", client1); got != a {
		t.Fatalf("retry after restart got %s, want %s", got, a)
	}
	// The heartbeat of the same instance is known (registry is durable).
	if known, _, err := w.c.Heartbeat(ctx, "dp1", "i1", 2, 2); !known || err != nil {
		t.Fatalf("heartbeat after restart: known=%v %v", known, err)
	}
	// Fresh addresses first, then released ones: .4 was released, so .5.
	if got := w.alloc("dp1", "s4", ip("2001:db8::4")); got.String() != "13.8.0.5" {
		t.Fatalf("next address %s, want 13.8.0.5", got)
	}
	_ = b
}

// elapse moves the clock by d in steps of the reconcile interval,
// reconciling after each, as Run does.
func (w *world) elapse(d time.Duration) {
	step := w.c.ReconcileInterval()
	for d > 0 {
		s := min(step, d)
		w.clk.Add(s)
		w.c.Reconcile(ctx)
		d -= s
	}
}

func TestNewInstanceReleasesOldLeases(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	w.register("dp2", "j1")
	w.alloc("dp1", "s1", client1)
	w.alloc("dp2", "s1", ip("2001:db8::9"))
	w.register("dp1", "i1") // same instance again: harmless
	if n := len(w.leased()); n != 2 {
		t.Fatalf("%d leases after re-registering", n)
	}
	// i1 is gone once its command stream ended and nothing was heard
	// from it since: a restarted instance takes over at once.
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.c.WatchCommands(wctx, "dp1", "i1", func(Command) error { return nil }) }()
	waitStream(t, w.c, "dp1")
	cancel()
	<-done
	w.register("dp1", "i2") // restarted
	if got := w.leased(); !slices.Equal(got, []string{"13.8.0.3=dp2/s1"}) {
		t.Fatalf("leases %v", got)
	}
	if known, _, _ := w.c.Heartbeat(ctx, "dp1", "i1", 0, 0); known {
		t.Fatal("old instance still known")
	}
	if _, err := w.c.AllocateFor(ctx, AllocateRequest{DataplaneID: "dp1", InstanceID: "i1", SessionID: "s9", ClientIPv6: client1}); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("allocation of the old instance: %v", err)
	}
	if c := w.c.Counts(); c.Reclaimed != 1 || c.AllocateFailed[FailNotRegistered] != 1 {
		t.Fatalf("counts %+v", c)
	}
}

func TestDownDataplaneLosesLeasesAfterGrace(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	w.register("dp2", "j1")
	w.alloc("dp1", "s1", client1)
	w.alloc("dp2", "s1", ip("2001:db8::9"))
	state := func(id string) DataplaneState {
		dps, _ := w.c.Dataplanes(ctx)
		for _, d := range dps {
			if d.ID == id {
				return d.State
			}
		}
		return 0
	}
	for range 5 { // dp2 heartbeats, dp1 does not
		w.elapse(5 * time.Second)
		w.c.Heartbeat(ctx, "dp2", "j1", 1, 1)
	}
	if state("dp1") != StateDown || state("dp2") != StateUp {
		t.Fatalf("states %v %v", state("dp1"), state("dp2"))
	}
	if n := len(w.leased()); n != 2 {
		t.Fatalf("leases released before the grace period: %v", w.leased())
	}
	for range 6 {
		w.elapse(5 * time.Second)
		w.c.Heartbeat(ctx, "dp2", "j1", 1, 1)
	}
	if got := w.leased(); !slices.Equal(got, []string{"13.8.0.3=dp2/s1"}) {
		t.Fatalf("leases after grace %v", got)
	}
	// It comes back: UP again.
	w.c.Heartbeat(ctx, "dp1", "i1", 0, 0)
	if state("dp1") != StateUp {
		t.Fatal("not UP after a heartbeat")
	}
	// The released address rests: the next lease is a fresh one.
	if got := w.alloc("dp2", "s2", ip("2001:db8::a")); got.String() != "13.8.0.4" {
		t.Fatalf("got %s", got)
	}
}

func TestCompleteReportsReconcile(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	a := w.alloc("dp1", "s1", client1)
	b := w.alloc("dp1", "s2", ip("2001:db8::2")) // its release is lost
	w.register("dp2", "j1")
	c := w.alloc("dp2", "t1", ip("2001:db8::3"))

	// Commands of dp2 (it will be told to kick a conflicting session).
	cmds := make(chan Command, 10)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go w.c.WatchCommands(wctx, "dp2", "j1", func(c Command) error { cmds <- c; return nil })
	waitStream(t, w.c, "dp2")

	report := func(dp, inst string, rs ...SessionReport) []string {
		u, err := w.c.Report(ctx, dp, inst, true, rs)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	for range 8 {
		w.elapse(5 * time.Second)
		w.c.Heartbeat(ctx, "dp1", "i1", 1, 1)
		w.c.Heartbeat(ctx, "dp2", "j1", 1, 1)
		report("dp1", "i1", SessionReport{SessionID: "s1", Addr: a, ClientIPv6: client1})
		report("dp2", "j1", SessionReport{SessionID: "t1", Addr: c})
	}
	w.c.Reconcile(ctx)
	// s2 was not reported for the grace period: released.
	if got := w.leased(); !slices.Equal(got, []string{a.String() + "=dp1/s1", c.String() + "=dp2/t1"}) {
		t.Fatalf("leases %v", got)
	}
	// A report from another instance is refused: it vouches for nothing
	// and adopts nothing.
	if _, err := w.c.Report(ctx, "dp1", "old", true, []SessionReport{{SessionID: "zz", Addr: b}}); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("report of another instance: %v", err)
	}
	// A session the controller lost (b is free now) is adopted.
	if u := report("dp1", "i1", SessionReport{SessionID: "s1", Addr: a}, SessionReport{SessionID: "s9", Addr: b, ClientIPv6: ip("2001:db8::99")}); len(u) != 0 {
		t.Fatalf("unknown %v", u)
	}
	if row, err := w.c.Client(ctx, b); err != nil || row.SessionID != "s9" {
		t.Fatalf("adopted row %+v %v", row, err)
	}
	// dp2 claims dp1's address: conflict, the lease in the store wins, the
	// claimant is kicked.
	if u := report("dp2", "j1", SessionReport{SessionID: "t1", Addr: c}, SessionReport{SessionID: "t2", Addr: a}); !slices.Equal(u, []string{"t2"}) {
		t.Fatalf("unknown %v", u)
	}
	select {
	case cmd := <-cmds:
		if cmd.Kick == nil || cmd.Kick.Addr != a || cmd.Kick.SessionID != "t2" {
			t.Fatalf("command %+v", cmd)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no kick for the conflicting session")
	}
	if len(w.logs.records(t, "ADDRESS CONFLICT: two sessions claim one address; the lease in the store wins, kicking the other session")) != 1 {
		t.Fatal("conflict not logged")
	}
	if row, _ := w.c.Client(ctx, a); row.DataplaneID != "dp1" {
		t.Fatalf("holder changed: %+v", row)
	}
}

func waitStream(t *testing.T, c *Controller, dp string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		tm, _ := c.active()
		tm.dpMu.Lock()
		ok := tm.dps[dp] != nil && tm.dps[dp].stream != nil
		tm.dpMu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("command stream not open")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestKickAndDrain(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	a := w.alloc("dp1", "s1", client1)
	if _, _, err := w.c.KickClient(ctx, ip("13.8.0.99"), ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("kick of a free address: %v", err)
	}
	if _, _, err := w.c.KickClient(ctx, a, ""); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("kick without a stream: %v", err)
	}
	cmds := make(chan Command, 10)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go w.c.WatchCommands(wctx, "dp1", "i1", func(c Command) error { cmds <- c; return nil })
	waitStream(t, w.c, "dp1")
	dp, s, err := w.c.KickClient(ctx, a, "bye")
	if err != nil || dp != "dp1" || s != "s1" {
		t.Fatalf("kick = %s %s %v", dp, s, err)
	}
	if c := <-cmds; c.Kick == nil || c.Kick.Addr != a || c.Kick.SessionID != "s1" || c.Kick.Reason != "bye" {
		t.Fatalf("command %+v", c)
	}
	if _, err := w.c.DrainDataplane(ctx, "nope", true); !errors.Is(err, ErrNotFound) {
		t.Fatalf("drain unknown: %v", err)
	}
	d, err := w.c.DrainDataplane(ctx, "dp1", true)
	if err != nil || d.State != StateDraining {
		t.Fatalf("drain = %+v %v", d, err)
	}
	if c := <-cmds; c.Drain == nil || !*c.Drain {
		t.Fatalf("command %+v", c)
	}
	cancel()
	w.restart()
	if _, draining, _ := w.c.Heartbeat(ctx, "dp1", "i1", 0, 0); !draining {
		t.Fatal("drain not durable")
	}
	w.elapse(16 * time.Second) // i1 is silent: DOWN, another instance may take the id
	reg, err := w.c.RegisterDataplane(ctx, Registration{DataplaneID: "dp1", InstanceID: "i2"})
	if err != nil || !reg.Draining || reg.HeartbeatInterval != DefaultHeartbeatInterval {
		t.Fatalf("register = %+v %v", reg, err)
	}
}

func TestReservations(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	set := func(client, addr string) error {
		p, err := ParseClient(client)
		if err != nil {
			return err
		}
		_, err = w.c.SetReservation(ctx, Reservation{Client: p, Addr: ip(addr)})
		return err
	}
	if err := set("2001:db8::/64", "13.8.0.50"); err != nil {
		t.Fatal(err)
	}
	if err := set("2001:db8::7", "13.8.0.60"); err != nil {
		t.Fatal(err)
	}
	if err := set("2001:db9::/64", "13.8.0.60"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("address reserved twice: %v", err)
	}
	if err := set("2001:db9::/64", "13.8.0.1"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("gateway reserved: %v", err)
	}
	if _, err := ParseClient("2001:db8::1/64"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("host bits: %v", err)
	}
	// Most specific wins.
	if got := w.alloc("dp1", "s1", ip("2001:db8::7")); got.String() != "13.8.0.60" {
		t.Fatalf("/128 client got %s", got)
	}
	if got := w.alloc("dp1", "s2", ip("2001:db8::8")); got.String() != "13.8.0.50" {
		t.Fatalf("/64 client got %s", got)
	}
	// A second client of the /64 while .50 is busy: an ordinary address.
	if got := w.alloc("dp1", "s3", ip("2001:db8::9")); got.String() != "13.8.0.2" {
		t.Fatalf("busy reservation: got %s", got)
	}
	// Nobody else ever gets a reserved address.
	for i := range 250 - 3 {
		l, err := w.c.Allocate(ctx, "dp1", fmt.Sprint("x", i), ip("2001:dead::1"), 1)
		if err != nil {
			if errors.Is(err, pool.ErrExhausted) {
				break
			}
			t.Fatal(err)
		}
		if l.Addr.String() == "13.8.0.50" || l.Addr.String() == "13.8.0.60" {
			t.Fatalf("reserved %s given to another client", l.Addr)
		}
	}
	// Reserving an address leased to a client it does not cover: refused.
	if err := set("2001:beef::/64", "13.8.0.3"); !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("reservation of a leased address: %v", err)
	}
	w.restart()
	rs, _ := w.c.Reservations(ctx)
	if len(rs) != 2 {
		t.Fatalf("reservations after restart %v", rs)
	}
	p, _ := ParseClient("2001:db8::7")
	if ok, err := w.c.DeleteReservation(ctx, p); !ok || err != nil {
		t.Fatalf("delete %v %v", ok, err)
	}
	if ok, _ := w.c.DeleteReservation(ctx, p); ok {
		t.Fatal("deleted twice")
	}
}

func TestDNSAndPoolAreDurable(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	got, changed, err := w.c.SetDNS(ctx, []netip.Addr{ip("192.0.2.1")})
	if err != nil || !changed || got != [3]netip.Addr{ip("192.0.2.1"), ip("8.8.8.8"), ip("1.1.1.1")} {
		t.Fatalf("SetDNS = %v %v %v", got, changed, err)
	}
	if _, changed, _ := w.c.SetDNS(ctx, []netip.Addr{ip("192.0.2.1")}); changed {
		t.Fatal("same DNS changed")
	}
	if _, _, err := w.c.SetDNS(ctx, []netip.Addr{ip("2001:db8::1")}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("IPv6 DNS: %v", err)
	}
	a := w.alloc("dp1", "s1", client1) // 13.8.0.2
	if _, _, err := w.c.UpdatePool(ctx, pool.Range{First: ip("13.8.0.10"), Last: ip("13.8.0.20")}); !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("range leaving out a lease: %v", err)
	}
	info, changed, err := w.c.UpdatePool(ctx, pool.Range{First: a, Last: ip("13.8.0.20")})
	if err != nil || !changed || info.Size != 19 {
		t.Fatalf("UpdatePool = %+v %v %v", info, changed, err)
	}
	w.restart()
	if d, _ := w.c.DNS(ctx); d[0] != ip("192.0.2.1") {
		t.Fatalf("DNS after restart %v", d)
	}
	if info, _ := w.c.PoolInfo(ctx); info.Last != ip("13.8.0.20") || info.Leased != 1 {
		t.Fatalf("pool after restart %+v", info)
	}
	if l, _ := w.c.Allocate(ctx, "dp1", "s2", client1, 1); l.DNS[0] != ip("192.0.2.1") {
		t.Fatalf("new lease DNS %v", l.DNS)
	}
	if _, changed, err := w.c.UpdatePool(ctx, pool.Range{}); err != nil || !changed {
		t.Fatalf("whole prefix: %v %v", changed, err)
	}
	w.restart()
	if info, _ := w.c.PoolInfo(ctx); info.Size != 253 {
		t.Fatalf("pool after restart %+v", info)
	}
}

func TestWatchClients(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	a := w.alloc("dp1", "s1", client1)
	evs := make(chan ClientEvent, 100)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- w.c.WatchClients(wctx, Filter{}, func(e ClientEvent) error { evs <- e; return nil })
	}()
	next := func() ClientEvent {
		select {
		case e := <-evs:
			return e
		case <-time.After(10 * time.Second):
			t.Fatal("no event")
		}
		return ClientEvent{}
	}
	if e := next(); e.Type != EventExisting || e.Client.Addr != a {
		t.Fatalf("event %+v", e)
	}
	if e := next(); e.Type != EventSynced {
		t.Fatalf("event %+v", e)
	}
	b := w.alloc("dp1", "s2", ip("2001:db8::2"))
	if e := next(); e.Type != EventConnected || e.Client.Addr != b {
		t.Fatalf("event %+v", e)
	}
	w.c.Release(ctx, "dp1", "s1", a, "eof")
	if e := next(); e.Type != EventDisconnected || e.Client.Addr != a || e.Reason != "eof" {
		t.Fatalf("event %+v", e)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("watch ended with %v", err)
	}
}

func TestStandby(t *testing.T) {
	w := newWorld(t, func(c *Config) { c.Standby = true })
	if _, err := w.c.Allocate(ctx, "dp1", "s1", client1, 1); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("standby allocated: %v", err)
	}
	w.c.SetLeader("c2")
	_, err := w.c.PoolInfo(ctx)
	var nl *NotLeaderError
	if !errors.As(err, &nl) || nl.LeaderID != "c2" || err.Error() != "not the leader; leader is c2" {
		t.Fatalf("standby: %v", err)
	}
	if st := w.c.Status(); st.Leader || st.LeaderID != "c2" || st.ID != "c1" || st.Store == "" {
		t.Fatalf("status %+v", st)
	}
	if err := w.c.Activate(ctx); err != nil {
		t.Fatal(err)
	}
	w.register("dp1", "i1")
	w.alloc("dp1", "s1", client1)
	if st := w.c.Status(); !st.Leader || st.LeaderID != "c1" {
		t.Fatalf("status %+v", st)
	}
	done := make(chan error, 1)
	go func() { done <- w.c.WatchCommands(ctx, "dp1", "i1", func(Command) error { return nil }) }()
	waitStream(t, w.c, "dp1")
	w.c.Deactivate("c3")
	if err := <-done; !errors.Is(err, ErrNotLeader) {
		t.Fatalf("stream ended with %v", err)
	}
	if _, err := w.c.Allocate(ctx, "dp1", "s2", client1, 1); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deactivated controller allocated: %v", err)
	}
	// Log level works everywhere.
	if prev, err := w.c.SetLogLevel("warn"); err != nil || prev != "info" {
		t.Fatalf("SetLogLevel = %q %v", prev, err)
	}
	if _, err := w.c.SetLogLevel("loud"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad level: %v", err)
	}
}
