package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/fourover6/fourover6/dataplane/session"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// ControlPlane is the data plane's view of the control plane. ctlink
// implements it over gRPC; tests use fakes.
type ControlPlane interface {
	// Register announces the data plane and returns the pool it serves. It
	// fails with an *IDInUseError when another instance of the id is live.
	Register(ctx context.Context, r Registration) (Assignment, error)
	// Allocate leases an address to a session (idempotent per session).
	Allocate(ctx context.Context, r AllocateRequest) (wire.AddrResponse, error)
	// ReleaseBatch returns sessions' addresses to the pool in one call;
	// releasing what a session does not hold is a no-op, so a batch may be
	// sent again. It returns how many freed an address.
	ReleaseBatch(ctx context.Context, b ReleaseBatch) (released int, err error)
	// Report sends live sessions' liveness and counters, of any number of
	// sessions; it returns the ids of (some of) the sessions the
	// controller holds no lease for.
	Report(ctx context.Context, r Report) (ReportReply, error)
	// Heartbeat says the data plane is alive.
	Heartbeat(ctx context.Context, h Heartbeat) (HeartbeatReply, error)
	// Stop says this instance stops on purpose, its sessions closed: the
	// controller releases all its leases and shows it stopped.
	Stop(ctx context.Context, s StopRequest) (released int, err error)
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
	// HandedOver: the data plane took over from a predecessor process
	// (Restore), which configured the TUN already; Configure only takes
	// charge of what it set up (NAT, watchers).
	HandedOver bool `json:"-"`
}

// Report is one session report. Complete means it lists every leased
// session of the instance, so the controller may reconcile.
type Report struct {
	DataplaneID string
	InstanceID  string
	Complete    bool
	Sessions    []SessionReport
}

// ReportReply is the controller's answer to a report.
type ReportReply struct {
	// Unknown lists sessions the controller holds no lease for: all of
	// them, or the first ones when there are many (UnknownCount counts
	// them all).
	Unknown      []string
	UnknownCount int
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
	Kick       *KickDirective
	Drain      *bool
	IDConflict *Instance // another process tried to take this data plane's id
}

// KickDirective closes the session holding Addr (only session SessionID,
// when set).
type KickDirective struct {
	Addr      netip.Addr
	SessionID string
	Reason    string
}

// Instance is one process of a data plane, as the controller knows it.
type Instance struct {
	InstanceID   string
	Peer         string // where it calls the controller from ("" if not known)
	ClientListen string
	APIAddress   string
}

// Where names the instance for a person: its client address, API and
// peer address, whichever are known.
func (in Instance) Where() string {
	var parts []string
	if in.ClientListen != "" {
		parts = append(parts, "clients at "+in.ClientListen)
	}
	if in.APIAddress != "" {
		parts = append(parts, "API "+in.APIAddress)
	}
	if in.Peer != "" && in.Peer != "@" {
		parts = append(parts, "calling from "+in.Peer)
	}
	if in.InstanceID != "" {
		parts = append(parts, "instance "+in.InstanceID)
	}
	if len(parts) == 0 {
		return "an unknown address"
	}
	return strings.Join(parts, ", ")
}

// AllocateRequest asks for an address for one session.
type AllocateRequest struct {
	DataplaneID string
	InstanceID  string
	SessionID   string
	Client      netip.AddrPort
}

// ReleaseRequest gives a session's address back.
type ReleaseRequest struct {
	SessionID string
	Addr      netip.Addr
	Reason    string
}

// ReleaseBatch is several releases of one data plane instance.
type ReleaseBatch struct {
	DataplaneID string
	InstanceID  string
	Releases    []ReleaseRequest
}

// StopRequest says an instance stops.
type StopRequest struct {
	DataplaneID string
	InstanceID  string
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

// Errors a ControlPlane returns (wrapped, with the controller's message).
var (
	// ErrPoolExhausted: no free address; retrying soon will not help.
	ErrPoolExhausted = errors.New("address pool exhausted")
	// ErrLeaseLimit: the client's IPv6 address or prefix holds as many
	// leases as the controller allows one (the pool is not full).
	ErrLeaseLimit = errors.New("lease limit reached")
	// ErrControllerUnavailable: the controller could not be reached, or
	// did not answer in time; retrying may help.
	ErrControllerUnavailable = errors.New("controller unavailable")
	// ErrNotRegistered: this instance is not the registered instance of
	// its data plane id (the controller lost its state, or another
	// instance took the id): register again.
	ErrNotRegistered = errors.New("data plane instance not registered")
	// ErrNotSent marks an ErrControllerUnavailable call that never
	// reached a controller: it had no effect there.
	ErrNotSent = errors.New("not sent")
	// ErrIDInUse matches an *IDInUseError.
	ErrIDInUse = errors.New("data plane id in use")
)

// IDInUseError is Register's error when another instance of the data plane
// id is live: the controller refused this one and kept the other.
type IDInUseError struct {
	DataplaneID string
	Live        Instance // the instance that keeps the id
	Msg         string   // the controller's words
}

// Error is the controller's message (it names the live instance and says
// what to do), or one made from Live.
func (e *IDInUseError) Error() string {
	if e.Msg != "" {
		return e.Msg
	}
	return fmt.Sprintf("another data plane with --id %s is running (%s): give this one a different --id",
		e.DataplaneID, e.Live.Where())
}

// Is makes errors.Is(err, ErrIDInUse) true.
func (e *IDInUseError) Is(target error) bool { return target == ErrIDInUse }

// IDPendingError is Register's error while the controller waits to learn
// whether the instance registered before it started leading is still
// running: retry (it matches ErrControllerUnavailable); the id is handed
// over when that instance shows no sign of life within Wait.
type IDPendingError struct {
	Registered string        // the registered instance id
	Wait       time.Duration // at most this long
	Msg        string        // the controller's words
}

func (e *IDPendingError) Error() string { return e.Msg }

// Is makes errors.Is(err, ErrControllerUnavailable) true.
func (e *IDPendingError) Is(target error) bool { return target == ErrControllerUnavailable }

// LeaseLimitError details an ErrLeaseLimit refusal.
type LeaseLimitError struct {
	Limit  string // "ip" or "prefix"
	Max    string
	Client string // the IPv6 address or prefix counted
	Msg    string // the controller's words
}

func (e *LeaseLimitError) Error() string {
	return fmt.Sprintf("%s: %s %s holds %s leases already: %s", ErrLeaseLimit, e.Limit, e.Client, e.Max, e.Msg)
}

// Is makes errors.Is(err, ErrLeaseLimit) true.
func (e *LeaseLimitError) Is(target error) bool { return target == ErrLeaseLimit }

// StartError is Run's error when the data plane could not start serving
// for a reason an operator must fix: the controller refused the
// registration (other than for an id in use, an *IDInUseError), or
// Configure failed.
type StartError struct {
	Err error
}

func (e *StartError) Error() string { return e.Err.Error() }

// Unwrap returns Err.
func (e *StartError) Unwrap() error { return e.Err }
