package pool

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/fourover6/fourover6/controlplane/store"
	"github.com/fourover6/fourover6/controlplane/table"
)

// Index is the lease index of one leadership term: every address of the
// pool that is leased, being leased or being released, who holds it, and
// what its data plane reported about the session; the free order, the last
// holders of the free addresses (holders.go), the reservations and the
// client range; and the subscribers to lease changes.
// The client table is a view of it (Rows, Row, Subscribe). It is safe for
// concurrent use.
//
// Each address with an entry is in one phase:
//
//	(none) --Acquire/ClaimAt--> claiming --Commit--> held --BeginRelease--> releasing --EndRelease--> (none)
//	claiming --Abort--> (none)            releasing --CancelRelease--> held
//	(none) --Adopt--> held                (a lease the store holds already)
//
// claiming and releasing mean a store call is in flight; the caller that
// started the phase ends it, whatever the store answered.
//
// Invariants (Index.check in the tests verifies them):
//
//  1. byAddr and byOwner are one relation seen from both sides: an address
//     has at most one owner and an owner at most one address, whatever the
//     phase.
//  2. byDataplane files every entry, and only those, under its owner's data
//     plane; committed counts the entries held or releasing, and
//     committedOf the same per data plane (those with any).
//  3. An address with an entry, a reserved address, or one outside the
//     client range is never handed out. The free order may still list such
//     an address (see freeOrder); take skips it.
//  4. reserved and byClient are one relation seen from both sides.
//  5. The store is ahead of the index: an entry becomes held only after the
//     store committed its lease, and is dropped only after the store
//     released it. So a lease the index answers with is durable, and an
//     address this term leased is free here only once it is free in the
//     store. (Another writer's lease, with etcd, the index learns when the
//     store refuses a claim with ErrTaken: the caller Adopts the holder.)
//  6. At most one store call is in flight per entry, and so per owner and
//     per address: whoever finds an entry claiming or releasing waits on its
//     done channel (Grant.Wait, BeginRelease's wait), holding no lock, and
//     asks again.
//  7. byIP and byPrefix count the entries (every phase) by their client's
//     IPv6 address and its Limits.PrefixLen prefix; entries without a
//     client are not counted. Acquire hands out no address that would
//     take a client past Limits, except its reservation.
//  8. holders and holdersOf are one relation seen from both sides (an
//     address has at most one last holder); no committed entry's address
//     has one (Commit and Adopt drop it); holdersIn counts those in the
//     client range.
//
// Two clocks: the times of changes (what subscribers see, release times)
// are the caller's wall clock; vouched times (Commit, Adopt, Vouch,
// Unvouched) are on the caller's liveness clock, which the controller keeps
// from running while it is stalled. The index only compares each with its
// own kind.
//
// Lock discipline: mu guards everything but the immutable fields above it.
// It is a leaf lock. With mu held the index runs only its own code, sends
// to subscribers' channels without blocking (a full subscriber is cut off)
// and closes done channels: never a store call, a log line, a callback or
// a wait. Callers may hold locks of their own while they call the index
// (the controller's settings lock, around a reservation change), never the
// other way round. A report is applied in chunks of reportChunk sessions,
// mu released between chunks, so an allocation never waits behind a whole
// large report.
type Index struct {
	prefix            netip.Prefix
	gateway           netip.Addr
	network, bcast    uint32
	defFirst, defLast uint32 // all hosts but the gateway
	cooldown          time.Duration
	limits            Limits

	mu          sync.Mutex
	first, last uint32 // client range, inclusive
	free        freeOrder
	holders     map[uint32]netip.Addr       // last holder of a free address
	holderAt    map[uint32]int64            // its release time, as filed in holdersOf
	holdersOf   map[netip.Addr][]remembered // the same by client, in release order
	holdersIn   int                         // holders within the client range
	byAddr      map[uint32]*entry
	byOwner     map[store.Owner]*entry
	byDataplane map[string]map[uint32]*entry
	committed   int            // entries held or releasing
	committedOf map[string]int // the same per data plane
	reserved    map[uint32]netip.Prefix
	byClient    map[netip.Prefix]uint32
	byIP        map[netip.Addr]int   // entries per client address
	byPrefix    map[netip.Prefix]int // entries per client prefix
	subs        map[*Subscription]struct{}
}

