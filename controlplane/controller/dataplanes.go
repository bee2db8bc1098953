package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
)

// DataplaneState is UP, DRAINING or DOWN.
type DataplaneState int

const (
	StateUp DataplaneState = iota + 1
	StateDraining
	StateDown
)

func (s DataplaneState) String() string {
	switch s {
	case StateUp:
		return "UP"
	case StateDraining:
		return "DRAINING"
	case StateDown:
		return "DOWN"
	}
	return "UNKNOWN"
}

// Dataplane is a data plane as the operator sees it.
type Dataplane struct {
	ID           string
	InstanceID   string
	Version      string
	Listen       string
	APIAddress   string
	State        DataplaneState
	Draining     bool
	Sessions     uint32 // open connections, from its last heartbeat
	Leases       uint32 // leases the controller holds for it
	RegisteredAt time.Time
	LastContact  time.Time // last heartbeat (or other call)
}

// Registration is a data plane's RegisterDataplane request.
type Registration struct {
	DataplaneID string
	InstanceID  string
	Version     string
	Listen      string
	APIAddress  string
}

// RegistrationReply is what a data plane needs to configure its TUN, and
// its instructions.
type RegistrationReply struct {
	Gateway           netip.Addr
	Prefix            netip.Prefix
	ControllerVersion string
	HeartbeatInterval time.Duration
	Draining          bool
}

// Command is pushed to a data plane: exactly one field is set.
type Command struct {
	Kick  *KickCommand
	Drain *bool
}

// KickCommand closes the session holding Addr (only SessionID, when set).
type KickCommand struct {
	Addr      netip.Addr
	SessionID string
	Reason    string
}

// dpState is the controller's view of one data plane in a term.
type dpState struct {
	rec         store.Dataplane
	known       bool // has a stored record (registered at some point)
	lastContact time.Time
	sessions    uint32
	down        bool
	downSince   time.Time
	reported    bool       // sent a complete report during this term
	stream      *cmdStream // the open WatchCommands stream, if any
}

type cmdStream struct {
	ch   chan Command
	done chan struct{} // closed when replaced
}

// cmdQueue bounds commands waiting on one stream.
const cmdQueue = 256

// touch notes that a data plane was heard from and returns its current
// instance id. A data plane that calls before registering (say, after a
// controller lost its state) is recorded too.
func (t *term) touch(id string) string {
	now := t.c.now()
	t.dpMu.Lock()
	defer t.dpMu.Unlock()
	d, ok := t.dps[id]
	if !ok {
		d = &dpState{rec: store.Dataplane{ID: id}}
		t.dps[id] = d
	}
	d.lastContact = now
	if d.down {
		d.down = false
		t.c.log.Info("data plane is back", "dataplane", id, "down_for", now.Sub(d.downSince).Round(time.Second))
	}
	return d.rec.InstanceID
}

// RegisterDataplane records a data plane (again, harmlessly, on every
// call) and returns the pool settings it needs for its TUN. A new instance
// id means the previous process is gone, and so are its sessions: their
// leases are released.
func (c *Controller) RegisterDataplane(ctx context.Context, r Registration) (RegistrationReply, error) {
	if err := ctx.Err(); err != nil {
		return RegistrationReply{}, err
	}
	if err := checkID("dataplane id", r.DataplaneID); err != nil {
		return RegistrationReply{}, err
	}
	if len(r.InstanceID) > MaxIDLen {
		return RegistrationReply{}, invalid("instance id is %d bytes long, more than %d", len(r.InstanceID), MaxIDLen)
	}
	t, err := c.active()
	if err != nil {
		return RegistrationReply{}, err
	}
	now := c.now()
	t.dpMu.Lock()
	d, ok := t.dps[r.DataplaneID]
	if !ok {
		d = &dpState{rec: store.Dataplane{ID: r.DataplaneID}}
		t.dps[r.DataplaneID] = d
	}
	prev := d.rec
	rec := prev
	rec.InstanceID = r.InstanceID
	rec.Version = clip(r.Version)
	rec.ClientListen = clip(r.Listen)
	rec.APIAddress = clip(r.APIAddress)
	rec.RegisteredAt = now
	newInstance := prev.InstanceID != r.InstanceID
	t.dpMu.Unlock()

	if err := c.store.PutDataplane(ctx, rec); err != nil {
		return RegistrationReply{}, c.storeErr("register data plane", err)
	}
	t.dpMu.Lock()
	d.rec, d.known = rec, true
	d.lastContact = now
	d.down = false
	if newInstance {
		d.reported = false
	}
	t.dpMu.Unlock()

	held := t.idx.LeasesOf(r.DataplaneID)
	c.log.Info("data plane registered", "dataplane", r.DataplaneID, "instance", r.InstanceID,
		"version", rec.Version, "listen", rec.ClientListen, "api", rec.APIAddress,
		"known", ok && prev.InstanceID != "", "leases", len(held), "draining", rec.Draining)
	if newInstance {
		// Its previous instance's sessions died with it. Leases taken by
		// this instance (none yet, normally) stay.
		var gone []store.Lease
		for _, l := range held {
			if l.InstanceID != r.InstanceID {
				gone = append(gone, l)
			}
		}
		if len(gone) > 0 {
			c.log.Warn("data plane restarted: releasing the leases of its previous instance",
				"dataplane", r.DataplaneID, "previous_instance", prev.InstanceID, "leases", len(gone))
			t.releaseAll(ctx, gone, "data plane restarted (new instance "+r.InstanceID+")")
		}
	}
	return RegistrationReply{
		Gateway: t.idx.Gateway(), Prefix: t.idx.Prefix(), ControllerVersion: c.version,
		HeartbeatInterval: c.cfg.HeartbeatInterval, Draining: rec.Draining,
	}, nil
}

