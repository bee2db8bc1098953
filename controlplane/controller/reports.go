package controller

import (
	"context"
	"errors"
	"time"

	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
)

// registered returns the registered instance of data plane id, and false
// when it has none running (unknown, never registered, or stopped).
func (t *term) registered(id string) (string, bool) {
	t.dpMu.Lock()
	defer t.dpMu.Unlock()
	d, ok := t.dps[id]
	if !ok || d.rec.InstanceID == "" || !d.rec.StoppedAt.IsZero() {
		return "", false
	}
	return d.rec.InstanceID, true
}

// ReportStream is one session report of a data plane being received,
// perhaps in chunks (StreamSessionReport): BeginReport, Add for each chunk,
// then Finish once the whole report has arrived. Chunks are applied to the
// client table as they arrive (counters, last heard; sessions the
// controller lost are adopted), but a complete report vouches for the
// leases it lists only in Finish: a report that is never finished (its
// stream failed) vouches for nothing. A ReportStream is used by one
// goroutine.
type ReportStream struct {
	c        *Controller
	t        *term
	dp       string
	instance string
	vouch    bool      // a complete report of the registered instance
	start    time.Time // liveness clock: when it began
	listed   []string  // sessions found holding their lease: vouched for by Finish
	unknown  []string
	sessions int
	finished bool
}

// ReportResult is what a finished report found.
type ReportResult struct {
	// Unknown are the reported sessions that hold no lease here (or
	// another address than reported), so the data plane can act on them.
	Unknown []string
	// Sessions is how many sessions the report listed.
	Sessions int
}

// BeginReport starts a report of data plane dataplaneID's instance
// instanceID; complete says it lists every leased session of that
// instance. A report of an instance that is not the registered one is
// refused (the error matches ErrNotRegistered); one naming no instance is
// applied but vouches for nothing.
func (c *Controller) BeginReport(ctx context.Context, dataplaneID, instanceID string, complete bool) (*ReportStream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkID("dataplane id", dataplaneID); err != nil {
		return nil, err
	}
	if len(instanceID) > MaxIDLen {
		return nil, invalid("instance id is %d bytes long, more than %d", len(instanceID), MaxIDLen)
	}
	t, err := c.active()
	if err != nil {
		return nil, err
	}
	current, err := t.caller(dataplaneID, instanceID)
	if err != nil {
		return nil, err
	}
	return &ReportStream{
		c: c, t: t, dp: dataplaneID, instance: instanceID,
		vouch: complete && instanceID != "" && instanceID == current,
		start: c.live.at(c.now()),
	}, nil
}