type phase uint8

const (
	claiming  phase = iota + 1 // chosen; the store claim is in flight
	held                       // committed in the store
	releasing                  // held; the store release is in flight
)

// entry is one address with a lease (or a lease in the making).
type entry struct {
	v     uint32
	lease store.Lease // while claiming: address, owner and client only
	phase phase
	// queued: a claim whose address Acquire took out of the free order,
	// from the slot with key from; Abort puts it back there.
	queued bool
	from   int64
	// done is made by the first waiter and closed when the phase in
	// flight ends.
	done chan struct{}
	// vouched (liveness clock): committed, loaded, or last listed in a
	// complete report of its data plane.
	vouched time.Time
	// session is what the data plane reported: the live part of the
	// client table's row.
	session table.Session
}

func (e *entry) committed() bool { return e.phase == held || e.phase == releasing }

func (e *entry) waitLocked() <-chan struct{} {
	if e.done == nil {
		e.done = make(chan struct{})
	}
	return e.done
}

func (e *entry) wakeLocked() {
	if e.done != nil {
		close(e.done)
		e.done = nil
	}
}

// Options are the index's tunables.
type Options struct {
	// Cooldown: how long a released address rests before another client
	// gets it (when anything else is free). Reuse is least recently used
	// first, so the cooldown holds by itself: it only marks the grants
	// that break it (Grant.EarlyReuse).
	Cooldown time.Duration
	// Limits bound the leases of one client.
	Limits Limits
}

// New validates cfg and returns an empty index.
func New(cfg Config, opts ...Options) (*Index, error) {
	p := cfg.Prefix
	if !p.IsValid() {
		return nil, configErr("prefix", "no pool prefix given: want an IPv4 prefix such as %s", DefaultPrefix)
	}
	if !p.Addr().Is4() {
		return nil, configErr("prefix", "%s is not an IPv4 prefix: want e.g. %s", p, DefaultPrefix)
	}
	if p.Bits() > 30 {
		return nil, configErr("prefix", "%s is too small: the pool needs at least a /30 (network, gateway, one client, broadcast)", p)
	}
	if p.Masked() != p {
		return nil, configErr("prefix", "%s has host bits set: did you mean %s?", p, p.Masked())
	}
	network := u32(p.Addr())
	broadcast := network | (1<<(32-p.Bits()) - 1)
	x := &Index{
		prefix:      p,
		gateway:     addr(network + 1),
		network:     network,
		bcast:       broadcast,
		defFirst:    network + 2,
		defLast:     broadcast - 1,
		free:        newFreeOrder(),
		holders:     make(map[uint32]netip.Addr),
		holderAt:    make(map[uint32]int64),
		holdersOf:   make(map[netip.Addr][]remembered),
		byAddr:      make(map[uint32]*entry),
		byOwner:     make(map[store.Owner]*entry),
		byDataplane: make(map[string]map[uint32]*entry),
		committedOf: make(map[string]int),
		reserved:    make(map[uint32]netip.Prefix),
		byClient:    make(map[netip.Prefix]uint32),
		byIP:        make(map[netip.Addr]int),
		byPrefix:    make(map[netip.Prefix]int),
		subs:        make(map[*Subscription]struct{}),
	}
	for _, o := range opts {
		x.cooldown, x.limits = o.Cooldown, o.Limits
	}
	lim, err := checkLimits(x.limits)
	if err != nil {
		return nil, err
	}
	x.limits = lim
	first, last, err := x.checkRange(cfg.Range)
	if err != nil {
		return nil, err
	}
	x.first, x.last, x.free.cursor = first, last, uint64(first)
	return x, nil
}

// linkLocked files e under its address, owner and data plane: the one
// place an entry enters the index (with unlinkLocked, the one place it
// leaves), so every secondary index stays in step.
func (x *Index) linkLocked(e *entry) {
	x.byAddr[e.v] = e
	x.byOwner[e.lease.Owner] = e
	dp := x.byDataplane[e.lease.Dataplane]
	if dp == nil {
		dp = make(map[uint32]*entry)
		x.byDataplane[e.lease.Dataplane] = dp
	}
	dp[e.v] = e
	if e.committed() {
		x.countCommittedLocked(e, 1)
	}
	x.countLocked(e.lease.ClientIPv6, 1)
}

