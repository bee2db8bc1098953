package controller

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/fourover6/fourover6/controlplane/store"
)

// DataplaneState is UP, DRAINING, DOWN or STOPPED.
type DataplaneState int

const (
	StateUp DataplaneState = iota + 1
	StateDraining
	StateDown
	StateStopped
)

func (s DataplaneState) String() string {
	switch s {
	case StateUp:
		return "UP"
	case StateDraining:
		return "DRAINING"
	case StateDown:
		return "DOWN"
	case StateStopped:
		return "STOPPED"
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
	LastContact  time.Time // last call of its registered instance
	StoppedAt    time.Time // when it said it stopped; zero unless StateStopped
	Peer         string    // where its registered instance called from, if known
}

// Registration is a data plane's RegisterDataplane request.
type Registration struct {
	DataplaneID string
	InstanceID  string
	Version     string
	Listen      string
	APIAddress  string
	// Peer is where the call came from (the gRPC peer address), for
	// operators; empty when unknown.
	Peer string
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
	Kick       *KickCommand
	Drain      *bool
	IDConflict *DataplaneInstance // another instance of this id was refused
}

// KickCommand closes the session holding Addr (only SessionID, when set).
type KickCommand struct {
	Addr      netip.Addr
	SessionID string
	Reason    string
}

// DataplaneInstance is one process of a data plane, as it announced
// itself.
type DataplaneInstance struct {
	InstanceID string
	Peer       string // where it called from ("" if not known)
	Listen     string // where its clients connect
	APIAddress string
}

func (d DataplaneInstance) String() string {
	at := ""
	if d.Peer != "" {
		at = " at " + d.Peer
	}
	return fmt.Sprintf("instance %s%s (clients connect to %s, API %s)",
		orUnknown(d.InstanceID), at, orUnknown(d.Listen), orUnknown(d.APIAddress))
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

// IDConflictError is RegisterDataplane's error when another instance of
// the data plane id is live. It matches ErrIDInUse.
type IDConflictError struct {
	DataplaneID string
	Live        DataplaneInstance // keeps the id
	Refused     DataplaneInstance // the caller
}

func (e *IDConflictError) Error() string {
	return fmt.Sprintf("another data plane with --id %s is running: %s; give this one a different --id", e.DataplaneID, e.Live)
}

func (e *IDConflictError) Is(target error) bool { return target == ErrIDInUse }

// IDPendingError refuses a new instance of a data plane id for now: the
// registered instance was registered before this term and has not been
// heard from in it, so it may be live (it reconnects after the controller's
// restart or a change of leader) or gone. Until Wait has passed the new
// instance should retry; then the id is handed over, unless the registered
// instance came back. It matches ErrUnavailable.
type IDPendingError struct {
	DataplaneID string
	Registered  string        // the registered instance id
	Wait        time.Duration // at most this long
}

func (e *IDPendingError) Error() string {
	return fmt.Sprintf("data plane %s: its registered instance %s has not been heard from since this controller started leading; "+
		"waiting up to %s for it before handing the id over (retry)", e.DataplaneID, e.Registered, e.Wait.Round(time.Second))
}

func (e *IDPendingError) Is(target error) bool { return target == ErrUnavailable }

// NotRegisteredError is the error of a call from a data plane instance
// that is not the registered instance of its id. It matches
// ErrNotRegistered and ErrFailedPrecondition.
type NotRegisteredError struct {
	DataplaneID string
	InstanceID  string // the caller
	Registered  string // the registered instance ("" when none)
	Stopped     bool   // the registered instance (the caller) stopped
	Removed     bool   // the controller knows no such data plane
}

func (e *NotRegisteredError) Error() string {
	switch {
	case e.Stopped:
		return fmt.Sprintf("data plane %s (instance %s) stopped: register again first", e.DataplaneID, orUnknown(e.InstanceID))
	case e.Removed || e.Registered == "":
		return fmt.Sprintf("data plane %s is not registered: register first", e.DataplaneID)
	}
	return fmt.Sprintf("instance %s is not the registered instance of data plane %s (%s is): register again",
		orUnknown(e.InstanceID), e.DataplaneID, e.Registered)
}

func (e *NotRegisteredError) Is(target error) bool {
	return target == ErrNotRegistered || target == ErrFailedPrecondition
}

// peerKey carries the caller's address in a context (WithPeer).
type peerKey struct{}

// WithPeer returns ctx noting that the call came from peer (the gRPC peer
// address), so the registry can tell operators where a data plane runs.
func WithPeer(ctx context.Context, peer string) context.Context {
	if peer == "" {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, clip(peer))
}

func peerOf(ctx context.Context) string {
	p, _ := ctx.Value(peerKey{}).(string)
	return p
}

// dpState is the controller's view of one data plane in a term.
//
// Its registered instance is live (liveLocked) while it was heard from
// within DataplaneTimeout on the liveness clock, has not stopped, and is
// not provably gone: its command stream, once open this term, ended and
// nothing was heard from it since. A term starts with every stored data
// plane heard from at its start: after a controller restart or a change of
// leader, the registered instance has DataplaneTimeout to reconnect before
// another instance may take its id, unless it stopped.
type dpState struct {
	rec   store.Dataplane
	known bool // has a stored record (registered at some point)

	lastContact time.Time // liveness clock: its last call, or the term's start
	seen        time.Time // the same on the wall clock, for operators
	contacts    uint64    // calls noted this term
	down        bool      // judged DOWN by Reconcile (silence)
	downSince   time.Time // liveness clock

	stream      *cmdStream // the registered instance's open WatchCommands stream
	streamEnded bool       // its last stream ended (and none is open)
	endedAt     uint64     // contacts when it ended
	peer        string     // where the registered instance called from

	sessions   uint32
	reported   bool      // a complete report of the registered instance arrived whole this term
	lastReport time.Time // liveness clock: the start of the latest such report
	scannedTo  time.Time // Reconcile released the leases vouched for up to this (liveness clock)

	conflictLog throttle // id-conflict log lines and commands
	unknownLog  throttle // heartbeats of unregistered instances
}

type cmdStream struct {
	ch   chan Command
	done chan struct{} // closed when replaced
}

// cmdQueue bounds commands waiting on one stream.
const cmdQueue = 256

// aliveLocked: d was heard from recently, did not stop and is not
// provably gone. Callers hold dpMu.
func (t *term) aliveLocked(d *dpState, live time.Time) bool {
	switch {
	case !d.rec.StoppedAt.IsZero(), d.down:
		return false
	case live.Sub(d.lastContact) >= t.c.cfg.DataplaneTimeout:
		return false
	case d.stream == nil && d.streamEnded && d.contacts == d.endedAt:
		return false // its stream ended and nothing was heard since
	}
	return true
}

// liveLocked: d's registered instance is live (see dpState), so another
// instance may not take its id.
func (t *term) liveLocked(d *dpState, live time.Time) bool {
	return d.rec.InstanceID != "" && t.aliveLocked(d, live)
}

// contactLocked notes a call of d's registered instance. It returns how
// long d was DOWN if this call brought it back (0 otherwise), for the log.
func (t *term) contactLocked(d *dpState, live, now time.Time) time.Duration {
	d.lastContact, d.seen = live, now
	d.contacts++
	if !d.down {
		return 0
	}
	d.down = false
	return max(live.Sub(d.downSince), time.Nanosecond)
}

func (t *term) logBack(id string, downFor time.Duration) {
	if downFor > 0 {
		t.c.log.Info("data plane is back", "dataplane", id, "down_for", downFor.Round(time.Second))
	}
}

// entryLocked returns d's state, recording a data plane never seen
// before (one that calls before registering, say after the controller
// lost its state).
func (t *term) entryLocked(id string) *dpState {
	d, ok := t.dps[id]
	if !ok {
		d = &dpState{rec: store.Dataplane{ID: id}}
		t.dps[id] = d
	}
	return d
}

// caller admits a call (an allocation, a report) of instance of data plane
// id and notes it as a sign of life: it must be the registered instance,
// or name none, or the data plane must have none registered; a stopped
// data plane makes no calls. It returns the registered instance id.
func (t *term) caller(id, instance string) (string, error) {
	now := t.c.now()
	live := t.c.live.at(now)
	t.dpMu.Lock()
	d := t.entryLocked(id)
	reg := d.rec.InstanceID
	switch {
	case !d.rec.StoppedAt.IsZero():
		t.dpMu.Unlock()
		return "", &NotRegisteredError{DataplaneID: id, InstanceID: instance, Registered: reg, Stopped: true}
	case instance != "" && reg != "" && instance != reg:
		t.dpMu.Unlock()
		return "", &NotRegisteredError{DataplaneID: id, InstanceID: instance, Registered: reg}
	}
	back := t.contactLocked(d, live, now)
	t.dpMu.Unlock()
	t.logBack(id, back)
	return reg, nil
}

// heard notes a call of instance of data plane id that any instance may
// make (a release) as a sign of life, if it is the registered instance (or
// names none).
func (t *term) heard(id, instance string) {
	now := t.c.now()
	live := t.c.live.at(now)
	t.dpMu.Lock()
	d := t.entryLocked(id)
	var back time.Duration
	if d.rec.StoppedAt.IsZero() && (instance == "" || d.rec.InstanceID == "" || instance == d.rec.InstanceID) {
		back = t.contactLocked(d, live, now)
	}
	t.dpMu.Unlock()
	t.logBack(id, back)
}

// RegisterDataplane records a data plane and returns the pool settings it
// needs for its TUN. The same instance registering again changes nothing
// but its announced fields (a stopped instance is up again). A new
// instance id takes the data plane id over when the registered instance is
// not live (see dpState): the previous process is gone, and so are its
// sessions, whose leases are released. While the registered instance is
// live, a new instance is refused with an *IDConflictError: logged,
// counted, and told to the live instance on its command stream.
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
	if r.Peer == "" {
		r.Peer = peerOf(ctx)
	}
	r.Version, r.Listen, r.APIAddress, r.Peer = clip(r.Version), clip(r.Listen), clip(r.APIAddress), clip(r.Peer)
	t, err := c.active()
	if err != nil {
		return RegistrationReply{}, err
	}
	rec, prev, known, err := t.register(ctx, r)
	if err != nil {
		return RegistrationReply{}, err
	}
	held := t.idx.LeasesOf(r.DataplaneID)
	c.log.Info("data plane registered", "dataplane", r.DataplaneID, "instance", r.InstanceID,
		"version", rec.Version, "listen", rec.ClientListen, "api", rec.APIAddress, "peer", r.Peer,
		"known", known, "leases", len(held), "draining", rec.Draining)
	if prev.InstanceID != "" && prev.InstanceID != r.InstanceID {
		// Its previous instance's sessions died with it. Leases taken by
		// this instance (none yet, normally) stay, and so do leases taken
		// while no instance was registered (this one's, perhaps, after
		// the controller lost its state): reports and silence judge them.
		var gone []store.Lease
		for _, l := range held {
			if l.InstanceID != r.InstanceID && l.InstanceID != "" {
				gone = append(gone, l)
			}
		}
		if len(gone) > 0 {
			c.log.Warn("data plane restarted: releasing the leases of its previous instance",
				"dataplane", r.DataplaneID, "previous_instance", prev.InstanceID, "instance", r.InstanceID, "leases", len(gone))
			why := "data plane restarted (new instance " + r.InstanceID + ")"
			n, err := t.releaseBatch(ctx, gone, func(store.Owner) string { return why }, slog.LevelDebug)
			c.counters.reclaimed.Add(uint64(n))
			if err != nil {
				// The new instance is registered; the rest go with the
				// next reconcile (they are not vouched for by any report
				// of the new instance).
				c.log.Error("releasing the previous instance's leases failed", "dataplane", r.DataplaneID, "error", err)
			}
		}
	}
	return RegistrationReply{
		Gateway: t.idx.Gateway(), Prefix: t.idx.Prefix(), ControllerVersion: c.version,
		HeartbeatInterval: c.cfg.HeartbeatInterval, Draining: rec.Draining,
	}, nil
}

// conflictLogEvery throttles the id-conflict log line and command per data
// plane.
const conflictLogEvery = 10 * time.Second

// register is RegisterDataplane's change of the registry, one step under
// regMu: the check of the id's live instance, the store write, the state.
func (t *term) register(ctx context.Context, r Registration) (rec, prev store.Dataplane, known bool, err error) {
	c := t.c
	t.regMu.Lock()
	defer t.regMu.Unlock()
	now := c.now()
	live := c.live.at(now)
	t.dpMu.Lock()
	d := t.entryLocked(r.DataplaneID)
	prev, known = d.rec, d.known && d.rec.InstanceID != ""
	if prev.InstanceID != "" && prev.InstanceID != r.InstanceID && t.liveLocked(d, live) && d.contacts == 0 {
		// Live only by the term's presumption: a crash of the data plane
		// near a controller restart looks like this, and so does a clone
		// racing the live instance's reconnect. Neither may be refused for
		// good yet: ask the newcomer to retry until the window closes.
		wait := t.c.cfg.DataplaneTimeout - live.Sub(d.lastContact)
		logNow, _ := d.conflictLog.note(now, conflictLogEvery)
		t.dpMu.Unlock()
		if logNow {
			c.log.Warn("a new instance of a data plane waits: its registered instance has not reconnected since this controller started leading",
				"dataplane", r.DataplaneID, "registered_instance", prev.InstanceID, "new_instance", r.InstanceID,
				"new_peer", r.Peer, "waits_at_most", wait.Round(time.Millisecond))
		}
		return rec, prev, known, &IDPendingError{DataplaneID: r.DataplaneID, Registered: prev.InstanceID, Wait: wait}
	}
	if prev.InstanceID != "" && prev.InstanceID != r.InstanceID && t.liveLocked(d, live) {
		ce := &IDConflictError{
			DataplaneID: r.DataplaneID,
			Live:        DataplaneInstance{InstanceID: prev.InstanceID, Peer: d.peer, Listen: prev.ClientListen, APIAddress: prev.APIAddress},
			Refused:     DataplaneInstance{InstanceID: r.InstanceID, Peer: r.Peer, Listen: r.Listen, APIAddress: r.APIAddress},
		}
		logNow, suppressed := d.conflictLog.note(now, conflictLogEvery)
		told := false
		if logNow {
			refused := ce.Refused
			told = t.pushLocked(d, Command{IDConflict: &refused}) == nil
		}
		t.dpMu.Unlock()
		c.counters.idConflicts.Add(1)
		if logNow {
			c.log.Error("DATA PLANE ID IN USE: refused a second instance of a live data plane; give one of them a different --id",
				"dataplane", r.DataplaneID,
				"live_instance", prev.InstanceID, "live_peer", d.peer, "live_listen", prev.ClientListen, "live_api", prev.APIAddress,
				"refused_instance", r.InstanceID, "refused_peer", r.Peer, "refused_listen", r.Listen, "refused_api", r.APIAddress,
				"live_told", told, "refused_since_last_log", suppressed)
		}
		return rec, prev, known, ce
	}
	rec = prev
	rec.InstanceID = r.InstanceID
	rec.Version, rec.ClientListen, rec.APIAddress = r.Version, r.Listen, r.APIAddress
	rec.RegisteredAt = now
	rec.StoppedAt = time.Time{}
	t.dpMu.Unlock()

	if err := c.store.PutDataplane(ctx, rec); err != nil {
		return rec, prev, known, c.storeErr("register data plane", err)
	}
	t.dpMu.Lock()
	d.rec, d.known = rec, true
	if r.Peer != "" {
		d.peer = r.Peer
	}
	if prev.InstanceID != r.InstanceID {
		d.reported, d.lastReport, d.scannedTo, d.streamEnded = false, time.Time{}, time.Time{}, false
		if d.stream != nil {
			// The previous instance's stream: commands for the new one
			// must not go there.
			close(d.stream.done)
			d.stream = nil
		}
	}
	back := t.contactLocked(d, live, now)
	t.dpMu.Unlock()
	t.logBack(r.DataplaneID, back)
	return rec, prev, known, nil
}

// unknownLogEvery throttles the log of heartbeats from unregistered
// instances per data plane.
const unknownLogEvery = time.Minute

// Heartbeat notes that a data plane is alive. known is false when
// instanceID is not the registered instance of dataplaneID (the controller
// lost track of it, it stopped, or another instance took the id): the data
// plane must register, which cannot take the id from a live instance (see
// RegisterDataplane). Such a heartbeat is no sign of life of the
// registered instance.
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
	now := c.now()
	live := c.live.at(now)
	t.dpMu.Lock()
	d, ok := t.dps[dataplaneID]
	if !ok || !d.known || d.rec.InstanceID == "" || d.rec.InstanceID != instanceID || !d.rec.StoppedAt.IsZero() {
		var logNow bool
		var suppressed int
		var reg string
		stopped := false
		if ok {
			logNow, suppressed = d.unknownLog.note(now, unknownLogEvery)
			reg, stopped = d.rec.InstanceID, !d.rec.StoppedAt.IsZero()
		} else {
			logNow = true
		}
		t.dpMu.Unlock()
		if logNow {
			c.log.Info("heartbeat from a data plane instance that is not registered: asking it to register",
				"dataplane", dataplaneID, "instance", instanceID, "registered_instance", reg, "stopped", stopped,
				"peer", peerOf(ctx), "suppressed_since_last_log", suppressed)
		}
		return false, false, nil
	}
	back := t.contactLocked(d, live, now)
	d.sessions = sessions
	if p := peerOf(ctx); p != "" {
		d.peer = p
	}
	draining = d.rec.Draining
	t.dpMu.Unlock()
	t.logBack(dataplaneID, back)
	return true, draining, nil
}