// Add applies one chunk of the report. Reconciliation: a session reported
// with the address it holds keeps its lease (and, once the report is
// finished, counts as listed). A session of a complete report with an
// address no one holds gets that lease back (adopted: its lease was lost,
// e.g. released while its data plane was unreachable). An address that
// another session holds is a conflict: logged as an error; the lease in the
// store wins and the reporting session is kicked. A chunk with a malformed
// session report is refused whole (nothing of it applied).
func (r *ReportStream) Add(ctx context.Context, reports []SessionReport) error {
	if r.finished {
		return errors.New("report already finished")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for i, rep := range reports {
		n := r.sessions + i
		if err := checkID("session id", rep.SessionID); err != nil {
			return invalid("report %d: %v", n, err)
		}
		if rep.Addr.IsValid() && !rep.Addr.Is4() {
			return invalid("report %d (session %s): address %s is not an IPv4 address", n, rep.SessionID, rep.Addr)
		}
		if rep.ClientIPv6.IsValid() && rep.ClientIPv6.Is4() {
			return invalid("report %d (session %s): client address %s is not an IPv6 address", n, rep.SessionID, rep.ClientIPv6)
		}
	}
	t, c := r.t, r.c
	if _, err := c.active(); err != nil {
		return err
	}
	select {
	case <-t.done:
		return &NotLeaderError{}
	default:
	}
	if r.sessions > 0 {
		t.heard(r.dp, r.instance) // a long report is a sign of life all along
	}
	r.sessions += len(reports)
	now := c.now()
	for i := range reports {
		if reports[i].ReceivedAt.IsZero() {
			reports[i].ReceivedAt = now // rates are growth over the time between reports
		}
	}
	outcomes := make([]pool.Outcome, len(reports))
	grew := t.idx.ApplyReports(r.dp, reports, outcomes)
	if r.vouch {
		// Sessions holding no lease here that say which address they hold
		// get it back if it is free, then the report applies to them too.
		var adopted []int
		for i, o := range outcomes {
			if o == pool.NoLease && reports[i].Addr.IsValid() {
				owner := store.Owner{Dataplane: r.dp, Session: reports[i].SessionID}
				if t.adoptReported(ctx, owner, r.instance, reports[i], now) {
					adopted = append(adopted, i)
				}
			}
		}
		if len(adopted) > 0 {
			again := make([]SessionReport, len(adopted))
			for j, i := range adopted {
				again[j] = reports[i]
			}
			out := make([]pool.Outcome, len(again))
			grew = grew.Add(t.idx.ApplyReports(r.dp, again, out))
			for j, i := range adopted {
				outcomes[i] = out[j]
			}
		}
	}
	c.counters.traffic(grew)
	for i, o := range outcomes {
		if o == pool.Known {
			if r.vouch {
				r.listed = append(r.listed, reports[i].SessionID)
			}
		} else {
			r.unknown = append(r.unknown, reports[i].SessionID)
		}
	}
	return nil
}

// Finish ends the report: the whole of it arrived. A complete report of
// the registered instance vouches for every lease it listed, as listed at
// its start, and becomes the data plane's latest complete report (see
// Reconcile).
func (r *ReportStream) Finish(ctx context.Context) (ReportResult, error) {
	if r.finished {
		return ReportResult{}, errors.New("report already finished")
	}
	r.finished = true
	t, c := r.t, r.c
	if _, err := c.active(); err != nil {
		return ReportResult{}, err
	}
	select {
	case <-t.done:
		return ReportResult{}, &NotLeaderError{}
	default:
	}
	if r.vouch {
		if reg, ok := t.registered(r.dp); !ok || reg != r.instance {
			// Another instance took the id (or it stopped, or was
			// removed) while this report came in.
			return ReportResult{}, &NotRegisteredError{DataplaneID: r.dp, InstanceID: r.instance, Registered: reg}
		}
		t.idx.Vouch(r.dp, r.listed, r.start)
		t.dpMu.Lock()
		if d, ok := t.dps[r.dp]; ok && d.rec.InstanceID == r.instance {
			d.reported = true
			if r.start.After(d.lastReport) {
				d.lastReport = r.start
			}
		}
		t.dpMu.Unlock()
	}
	if len(r.unknown) > 0 {
		c.log.Debug("report names sessions without a lease", "dataplane", r.dp, "sessions", len(r.unknown))
	}
	return ReportResult{Unknown: r.unknown, Sessions: r.sessions}, nil
}

// Report applies a data plane's whole session report at once (see
// ReportStream) and returns the ids of reported sessions that hold no
// lease here.
func (c *Controller) Report(ctx context.Context, dataplaneID, instanceID string, complete bool, reports []SessionReport) ([]string, error) {
	rs, err := c.BeginReport(ctx, dataplaneID, instanceID, complete)
	if err != nil {
		return nil, err
	}
	if err := rs.Add(ctx, reports); err != nil {
		return nil, err
	}
	res, err := rs.Finish(ctx)
	return res.Unknown, err
}

// adoptReported gives a reported session the lease it says it holds, if
// the address is free; otherwise it resolves the conflict. It reports
// whether the session holds a lease here now (the one reported or, if it
// got one meanwhile, another).
func (t *term) adoptReported(ctx context.Context, owner store.Owner, instance string, r SessionReport, now time.Time) bool {
	c := t.c
	conflict := func(holder string, why string) {
		c.log.Error("ADDRESS CONFLICT: two sessions claim one address; the lease in the store wins, kicking the other session",
			"address", r.Addr, "holder", holder, "claimant", owner.String(),
			"client", r.ClientIPv6, "why", why)
		if err := t.push(owner.Dataplane, Command{Kick: &KickCommand{Addr: r.Addr, SessionID: owner.Session,
			Reason: "address conflict: " + r.Addr.String() + " is leased to another session"}}); err != nil {
			c.log.Error("cannot kick the conflicting session", "dataplane", owner.Dataplane, "session", owner.Session, "error", err)
		}
	}
	_, started, err := t.idx.ClaimAt(owner, r.Addr, r.ClientIPv6)
	var ce *pool.ConflictError
	switch {
	case errors.Is(err, pool.ErrOutside):
		c.log.Error("data plane reports a session with an address outside the pool", "dataplane", owner.Dataplane,
			"session", owner.Session, "address", r.Addr, "pool", t.idx.Prefix())
		return false
	case errors.As(err, &ce) && ce.Reservation.IsValid():
		conflict("reservation "+ce.Reservation.String(), "reserved for another client")
		return false
	case errors.As(err, &ce):
		conflict(ce.Holder.String(), "held")
		return false
	case err != nil:
		conflict("?", err.Error())
		return false
	case !started:
		return true // it got a lease meanwhile
	}
	at := r.ConnectedAt
	if at.IsZero() {
		at = now
	}
	l := store.Lease{Addr: r.Addr, Owner: owner, InstanceID: instance,
		ClientIPv6: r.ClientIPv6, ClientPort: r.ClientPort, LeasedAt: at}
	held, existing, committed, err := t.claim(ctx, l, now, false)
	if err != nil || existing || !committed {
		if errors.Is(err, store.ErrTaken) {
			if other, ok, _ := c.store.Lease(ctx, r.Addr); ok {
				t.adopt(other, now)
				conflict(other.Owner.String(), "held in the store")
			}
		} else if err == nil && existing {
			t.adopt(held, now)
		} else if err == nil {
			c.log.Error("reported lease committed but its claim was gone from the index", "address", r.Addr,
				"dataplane", owner.Dataplane, "session", owner.Session)
		} else {
			c.log.Error("cannot adopt a reported lease", "address", r.Addr, "dataplane", owner.Dataplane,
				"session", owner.Session, "error", err)
		}
		return false
	}
	c.log.Warn("lease adopted from a data plane's report (the controller had no lease for it)",
		"address", r.Addr, "dataplane", owner.Dataplane, "session", owner.Session, "client", r.ClientIPv6)
	return true
}