func (x *Index) unlinkLocked(e *entry) {
	delete(x.byAddr, e.v)
	delete(x.byOwner, e.lease.Owner)
	if dp := x.byDataplane[e.lease.Dataplane]; dp != nil {
		delete(dp, e.v)
		if len(dp) == 0 {
			delete(x.byDataplane, e.lease.Dataplane)
		}
	}
	if e.committed() {
		x.countCommittedLocked(e, -1)
	}
	x.countLocked(e.lease.ClientIPv6, -1)
}

// setPhaseLocked moves e to p, keeping the committed count.
func (x *Index) setPhaseLocked(e *entry, p phase) {
	was := e.committed()
	e.phase = p
	switch now := e.committed(); {
	case now && !was:
		x.countCommittedLocked(e, 1)
	case was && !now:
		x.countCommittedLocked(e, -1)
	}
}

func (x *Index) countCommittedLocked(e *entry, d int) {
	x.committed += d
	if n := x.committedOf[e.lease.Dataplane] + d; n > 0 {
		x.committedOf[e.lease.Dataplane] = n
	} else {
		delete(x.committedOf, e.lease.Dataplane)
	}
}

// isFreeLocked: v may be handed out (invariant 3).
func (x *Index) isFreeLocked(v uint32) bool {
	_, h := x.byAddr[v]
	_, r := x.reserved[v]
	return !h && !r && x.inRange(v)
}

// Grant is what Acquire answered.
type Grant struct {
	Addr netip.Addr
	// Existing: the owner holds Lease, committed; nothing was started.
	Existing bool
	Lease    store.Lease
	// Wait is set when a store call for the owner is in flight: nothing
	// was started; wait until it is closed, then Acquire again.
	Wait <-chan struct{}
	// Reserved: Addr is the client's reservation.
	Reserved bool
	// ReservationBusy: the client has a reservation (Reservation), but
	// its address is held by Holder; Addr is an ordinary one.
	ReservationBusy bool
	Reservation     Reservation
	Holder          store.Owner
	// Sticky: Addr is the client's remembered address (it was its last
	// holder), free again.
	Sticky bool
	// ReleasedAt is when Addr was released (zero if never, or unknown).
	ReleasedAt time.Time
	// EarlyReuse: Addr was released less than the cooldown ago, by
	// another client; nothing else was free.
	EarlyReuse bool
}

// Acquire chooses an address for owner, whose client has IPv6 address
// client (may be unset), and starts its claim: the caller claims it in the
// store, then calls Commit or Abort. The choice, in order: the client's
// reservation; else the address it held last, if that is free (Sticky);
// else the least recently used free address. An owner that holds an address gets
// it again (Existing, nothing started); one with a store call in flight
// gets Wait. On a full pool the error matches ErrExhausted; for a client
// at its Limits (unless it gets its reservation) it is a *LimitError.
func (x *Index) Acquire(owner store.Owner, client netip.Addr, now time.Time) (Grant, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if e, ok := x.byOwner[owner]; ok {
		if e.phase != held {
			return Grant{Addr: addr(e.v), Wait: e.waitLocked()}, nil
		}
		_, r := x.reserved[e.v]
		return Grant{Addr: addr(e.v), Existing: true, Lease: e.lease, Reserved: r}, nil
	}
	var g Grant
	if client.IsValid() {
		if v, ok := x.matchLocked(client); ok {
			h, busy := x.byAddr[v]
			if !busy {
				x.claimLocked(v, owner, client, false, 0)
				return Grant{Addr: addr(v), Reserved: true}, nil
			}
			g.ReservationBusy = true
			g.Reservation = Reservation{Client: x.reserved[v], Addr: addr(v)}
			g.Holder = h.lease.Owner
		}
	}
	if err := x.limitLocked(client); err != nil {
		return Grant{}, err
	}
	if v, key, queued, ok := x.stickyLocked(client); ok {
		x.claimLocked(v, owner, client, queued, key)
		g.Addr, g.Sticky = addr(v), true
		if queued {
			g.ReleasedAt = timeOf(key)
		}
		return g, nil
	}
	v, at, ok := x.free.take(x.last, x.isFreeLocked)
	if !ok {
		return Grant{}, x.exhaustedLocked()
	}
	x.claimLocked(v, owner, client, true, nanos(at))
	g.Addr, g.ReleasedAt = addr(v), at
	g.EarlyReuse = !at.IsZero() && x.cooldown > 0 && now.Sub(at) < x.cooldown
	return g, nil
}