// releaseAll releases leases, a few at a time (each is one commit, and
// commits are shared).
func (t *term) releaseAll(ctx context.Context, ls []store.Lease, reason string) {
	sem := make(chan struct{}, 16)
	done := make(chan struct{}, len(ls))
	for _, l := range ls {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; done <- struct{}{} }()
			ok, err := t.release(ctx, l.Owner, l.Addr, reason, slog.LevelInfo)
			if err != nil {
				t.c.log.Error("releasing a lease failed; will retry", "address", l.Addr,
					"dataplane", l.Dataplane, "session", l.Session, "error", err)
			} else if ok {
				t.c.counters.reclaimed.Add(1)
			}
		}()
	}
	for range ls {
		<-done
	}
}

// Heartbeat notes that a data plane is alive. known is false when the
// controller does not know this instance: the data plane must register.
func (c *Controller) Heartbeat(ctx context.Context, dataplaneID, instanceID string, sessions, leased uint32) (known, draining bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, false, err
	}
	if err := checkID("dataplane id", dataplaneID); err != nil {
		return false, false, err
	}
	t, err := c.active()
	if err != nil {
		return false, false, err
	}
	t.dpMu.Lock()
	d, ok := t.dps[dataplaneID]
	if !ok || !d.known || d.rec.InstanceID != instanceID {
		t.dpMu.Unlock()
		c.log.Info("heartbeat from an unknown data plane instance: asking it to register", "dataplane", dataplaneID, "instance", instanceID)
		return false, false, nil
	}
	now := c.now()
	d.lastContact = now
	d.sessions = sessions
	if d.down {
		d.down = false
		c.log.Info("data plane is back", "dataplane", dataplaneID, "down_for", now.Sub(d.downSince).Round(time.Second))
	}
	draining = d.rec.Draining
	t.dpMu.Unlock()
	return true, draining, nil
}

// WatchCommands serves one data plane's command stream: fn is called for
// every command until ctx ends, the stream is replaced by a newer one of
// the same data plane, or this controller stops leading.
func (c *Controller) WatchCommands(ctx context.Context, dataplaneID, instanceID string, fn func(Command) error) error {
	if err := checkID("dataplane id", dataplaneID); err != nil {
		return err
	}
	t, err := c.active()
	if err != nil {
		return err
	}
	s := &cmdStream{ch: make(chan Command, cmdQueue), done: make(chan struct{})}
	t.dpMu.Lock()
	d, ok := t.dps[dataplaneID]
	if !ok || !d.known {
		t.dpMu.Unlock()
		return precondition("data plane %s is not registered: register first", dataplaneID)
	}
	if d.stream != nil {
		close(d.stream.done)
	}
	d.stream = s
	t.dpMu.Unlock()
	c.log.Debug("command stream opened", "dataplane", dataplaneID, "instance", instanceID)
	defer func() {
		t.dpMu.Lock()
		if d.stream == s {
			d.stream = nil
		}
		t.dpMu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.done:
			return &NotLeaderError{}
		case <-s.done:
			return unavailable("replaced by a newer command stream of data plane %s", dataplaneID)
		case cmd := <-s.ch:
			if err := fn(cmd); err != nil {
				return err
			}
		}
	}
}

