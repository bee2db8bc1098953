package dataplane

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/fourover6/fourover6/dataplane/session"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// ControlPlane is the data plane's view of the control plane. ctlink
// implements it over gRPC; tests use fakes.
type ControlPlane interface {
	// Register announces the data plane and returns the pool it serves.
	Register(ctx context.Context, r Registration) (Assignment, error)
	// Allocate leases an address to a session (idempotent per session).
	Allocate(ctx context.Context, r AllocateRequest) (wire.AddrResponse, error)
	// Release returns a session's address to the pool.
	Release(ctx context.Context, r ReleaseRequest) error
	// Report sends live sessions' liveness and counters; it returns the
	// ids of sessions the controller holds no lease for.
	Report(ctx context.Context, r Report) (unknown []string, err error)
	// Heartbeat says the data plane is alive.
	Heartbeat(ctx context.Context, h Heartbeat) (HeartbeatReply, error)
	// WatchDirectives receives the controller's commands and calls fn for
	// each, until ctx ends or the stream breaks (then it returns why).
	WatchDirectives(ctx context.Context, dataplaneID, instanceID string, fn func(Directive)) error
}

// Registration describes this data plane to the controller.
type Registration struct {
	DataplaneID  string
	InstanceID   string // random per process start
	Version      string
	ClientListen string
	APIAddress   string
}

// Assignment is what the data plane needs to configure its TUN, and the
// controller's instructions at registration.
type Assignment struct {
	Gateway           netip.Addr   // the TUN's address, e.g. 13.8.0.1
	Pool              netip.Prefix // e.g. 13.8.0.0/24
	HeartbeatInterval time.Duration
	Draining          bool
}

// Report is a batch of session reports. Complete means it lists every
// leased session of the instance, so the controller may reconcile.
type Report struct {
	DataplaneID string
	InstanceID  string
	Complete    bool
	Sessions    []SessionReport
}

// Heartbeat is the data plane's periodic sign of life.
type Heartbeat struct {
	DataplaneID    string
	InstanceID     string
	Sessions       int
	LeasedSessions int
}

// HeartbeatReply is the controller's answer. Known is false when the
// controller lost track of this instance: register again.
type HeartbeatReply struct {
	Known    bool
	Draining bool
}

// Directive is pushed by the controller: exactly one field is set.
type Directive struct {
	Kick  *KickDirective
	Drain *bool
}

// KickDirective closes the session holding Addr (only session SessionID,
// when set).
type KickDirective struct {
	Addr      netip.Addr
	SessionID string
	Reason    string
}

// AllocateRequest asks for an address for one session.
type AllocateRequest struct {
	DataplaneID string
	SessionID   string
	Client      netip.AddrPort
}

// ReleaseRequest gives a session's address back.
type ReleaseRequest struct {
	DataplaneID string
	SessionID   string
	Addr        netip.Addr
	Reason      string
}

// SessionReport is one leased session as reported to the controller.
type SessionReport struct {
	SessionID   string
	Addr        netip.Addr
	Client      netip.AddrPort
	ConnectedAt time.Time
	LastHeard   time.Time
	Traffic     session.Traffic
}

// Errors a Controller returns (wrapped, with the controller's message).
var (
	// ErrPoolExhausted: no free address; retrying soon will not help.
	ErrPoolExhausted = errors.New("address pool exhausted")
	// ErrControllerUnavailable: the controller could not be reached;
	// retrying may help.
	ErrControllerUnavailable = errors.New("controller unavailable")
)