func (x *Index) claimLocked(v uint32, owner store.Owner, client netip.Addr, queued bool, from int64) {
	x.linkLocked(&entry{
		v:      v,
		lease:  store.Lease{Addr: addr(v), Owner: owner, ClientIPv6: client},
		phase:  claiming,
		queued: queued,
		from:   from,
	})
}

// ErrOutside is matched by ClaimAt's error for an address that is not a
// client address of the pool.
var ErrOutside = errors.New("not a client address of the pool")

// ConflictError is ClaimAt's error for an address that another owner holds
// (Holder set) or that is reserved for another client (Reservation set).
type ConflictError struct {
	Addr        netip.Addr
	Holder      store.Owner
	Reservation netip.Prefix
}

func (e *ConflictError) Error() string {
	if e.Reservation.IsValid() {
		return fmt.Sprintf("%s is reserved for %s", e.Addr, e.Reservation)
	}
	return fmt.Sprintf("%s is held by %s", e.Addr, e.Holder)
}

// ClaimAt starts a claim of address a for owner, whose client has IPv6
// address client: a session its data plane reports holding a, which this
// index does not know. started is true when the claim is started (Commit
// or Abort it). When owner has an entry already, nothing is started and
// held is that entry's address. The error is ErrOutside, or a
// *ConflictError when a is held by another owner or reserved for another
// client.
func (x *Index) ClaimAt(owner store.Owner, a, client netip.Addr) (held netip.Addr, started bool, err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if e, ok := x.byOwner[owner]; ok {
		return addr(e.v), false, nil
	}
	if !x.IsClientAddr(a) {
		return netip.Addr{}, false, fmt.Errorf("%s: %w %s", a, ErrOutside, x.prefix)
	}
	v := u32(a)
	if h, ok := x.byAddr[v]; ok {
		return netip.Addr{}, false, &ConflictError{Addr: a, Holder: h.lease.Owner}
	}
	if c, ok := x.reserved[v]; ok {
		if m, ok := x.matchLocked(client); !ok || m != v {
			return netip.Addr{}, false, &ConflictError{Addr: a, Reservation: c}
		}
	}
	x.claimLocked(v, owner, client, false, 0)
	return a, true, nil
}

// claimOfLocked returns owner's entry if it is claiming a.
func (x *Index) claimOfLocked(owner store.Owner, a netip.Addr) (*entry, bool) {
	e, ok := x.byOwner[owner]
	if !ok || e.phase != claiming || !a.Is4() || e.v != u32(a) {
		return nil, false
	}
	return e, true
}

// Commit ends a claim the caller started (Acquire, ClaimAt): the store
// holds l now, vouched for at live (liveness clock). fresh says the session
// is new, so its traffic counts from zero; a session adopted from a report
// is not. Subscribers see it connect at now. It reports false, changing
// nothing, when l.Owner has no claim of l.Addr in flight.
func (x *Index) Commit(l store.Lease, now, live time.Time, fresh bool) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.claimOfLocked(l.Owner, l.Addr)
	if !ok {
		return false
	}
	if l.ClientIPv6 != e.lease.ClientIPv6 {
		x.countLocked(e.lease.ClientIPv6, -1)
		x.countLocked(l.ClientIPv6, 1)
	}
	e.lease, e.vouched = l, live
	x.forgetLocked(e.v) // its holder is the lease's client now
	if fresh {
		e.session = table.NewSession()
	}
	x.setPhaseLocked(e, held)
	e.wakeLocked()
	x.publishLocked(Connected, e, "", now)
	return true
}

