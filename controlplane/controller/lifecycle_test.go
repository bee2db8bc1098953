package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
)

// countingStore counts the release calls that reach the store.
type countingStore struct {
	store.Store
	mu                   sync.Mutex
	release, releaseMany int
}

func (s *countingStore) Release(ctx context.Context, a netip.Addr, o store.Owner, at time.Time) (bool, error) {
	s.mu.Lock()
	s.release++
	s.mu.Unlock()
	return s.Store.Release(ctx, a, o, at)
}

func (s *countingStore) ReleaseMany(ctx context.Context, rs []store.Release, at time.Time) ([]bool, error) {
	s.mu.Lock()
	s.releaseMany++
	s.mu.Unlock()
	return s.Store.ReleaseMany(ctx, rs, at)
}

func (s *countingStore) calls() (release, releaseMany int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.release, s.releaseMany
}

// counted wraps the world's store (again after every restart).
func (w *world) counted() *countingStore {
	cs := &countingStore{}
	open := w.reopen
	w.reopen = func() store.Store { cs.Store = open(); return cs }
	w.restart()
	return cs
}

// watch opens a command stream of dp's instance and returns its commands;
// stop ends it and waits until it has.
func (w *world) watch(dp, instance string) (cmds chan Command, stop func()) {
	w.t.Helper()
	cmds = make(chan Command, 100)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- w.c.WatchCommands(WithPeer(wctx, "[fd00::1]:4000"), dp, instance, func(c Command) error { cmds <- c; return nil })
	}()
	waitStream(w.t, w.c, dp)
	return cmds, func() { cancel(); <-done }
}