// WatchCommands serves one data plane's command stream: fn is called for
// every command until ctx ends, the stream is replaced by a newer one of
// the same instance, another instance takes the id, the data plane is
// removed, or this controller stops leading. Only the registered instance
// (or a caller naming none) may open it. Its end, with nothing heard from
// the instance afterwards, means the instance is gone (see dpState).
func (c *Controller) WatchCommands(ctx context.Context, dataplaneID, instanceID string, fn func(Command) error) error {
	if err := checkID("dataplane id", dataplaneID); err != nil {
		return err
	}
	t, err := c.active()
	if err != nil {
		return err
	}
	s := &cmdStream{ch: make(chan Command, cmdQueue), done: make(chan struct{})}
	now := c.now()
	live := c.live.at(now)
	t.dpMu.Lock()
	d, ok := t.dps[dataplaneID]
	switch {
	case !ok || !d.known:
		t.dpMu.Unlock()
		return &NotRegisteredError{DataplaneID: dataplaneID, InstanceID: instanceID, Removed: true}
	case !d.rec.StoppedAt.IsZero():
		t.dpMu.Unlock()
		return &NotRegisteredError{DataplaneID: dataplaneID, InstanceID: instanceID, Registered: d.rec.InstanceID, Stopped: true}
	case instanceID != "" && instanceID != d.rec.InstanceID:
		t.dpMu.Unlock()
		return &NotRegisteredError{DataplaneID: dataplaneID, InstanceID: instanceID, Registered: d.rec.InstanceID}
	}
	if d.stream != nil {
		close(d.stream.done)
	}
	d.stream, d.streamEnded = s, false
	if p := peerOf(ctx); p != "" {
		d.peer = p
	}
	back := t.contactLocked(d, live, now)
	t.dpMu.Unlock()
	t.logBack(dataplaneID, back)
	c.log.Debug("command stream opened", "dataplane", dataplaneID, "instance", instanceID, "peer", peerOf(ctx))
	defer func() {
		t.dpMu.Lock()
		if d.stream == s {
			d.stream, d.streamEnded, d.endedAt = nil, true, d.contacts
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
			return unavailable("command stream of data plane %s closed: replaced by a newer one, or the data plane was taken over or removed", dataplaneID)
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
	if !ok {
		return unavailable("data plane %s has no command stream open", dp)
	}
	return t.pushLocked(d, cmd)
}

func (t *term) pushLocked(d *dpState, cmd Command) error {
	if d.stream == nil {
		return unavailable("data plane %s has no command stream open", d.rec.ID)
	}
	select {
	case d.stream.ch <- cmd:
		return nil
	default:
		return unavailable("data plane %s is not taking commands (%d queued)", d.rec.ID, cmdQueue)
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
	t.regMu.Lock()
	t.dpMu.Lock()
	d, ok := t.dps[id]
	if !ok || !d.known {
		t.dpMu.Unlock()
		t.regMu.Unlock()
		return Dataplane{}, notFound("no data plane %q is registered", id)
	}
	rec := d.rec
	t.dpMu.Unlock()
	rec.Draining = draining
	if err := c.store.PutDataplane(ctx, rec); err != nil {
		t.regMu.Unlock()
		return Dataplane{}, c.storeErr("drain", err)
	}
	t.dpMu.Lock()
	d.rec.Draining = draining
	pushErr := t.pushLocked(d, Command{Drain: &draining})
	t.dpMu.Unlock()
	t.regMu.Unlock()
	if pushErr != nil {
		c.log.Info("drain stored; the data plane learns it with its next heartbeat", "dataplane", id, "reason", pushErr)
	}
	c.log.Info("data plane drain set", "dataplane", id, "draining", draining)
	return t.dataplane(id)
}

// dataplane returns the operator's view of one data plane.
func (t *term) dataplane(id string) (Dataplane, error) {
	for _, v := range t.dataplanes() {
		if v.ID == id {
			return v, nil
		}
	}
	return Dataplane{}, notFound("no data plane %q is known", id)
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
	live := t.c.live.at(t.c.now())
	t.dpMu.Lock()
	out := make([]Dataplane, 0, len(t.dps))
	for _, d := range t.dps {
		out = append(out, t.viewLocked(d, live, uint32(counts[d.rec.ID])))
	}
	t.dpMu.Unlock()
	slices.SortFunc(out, func(a, b Dataplane) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// viewLocked is the operator's view of d. A data plane that is not alive
// (see aliveLocked) shows DOWN at once; its leases still wait for
// Reconcile's judgement of its silence.
func (t *term) viewLocked(d *dpState, live time.Time, leases uint32) Dataplane {
	st := StateUp
	switch {
	case !d.rec.StoppedAt.IsZero():
		st = StateStopped
	case !t.aliveLocked(d, live):
		st = StateDown
	case d.rec.Draining:
		st = StateDraining
	}
	return Dataplane{
		ID: d.rec.ID, InstanceID: d.rec.InstanceID, Version: d.rec.Version, Listen: d.rec.ClientListen,
		APIAddress: d.rec.APIAddress, State: st, Draining: d.rec.Draining, Sessions: d.sessions,
		Leases: leases, RegisteredAt: d.rec.RegisteredAt, LastContact: d.seen, StoppedAt: d.rec.StoppedAt,
		Peer: d.peer,
	}
}

// StopDataplane records that instanceID of data plane id stopped on
// purpose, its sessions closed: it is STOPPED (durably), is never judged
// DOWN, makes no more calls, and its leases are released in one store
// call; it returns how many. Stopping a stopped instance again releases
// whatever it still holds (normally nothing). Only the registered instance
// can stop (else the error matches ErrNotRegistered). Registering again
// makes it up.
func (c *Controller) StopDataplane(ctx context.Context, id, instanceID, reason string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := checkID("dataplane id", id); err != nil {
		return 0, err
	}
	if err := checkID("instance id", instanceID); err != nil {
		return 0, err
	}
	reason = clip(reason)
	if reason == "" {
		reason = "stopped"
	}
	t, err := c.active()
	if err != nil {
		return 0, err
	}
	again, err := t.markStopped(ctx, id, instanceID)
	if err != nil {
		return 0, err
	}
	why := "data plane stopped: " + reason
	n, err := t.releaseBatch(ctx, t.idx.LeasesOf(id), func(store.Owner) string { return why }, slog.LevelDebug)
	c.counters.released.Add(uint64(n))
	if !again {
		c.counters.stops.Add(1)
		c.log.Info("data plane stopped", "dataplane", id, "instance", instanceID, "reason", reason, "leases_released", n)
	}
	if err != nil {
		return n, err
	}
	return n, nil
}

// markStopped writes the stop of the registered instance; again is true
// when it was stopped already.
func (t *term) markStopped(ctx context.Context, id, instanceID string) (again bool, err error) {
	c := t.c
	t.regMu.Lock()
	defer t.regMu.Unlock()
	t.dpMu.Lock()
	d, ok := t.dps[id]
	if !ok || !d.known {
		t.dpMu.Unlock()
		return false, notFound("no data plane %q is registered", id)
	}
	if d.rec.InstanceID != instanceID {
		t.dpMu.Unlock()
		return false, &NotRegisteredError{DataplaneID: id, InstanceID: instanceID, Registered: d.rec.InstanceID}
	}
	if !d.rec.StoppedAt.IsZero() {
		t.dpMu.Unlock()
		return true, nil
	}
	rec := d.rec
	t.dpMu.Unlock()
	rec.StoppedAt = c.now()
	if err := c.store.PutDataplane(ctx, rec); err != nil {
		return false, c.storeErr("stop data plane", err)
	}
	t.dpMu.Lock()
	d.rec = rec
	d.reported, d.down = false, false
	t.dpMu.Unlock()
	return false, nil
}

// RemoveDataplane forgets data plane id: its leases are released (in one
// store call) and its registry record is deleted; it returns the data
// plane as it was and how many leases were released. A data plane that is
// up (alive: see dpState) is refused with ErrFailedPrecondition unless
// force is set; then its clients lose their leases while their sessions
// may still run (its next complete report recovers the addresses nobody
// took meanwhile, and its sessions on the others are kicked as address
// conflicts). A data plane that calls again afterwards is recorded anew.
func (c *Controller) RemoveDataplane(ctx context.Context, id string, force bool) (Dataplane, int, error) {
	if err := ctx.Err(); err != nil {
		return Dataplane{}, 0, err
	}
	if err := checkID("dataplane id", id); err != nil {
		return Dataplane{}, 0, err
	}
	t, err := c.active()
	if err != nil {
		return Dataplane{}, 0, err
	}
	t.regMu.Lock()
	defer t.regMu.Unlock()
	leases := t.idx.LeasesOf(id)
	live := c.live.at(c.now())
	t.dpMu.Lock()
	d, ok := t.dps[id]
	if !ok {
		t.dpMu.Unlock()
		return Dataplane{}, 0, notFound("no data plane %q is known", id)
	}
	view := t.viewLocked(d, live, uint32(len(leases)))
	known := d.known
	t.dpMu.Unlock()
	up := view.State == StateUp || view.State == StateDraining
	if up && !force {
		return view, 0, precondition("data plane %s is %s (last heard %s ago, %d leases): stop it first, or remove it with --force (its clients lose their addresses)",
			id, strings.ToLower(view.State.String()), c.now().Sub(view.LastContact).Round(time.Second), len(leases))
	}
	why := "data plane removed by operator"
	n, err := t.releaseBatch(ctx, leases, func(store.Owner) string { return why }, slog.LevelDebug)
	c.counters.reclaimed.Add(uint64(n))
	if err != nil {
		return view, n, err
	}
	if known {
		if _, err := c.store.DeleteDataplane(ctx, id); err != nil {
			return view, n, c.storeErr("remove data plane", err)
		}
	}
	t.dpMu.Lock()
	if d.stream != nil {
		close(d.stream.done)
		d.stream = nil
	}
	if t.dps[id] == d {
		delete(t.dps, id)
	}
	t.dpMu.Unlock()
	c.counters.removals.Add(1)
	lvl := slog.LevelInfo
	if up {
		lvl = slog.LevelWarn
	}
	c.log.Log(ctx, lvl, "data plane removed", "dataplane", id, "state", view.State.String(), "forced", force && up,
		"instance", view.InstanceID, "leases_released", n)
	return view, n, nil
}

// throttle lets one event through per period and counts the rest.
type throttle struct {
	last       time.Time
	suppressed int
}

// note reports whether an event at now goes through, and how many were
// held back since the last one that did.
func (th *throttle) note(now time.Time, every time.Duration) (bool, int) {
	if !th.last.IsZero() && !now.Before(th.last) && now.Sub(th.last) < every {
		th.suppressed++
		return false, 0
	}
	n := th.suppressed
	th.last, th.suppressed = now, 0
	return true, n
}