// Abort ends a claim the caller started whose store claim failed: the
// address is free again, and its last holder is still remembered. One that
// Acquire took out of the free order goes back where it was; one claimed by
// ClaimAt keeps its place, or if it had none goes to the back, as released
// at now.
func (x *Index) Abort(owner store.Owner, a netip.Addr, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.claimOfLocked(owner, a)
	if !ok {
		return
	}
	x.unlinkLocked(e)
	if _, r := x.reserved[e.v]; !r {
		switch {
		case e.queued:
			x.free.put(e.v, e.from)
		case !x.free.has(e.v):
			x.free.pushBack(e.v, now)
		}
		x.refileLocked(e.v)
	}
	e.wakeLocked()
}

// Adopt indexes a lease the store holds already: loaded when the term
// starts, or learned from the store (another writer's); it is vouched for
// at live (liveness clock). It fails when another owner holds or is being
// given the address, or the owner holds another one; it changes nothing
// when the index has that lease already. Subscribers see the client
// connect at now.
func (x *Index) Adopt(l store.Lease, now, live time.Time) error {
	if !l.Addr.Is4() || !x.prefix.Contains(l.Addr) {
		return fmt.Errorf("%s is outside the pool %s", l.Addr, x.prefix)
	}
	v := u32(l.Addr)
	x.mu.Lock()
	defer x.mu.Unlock()
	if e, ok := x.byAddr[v]; ok {
		if e.lease.Owner == l.Owner && e.committed() {
			return nil
		}
		return fmt.Errorf("%s is held by %s", l.Addr, e.lease.Owner)
	}
	if e, ok := x.byOwner[l.Owner]; ok {
		return fmt.Errorf("%s holds %s already", l.Owner, addr(e.v))
	}
	e := &entry{v: v, lease: l, phase: held, vouched: live}
	x.linkLocked(e)
	x.forgetLocked(v)
	x.publishLocked(Connected, e, "", now)
	return nil
}

// BeginRelease starts the release of a by owner: the caller releases it
// in the store, then calls EndRelease or CancelRelease. It returns the
// lease and ok when owner holds a, committed. When a store call for owner
// is in flight, nothing is started and wait is set: wait until it is
// closed, then ask again. Anything else (a duplicate or stale release) is
// not ok.
func (x *Index) BeginRelease(owner store.Owner, a netip.Addr) (l store.Lease, wait <-chan struct{}, ok bool) {
	if !a.Is4() {
		return store.Lease{}, nil, false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	e, found := x.byOwner[owner]
	switch {
	case !found:
		return store.Lease{}, nil, false
	case e.phase != held:
		return store.Lease{}, e.waitLocked(), false
	case e.v != u32(a):
		return store.Lease{}, nil, false
	}
	x.setPhaseLocked(e, releasing)
	return e.lease, nil, true
}

// BeginReleaseMany is BeginRelease for many leases, for one store call
// that releases them together (store.ReleaseMany): started are the leases
// now releasing, in the order of rs; busy are those with a store call in
// flight (release them one by one, BeginRelease waits). The others (not
// held by that owner) are dropped: their release is a no-op.
func (x *Index) BeginReleaseMany(rs []store.Release) (started []store.Lease, busy []store.Release) {
	mine := make(map[uint32]bool) // started here: a repeat is no second release
	for start := 0; start < len(rs); start += reportChunk {
		end := min(start+reportChunk, len(rs))
		x.mu.Lock()
		for _, r := range rs[start:end] {
			e, ok := x.byOwner[r.Owner]
			switch {
			case !ok || !r.Addr.Is4() || e.v != u32(r.Addr) || mine[e.v]:
			case e.phase != held:
				busy = append(busy, r)
			default:
				x.setPhaseLocked(e, releasing)
				mine[e.v] = true
				started = append(started, e.lease)
			}
		}
		x.mu.Unlock()
	}
	return started, busy
}

// EndReleaseMany is EndRelease for each of ls.
func (x *Index) EndReleaseMany(ls []store.Lease, at time.Time, reason string) {
	x.settleMany(ls, func(e *entry) {
		x.releasedLocked(e, reason, at)
	})
}

// CancelReleaseMany is CancelRelease for each of ls.
func (x *Index) CancelReleaseMany(ls []store.Lease) {
	x.settleMany(ls, func(e *entry) { x.setPhaseLocked(e, held) })
}

func (x *Index) settleMany(ls []store.Lease, fn func(*entry)) {
	for start := 0; start < len(ls); start += reportChunk {
		end := min(start+reportChunk, len(ls))
		x.mu.Lock()
		for _, l := range ls[start:end] {
			if e, ok := x.releaseOfLocked(l.Owner, l.Addr); ok {
				fn(e)
				e.wakeLocked()
			}
		}
		x.mu.Unlock()
	}
}

func (x *Index) releaseOfLocked(owner store.Owner, a netip.Addr) (*entry, bool) {
	e, ok := x.byOwner[owner]
	if !ok || e.phase != releasing || !a.Is4() || e.v != u32(a) {
		return nil, false
	}
	return e, true
}

// EndRelease ends a release the caller started: the store does not hold
// the lease any more. The address is filed as released at at (unless
// reserved), the lease's client is remembered as its last holder, and
// subscribers see the client disconnect for reason.
func (x *Index) EndRelease(owner store.Owner, a netip.Addr, at time.Time, reason string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.releaseOfLocked(owner, a)
	if !ok {
		return
	}
	x.releasedLocked(e, reason, at)
	e.wakeLocked()
}

// releasedLocked drops the entry of a lease the store released.
func (x *Index) releasedLocked(e *entry, reason string, at time.Time) {
	x.publishLocked(Disconnected, e, reason, at)
	x.unlinkLocked(e)
	if _, r := x.reserved[e.v]; !r {
		x.free.pushBack(e.v, at)
	}
	x.rememberLocked(e.v, e.lease.ClientIPv6)
}

// CancelRelease ends a release the caller started whose store call
// failed: the lease is held again.
func (x *Index) CancelRelease(owner store.Owner, a netip.Addr) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if e, ok := x.releaseOfLocked(owner, a); ok {
		x.setPhaseLocked(e, held)
		e.wakeLocked()
	}
}

