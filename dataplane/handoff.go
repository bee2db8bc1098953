package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/session"
)

// ErrHandedOver is Run's answer once the data plane handed its clients to
// a successor process (Freeze, then Thaw(false)): nothing was closed or
// released; the process only has to exit.
var ErrHandedOver = errors.New("data plane handed over to its successor")

// HandoffState is what a data plane passes to its successor besides the
// file descriptors: its instance at the controller (the successor carries
// it on: same id, same instance, no release, no new allocation), every
// session, the releases not delivered yet and its totals.
//
// Sessions[i]'s connection is the i-th connection file handed over.
type HandoffState struct {
	DataplaneID string
	InstanceID  string
	Version     string // of the process handing over
	Assignment  Assignment
	Sessions    []session.Handoff
	Releases    []PendingRelease
	Accepted    uint64
	Closed      uint64
	Gone        session.Traffic
	Handoffs    uint64 // hand-offs in this instance's life, this one included
	StartedAt   time.Time
	FrozenAt    time.Time // when the clients' traffic stopped
}

// PendingRelease is a release waiting for the controller.
type PendingRelease struct {
	ReleaseRequest
	Client     netip.AddrPort
	Unresolved bool
}

// Frozen is a data plane stopped for a hand-off: State and the sessions'
// connections (File, in State.Sessions' order) go to the successor; then
// Thaw(false) ends this data plane's part, or Thaw(true) resumes it as if
// nothing happened.
type Frozen struct {
	State HandoffState

	d        *Dataplane
	sessions []*session.Session
	once     sync.Once
}

// handoff is the data plane's hand-off in progress (under Dataplane.mu).
type handoff struct {
	stopped chan struct{} // Run's loops have stopped
	decided chan bool     // Thaw's word: resume?
}

type deadliner interface{ SetDeadline(time.Time) error }
type readDeadliner interface{ SetReadDeadline(time.Time) error }

// Freeze stops the data plane at message boundaries for a hand-off: it
// stops accepting, reading the TUN, the keepalive sweeper and every call
// to the controller, then freezes every session (session.Freeze) and
// exports its state. Within ctx; on any failure the data plane resumes and
// the error says why. Clients notice nothing but the pause: their
// connections stay open, what they send waits in the socket buffers.
func (d *Dataplane) Freeze(ctx context.Context) (*Frozen, error) {
	if _, ok := d.cfg.Listener.(deadliner); !ok {
		return nil, fmt.Errorf("the client listener (%T) cannot be stopped for a hand-off", d.cfg.Listener)
	}
	if _, ok := d.cfg.TUN.(readDeadliner); !ok {
		return nil, fmt.Errorf("the TUN device (%T) cannot be stopped for a hand-off", d.cfg.TUN)
	}
	d.mu.Lock()
	switch {
	case d.handoff != nil:
		d.mu.Unlock()
		return nil, errors.New("a hand-off is already under way")
	case d.loopCancel == nil || d.stopping.Load():
		d.mu.Unlock()
		return nil, errors.New("the data plane is not serving")
	}
	h := &handoff{stopped: make(chan struct{}), decided: make(chan bool, 1)}
	d.handoff = h
	d.loopCancel()
	d.mu.Unlock()
	past := time.Now().Add(-time.Second)
	d.cfg.Listener.(deadliner).SetDeadline(past)
	d.cfg.TUN.(readDeadliner).SetReadDeadline(past)
	f := &Frozen{d: d}
	frozenAt := time.Now()
	select {
	case <-h.stopped:
	case <-ctx.Done():
		f.Thaw(true)
		return nil, fmt.Errorf("the data plane's loops did not stop: %w", ctx.Err())
	}
	live := d.snapshot()
	frozen := make([]bool, len(live))
	errs := make([]error, len(live))
	var wg sync.WaitGroup
	for i, s := range live {
		wg.Add(1)
		go func() {
			defer wg.Done()
			frozen[i], errs[i] = s.Freeze(ctx)
		}()
	}
	wg.Wait()
	for i, s := range live {
		if frozen[i] {
			f.sessions = append(f.sessions, s)
		}
	}
	if err := errors.Join(errs...); err != nil {
		f.Thaw(true)
		return nil, err
	}
	f.State = d.exportState(f.sessions)
	f.State.FrozenAt = frozenAt
	return f, nil
}

// File returns a duplicate of the i-th session's socket and its release
// (which closes it): made one at a time, so that handing over ten
// thousand connections needs a batch of extra descriptors, not ten
// thousand.
func (f *Frozen) File(i int) (*os.File, func(), error) {
	if i < 0 || i >= len(f.sessions) {
		return nil, nil, fmt.Errorf("no session %d of %d", i, len(f.sessions))
	}
	s := f.sessions[i]
	file, err := connFile(s.Conn())
	if err != nil {
		return nil, nil, fmt.Errorf("session %s: %w", s.ID(), err)
	}
	return file, func() { file.Close() }, nil
}

func connFile(c net.Conn) (*os.File, error) {
	fc, ok := c.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("connection %T has no file descriptor to hand over", c)
	}
	return fc.File()
}

func (d *Dataplane) exportState(live []*session.Session) HandoffState {
	st := HandoffState{
		DataplaneID: d.cfg.ID, InstanceID: d.cfg.InstanceID, Version: d.cfg.Version,
		Assignment: d.Assignment(), Accepted: d.accepted.Load(), Closed: d.closed.Load(),
		Handoffs: d.handoffs.Load() + 1, StartedAt: d.started,
	}
	st.Assignment.Draining = d.draining.Load()
	for _, s := range live {
		st.Sessions = append(st.Sessions, s.Export())
	}
	d.mu.Lock()
	st.Gone = d.gone
	d.mu.Unlock()
	st.Releases = d.queue.export()
	return st
}

