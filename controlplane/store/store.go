// Package store keeps the controller's durable state: leases, the release
// times that order address reuse and the last holder of each free address
// (sticky addresses), reservations, settings (DNS servers, pool
// range) and the data-plane registry.
//
// Two implementations share one interface and one conformance suite
// (storetest): Bolt, an embedded go.etcd.io/bbolt file (the default), and
// Etcd, an etcd v3 cluster shared by several controllers. Memory is a third,
// volatile one for tests.
//
// The one operation that must be atomic is Claim: "if this session holds no
// lease and this address is free, lease it" is a single step in the store
// (one bbolt transaction, one etcd transaction), so no address is ever held
// twice, even by two controllers that both think they lead. Every Claim and
// Release is committed (fsync'd, or agreed by the etcd quorum) before it
// returns; concurrent calls share commits.
package store

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// Errors callers match with errors.Is.
var (
	// ErrTaken: the address is leased to another session.
	ErrTaken = errors.New("address is leased to another session")
	// ErrFenced: this controller lost its leadership; the write was not
	// made (etcd only).
	ErrFenced = errors.New("not the leader any more: write refused by the store")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
)

// Owner identifies who holds a lease: one client session on one data plane.
type Owner struct {
	Dataplane string
	Session   string
}

func (o Owner) String() string { return o.Dataplane + "/" + o.Session }

// Lease is one leased address and who holds it.
type Lease struct {
	Addr netip.Addr
	Owner
	// InstanceID is the data plane process (see RegisterDataplane) that
	// asked for the lease; empty when it was not registered.
	InstanceID string
	ClientIPv6 netip.Addr
	ClientPort uint16
	LeasedAt   time.Time
	// Sticky: the address went to its remembered last holder (see
	// State.Holders) when it came back.
	Sticky bool
}

// Reservation binds a client IPv6 address (a /128) or prefix to one IPv4
// address.
type Reservation struct {
	Client netip.Prefix
	Addr   netip.Addr
}

// Settings are operator settings changed at run time. Zero fields are
// unset: the controller's flags apply.
type Settings struct {
	// DNS are the three servers of every 101.
	DNS []netip.Addr
	// RangeFirst and RangeLast narrow the client addresses; both unset
	// means the flags decide.
	RangeFirst, RangeLast netip.Addr
	// WholePrefix is true when the operator explicitly asked for the
	// whole prefix (UpdatePool with an empty range), overriding a
	// --pool-range flag.
	WholePrefix bool
}

// Dataplane is one registered data plane.
type Dataplane struct {
	ID           string
	InstanceID   string
	Version      string
	ClientListen string
	APIAddress   string
	Draining     bool
	RegisteredAt time.Time
	// StoppedAt is when the instance said it stopped (StopDataplane); zero
	// while it runs. A stopped data plane is not waited for: another
	// instance may take its id at once.
	StoppedAt time.Time
}

// Release is one lease to free in a batch: Addr, if Owner holds it.
type Release struct {
	Addr  netip.Addr
	Owner Owner
}

// State is everything a controller loads when it starts leading.
type State struct {
	Leases   []Lease
	Released map[netip.Addr]time.Time // release time of each free address ever released
	// Holders is the last holder (the client IPv6 address of the lease
	// released last) of each free address released by a client: at most
	// one entry per address of the pool. Release writes it, a claim of
	// the address drops it, in the same commits as the release times.
	Holders      map[netip.Addr]netip.Addr
	Reservations []Reservation
	Settings     Settings
	Dataplanes   []Dataplane
}

// Store is safe for concurrent use.
type Store interface {
	// Claim leases l.Addr to l.Owner in one atomic step and returns the
	// lease now held by l.Owner:
	//   - the owner already holds a lease (any address): that lease,
	//     unchanged, and existing = true;
	//   - l.Addr is free: l, committed, existing = false;
	//   - l.Addr is leased to another owner: an error matching ErrTaken.
	// A successful claim also forgets l.Addr's release time and last
	// holder.
	Claim(ctx context.Context, l Lease) (held Lease, existing bool, err error)
	// Release frees addr if owner holds it, records at as its release
	// time and the lease's client as its last holder (forgets it if the
	// lease had none), and reports whether it did.
	Release(ctx context.Context, addr netip.Addr, owner Owner, at time.Time) (bool, error)
	// ReleaseMany is Release for many leases at once, in as few commits as
	// the store allows (one bbolt transaction; etcd transactions of a few
	// dozen), all released at at. released[i] says whether rs[i] freed an
	// address. On error, released covers the releases committed before it
	// (a prefix of rs, possibly empty); the others were not made.
	ReleaseMany(ctx context.Context, rs []Release, at time.Time) (released []bool, err error)
	// Lease returns the lease on addr.
	Lease(ctx context.Context, addr netip.Addr) (Lease, bool, error)
	// Load returns the whole state.
	Load(ctx context.Context) (State, error)

	// PutReservation creates or replaces the reservation of r.Client and
	// reports whether anything changed.
	PutReservation(ctx context.Context, r Reservation) (changed bool, err error)
	// DeleteReservation removes the reservation of client.
	DeleteReservation(ctx context.Context, client netip.Prefix) (deleted bool, err error)

	// PutSettings replaces the settings.
	PutSettings(ctx context.Context, s Settings) error
	// PutDataplane creates or replaces the record of d.ID.
	PutDataplane(ctx context.Context, d Dataplane) error
	// DeleteDataplane removes the record of id and reports whether there
	// was one. Its leases are not touched.
	DeleteDataplane(ctx context.Context, id string) (deleted bool, err error)

	// String describes where the state lives, e.g.
	// "bbolt:/var/lib/fourover6/controller.db" or "etcd://10.0.0.1:2379".
	String() string
	Close() error
}

// CheckLease validates a lease before it is stored. Its errors match
// ErrInvalid.
func CheckLease(l Lease) error {
	switch {
	case !l.Addr.Is4():
		return invalid("lease address %v is not an IPv4 address", l.Addr)
	case l.Dataplane == "":
		return invalid("lease has no data plane id")
	case l.Session == "":
		return invalid("lease has no session id")
	}
	return nil
}
