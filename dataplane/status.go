package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"time"

	"github.com/fourover6/fourover6/dataplane/limit"
	"github.com/fourover6/fourover6/dataplane/session"
)

// Status is the data plane's health at a glance.
type Status struct {
	ID                  string
	Version             string
	ClientListen        string
	TUN                 string
	MTU                 int
	Gateway             netip.Addr
	Pool                netip.Prefix
	Controller          string
	ControllerConnected bool
	StartedAt           time.Time
	Sessions            int
	LeasedSessions      int
	Accepted, Closed    uint64
	ClosedBy            map[string]uint64 // Closed by session.Cause name, every cause (0 included)
	Traffic             session.Traffic
	Drops               map[string]uint64
	KeepaliveInterval   time.Duration
	KeepaliveTimeout    time.Duration
	Draining            bool
	InstanceID          string
	Goroutines          int
	OpenFDs             int // -1 when unknown
	Refused             map[string]uint64
	Limits              limit.Config
	Registered          bool   // the controller accepted this instance
	ReleasesPending     int    // releases waiting for the controller
	RepeatedAddrReqs    uint64 // 100s answered by a pending lease's 101
	PID                 int
	ProcessStartedAt    time.Time     // this process; StartedAt is the instance's (a hand-off keeps it)
	Handoffs            uint64        // hand-offs in the instance's life
	HandoffFailures     uint64        // hand-offs this process attempted that did not happen
	LastHandoffPause    time.Duration // how long the last hand-off froze traffic (0: none)
}

// ID is the data plane's name.
func (d *Dataplane) ID() string { return d.cfg.ID }

// Status returns a snapshot.
func (d *Dataplane) Status() Status {
	pool := d.Assignment()
	st := Status{
		ID: d.cfg.ID, Version: d.cfg.Version,
		ClientListen: d.cfg.Listener.Addr().String(),
		TUN:          d.cfg.TUN.Name(), MTU: d.cfg.MTU,
		Gateway: pool.Gateway, Pool: pool.Pool,
		Registered: d.registered.Load(), ReleasesPending: d.queue.Len(), RepeatedAddrReqs: d.merged.Load(),
		Controller: d.cfg.ControllerAddr, ControllerConnected: d.ctrlOK.Load(),
		StartedAt: d.started,
		Accepted:  d.accepted.Load(), Closed: d.closed.Load(),
		Drops:             d.drops.Map(),
		KeepaliveInterval: d.cfg.KeepaliveInterval, KeepaliveTimeout: d.cfg.KeepaliveTimeout,
		Draining: d.draining.Load(), InstanceID: d.cfg.InstanceID,
		Goroutines: runtime.NumGoroutine(), OpenFDs: openFDs(),
		Refused: d.Refused(), Limits: d.limiter.Config(),
		ClosedBy: make(map[string]uint64, session.NumCauses),
		PID:      os.Getpid(), ProcessStartedAt: d.processStart,
		Handoffs: d.handoffs.Load(), HandoffFailures: d.handoffFailures.Load(),
		LastHandoffPause: time.Duration(d.lastPause.Load()),
	}
	for c := range session.NumCauses {
		st.ClosedBy[c.String()] = d.closedBy[c].Load()
	}
	d.mu.Lock()
	st.Traffic = d.gone
	live := make([]*session.Session, 0, len(d.sessions))
	for s := range d.sessions {
		live = append(live, s)
	}
	d.mu.Unlock()
	for _, s := range live {
		st.Sessions++
		if s.State() == session.Leased {
			st.LeasedSessions++
		}
		st.Traffic = st.Traffic.Add(s.Traffic())
	}
	return st
}

// Ready says whether the data plane takes new clients, from a few cheap
// values (no status is built): it is registered, not draining or stopping,
// and the controller answered its last call (a 100 needs it). The error
// says why not.
func (d *Dataplane) Ready() error {
	switch {
	case d.stopping.Load():
		return errors.New("stopping")
	case !d.registered.Load():
		return errors.New("not registered with the controller yet")
	case d.draining.Load():
		return errors.New("draining")
	case !d.ctrlOK.Load():
		return errors.New("controller unreachable")
	}
	return nil
}

// Stuck says whether the data plane's control loop is stuck: running, and
// no heartbeat went out (successful or not: each call has its timeout)
// for six heartbeat intervals plus a registration's and a report's
// timeouts, at least 30 s. It takes the data plane's
// lock too, so a deadlock there blocks the caller: a watchdog built on it
// stops either way. Before registration it is nil: waiting for the
// controller is not being stuck.
func (d *Dataplane) Stuck() error {
	d.mu.Lock()
	//lint:ignore SA2001 taking the lock is the check
	d.mu.Unlock()
	at := d.beatAt.Load()
	if at == 0 {
		return nil
	}
	// One round is at most a heartbeat's wait and timeout, a registration
	// and a report, each bounded by its own timeout.
	limit := max(6*d.heartbeatInterval()+d.cfg.RegisterTimeout+d.cfg.ReportInterval, 30*time.Second)
	if age := time.Since(time.Unix(0, at)); age > limit {
		return fmt.Errorf("the heartbeat loop last went round %s ago", age.Round(time.Millisecond))
	}
	return nil
}

// Sessions returns a snapshot of every open session, ordered by id.
func (d *Dataplane) Sessions() []session.Info {
	live := d.snapshot()
	out := make([]session.Info, 0, len(live))
	for _, s := range live {
		out = append(out, s.Info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ConnectedAt.Before(out[j].ConnectedAt) })
	return out
}

// KeepaliveTimeouts counts sessions cut for silence since start.
func (d *Dataplane) KeepaliveTimeouts() uint64 {
	return d.closedBy[session.CauseKeepaliveTimeout].Load()
}

// Drops returns the drop counters by reason name.
func (d *Dataplane) Drops() map[string]uint64 { return d.drops.Map() }

// openFDs counts this process's open file descriptors (Linux).
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents) - 1 // the directory being read
}