// Thaw ends the freeze: resume (the successor failed) puts every session
// and loop back to work; otherwise the successor took over: the sessions
// end here without a release (their connections live on in the successor)
// and Run returns ErrHandedOver. Only the first call counts.
func (f *Frozen) Thaw(resume bool) {
	f.once.Do(func() {
		d := f.d
		if resume {
			d.cfg.Listener.(deadliner).SetDeadline(time.Time{})
			d.cfg.TUN.(readDeadliner).SetReadDeadline(time.Time{})
			for _, s := range f.sessions {
				s.Thaw(true)
			}
		} else {
			d.handedOff.Store(true)
			d.mu.Lock()
			for _, s := range f.sessions {
				if release := d.sessions[s]; release != nil {
					release()
				}
				delete(d.sessions, s)
				d.routes.Remove(packet.Addr4(s.Addr()), s)
			}
			d.mu.Unlock()
			for _, s := range f.sessions {
				s.Thaw(false)
			}
		}
		d.mu.Lock()
		h := d.handoff
		d.mu.Unlock()
		h.decided <- resume
	})
}

// Restore makes a data plane from its predecessor's state and the
// connections it handed over (conns[i] is state.Sessions[i]'s): the same
// instance at the controller, its sessions and their addresses. Run serves
// them at once, without registering first (it registers again on the side
// to tell the controller its new version) and calls Configure with
// Assignment.HandedOver set: the TUN is configured already.
func Restore(cfg Config, state *HandoffState, conns []net.Conn) (*Dataplane, error) {
	if len(conns) != len(state.Sessions) {
		return nil, fmt.Errorf("hand-off: %d connections for %d sessions", len(conns), len(state.Sessions))
	}
	if state.DataplaneID != cfg.ID {
		return nil, fmt.Errorf("hand-off from data plane %q to one with --id %q", state.DataplaneID, cfg.ID)
	}
	if state.InstanceID == "" {
		return nil, errors.New("hand-off without an instance id")
	}
	if !state.Assignment.Pool.IsValid() || !state.Assignment.Gateway.Is4() {
		return nil, errors.New("hand-off without the pool the controller assigned")
	}
	cfg.InstanceID = state.InstanceID
	d, err := New(cfg)
	if err != nil {
		return nil, err
	}
	d.pool = state.Assignment
	d.pool.Draining = false
	d.draining.Store(state.Assignment.Draining)
	d.accepted.Store(state.Accepted)
	d.closed.Store(state.Closed)
	d.gone = state.Gone
	d.handoffs.Store(state.Handoffs)
	if !state.StartedAt.IsZero() {
		d.started = state.StartedAt
	}
	d.lastHandoff = state
	for i, h := range state.Sessions {
		if tc, ok := conns[i].(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		s, err := session.Restore(&d.scfg, h, conns[i])
		if err != nil {
			for _, c := range conns[i:] {
				c.Close()
			}
			d.abandon()
			return nil, err
		}
		d.sessions[s] = nil
		if h.Close != nil {
			d.closeLater = append(d.closeLater, closeReq{s, *h.Close})
		}
	}
	d.queue.load(state.Releases)
	if d.cfg.Routes != nil {
		// A successor's BGP speaker announces every client before it
		// starts, so the routers' stale routes are confirmed, not dropped.
		for s := range d.sessions {
			if a := s.Addr(); a.IsValid() {
				d.announceRoute(a, true)
			}
		}
	}
	return d, nil
}

type closeReq struct {
	s   *session.Session
	why session.Reason
}

// abandon drops restored sessions that never ran (a failed Restore): the
// connections close here; the predecessor still owns the sessions.
func (d *Dataplane) abandon() {
	for s := range d.sessions {
		s.Thaw(false)
	}
	d.sessions = make(map[*session.Session]func())
}

// restored starts the sessions Restore made: routes first, then their
// goroutines; the sessions the predecessor saw close while frozen close now.
func (d *Dataplane) startRestored() {
	d.mu.Lock()
	live := make([]*session.Session, 0, len(d.sessions))
	for s := range d.sessions {
		live = append(live, s)
	}
	d.mu.Unlock()
	for _, s := range live {
		if a := s.Addr(); a.IsValid() {
			if prev := d.routes.Insert(packet.Addr4(a), s); prev != nil && prev != s {
				d.log.Error("hand-off: two sessions with one address; closing the older", "addr", a, "session", s.ID(), "previous_session", prev.ID())
				go prev.Close(session.Reason{Cause: session.CauseAddressConflict, Detail: "leased to session " + s.ID()})
			}
		}
	}
	for _, s := range live {
		d.conns.Add(1)
		go func() {
			defer d.conns.Done()
			s.Serve()
		}()
	}
	if h := d.lastHandoff; h != nil && !h.FrozenAt.IsZero() {
		d.lastPause.Store(int64(time.Since(h.FrozenAt)))
	}
	for _, c := range d.closeLater {
		c.s.Close(c.why)
	}
	d.closeLater = nil
}

// Serving is closed once Run serves: its sessions (a Restore's too) are
// live and its loops run.
func (d *Dataplane) Serving() <-chan struct{} { return d.serving }

// HandoffFailed counts a hand-off that did not happen (this process
// serves on).
func (d *Dataplane) HandoffFailed() { d.handoffFailures.Add(1) }

// Handoffs counts the hand-offs in this instance's life (to this process
// and the ones before it).
func (d *Dataplane) Handoffs() uint64 { return d.handoffs.Load() }