// push queues a command for a data plane's stream.
func (t *term) push(dp string, cmd Command) error {
	t.dpMu.Lock()
	defer t.dpMu.Unlock()
	d, ok := t.dps[dp]
	if !ok || d.stream == nil {
		return unavailable("data plane %s has no command stream open", dp)
	}
	select {
	case d.stream.ch <- cmd:
		return nil
	default:
		return unavailable("data plane %s is not taking commands (%d queued)", dp, cmdQueue)
	}
}

// KickClient asks the data plane holding addr to close that client. Its
// lease is released as for any disconnect, by the data plane's release.
func (c *Controller) KickClient(ctx context.Context, addr netip.Addr, reason string) (dataplaneID, sessionID string, err error) {
	if err := checkIPv4(addr); err != nil {
		return "", "", err
	}
	t, err := c.active()
	if err != nil {
		return "", "", err
	}
	l, ok := t.idx.Lease(addr)
	if !ok {
		return "", "", notFound("no client holds %s", addr)
	}
	if reason == "" {
		reason = "kicked by operator"
	}
	if err := t.push(l.Dataplane, Command{Kick: &KickCommand{Addr: addr, SessionID: l.Session, Reason: clip(reason)}}); err != nil {
		return "", "", err
	}
	c.log.Info("kick sent", "address", addr, "dataplane", l.Dataplane, "session", l.Session, "reason", clip(reason))
	return l.Dataplane, l.Session, nil
}

// DrainDataplane stops (or resumes) new clients on one data plane. It is
// stored, pushed on the command stream and repeated in every heartbeat and
// registration reply.
func (c *Controller) DrainDataplane(ctx context.Context, id string, draining bool) (Dataplane, error) {
	if err := checkID("dataplane id", id); err != nil {
		return Dataplane{}, err
	}
	t, err := c.active()
	if err != nil {
		return Dataplane{}, err
	}
	t.dpMu.Lock()
	d, ok := t.dps[id]
	if !ok || !d.known {
		t.dpMu.Unlock()
		return Dataplane{}, notFound("no data plane %q is registered", id)
	}
	rec := d.rec
	t.dpMu.Unlock()
	rec.Draining = draining
	if err := c.store.PutDataplane(ctx, rec); err != nil {
		return Dataplane{}, c.storeErr("drain", err)
	}
	t.dpMu.Lock()
	d.rec.Draining = draining
	t.dpMu.Unlock()
	if err := t.push(id, Command{Drain: &draining}); err != nil {
		c.log.Info("drain stored; the data plane learns it with its next heartbeat", "dataplane", id, "reason", err)
	}
	c.log.Info("data plane drain set", "dataplane", id, "draining", draining)
	for _, v := range t.dataplanes() {
		if v.ID == id {
			return v, nil
		}
	}
	return Dataplane{}, notFound("no data plane %q is registered", id)
}

// Dataplanes returns the data planes heard from, sorted by id.
func (c *Controller) Dataplanes(ctx context.Context) ([]Dataplane, error) {
	t, err := c.active()
	if err != nil {
		return nil, err
	}
	return t.dataplanes(), nil
}