func (w *world) state(id string) DataplaneState {
	w.t.Helper()
	dps, err := w.c.Dataplanes(ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	for _, d := range dps {
		if d.ID == id {
			return d.State
		}
	}
	return 0
}

func (w *world) registerAt(dp, instance, listen string) error {
	_, err := w.c.RegisterDataplane(WithPeer(ctx, "[fd00::9]:5000"), Registration{
		DataplaneID: dp, InstanceID: instance, Listen: listen, APIAddress: "unix:///run/" + instance + ".sock"})
	return err
}

// TestStallReleasesNothing: the wall clock jumping by more than timeout +
// grace between two ticks (a SIGSTOP, a VM pause) marks nobody DOWN and
// releases nothing; the liveness clock goes on from there.
func TestStallReleasesNothing(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	a := w.alloc("dp1", "s1", client1)
	b := w.alloc("dp1", "s2", ip("2001:db8::2"))
	if _, err := w.c.Report(ctx, "dp1", "i1", true, []SessionReport{{SessionID: "s1", Addr: a}, {SessionID: "s2", Addr: b}}); err != nil {
		t.Fatal(err)
	}
	w.elapse(4 * time.Second)
	w.c.Heartbeat(ctx, "dp1", "i1", 2, 2)
	before := w.leased()

	w.clk.Add(w.cfg.DataplaneTimeout + w.cfg.GracePeriod + time.Minute) // stopped, then resumed
	w.c.Reconcile(ctx)
	if st := w.state("dp1"); st != StateUp {
		t.Fatalf("after the stall dp1 is %v", st)
	}
	// A complete report queued while the controller was stopped, that no
	// longer lists s2 (its client left): s2 was vouched for a moment ago
	// on the liveness clock, so it waits for the grace period as usual.
	if _, err := w.c.Report(ctx, "dp1", "i1", true, []SessionReport{{SessionID: "s1", Addr: a}}); err != nil {
		t.Fatal(err)
	}
	w.c.Reconcile(ctx)
	if got := w.leased(); !slices.Equal(got, before) {
		t.Fatalf("leases after the stall %v, before %v", got, before)
	}
	if c := w.c.Counts(); c.Stalls != 1 || c.Reclaimed != 0 {
		t.Fatalf("counts %+v", c)
	}
	if len(w.logs.records(t, "the controller did not run for a while (stopped, paused, or its clock jumped): that time is not counted against the data planes")) != 1 {
		t.Fatal("stall not logged")
	}
	// Time counts again from there: silence for the timeout is DOWN, and
	// the grace period later the leases go.
	w.elapse(w.cfg.DataplaneTimeout)
	if st := w.state("dp1"); st != StateDown {
		t.Fatalf("dp1 silent for the timeout after the stall is %v", st)
	}
	if n := len(w.leased()); n != 2 {
		t.Fatalf("leases released before the grace period: %d left", n)
	}
	w.elapse(w.cfg.GracePeriod)
	if got := w.leased(); len(got) != 0 {
		t.Fatalf("leases after DOWN and grace: %v", got)
	}
}

// TestReportsFailingKeepLeases: a data plane whose complete reports stop
// arriving whole (too large, say) while its heartbeats succeed keeps its
// leases: absence counts only from complete reports that arrived.
func TestReportsFailingKeepLeases(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	a := w.alloc("dp1", "s1", client1)
	if _, err := w.c.Report(ctx, "dp1", "i1", true, []SessionReport{{SessionID: "s1", Addr: a}}); err != nil {
		t.Fatal(err)
	}
	for range 20 { // 100 s of heartbeats; every report fails midway
		w.elapse(5 * time.Second)
		w.c.Heartbeat(ctx, "dp1", "i1", 1, 1)
		rs, err := w.c.BeginReport(ctx, "dp1", "i1", true)
		if err != nil {
			t.Fatal(err)
		}
		if err := rs.Add(ctx, []SessionReport{{SessionID: "s1", Addr: a}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := w.leased(); len(got) != 1 {
		t.Fatalf("leases %v", got)
	}
}

// TestStreamedReport: chunks are applied as they arrive; a complete report
// vouches only once finished.
func TestStreamedReport(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	var reps []SessionReport
	for i := range 10 {
		a := w.alloc("dp1", fmt.Sprint("s", i), ip(fmt.Sprintf("2001:db8::%x", i+1)))
		reps = append(reps, SessionReport{SessionID: fmt.Sprint("s", i), Addr: a, Traffic: Traffic{BytesToClient: 10}})
	}
	finished := func(rs []SessionReport, finish bool) ReportResult {
		t.Helper()
		s, err := w.c.BeginReport(ctx, "dp1", "i1", true)
		if err != nil {
			t.Fatal(err)
		}
		for len(rs) > 0 {
			n := min(3, len(rs))
			if err := s.Add(ctx, rs[:n]); err != nil {
				t.Fatal(err)
			}
			rs = rs[n:]
		}
		if !finish {
			return ReportResult{}
		}
		res, err := s.Finish(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	res := finished(append(reps, SessionReport{SessionID: "ghost"}), true)
	if res.Sessions != 11 || !slices.Equal(res.Unknown, []string{"ghost"}) {
		t.Fatalf("result %+v", res)
	}
	w.elapse(20 * time.Second)
	w.c.Heartbeat(ctx, "dp1", "i1", 10, 10)
	// A stream that fails midway: its chunks were applied (traffic), but
	// it vouches for nothing.
	finished(reps, false)
	if row, _ := w.c.Client(ctx, reps[0].Addr); row.Traffic.BytesToClient != 10 {
		t.Fatalf("chunk not applied: %+v", row.Traffic)
	}
	w.elapse(15 * time.Second)
	w.c.Heartbeat(ctx, "dp1", "i1", 10, 10)
	// A whole report without s5..s9, 35 s after the last whole report that
	// listed them and 15 s after the failed one: they are released (the
	// failed report did not vouch for them); s0..s4 stay.
	finished(reps[:5], true)
	w.c.Reconcile(ctx)
	if got := w.leased(); len(got) != 5 {
		t.Fatalf("leases %v", got)
	}
	for _, r := range reps[:5] {
		if _, err := w.c.Client(ctx, r.Addr); err != nil {
			t.Fatalf("%s: %v", r.SessionID, err)
		}
	}
	// A finished stream cannot be used again.
	s, _ := w.c.BeginReport(ctx, "dp1", "i1", true)
	s.Finish(ctx)
	if err := s.Add(ctx, reps[:1]); err == nil {
		t.Fatal("chunk after Finish accepted")
	}
	// A malformed chunk is refused whole.
	s, _ = w.c.BeginReport(ctx, "dp1", "i1", true)
	if err := s.Add(ctx, []SessionReport{{SessionID: ""}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("malformed chunk: %v", err)
	}
}

// TestDuplicateIDRefused: a second live instance of an id is refused with
// who holds it; the live one is told and keeps everything; the refused
// one's calls evict nothing.
func TestDuplicateIDRefused(t *testing.T) {
	w := newWorld(t)
	if err := w.registerAt("dp1", "i1", "[::]:5678"); err != nil {
		t.Fatal(err)
	}
	a := w.alloc("dp1", "s1", client1)
	cmds, stop := w.watch("dp1", "i1")
	defer stop()

	err := w.registerAt("dp1", "i2", "[::]:6789")
	var ce *IDConflictError
	if !errors.As(err, &ce) || !errors.Is(err, ErrIDInUse) {
		t.Fatalf("second instance: %v", err)
	}
	want := DataplaneInstance{InstanceID: "i1", Peer: "[fd00::1]:4000", Listen: "[::]:5678", APIAddress: "unix:///run/i1.sock"}
	if ce.DataplaneID != "dp1" || ce.Live != want || ce.Refused.InstanceID != "i2" || ce.Refused.Peer != "[fd00::9]:5000" {
		t.Fatalf("conflict %+v", ce)
	}
	if got := err.Error(); got != "another data plane with --id dp1 is running: instance i1 at [fd00::1]:4000 (clients connect to [::]:5678, API unix:///run/i1.sock); give this one a different --id" {
		t.Fatalf("message %q", got)
	}
	select {
	case c := <-cmds:
		if c.IDConflict == nil || c.IDConflict.InstanceID != "i2" || c.IDConflict.Listen != "[::]:6789" {
			t.Fatalf("command %+v", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the live instance was not told")
	}
	recs := w.logs.records(t, "DATA PLANE ID IN USE: refused a second instance of a live data plane; give one of them a different --id")
	if len(recs) != 1 || recs[0]["level"] != "ERROR" || recs[0]["live_peer"] != "[fd00::1]:4000" || recs[0]["refused_peer"] != "[fd00::9]:5000" ||
		recs[0]["live_listen"] != "[::]:5678" || recs[0]["refused_api"] != "unix:///run/i2.sock" {
		t.Fatalf("log %v", recs)
	}
	// The refused instance goes on calling, as a clone would: it is told
	// it is unknown, and nothing it does evicts i1 or counts as i1's life.
	for range 6 {
		w.elapse(5 * time.Second)
		if known, _, _ := w.c.Heartbeat(ctx, "dp1", "i2", 0, 0); known {
			t.Fatal("heartbeat of the refused instance is known")
		}
		if err := w.registerAt("dp1", "i2", "[::]:6789"); !errors.Is(err, ErrIDInUse) {
			t.Fatalf("registering again: %v", err)
		}
		if _, err := w.c.AllocateFor(ctx, AllocateRequest{DataplaneID: "dp1", InstanceID: "i2", SessionID: "x", ClientIPv6: client1}); !errors.Is(err, ErrNotRegistered) {
			t.Fatalf("allocation of the refused instance: %v", err)
		}
		if _, err := w.c.Report(ctx, "dp1", "i2", true, nil); !errors.Is(err, ErrNotRegistered) {
			t.Fatalf("report of the refused instance: %v", err)
		}
		if known, _, _ := w.c.Heartbeat(ctx, "dp1", "i1", 1, 1); !known {
			t.Fatal("live instance unknown")
		}
	}
	if err := w.c.WatchCommands(ctx, "dp1", "i2", func(Command) error { return nil }); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("command stream of the refused instance: %v", err)
	}
	waitStream(t, w.c, "dp1") // i1's stream is still open
	if got := w.leased(); !slices.Equal(got, []string{a.String() + "=dp1/s1"}) {
		t.Fatalf("leases %v", got)
	}
	// Every refusal counted; the log line and command throttled.
	if c := w.c.Counts(); c.IDConflicts != 7 {
		t.Fatalf("conflicts counted %d", c.IDConflicts)
	}
	if n := len(w.logs.records(t, "DATA PLANE ID IN USE: refused a second instance of a live data plane; give one of them a different --id")); n < 2 || n > 4 {
		t.Fatalf("%d conflict log lines in 30 s", n)
	}
}

// TestTakeover: another instance takes the id once the registered one is
// not live: silent for the timeout, or gone (its command stream ended and
// nothing heard since). The same instance registering again is no
// conflict (a live hand-off).
func TestTakeover(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	w.alloc("dp1", "s1", client1)
	w.register("dp1", "i1") // the same instance: harmless, at any time
	// Silent for less than the timeout: still live.
	w.elapse(w.cfg.DataplaneTimeout - 2*time.Second)
	if err := w.registerAt("dp1", "i2", ""); !errors.Is(err, ErrIDInUse) {
		t.Fatalf("takeover of a live instance: %v", err)
	}
	w.elapse(2 * time.Second)
	if st := w.state("dp1"); st != StateDown {
		t.Fatalf("silent dp1 is %v", st)
	}
	if err := w.registerAt("dp1", "i2", ""); err != nil {
		t.Fatalf("takeover after the timeout: %v", err)
	}
	if n := len(w.leased()); n != 0 {
		t.Fatalf("the previous instance's leases stayed: %v", w.leased())
	}
	if st := w.state("dp1"); st != StateUp {
		t.Fatalf("dp1 after takeover is %v", st)
	}
	// A stream that ended, but a heartbeat since: live.
	_, stop := w.watch("dp1", "i2")
	stop()
	if st := w.state("dp1"); st != StateDown {
		t.Fatalf("dp1 with its stream gone is %v", st)
	}
	w.c.Heartbeat(ctx, "dp1", "i2", 0, 0)
	if err := w.registerAt("dp1", "i3", ""); !errors.Is(err, ErrIDInUse) {
		t.Fatalf("takeover of an instance heard from after its stream ended: %v", err)
	}
}

// TestRestartWindow: after a restart (or a change of leader) no stream is
// open: the stored instance has the timeout to come back before another
// may take the id, unless it stopped. Every data plane gets fresh grace.
func TestRestartWindow(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	w.register("dp2", "j1")
	w.alloc("dp1", "s1", client1)
	if _, err := w.c.StopDataplane(ctx, "dp2", "j1", "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	w.elapse(w.cfg.DataplaneTimeout - time.Second)
	w.restart()
	// Not heard from since the restart: maybe live, maybe gone. The
	// newcomer is asked to retry, not refused for good (a crash of the
	// data plane near a controller restart must heal by itself).
	var pending *IDPendingError
	if err := w.registerAt("dp1", "i2", ""); !errors.As(err, &pending) || !errors.Is(err, ErrUnavailable) || pending.Registered != "i1" {
		t.Fatalf("takeover right after a restart: %v", err)
	}
	if err := w.registerAt("dp2", "j2", ""); err != nil { // stopped: provably gone
		t.Fatalf("takeover of a stopped data plane after a restart: %v", err)
	}
	w.register("dp1", "i1") // the stored instance itself: welcome back
	if err := w.registerAt("dp1", "i2", ""); !errors.Is(err, ErrIDInUse) {
		t.Fatalf("a newcomer once the registered instance is back: %v", err)
	}
	// A change of leader gives fresh grace too.
	w.elapse(w.cfg.DataplaneTimeout - time.Second)
	w.c.Deactivate("c2")
	if err := w.c.Activate(ctx); err != nil {
		t.Fatal(err)
	}
	w.elapse(w.cfg.DataplaneTimeout - time.Second)
	if st := w.state("dp1"); st != StateUp {
		t.Fatalf("dp1 after a change of leader is %v", st)
	}
	w.elapse(2 * time.Second)
	if st := w.state("dp1"); st != StateDown {
		t.Fatalf("dp1 silent for the timeout of the new term is %v", st)
	}
	if err := w.registerAt("dp1", "i2", ""); err != nil {
		t.Fatalf("takeover after the window: %v", err)
	}
}

// TestStopDataplane: a stopped data plane holds no leases (released in one
// store call), is never judged DOWN, makes no calls, and registering again
// makes it up.
func TestStopDataplane(t *testing.T) {
	w := newWorld(t)
	cs := w.counted()
	w.register("dp1", "i1")
	for i := range 3 {
		w.alloc("dp1", fmt.Sprint("s", i), ip(fmt.Sprintf("2001:db8::%x", i+1)))
	}
	if _, err := w.c.StopDataplane(ctx, "dp1", "other", "x"); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("stop by another instance: %v", err)
	}
	if _, err := w.c.StopDataplane(ctx, "nope", "x", "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("stop of an unknown data plane: %v", err)
	}
	n, err := w.c.StopDataplane(ctx, "dp1", "i1", "SIGTERM")
	if err != nil || n != 3 {
		t.Fatalf("stop = %d %v", n, err)
	}
	if rel, many := cs.calls(); rel != 0 || many != 1 {
		t.Fatalf("store calls: %d releases, %d batches", rel, many)
	}
	st, _ := cs.Load(ctx)
	if len(st.Leases) != 0 || len(st.Dataplanes) != 1 || st.Dataplanes[0].StoppedAt.IsZero() {
		t.Fatalf("stored state %+v", st)
	}
	if s := w.state("dp1"); s != StateStopped {
		t.Fatalf("state %v", s)
	}
	w.elapse(w.cfg.DataplaneTimeout + w.cfg.GracePeriod)
	if s := w.state("dp1"); s != StateStopped {
		t.Fatalf("state after the timeout %v", s)
	}
	if _, err := w.c.AllocateFor(ctx, AllocateRequest{DataplaneID: "dp1", InstanceID: "i1", SessionID: "late", ClientIPv6: client1}); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("allocation after the stop: %v", err)
	}
	if known, _, _ := w.c.Heartbeat(ctx, "dp1", "i1", 0, 0); known {
		t.Fatal("heartbeat of a stopped instance known")
	}
	if n, err := w.c.StopDataplane(ctx, "dp1", "i1", "again"); err != nil || n != 0 {
		t.Fatalf("second stop = %d %v", n, err)
	}
	if c := w.c.Counts(); c.Stops != 1 || c.Released != 3 {
		t.Fatalf("counts %+v", c)
	}
	w.restart()
	if s := w.state("dp1"); s != StateStopped {
		t.Fatalf("state after a restart %v", s)
	}
	w.register("dp1", "i1")
	if s := w.state("dp1"); s != StateUp {
		t.Fatalf("state after registering again %v", s)
	}
	w.alloc("dp1", "s9", client1)
	// An allocation racing a stop: Reconcile releases what a stopped data
	// plane still holds.
	if _, err := w.c.StopDataplane(ctx, "dp1", "i1", "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	tm, _ := w.c.active()
	now := w.clk.Now()
	l := store.Lease{Addr: ip("13.8.0.77"), Owner: store.Owner{Dataplane: "dp1", Session: "raced"}, LeasedAt: now}
	if _, _, err := cs.Claim(ctx, l); err != nil {
		t.Fatal(err)
	}
	tm.adopt(l, now)
	w.c.Reconcile(ctx)
	if got := w.leased(); len(got) != 0 {
		t.Fatalf("a stopped data plane holds %v", got)
	}
}

// TestRemoveDataplane: down and stopped data planes are forgotten (record
// deleted, leases released in one call); an up one only with force.
func TestRemoveDataplane(t *testing.T) {
	w := newWorld(t)
	cs := w.counted()
	w.register("dp1", "i1")
	w.register("dp2", "j1")
	w.register("dp3", "k1")
	w.alloc("dp1", "s1", client1)
	w.alloc("dp2", "s1", ip("2001:db8::2"))
	w.alloc("dp2", "s2", ip("2001:db8::3"))
	if _, _, err := w.c.RemoveDataplane(ctx, "nope", false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}
	d, n, err := w.c.RemoveDataplane(ctx, "dp1", false)
	if !errors.Is(err, ErrFailedPrecondition) || n != 0 || d.State != StateUp {
		t.Fatalf("remove of an up data plane: %+v %d %v", d, n, err)
	}
	if len(w.leased()) != 3 {
		t.Fatal("a refused remove released leases")
	}
	// dp2 goes silent: DOWN, then removed before its grace ends.
	for range 4 {
		w.elapse(5 * time.Second)
		w.c.Heartbeat(ctx, "dp1", "i1", 1, 1)
		w.c.Heartbeat(ctx, "dp3", "k1", 0, 0)
	}
	if w.state("dp2") != StateDown {
		t.Fatalf("dp2 is %v", w.state("dp2"))
	}
	_, many0 := cs.calls()
	d, n, err = w.c.RemoveDataplane(ctx, "dp2", false)
	if err != nil || n != 2 || d.State != StateDown || d.Leases != 2 {
		t.Fatalf("remove of a down data plane: %+v %d %v", d, n, err)
	}
	if _, many := cs.calls(); many != many0+1 {
		t.Fatalf("%d store batches for one remove", many-many0)
	}
	// A stopped one.
	if _, err := w.c.StopDataplane(ctx, "dp3", "k1", ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.c.RemoveDataplane(ctx, "dp3", false); err != nil {
		t.Fatalf("remove of a stopped data plane: %v", err)
	}
	// An up one with force.
	if _, n, err := w.c.RemoveDataplane(ctx, "dp1", true); err != nil || n != 1 {
		t.Fatalf("forced remove = %d %v", n, err)
	}
	if dps := w.dps(); len(dps) != 0 {
		t.Fatalf("data planes left: %+v", dps)
	}
	if st, _ := cs.Load(ctx); len(st.Dataplanes) != 0 || len(st.Leases) != 0 {
		t.Fatalf("stored state %+v", st)
	}
	if c := w.c.Counts(); c.Removals != 3 || c.Reclaimed != 3 {
		t.Fatalf("counts %+v", c)
	}
	// It is gone after a restart too; one that calls again is recorded anew.
	w.restart()
	if dps := w.dps(); len(dps) != 0 {
		t.Fatalf("data planes after restart: %+v", dps)
	}
	w.register("dp1", "i9")
	if w.state("dp1") != StateUp {
		t.Fatal("a removed data plane registering again is not up")
	}
}

func (w *world) dps() []Dataplane {
	d, err := w.c.Dataplanes(ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	return d
}

// TestReleaseMany: a batch frees what its sessions hold in one store call,
// and repeating it frees nothing.
func TestReleaseMany(t *testing.T) {
	w := newWorld(t)
	cs := w.counted()
	w.register("dp1", "i1")
	a := w.alloc("dp1", "s1", client1)
	b := w.alloc("dp1", "s2", ip("2001:db8::2"))
	c := w.alloc("dp1", "s3", ip("2001:db8::3"))
	batch := []ReleaseRequest{
		{SessionID: "s1", Addr: a, Reason: "eof"},
		{DataplaneID: "dp1", SessionID: "s2", Addr: b, Reason: "keepalive timeout"},
		{SessionID: "s3", Addr: a}, // not its address
		{SessionID: "s1", Addr: a}, // twice
		{SessionID: "gone", Addr: ip("13.8.0.99")},
	}
	_, many0 := cs.calls()
	n, err := w.c.ReleaseMany(ctx, "dp1", "i1", batch)
	if err != nil || n != 2 {
		t.Fatalf("ReleaseMany = %d %v", n, err)
	}
	if rel, many := cs.calls(); rel != 0 || many != many0+1 {
		t.Fatalf("store calls: %d releases, %d batches", rel, many-many0)
	}
	if got := w.leased(); !slices.Equal(got, []string{c.String() + "=dp1/s3"}) {
		t.Fatalf("leases %v", got)
	}
	if n, err := w.c.ReleaseMany(ctx, "dp1", "i1", batch); err != nil || n != 0 {
		t.Fatalf("repeated batch = %d %v", n, err)
	}
	if _, err := w.c.ReleaseMany(ctx, "dp1", "i1", []ReleaseRequest{{DataplaneID: "dp2", SessionID: "s3", Addr: c}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("another data plane's release in the batch: %v", err)
	}
	if _, err := w.c.ReleaseMany(ctx, "dp1", "i1", []ReleaseRequest{{SessionID: "s3"}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("release without an address: %v", err)
	}
	if cnt := w.c.Counts(); cnt.Released != 2 || cnt.ReleaseIgnored != 8 {
		t.Fatalf("counts %+v", cnt)
	}
	if recs := w.logs.records(t, "release"); len(recs) != 2 || recs[1]["reason"] != "keepalive timeout" {
		t.Fatalf("release log %v", recs)
	}
}

// TestLeaseLimits: the controller counts a client's leases across data
// planes; a limit hit fails with a *pool.LimitError, is counted and logged
// (throttled); reservations are exempt.
func TestLeaseLimits(t *testing.T) {
	w := newWorld(t, func(c *Config) { c.Limits = pool.Limits{PerIP: 2, PerPrefix: 3} })
	w.register("dp1", "i1")
	w.register("dp2", "j1")
	w.alloc("dp1", "s1", ip("2001:db8::1"))
	w.alloc("dp2", "s1", ip("2001:db8::1")) // another data plane, same client
	var le *pool.LimitError
	_, err := w.c.Allocate(ctx, "dp1", "s2", ip("2001:db8::1"), 9)
	if !errors.As(err, &le) || le.Kind != pool.LimitIP {
		t.Fatalf("third lease of one address: %v", err)
	}
	w.alloc("dp1", "s3", ip("2001:db8::2"))
	for range 2 {
		if _, err := w.c.Allocate(ctx, "dp1", "s4", ip("2001:db8::3"), 9); !errors.As(err, &le) || le.Kind != pool.LimitPrefix {
			t.Fatalf("fourth lease of one /64: %v", err)
		}
	}
	w.alloc("dp1", "s5", ip("2001:db8:0:1::1")) // another /64
	p, _ := ParseClient("2001:db8::1")
	if _, err := w.c.SetReservation(ctx, Reservation{Client: p, Addr: ip("13.8.0.200")}); err != nil {
		t.Fatal(err)
	}
	if got := w.alloc("dp1", "s6", ip("2001:db8::1")); got != ip("13.8.0.200") {
		t.Fatalf("reserved client at its limit got %s", got)
	}
	c := w.c.Counts()
	if c.LimitRefused != [2]uint64{1, 2} || c.AllocateFailed[FailLimit] != 3 {
		t.Fatalf("counts %+v", c)
	}
	recs := w.logs.records(t, "lease refused: the client is at its lease limit")
	if len(recs) != 2 || recs[0]["limit"] != "ip" || recs[1]["limit"] != "prefix" || recs[1]["counted"] != "2001:db8::/64" {
		t.Fatalf("limit log %v", recs)
	}
	// The counts are rebuilt from the store.
	w.restart()
	if _, err := w.c.Allocate(ctx, "dp1", "s7", ip("2001:db8::9"), 9); !errors.As(err, &le) || le.Kind != pool.LimitPrefix {
		t.Fatalf("after a restart: %v", err)
	}
}

// TestRegisterAfterLostState: leases taken while no instance was
// registered (a data plane going on after its controller lost its state)
// are not released when it registers: no predecessor is known to be gone.
func TestRegisterAfterLostState(t *testing.T) {
	w := newWorld(t)
	a := w.alloc("dp1", "s1", client1)
	w.register("dp1", "i1")
	if got := w.leased(); !slices.Equal(got, []string{a.String() + "=dp1/s1"}) {
		t.Fatalf("leases %v", got)
	}
	if c := w.c.Counts(); c.Reclaimed != 0 {
		t.Fatalf("counts %+v", c)
	}
}
