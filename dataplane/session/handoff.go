package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/sendq"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// Handoff is a session's state as it passes to another process with its
// connection (which travels beside it as a file descriptor): everything
// the session knows but the socket. Times are ages at Exported, so the
// receiver's monotonic clock can take them over.
type Handoff struct {
	ID          string
	Remote      netip.AddrPort
	ConnectedAt time.Time
	State       State              // Accepted or Leased
	Asked       bool               // a 100 arrived
	Lease       *wire.AddrResponse `json:",omitempty"` // the 101 sent, when Leased
	Exported    time.Time
	Born        time.Duration // age of the connection
	LastHeard   time.Duration // since the last complete message
	LeasedAt    time.Duration // since the 101 (Leased)
	NextKA      time.Duration // until the next 104 is due (Leased)
	Traffic     Traffic
	Logged      uint32 // drop reasons already logged
	In          []byte // read but not decoded: the start of a message, or whole ones
	Out         [][]byte
	OutKinds    []sendq.Kind
	// Close, when set, is a close asked for while the session was frozen
	// (the client went away during the hand-off): the receiver closes it
	// at once, with this reason, and so releases its lease.
	Close *Reason `json:",omitempty"`
}

// Freeze stops the session for a hand-off: its reader at a message boundary
// (a read deadline in the past; what it read of the next message stays
// buffered), its writer (sendq.Queue.Pause), and any close while frozen is
// kept for later instead of releasing the lease. It waits, within ctx, for
// the reader to stop and for a lease the controller is answering. It
// returns false for a session already closing (nothing to hand over) and
// ctx's error when the wait ran out (the session is frozen all the same:
// Thaw it). The data plane stops its TUN reader and sweeper first, so
// nothing but a lease in flight sends to a frozen session.
func (s *Session) Freeze(ctx context.Context) (bool, error) {
	s.mu.Lock()
	if s.state.Load() >= int32(Closing) || s.frozen {
		s.mu.Unlock()
		return false, nil
	}
	s.frozen = true
	s.parked = make(chan struct{})
	s.thaw = make(chan bool, 1)
	parked := s.parked
	s.mu.Unlock()
	s.conn.SetReadDeadline(time.Now().Add(-time.Second))
	s.out.Pause() // false: closed by a failed write, whose close waits in s.deferred
	select {
	case <-parked:
	case <-ctx.Done():
		return true, fmt.Errorf("session %s: reader did not stop: %w", s.id, ctx.Err())
	}
	leased := make(chan struct{})
	go func() { s.leasing.Wait(); close(leased) }()
	select {
	case <-leased:
	case <-ctx.Done():
		return true, fmt.Errorf("session %s: its lease is still being answered: %w", s.id, ctx.Err())
	}
	return true, nil
}

// Thaw ends a freeze. resume: the session goes on here (the hand-off did
// not happen): the reader and writer carry on, and a close asked for
// meanwhile happens now. Otherwise the session was handed over: it ends
// here without a release, its socket closed in this process only (the
// other holds its own descriptor, so the connection lives on).
func (s *Session) Thaw(resume bool) {
	s.mu.Lock()
	if !s.frozen {
		s.mu.Unlock()
		return
	}
	s.frozen = false
	deferred := s.deferred
	s.deferred = nil
	thaw := s.thaw
	if !resume {
		s.state.Store(int32(Closed))
	}
	s.mu.Unlock()
	if resume {
		s.conn.SetReadDeadline(time.Time{})
		s.out.Resume()
		thaw <- true
		if deferred != nil {
			s.Close(*deferred)
		}
		return
	}
	s.cancel()
	close(s.done)
	if s.cfg.Sweeper != nil {
		s.cfg.Sweeper.remove(s)
	}
	s.out.Close()
	s.conn.Close()
	thaw <- false
}

// Export returns the state of a frozen session (Freeze returned true and
// no error).
func (s *Session) Export() Handoff {
	now := s.cfg.Now()
	h := Handoff{
		ID: s.id, Remote: s.remote, ConnectedAt: s.since,
		State: s.State(), Asked: s.asked.Load(), Exported: time.Now(),
		Born:      time.Duration(now - s.born),
		LastHeard: time.Duration(now - s.lastHeard.Load()),
		Traffic:   s.Traffic(),
		Logged:    s.logged.Load(),
	}
	if h.State == Leased {
		s.leaseMu.Lock()
		lease := s.lease
		s.leaseMu.Unlock()
		h.Lease = &lease
		h.LeasedAt = time.Duration(now - s.leasedAt.Load())
		h.NextKA = time.Duration(s.nextKA.Load() - now)
	}
	if s.dec != nil {
		h.In = append([]byte(nil), s.dec.Buffered()...)
	}
	h.Out, h.OutKinds = s.out.Pending()
	s.mu.Lock()
	if s.deferred != nil {
		r := *s.deferred
		h.Close = &r
	}
	s.mu.Unlock()
	return h
}

// Restore makes a session from another process's Handoff and the
// connection it handed over. Call Serve to run it: it first writes what
// the other process had not written yet, and decodes what it had read.
// The caller routes the session's address (Leased), closes it at once when
// h.Close is set, and never calls Host.Leased for it.
func Restore(cfg *Config, h Handoff, conn net.Conn) (*Session, error) {
	if h.State != Accepted && h.State != Leased {
		return nil, fmt.Errorf("session %s: cannot take over a session in state %s", h.ID, h.State)
	}
	if h.State == Leased && (h.Lease == nil || !h.Lease.Addr.Is4()) {
		return nil, fmt.Errorf("session %s: leased without an IPv4 lease", h.ID)
	}
	if h.ID == "" {
		return nil, errors.New("session without an id")
	}
	s, err := New(cfg, h.ID, conn)
	if err != nil {
		return nil, err
	}
	if h.Remote.IsValid() {
		s.remote = h.Remote
	}
	s.since = h.ConnectedAt
	// Ages grow by the time the state spent on its way here.
	late := max(time.Since(h.Exported), 0)
	now := cfg.Now()
	s.born = now - int64(h.Born+late)
	s.lastHeard.Store(now - int64(h.LastHeard+late))
	s.asked.Store(h.Asked)
	s.logged.Store(h.Logged)
	s.c.bytesFrom.Store(h.Traffic.BytesFromClient)
	s.c.pktsFrom.Store(h.Traffic.PacketsFromClient)
	s.out.AddSent(h.Traffic.BytesToClient, h.Traffic.PacketsToClient)
	s.out.Preload(h.Out, h.OutKinds)
	s.inbuf = h.In
	if h.State == Leased {
		lease := *h.Lease
		s.lease, s.sent101 = lease, true
		s.gwDNS.Store(cfg.Policy.GatewayDNS(lease.DNS[:]))
		s.src4.Store(packet.Addr4(lease.Addr))
		s.addr4.Store(packet.Addr4(lease.Addr))
		s.leasedAt.Store(now - int64(h.LeasedAt+late))
		s.nextKA.Store(now + int64(h.NextKA) - int64(late))
		s.state.Store(int32(Leased))
	}
	if cfg.Sweeper != nil {
		cfg.Sweeper.schedule(s, now) // Tick says when it is next due
	}
	return s, nil
}

// Conn is the session's connection (a hand-off passes its descriptor).
func (s *Session) Conn() net.Conn { return s.conn }