func (t *term) dataplanes() []Dataplane {
	counts := t.idx.LeaseCounts()
	t.dpMu.Lock()
	out := make([]Dataplane, 0, len(t.dps))
	for _, d := range t.dps {
		st := StateUp
		switch {
		case d.down:
			st = StateDown
		case d.rec.Draining:
			st = StateDraining
		}
		out = append(out, Dataplane{
			ID: d.rec.ID, InstanceID: d.rec.InstanceID, Version: d.rec.Version, Listen: d.rec.ClientListen,
			APIAddress: d.rec.APIAddress, State: st, Draining: d.rec.Draining, Sessions: d.sessions,
			Leases: uint32(counts[d.rec.ID]), RegisteredAt: d.rec.RegisteredAt, LastContact: d.lastContact,
		})
	}
	t.dpMu.Unlock()
	slices.SortFunc(out, func(a, b Dataplane) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Report applies a data plane's session reports to the client table and
// returns the ids of reported sessions that hold no lease here, so the
// data plane can act on them.
//
// Reconciliation: a session reported with an address it holds keeps its
// lease (and counts as claimed, see Reconcile). A session reported with an
// address no one holds gets that lease back (adopted: its lease was lost,
// e.g. released while its data plane was unreachable). An address that
// another session holds is a conflict: logged as an error; the lease in the
// store wins and the reporting session is kicked.
func (c *Controller) Report(ctx context.Context, dataplaneID, instanceID string, complete bool, reports []SessionReport) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkID("dataplane id", dataplaneID); err != nil {
		return nil, err
	}
	for i, r := range reports {
		if err := checkID("session id", r.SessionID); err != nil {
			return nil, invalid("report %d: %v", i, err)
		}
		if r.Addr.IsValid() && !r.Addr.Is4() {
			return nil, invalid("report %d (session %s): address %s is not an IPv4 address", i, r.SessionID, r.Addr)
		}
		if r.ClientIPv6.IsValid() && r.ClientIPv6.Is4() {
			return nil, invalid("report %d (session %s): client address %s is not an IPv6 address", i, r.SessionID, r.ClientIPv6)
		}
	}
	t, err := c.active()
	if err != nil {
		return nil, err
	}
	current := t.touch(dataplaneID)
	// Only the registered instance's complete report may vouch for leases.
	vouch := complete && instanceID != "" && instanceID == current
	now := c.now()
	outcomes := make([]pool.Outcome, len(reports))
	grew := t.idx.ApplyReports(dataplaneID, reports, vouch, now, outcomes)
	if vouch {
		// Sessions holding no lease here that say which address they hold
		// get it back if it is free, then the report applies to them too.
		var adopted []int
		for i, o := range outcomes {
			if o == pool.NoLease && reports[i].Addr.IsValid() {
				owner := store.Owner{Dataplane: dataplaneID, Session: reports[i].SessionID}
				if t.adoptReported(ctx, owner, instanceID, reports[i], now) {
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
			grew = grew.Add(t.idx.ApplyReports(dataplaneID, again, vouch, now, out))
			for j, i := range adopted {
				outcomes[i] = out[j]
			}
		}
	}
	c.counters.traffic(grew)
	var unknown []string
	for i, o := range outcomes {
		if o != pool.Known {
			unknown = append(unknown, reports[i].SessionID)
		}
	}
	if vouch {
		t.dpMu.Lock()
		if d, ok := t.dps[dataplaneID]; ok {
			d.reported = true
		}
		t.dpMu.Unlock()
	}
	if len(unknown) > 0 {
		c.log.Debug("report names sessions without a lease", "dataplane", dataplaneID, "sessions", len(unknown))
	}
	return unknown, nil
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

// Run reconciles every tick until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	tick := min(c.cfg.DataplaneTimeout, c.cfg.GracePeriod) / 4
	tick = max(min(tick, time.Second), 50*time.Millisecond)
	tk := time.NewTicker(tick)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			c.Reconcile(ctx)
		}
	}
}

// Reconcile marks data planes not heard from for DataplaneTimeout DOWN,
// and releases
//   - the leases of data planes DOWN for GracePeriod, and
//   - leases that their data plane's complete reports have not listed for
//     GracePeriod (only for data planes that did send a complete report
//     while this controller led: older ones are only judged by heartbeats).
//
// Run calls it periodically; tests call it after moving their clock.
func (c *Controller) Reconcile(ctx context.Context) {
	t, err := c.active()
	if err != nil {
		return
	}
	now := c.now()
	type dpv struct {
		down     bool
		since    time.Time
		reported bool
	}
	view := map[string]dpv{}
	t.dpMu.Lock()
	for id, d := range t.dps {
		if !d.down && now.Sub(d.lastContact) >= c.cfg.DataplaneTimeout {
			d.down, d.downSince = true, d.lastContact.Add(c.cfg.DataplaneTimeout)
			c.log.Warn("data plane is DOWN: no heartbeat", "dataplane", id,
				"last_heard", d.lastContact, "leases_released_after", c.cfg.GracePeriod)
		}
		view[id] = dpv{down: d.down, since: d.downSince, reported: d.reported}
	}
	t.dpMu.Unlock()

	// Data planes registered after the view was taken wait for the next
	// tick.
	var downGone, unclaimed []store.Lease
	for id, v := range view {
		switch {
		case v.down && now.Sub(v.since) >= c.cfg.GracePeriod:
			downGone = append(downGone, t.idx.LeasesOf(id)...)
		case !v.down && v.reported:
			unclaimed = append(unclaimed, t.idx.Unvouched(id, now.Add(-c.cfg.GracePeriod))...)
		}
	}
	if len(downGone) > 0 {
		c.log.Warn("releasing the leases of data planes that are down", "leases", len(downGone), "grace", c.cfg.GracePeriod)
		t.releaseAll(ctx, downGone, fmt.Sprintf("data plane down for %s", c.cfg.GracePeriod))
	}
	if len(unclaimed) > 0 {
		c.log.Warn("releasing leases no data plane reports", "leases", len(unclaimed), "grace", c.cfg.GracePeriod)
		t.releaseAll(ctx, unclaimed, fmt.Sprintf("not reported by its data plane for %s", c.cfg.GracePeriod))
	}
}
