package dataplane

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/fourover6/fourover6/dataplane/session"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// Controller is the data plane's view of the control plane. ctlink
// implements it over gRPC; tests use fakes.
type Controller interface {
	// Register announces the data plane and returns the pool it serves.
	Register(ctx context.Context, r Registration) (PoolInfo, error)
	// Allocate leases an address to a session (idempotent per session).
	Allocate(ctx context.Context, r AllocateRequest) (wire.AddrResponse, error)
	// Release returns a session's address to the pool.
	Release(ctx context.Context, r ReleaseRequest) error
	// Report sends live sessions' liveness and counters; it returns the
	// ids of sessions the controller holds no lease for.
	Report(ctx context.Context, dataplaneID string, sessions []SessionReport) (unknown []string, err error)
}

// Registration describes this data plane to the controller.
type Registration struct {
	DataplaneID  string
	Version      string
	ClientListen string
}

// PoolInfo is what the data plane needs to configure its TUN.
type PoolInfo struct {
	Gateway netip.Addr   // the TUN's address, e.g. 13.8.0.1
	Pool    netip.Prefix // e.g. 13.8.0.0/24
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
	Counters    session.Counters
}

// Errors a Controller returns (wrapped, with the controller's message).
var (
	// ErrPoolExhausted: no free address; retrying soon will not help.
	ErrPoolExhausted = errors.New("address pool exhausted")
	// ErrControllerUnavailable: the controller could not be reached;
	// retrying may help.
	ErrControllerUnavailable = errors.New("controller unavailable")
)