// Released records when free addresses were released, so reuse stays in
// release order across restarts. Leased ones are skipped; reserved ones
// are skipped when their turn comes.
func (x *Index) Released(times map[netip.Addr]time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for a, at := range times {
		if !a.Is4() || !x.prefix.Contains(a) {
			continue
		}
		if _, held := x.byAddr[u32(a)]; !held {
			x.free.pushBack(u32(a), at)
		}
	}
}

// Lease returns the committed lease on a.
func (x *Index) Lease(a netip.Addr) (store.Lease, bool) {
	if !a.Is4() {
		return store.Lease{}, false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.byAddr[u32(a)]
	if !ok || !e.committed() {
		return store.Lease{}, false
	}
	return e.lease, true
}

// Lookup returns the address owner holds or is being given.
func (x *Index) Lookup(owner store.Owner) (netip.Addr, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.byOwner[owner]
	if !ok {
		return netip.Addr{}, false
	}
	return addr(e.v), true
}

// Len returns the number of committed leases.
func (x *Index) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.committed
}

// LeasesOf returns the committed leases of one data plane.
func (x *Index) LeasesOf(dataplane string) []store.Lease {
	return x.leasesOf(dataplane, func(*entry) bool { return true })
}

// Unvouched returns the committed leases of one data plane that no
// complete report has listed since cutoff (vouched at or before it, on the
// liveness clock).
func (x *Index) Unvouched(dataplane string, cutoff time.Time) []store.Lease {
	return x.leasesOf(dataplane, func(e *entry) bool { return !e.vouched.After(cutoff) })
}

func (x *Index) leasesOf(dataplane string, keep func(*entry) bool) []store.Lease {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []store.Lease
	for _, e := range x.byDataplane[dataplane] {
		if e.committed() && keep(e) {
			out = append(out, e.lease)
		}
	}
	return out
}

// LeaseCounts returns how many committed leases each data plane holds
// (data planes without any are left out).
func (x *Index) LeaseCounts() map[string]int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return maps.Clone(x.committedOf)
}

