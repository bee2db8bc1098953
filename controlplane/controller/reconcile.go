package controller

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/fourover6/fourover6/controlplane/store"
)

// reconcileInterval is how often Run reconciles: a quarter of the shorter
// of the timeout and the grace period, within 50ms..1s. The liveness clock
// moves at most two of these per tick.
func reconcileInterval(timeout, grace time.Duration) time.Duration {
	tick := min(timeout, grace) / 4
	return max(min(tick, time.Second), 50*time.Millisecond)
}

// ReconcileInterval is how often Run calls Reconcile. The liveness clock
// advances by at most twice this per call, so a test that moves its clock
// calls Reconcile at least every ReconcileInterval.
func (c *Controller) ReconcileInterval() time.Duration { return c.tick }

// Run reconciles every tick until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	tk := time.NewTicker(c.tick)
	defer tk.Stop()
	c.ranAt.Store(time.Now().UnixNano())
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			c.Reconcile(ctx)
			c.ranAt.Store(time.Now().UnixNano())
		}
	}
}

// Stuck says whether Run is stuck: started, and no Reconcile finished for
// longer than ten ticks (at least 10 s, so a slow store call does not
// count). It takes the controller's lock too, so a deadlock there blocks
// the caller: a watchdog built on it stops either way. It is nil before
// Run starts.
func (c *Controller) Stuck() error {
	c.mu.RLock()
	//lint:ignore SA2001 taking the lock is the check
	c.mu.RUnlock()
	ran := c.ranAt.Load()
	if ran == 0 {
		return nil
	}
	if age := time.Since(time.Unix(0, ran)); age > max(10*c.tick, 10*time.Second) {
		return fmt.Errorf("the reconcile loop last finished %s ago", age.Round(time.Millisecond))
	}
	return nil
}

// Reconcile advances the liveness clock, marks the data planes not heard
// from for DataplaneTimeout DOWN, and releases
//   - the leases of data planes DOWN for GracePeriod,
//   - leases their data plane's complete reports stopped listing: those not
//     listed by any complete report that arrived whole since GracePeriod
//     before the start of the latest one (only for data planes whose
//     complete report arrived whole while this controller led: older ones
//     are only judged by their silence), and
//   - leases held by stopped data planes (an allocation that raced the
//     stop).
//
// Every duration is measured on the liveness clock: a controller that was
// stalled finds the data planes as it left them, one tick older.
// Run calls it periodically; tests call it after moving their clock.
func (c *Controller) Reconcile(ctx context.Context) {
	now := c.now()
	live, skipped := c.live.advance(now)
	if skipped > 0 {
		c.counters.stalls.Add(1)
		c.log.Warn("the controller did not run for a while (stopped, paused, or its clock jumped): that time is not counted against the data planes",
			"skipped", skipped.Round(time.Millisecond))
	}
	t, err := c.active()
	if err != nil {
		return
	}
	type dpv struct {
		down, stopped, reported      bool
		since, lastReport, scannedTo time.Time
	}
	type downLine struct {
		id        string
		lastHeard time.Time
	}
	var downs []downLine
	view := map[string]dpv{}
	counts := t.idx.LeaseCounts()
	t.dpMu.Lock()
	for dp := range counts {
		if _, ok := t.dps[dp]; !ok {
			// Leases of a data plane the registry forgot (an allocation
			// raced its removal): judged by silence from now on.
			t.dps[dp] = &dpState{rec: store.Dataplane{ID: dp}, lastContact: live, seen: now}
		}
	}
	for id, d := range t.dps {
		stopped := !d.rec.StoppedAt.IsZero()
		if !stopped && !d.down && live.Sub(d.lastContact) >= c.cfg.DataplaneTimeout {
			d.down, d.downSince = true, d.lastContact.Add(c.cfg.DataplaneTimeout)
			downs = append(downs, downLine{id, d.seen})
		}
		view[id] = dpv{down: d.down, stopped: stopped, since: d.downSince, reported: d.reported,
			lastReport: d.lastReport, scannedTo: d.scannedTo}
	}
	t.dpMu.Unlock()
	for _, d := range downs {
		c.log.Warn("data plane is DOWN: no heartbeat", "dataplane", d.id, "last_heard", d.lastHeard,
			"timeout", c.cfg.DataplaneTimeout, "leases_released_after", c.cfg.GracePeriod)
	}

	// Data planes registered after the view was taken wait for the next
	// tick.
	var downGone, unclaimed, stopped []store.Lease
	scanned := map[string]time.Time{}
	for id, v := range view {
		if counts[id] == 0 {
			continue
		}
		switch {
		case v.stopped:
			stopped = append(stopped, t.idx.LeasesOf(id)...)
		case v.down && live.Sub(v.since) >= c.cfg.GracePeriod:
			downGone = append(downGone, t.idx.LeasesOf(id)...)
		case !v.down && v.reported:
			// Only a newer complete report moves the cutoff: no lease
			// becomes older than it afterwards, so one scan per report
			// (that released what it found) is enough.
			if cutoff := v.lastReport.Add(-c.cfg.GracePeriod); cutoff.After(v.scannedTo) {
				unclaimed = append(unclaimed, t.idx.Unvouched(id, cutoff)...)
				scanned[id] = cutoff
			}
		}
	}
	release := func(ls []store.Lease, why, msg string) bool {
		if len(ls) == 0 {
			return true
		}
		c.log.Warn(msg, "leases", len(ls), "grace", c.cfg.GracePeriod)
		n, err := t.releaseBatch(ctx, ls, func(store.Owner) string { return why }, slog.LevelInfo)
		c.counters.reclaimed.Add(uint64(n))
		if err != nil {
			c.log.Error("releasing leases failed; will retry", "leases", len(ls)-n, "error", err)
			return false
		}
		return true
	}
	release(downGone, fmt.Sprintf("data plane down for %s", c.cfg.GracePeriod), "releasing the leases of data planes that are down")
	if release(unclaimed, fmt.Sprintf("not reported by its data plane for %s", c.cfg.GracePeriod), "releasing leases no data plane reports") {
		t.dpMu.Lock()
		for id, cutoff := range scanned {
			if d, ok := t.dps[id]; ok && cutoff.After(d.scannedTo) {
				d.scannedTo = cutoff
			}
		}
		t.dpMu.Unlock()
	}
	release(stopped, "data plane stopped", "releasing leases of stopped data planes")
}

