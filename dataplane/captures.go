package dataplane

import (
	"net/netip"

	"github.com/fourover6/fourover6/dataplane/capture"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/session"
)

// Capture attaches t to the session holding addr: from its next batch on,
// every packet the client sends (102s, dropped ones included) and is sent
// (103s) is copied to t. It returns the session, a channel closed when the
// session starts closing (the capture is over then), and the function that
// detaches t. ErrNoSession: no session holds addr.
func (d *Dataplane) Capture(addr netip.Addr, t *capture.Tap) (session.Info, <-chan struct{}, func(), error) {
	var s *session.Session
	if addr.Is4() {
		s = d.routes.Lookup(packet.Addr4(addr))
	}
	if s == nil {
		return session.Info{}, nil, nil, ErrNoSession
	}
	p := s.Capture()
	p.Attach(t)
	return s.Info(), s.Done(), func() { p.Detach(t) }, nil
}

// HandedOff reports whether a successor process took the sessions over:
// their captures end here (a capture attaches to one process's session).
func (d *Dataplane) HandedOff() bool { return d.handedOff.Load() }

// Stopping reports whether the data plane is shutting down.
func (d *Dataplane) Stopping() bool { return d.stopping.Load() }