// Row returns the client table's row for a (committed leases only).
func (x *Index) Row(a netip.Addr) (table.Row, bool) {
	if !a.Is4() {
		return table.Row{}, false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.byAddr[u32(a)]
	if !ok || !e.committed() {
		return table.Row{}, false
	}
	return rowOf(e), true
}

// Rows returns the client table's selected rows, sorted by address.
func (x *Index) Rows(f table.Filter) []table.Row {
	x.mu.Lock()
	out := x.rowsLocked(f)
	x.mu.Unlock()
	sortRows(out)
	return out
}

func sortRows(rs []table.Row) {
	slices.SortFunc(rs, func(a, b table.Row) int { return a.Addr.Compare(b.Addr) })
}

func (x *Index) rowsLocked(f table.Filter) []table.Row {
	var src map[uint32]*entry
	if f.DataplaneID != "" {
		src = x.byDataplane[f.DataplaneID]
	} else {
		src = x.byAddr
	}
	out := make([]table.Row, 0, len(src))
	for _, e := range src {
		if !e.committed() {
			continue
		}
		if r := rowOf(e); f.Match(r) {
			out = append(out, r)
		}
	}
	return out
}

// rowOf is the view: the lease, overlaid with what its data plane
// reported.
func rowOf(e *entry) table.Row {
	l := &e.lease
	r := table.Row{
		Addr:        l.Addr,
		ClientIPv6:  l.ClientIPv6,
		ClientPort:  l.ClientPort,
		DataplaneID: l.Dataplane,
		SessionID:   l.Session,
		LeasedAt:    l.LeasedAt,
		Sticky:      l.Sticky,
		ConnectedAt: l.LeasedAt, // until the data plane reports its own
		LastHeard:   l.LeasedAt,
	}
	e.session.Fill(&r)
	return r
}

// Outcome is what ApplyReports made of one Report.
type Outcome uint8

const (
	// Known: the session holds (or is being given) a lease here, at Addr
	// if that is set; the report was applied to it.
	Known Outcome = iota + 1
	// Mismatch: the session holds another address than the one reported.
	Mismatch
	// NoLease: the session holds no lease here.
	NoLease
)

// reportChunk bounds how many sessions of a report are applied per hold of
// the index's mutex.
const reportChunk = 512

// ApplyReports applies one data plane's session reports to its leases and
// writes each report's outcome to out (len(out) >= len(rs)). It vouches
// for nothing: a complete report does that once it has arrived whole
// (Vouch). It returns how much the sessions' traffic counters grew since
// their previous reports.
func (x *Index) ApplyReports(dataplane string, rs []table.Report, out []Outcome) table.Traffic {
	var grew table.Traffic
	for start := 0; start < len(rs); start += reportChunk {
		end := min(start+reportChunk, len(rs))
		x.mu.Lock()
		for i := start; i < end; i++ {
			r := &rs[i]
			e, ok := x.byOwner[store.Owner{Dataplane: dataplane, Session: r.SessionID}]
			switch {
			case !ok:
				out[i] = NoLease
			case r.Addr.IsValid() && (!r.Addr.Is4() || u32(r.Addr) != e.v):
				out[i] = Mismatch
			default:
				out[i] = Known
				if e.phase == claiming {
					continue // no row yet: Commit starts it
				}
				grew = grew.Add(e.session.Apply(*r))
			}
		}
		x.mu.Unlock()
	}
	return grew
}

// Vouch marks the committed leases of the given sessions of one data plane
// as listed by a complete report at live (liveness clock), unless they were
// vouched for later already, and returns how many it found. Sessions
// without a committed lease are skipped.
func (x *Index) Vouch(dataplane string, sessions []string, live time.Time) int {
	n := 0
	for start := 0; start < len(sessions); start += reportChunk {
		end := min(start+reportChunk, len(sessions))
		x.mu.Lock()
		for _, s := range sessions[start:end] {
			e, ok := x.byOwner[store.Owner{Dataplane: dataplane, Session: s}]
			if !ok || !e.committed() {
				continue
			}
			n++
			if live.After(e.vouched) {
				e.vouched = live
			}
		}
		x.mu.Unlock()
	}
	return n
}