// releaseBatch frees leases in one store call (store.ReleaseMany), then in
// the index, and returns how many the store freed. Each lease is logged at
// lvl with the reason reasonOf gives its owner (subscribers see it as the
// disconnect's reason). Leases with a store call in flight (a claim or
// release of the same session) are released one by one after the batch.
func (t *term) releaseBatch(ctx context.Context, ls []store.Lease, reasonOf func(store.Owner) string, lvl slog.Level) (int, error) {
	if len(ls) == 0 {
		return 0, nil
	}
	c := t.c
	rs := make([]store.Release, len(ls))
	for i, l := range ls {
		rs[i] = store.Release{Addr: l.Addr, Owner: l.Owner}
	}
	started, busy := t.idx.BeginReleaseMany(rs)
	n, err := t.storeReleaseMany(ctx, started, reasonOf, lvl)
	if err != nil {
		return n, c.storeErr("release", err)
	}
	for _, r := range busy {
		ok, err := t.release(ctx, r.Owner, r.Addr, reasonOf(r.Owner), lvl)
		if err != nil {
			return n, err
		}
		if ok {
			n++
		}
	}
	return n, nil
}

// storeReleaseMany makes the store release of releases started in the
// index and settles each there: EndRelease for those the store answered
// for, CancelRelease for the others, even if the store call panics.
func (t *term) storeReleaseMany(ctx context.Context, started []store.Lease, reasonOf func(store.Owner) string, lvl slog.Level) (n int, err error) {
	if len(started) == 0 {
		return 0, nil
	}
	c := t.c
	settled := 0
	defer func() {
		if settled < len(started) {
			t.idx.CancelReleaseMany(started[settled:])
		}
	}()
	rs := make([]store.Release, len(started))
	for i, l := range started {
		rs[i] = store.Release{Addr: l.Addr, Owner: l.Owner}
	}
	now := c.now()
	done, err := c.store.ReleaseMany(ctx, rs, now)
	done = done[:min(len(done), len(started))]
	byReason := map[string][]store.Lease{}
	for i, ok := range done {
		l := started[i]
		why := reasonOf(l.Owner)
		byReason[why] = append(byReason[why], l)
		if ok {
			n++
			c.log.Log(context.Background(), lvl, "release", "address", l.Addr, "dataplane", l.Dataplane,
				"session", l.Session, "client", netip.AddrPortFrom(l.ClientIPv6, l.ClientPort),
				"reason", why, "held", now.Sub(l.LeasedAt).Round(time.Second))
		}
	}
	for why, group := range byReason {
		t.idx.EndReleaseMany(group, now, why)
	}
	settled = len(done)
	return n, err
}
