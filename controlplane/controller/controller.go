// Package controller is the control plane's core: it leases pool addresses to
// data plane sessions, hands out the route and DNS servers of the 101
// message, keeps the client table true from the data planes' reports, and
// keeps the data-plane registry. Every lease lives in a store.Store (bbolt or
// etcd) and is committed before it is answered; in memory, each leadership
// term keeps one lease index (pool.Index) rebuilt from the store when the
// controller starts leading, and the client table is a view of it. It
// speaks plain Go; controlplane/server adapts it to gRPC.
//
// A Controller is either active (the leader: it serves) or standby (every
// call but Status fails with an error matching ErrNotLeader). With the
// bbolt store it is always active; with etcd, package leader tells it when
// it wins or loses the election (Activate, Deactivate).
//
// The rule it keeps: an address goes to a new client only when no live
// session can hold it. A lease ends only on its data plane's release
// (Release, ReleaseMany, StopDataplane, or a new instance of the data
// plane registering once the previous one is provably gone), on its
// absence from the data plane's successful complete reports for the grace
// period, on its data plane's silence for the timeout and then the grace
// period, or by an operator (RemoveDataplane). Silence and absence are
// measured on the liveness clock (see liveClock), which does not run
// while the controller is stalled or down.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fourover6/fourover6/controlplane/dns"
	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
	"github.com/fourover6/fourover6/controlplane/table"
)

// Errors callers can match with errors.Is. Pool exhaustion is
// pool.ErrExhausted.
var (
	// ErrInvalidArgument: the request itself is wrong (empty id, an
	// address of the wrong family...); retrying it cannot succeed.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: no client holds the address asked about (or no such
	// data plane or reservation).
	ErrNotFound = errors.New("not found")
	// ErrNotLeader: this controller is a standby (or lost its
	// leadership); NotLeaderError says who leads.
	ErrNotLeader = errors.New("not the leader")
	// ErrUnavailable: a dependency (the store, a data plane's command
	// stream) cannot be reached now; retrying later may work.
	ErrUnavailable = errors.New("unavailable")
	// ErrFailedPrecondition: the request conflicts with the current state
	// (e.g. a reservation for an address another client holds).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrIDInUse: RegisterDataplane refused an instance because another
	// instance of the same data plane id is live; IDConflictError says
	// which.
	ErrIDInUse = errors.New("data plane id in use")
	// ErrNotRegistered: the calling data plane instance is not the
	// registered instance of its id (another took it over, it stopped or
	// was removed): it must register again. NotRegisteredError says more;
	// it matches ErrFailedPrecondition too.
	ErrNotRegistered = errors.New("data plane instance not registered")
)

// kindError carries a human message while matching a sentinel, so the
// message reads well on its own ("no client holds 13.8.0.9").
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

func invalid(format string, args ...any) error {
	return &kindError{kind: ErrInvalidArgument, msg: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &kindError{kind: ErrNotFound, msg: fmt.Sprintf(format, args...)}
}

func unavailable(format string, args ...any) error {
	return &kindError{kind: ErrUnavailable, msg: fmt.Sprintf(format, args...)}
}

func precondition(format string, args ...any) error {
	return &kindError{kind: ErrFailedPrecondition, msg: fmt.Sprintf(format, args...)}
}

// NotLeaderError is returned by a standby. LeaderID is empty when no
// leader is known.
type NotLeaderError struct{ LeaderID string }

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return "not the leader; no leader is elected right now"
	}
	return "not the leader; leader is " + e.LeaderID
}

func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

// storeErr classifies an error of the store: a lost fence means lost
// leadership; anything else but the caller's own context is "unavailable".
func (c *Controller) storeErr(op string, err error) error {
	switch {
	case errors.Is(err, store.ErrFenced):
		return &NotLeaderError{}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return &kindError{kind: ErrUnavailable, msg: fmt.Sprintf("%s: store %s: %v", op, c.store, err)}
}

// MaxIDLen bounds data plane and session ids: they come from the network
// and are kept in memory, in the store and in logs.
const MaxIDLen = 256

// maxTextLen bounds free-form text (versions, reasons) kept or logged.
const maxTextLen = 256

// Client is one row of the client table.
type Client = table.Row

// Traffic of one session.
type Traffic = table.Traffic

// Filter selects clients; the zero Filter selects all.
type Filter = table.Filter

// Defaults of the timing settings.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultDataplaneTimeout  = 15 * time.Second
	DefaultGracePeriod       = 30 * time.Second
	DefaultReuseCooldown     = 5 * time.Second
)

// Config configures a Controller.
type Config struct {
	Pool pool.Config
	// Route is the route field of every 101; the zero Addr means 0.0.0.0
	// (the default route through the tunnel).
	Route netip.Addr
	// DNS are the three servers of every 101 (see package dns). All zero
	// means dns.DefaultFallbacks. A value set at run time (SetDNS) and
	// kept in the store wins.
	DNS [dns.Count]netip.Addr
	// Version is the controller's software version.
	Version string
	// ID names this controller (status, leader election).
	ID string
	// Store keeps the state; nil means a volatile in-memory store.
	Store store.Store
	// Standby: start as a standby and wait for Activate (etcd election).
	// Otherwise New loads the store and the controller serves at once.
	Standby bool
	// LogLevel is the level SetLogLevel changes; nil means a private one.
	LogLevel *slog.LevelVar
	// Logger receives one line per lease and release; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now. Tests set it.
	Now func() time.Time

	// HeartbeatInterval is how often data planes are told to heartbeat.
	HeartbeatInterval time.Duration
	// DataplaneTimeout: a data plane not heard from for this long is DOWN.
	DataplaneTimeout time.Duration
	// GracePeriod: leases of a data plane DOWN this long, and leases its
	// complete reports have not listed for this long, are released.
	GracePeriod time.Duration
	// ReuseCooldown: a released address rests this long before another
	// client gets it, unless nothing else is free (reuse is least
	// recently used first, so this holds by itself; it marks the grants
	// that break it in the log). Its last holder may have it back at once.
	ReuseCooldown time.Duration
	// Limits bound the leases one client IPv6 address, and one prefix,
	// may hold across all data planes (zero fields: unlimited).
	Limits pool.Limits
	// DNSFrom and RangeFrom say where DNS and Pool.Range were configured
	// ("flag", "file PATH:LINE", "default", ...): the warning that a value
	// set at run time overrides them names it. Empty: "configuration".
	DNSFrom, RangeFrom string
}

// Lease is what a 101 message carries, plus who holds it since when.
type Lease struct {
	Addr        netip.Addr
	Route       netip.Addr
	DNS         [dns.Count]netip.Addr
	DataplaneID string
	SessionID   string
	LeasedAt    time.Time
}

// SessionReport is a data plane's view of one of its sessions.
type SessionReport = table.Report

// PoolInfo describes the pool, its use and what every 101 carries.
type PoolInfo struct {
	pool.Stats
	Route netip.Addr
	DNS   [dns.Count]netip.Addr
}

// Controller is safe for concurrent use.
//
// Locks, in the order they may be taken (never the other way round):
//
//	term.smu -> the term's pool.Index
//
// and, each on its own (no other lock is taken while it is held):
// Controller.mu (the current term, the leader's id), term.dpMu (the
// data-plane registry). The index's lock is a leaf (see pool.Index): the
// controller never calls the store, logs or waits while the index holds
// it. Store calls are made holding no lock but term.smu, which serializes
// operator setting changes (reservations, DNS, range) with their store
// writes so they commit in the order they apply.
type Controller struct {
	cfg      Config
	store    store.Store
	route    netip.Addr
	flagDNS  [dns.Count]netip.Addr
	version  string
	id       string
	log      *slog.Logger
	level    *slog.LevelVar
	now      func() time.Time
	started  time.Time
	poolCfg  pool.Config
	cooldown time.Duration
	limits   pool.Limits
	counters activityCounters
	// live is the liveness clock every judgement of a data plane's
	// silence uses; Reconcile advances it every tick.
	live *liveClock
	tick time.Duration
	// limitLog throttles the log lines of refused allocations, per kind.
	limitLog throttles

	// ranAt is when Run last finished a Reconcile (wall clock, Unix ns;
	// 0 before Run): what Stuck reads.
	ranAt atomic.Int64

	mu       sync.RWMutex
	term     *term // nil while standby
	leaderID string
}

// term is the state of one period of leadership: the lease index (an
// index of the store), the settings and the data-plane registry.
type term struct {
	c       *Controller
	idx     *pool.Index
	started time.Time
	done    chan struct{} // closed when the term ends

	// dns is read by every allocation: an atomic, so none waits for a
	// settings change's store write.
	dns atomic.Pointer[[dns.Count]netip.Addr]

	smu      sync.Mutex // serializes setting changes; guards settings and the two below
	settings store.Settings
	// dnsStored and rangeStored: the DNS servers and the client range in
	// effect are the store's (set at run time), not the configuration's.
	dnsStored, rangeStored bool

	// regMu serializes the changes of the registry that are written to
	// the store (registrations, stops, drains, removals), so that the
	// check of who holds an id and the write that changes it are one
	// step. It may be held across store calls; dpMu is taken inside it.
	regMu sync.Mutex
	dpMu  sync.Mutex
	dps   map[string]*dpState
}

// New validates cfg, loads the store (unless Standby) and returns the
// controller.
func New(cfg Config) (*Controller, error) {
	if _, err := pool.New(cfg.Pool, pool.Options{Limits: cfg.Limits}); err != nil {
		return nil, err
	}
	route := cfg.Route
	if !route.IsValid() {
		route = netip.IPv4Unspecified()
	}
	if !route.Is4() {
		return nil, fmt.Errorf("route %s is not an IPv4 address", route)
	}
	servers := cfg.DNS
	if servers == [dns.Count]netip.Addr{} {
		copy(servers[:], dns.DefaultFallbacks())
	}
	for _, s := range servers {
		if !s.Is4() {
			return nil, fmt.Errorf("DNS server %q is not an IPv4 address: all three must be set", s)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.HeartbeatInterval, DefaultHeartbeatInterval)
	def(&cfg.DataplaneTimeout, DefaultDataplaneTimeout)
	def(&cfg.GracePeriod, DefaultGracePeriod)
	if cfg.ReuseCooldown < 0 {
		cfg.ReuseCooldown = 0
	}
	c := &Controller{
		cfg:      cfg,
		store:    cfg.Store,
		route:    route,
		flagDNS:  servers,
		version:  cfg.Version,
		id:       cfg.ID,
		log:      cfg.Logger,
		level:    cfg.LogLevel,
		now:      cfg.Now,
		poolCfg:  cfg.Pool,
		cooldown: cfg.ReuseCooldown,
		limits:   cfg.Limits,
	}
	if c.store == nil {
		c.store = store.NewMemory()
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.level == nil {
		c.level = new(slog.LevelVar)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.version == "" {
		c.version = "dev"
	}
	if c.id == "" {
		c.id = "controller"
	}
	c.started = c.now()
	c.tick = reconcileInterval(cfg.DataplaneTimeout, cfg.GracePeriod)
	c.live = newLiveClock(c.started, 2*c.tick)
	if !cfg.Standby {
		if err := c.Activate(context.Background()); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Version returns the controller's software version.
func (c *Controller) Version() string { return c.version }

// ID returns the controller's id.
func (c *Controller) ID() string { return c.id }

// Store returns the store.
func (c *Controller) Store() store.Store { return c.store }

// active returns the current term, or a NotLeaderError.
func (c *Controller) active() (*term, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.term == nil {
		return nil, &NotLeaderError{LeaderID: c.leaderID}
	}
	return c.term, nil
}

// SetLeader records who leads while this controller is a standby.
func (c *Controller) SetLeader(id string) {
	c.mu.Lock()
	if c.term == nil {
		c.leaderID = id
	}
	c.mu.Unlock()
}

// Activate loads the store and starts serving: this controller leads.
// Calling it while active reloads nothing.
func (c *Controller) Activate(ctx context.Context) error {
	c.mu.RLock()
	t := c.term
	c.mu.RUnlock()
	if t != nil {
		return nil
	}
	t, err := c.load(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.term, c.leaderID = t, c.id
	c.mu.Unlock()
	return nil
}

// Deactivate stops serving (leadership lost): calls fail with ErrNotLeader,
// command streams and watchers end, the in-memory state is dropped.
func (c *Controller) Deactivate(leaderID string) {
	c.mu.Lock()
	t := c.term
	c.term, c.leaderID = nil, leaderID
	c.mu.Unlock()
	if t != nil {
		close(t.done)
		c.log.Warn("no longer the leader: serving nothing until elected again", "leader", leaderID)
	}
}

// load builds a term from the store.
func (c *Controller) load(ctx context.Context) (*term, error) {
	st, err := c.store.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("load state from %s: %w", c.store, err)
	}
	idx, err := pool.New(c.poolCfg, pool.Options{Cooldown: c.cooldown, Limits: c.limits})
	if err != nil {
		return nil, err
	}
	now := c.now()
	// Every data plane gets a fresh timeout and grace from the start of
	// the term, whatever the controller missed while it was down.
	live := c.live.at(now)
	t := &term{
		c:        c,
		idx:      idx,
		started:  now,
		done:     make(chan struct{}),
		settings: st.Settings,
		dps:      make(map[string]*dpState),
	}
	servers := c.flagDNS
	set := st.Settings
	cfgR := c.poolCfg.Range
	switch {
	case set.RangeFirst.IsValid() && set.RangeLast.IsValid():
		r := pool.Range{First: set.RangeFirst, Last: set.RangeLast}
		if err := idx.RestoreRange(r); err != nil {
			c.log.Error("ignoring the stored pool range: it does not fit --pool", "range", r, "error", err)
		} else if r != cfgR {
			t.rangeStored = true
			c.log.Warn("the pool range set at run time (pool set-range, apply) overrides the configured one",
				"range", r.String(), "configured", rangeText(cfgR), "configured_from", c.from(c.cfg.RangeFrom))
		}
	case set.WholePrefix:
		if err := idx.RestoreRange(pool.Range{}); err == nil && !cfgR.IsZero() {
			t.rangeStored = true
			c.log.Warn("the whole prefix, as set at run time (pool set-range, apply), overrides the configured pool range",
				"configured", rangeText(cfgR), "configured_from", c.from(c.cfg.RangeFrom))
		}
	}
	if len(set.DNS) == dns.Count {
		copy(servers[:], set.DNS)
		if servers != c.flagDNS {
			t.dnsStored = true
			c.log.Warn("the DNS servers set at run time (dns set, apply) override the configured ones",
				"dns", joinAddrs(servers[:]), "configured", joinAddrs(c.flagDNS[:]), "configured_from", c.from(c.cfg.DNSFrom))
		}
	}
	t.dns.Store(&servers)
	for _, r := range st.Reservations {
		if err := idx.RestoreReservation(pool.Reservation{Client: r.Client, Addr: r.Addr}); err != nil {
			c.log.Error("ignoring a stored reservation", "client", r.Client, "address", r.Addr, "error", err)
		}
	}
	var outside []string
	for _, l := range st.Leases {
		if !idx.Prefix().Contains(l.Addr) {
			outside = append(outside, fmt.Sprintf("%s (%s)", l.Addr, l.Owner))
			continue
		}
		// Rebuilt from the store: the session's traffic so far is unknown.
		if err := idx.Adopt(l, now, live); err != nil {
			c.log.Error("stored lease conflicts with another; keeping the first", "address", l.Addr,
				"dataplane", l.Dataplane, "session", l.Session, "error", err)
		}
	}
	if len(outside) > 0 {
		if len(outside) > 5 {
			outside = append(outside[:5], fmt.Sprintf("and %d more", len(outside)-5))
		}
		return nil, fmt.Errorf("the store holds leases outside the pool %s: %s; start with the --pool they were leased from",
			idx.Prefix(), strings.Join(outside, ", "))
	}
	idx.Released(st.Released)
	idx.Remember(st.Holders)
	for _, d := range st.Dataplanes {
		t.dps[d.ID] = &dpState{rec: d, known: true, lastContact: live, seen: now}
	}
	for dp := range idx.LeaseCounts() {
		if _, ok := t.dps[dp]; !ok {
			t.dps[dp] = &dpState{rec: store.Dataplane{ID: dp}, lastContact: live, seen: now}
		}
	}
	info := idx.Stats()
	c.log.Info("state loaded", "store", c.store.String(), "leases", idx.Len(),
		"reservations", len(st.Reservations), "dataplanes", len(st.Dataplanes),
		"range", fmt.Sprintf("%s-%s", info.First, info.Last), "dns", joinAddrs(servers[:]), "free", info.Free,
		"free_remembered", info.FreeRemembered)
	return t, nil
}

func (t *term) dnsServers() [dns.Count]netip.Addr { return *t.dns.Load() }

func (t *term) leaseOf(l store.Lease) Lease {
	return Lease{
		Addr: l.Addr, Route: t.c.route, DNS: t.dnsServers(),
		DataplaneID: l.Dataplane, SessionID: l.Session, LeasedAt: l.LeasedAt,
	}
}

// wait blocks until ch is closed (a store call of the same session ended)
// or ctx ends.
func wait(ctx context.Context, ch <-chan struct{}) error {
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// AllocateRequest asks for an address for one client session.
type AllocateRequest struct {
	DataplaneID string
	// InstanceID is the data plane process asking; when set, it must be
	// the registered instance of DataplaneID (else the error matches
	// ErrNotRegistered). Empty: a data plane that does not say.
	InstanceID string
	SessionID  string
	ClientIPv6 netip.Addr
	ClientPort uint16
}

// Allocate is AllocateFor without an instance id.
func (c *Controller) Allocate(ctx context.Context, dataplaneID, sessionID string, clientIPv6 netip.Addr, clientPort uint16) (Lease, error) {
	return c.AllocateFor(ctx, AllocateRequest{DataplaneID: dataplaneID, SessionID: sessionID, ClientIPv6: clientIPv6, ClientPort: clientPort})
}

// AllocateFor leases an address to one client session. It is idempotent
// per (DataplaneID, SessionID): a retry returns the same lease, LeasedAt
// included. The lease is committed to the store before it is returned. On
// a full pool the error matches pool.ErrExhausted; for a client at its
// lease limit it is a *pool.LimitError (matching pool.ErrLimit).
func (c *Controller) AllocateFor(ctx context.Context, r AllocateRequest) (Lease, error) {
	l, fresh, err := c.allocate(ctx, r)
	switch {
	case err != nil:
		c.counters.allocateFailed(failureOf(err))
		var le *pool.LimitError
		if errors.As(err, &le) {
			c.limitRefused(r, le)
		}
	case fresh:
		c.counters.allocated.Add(1)
	default:
		c.counters.repeated.Add(1)
	}
	return l, err
}

// maxTaken bounds how often one allocation learns of a holder it did not
// know (another writer's) and chooses again.
const maxTaken = 3

// allocate does AllocateFor's work and says whether the lease is new.
func (c *Controller) allocate(ctx context.Context, r AllocateRequest) (Lease, bool, error) {
	dataplaneID, sessionID, clientIPv6, clientPort := r.DataplaneID, r.SessionID, r.ClientIPv6, r.ClientPort
	if err := ctx.Err(); err != nil {
		return Lease{}, false, err
	}
	if err := checkID("dataplane id", dataplaneID); err != nil {
		return Lease{}, false, err
	}
	if err := checkID("session id", sessionID); err != nil {
		return Lease{}, false, err
	}
	if !clientIPv6.IsValid() {
		return Lease{}, false, invalid("client IPv6 address is missing")
	}
	if clientIPv6.Is4() {
		return Lease{}, false, invalid("client address %s is not an IPv6 address", clientIPv6)
	}
	if len(r.InstanceID) > MaxIDLen {
		return Lease{}, false, invalid("instance id is %d bytes long, more than %d", len(r.InstanceID), MaxIDLen)
	}
	t, err := c.active()
	if err != nil {
		return Lease{}, false, err
	}
	instance, err := t.caller(dataplaneID, r.InstanceID)
	if err != nil {
		return Lease{}, false, err
	}
	owner := store.Owner{Dataplane: dataplaneID, Session: sessionID}

	for taken := 0; ; {
		now := c.now()
		g, err := t.idx.Acquire(owner, clientIPv6, now)
		if err != nil {
			if errors.Is(err, pool.ErrExhausted) {
				c.log.Warn("address pool exhausted", "dataplane", dataplaneID, "session", sessionID,
					"client", netip.AddrPortFrom(clientIPv6, clientPort), "error", err)
			}
			return Lease{}, false, err
		}
		if g.Wait != nil {
			// This session's previous call is still at the store.
			if err := wait(ctx, g.Wait); err != nil {
				return Lease{}, false, err
			}
			continue
		}
		if g.Existing {
			c.log.Debug("lease repeated", "address", g.Addr, "dataplane", dataplaneID, "session", sessionID)
			return t.leaseOf(g.Lease), false, nil
		}
		if g.ReservationBusy {
			c.log.Warn("client's reserved address is held by another session; leasing it another address",
				"client", clientIPv6, "reservation", g.Reservation.Client, "reserved", g.Reservation.Addr,
				"holder", g.Holder.String(), "address", g.Addr)
		}
		if g.EarlyReuse {
			c.log.Debug("reusing an address within its cooldown: no other address is free", "address", g.Addr,
				"cooldown", c.cooldown)
		}
		l := store.Lease{
			Addr: g.Addr, Owner: owner, InstanceID: instance,
			ClientIPv6: clientIPv6, ClientPort: clientPort, LeasedAt: now, Sticky: g.Sticky,
		}
		held, existing, committed, err := t.claim(ctx, l, now, true)
		if err != nil {
			if errors.Is(err, store.ErrTaken) && taken < maxTaken {
				taken++
				// The store knows a holder this index does not (another
				// writer): learn it and choose again.
				if other, ok, lerr := c.store.Lease(ctx, g.Addr); lerr == nil && ok {
					c.log.Error("the store holds a lease this controller did not know; learning it",
						"address", g.Addr, "dataplane", other.Dataplane, "session", other.Session)
					t.adopt(other, now)
				}
				continue
			}
			return Lease{}, false, c.storeErr("lease", err)
		}
		if existing {
			// The store had a lease for this session that the index
			// lacked: that one is the truth.
			t.adopt(held, now)
			return t.leaseOf(held), false, nil
		}
		if !committed {
			c.log.Error("lease committed but its claim was gone from the index", "address", g.Addr,
				"dataplane", dataplaneID, "session", sessionID)
		}
		switch {
		case g.Sticky:
			c.counters.sticky.Add(1)
			var away time.Duration
			if !g.ReleasedAt.IsZero() {
				away = now.Sub(g.ReleasedAt).Round(time.Millisecond)
			}
			c.log.Info("lease", "address", g.Addr, "dataplane", dataplaneID, "session", sessionID,
				"client", netip.AddrPortFrom(clientIPv6, clientPort), "reserved", false,
				"sticky", true, "away", away)
			return t.leaseOf(held), true, nil
		case g.Reserved:
			c.counters.reservedGrants.Add(1)
		default:
			c.counters.newGrants.Add(1)
		}
		c.log.Info("lease", "address", g.Addr, "dataplane", dataplaneID, "session", sessionID,
			"client", netip.AddrPortFrom(clientIPv6, clientPort), "reserved", g.Reserved, "sticky", false)
		return t.leaseOf(held), true, nil
	}
}

// claim makes the store claim of a claim started in the index (Acquire,
// ClaimAt) and settles it there: Commit when the store leased l, Abort
// otherwise, even if the store call panics (the gRPC server recovers
// panics; a claim left in flight would block its session for the term).
func (t *term) claim(ctx context.Context, l store.Lease, now time.Time, fresh bool) (held store.Lease, existing, committed bool, err error) {
	settled := false
	defer func() {
		if !settled {
			t.idx.Abort(l.Owner, l.Addr, now)
		}
	}()
	held, existing, err = t.c.store.Claim(ctx, l)
	if err == nil && !existing {
		committed = t.idx.Commit(held, now, t.c.live.at(now), fresh)
		settled = committed
	}
	return held, existing, committed, err
}

// adopt indexes a lease that is committed in the store.
func (t *term) adopt(l store.Lease, now time.Time) bool {
	if err := t.idx.Adopt(l, now, t.c.live.at(now)); err != nil {
		t.c.log.Error("cannot index a stored lease", "address", l.Addr, "dataplane", l.Dataplane,
			"session", l.Session, "error", err)
		return false
	}
	return true
}

// ReleaseRequest gives one session's address back.
type ReleaseRequest struct {
	DataplaneID string
	// InstanceID is the data plane process releasing; a release from the
	// registered instance counts as a sign of life. Releases apply
	// whichever instance sends them: only the session's own lease is
	// freed.
	InstanceID string
	SessionID  string
	Addr       netip.Addr
	Reason     string
}

// Release is ReleaseFor without an instance id.
func (c *Controller) Release(ctx context.Context, dataplaneID, sessionID string, addr netip.Addr, reason string) (bool, error) {
	return c.ReleaseFor(ctx, ReleaseRequest{DataplaneID: dataplaneID, SessionID: sessionID, Addr: addr, Reason: reason})
}

// ReleaseFor returns r.Addr to the pool if that session holds it, and
// reports whether it did. Anything else (a duplicate or stale release) is
// a no-op. The release is committed to the store before it returns.
func (c *Controller) ReleaseFor(ctx context.Context, r ReleaseRequest) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := checkRelease(r); err != nil {
		return false, err
	}
	t, err := c.active()
	if err != nil {
		return false, err
	}
	t.heard(r.DataplaneID, r.InstanceID)
	ok, err := t.release(ctx, store.Owner{Dataplane: r.DataplaneID, Session: r.SessionID}, r.Addr, clip(r.Reason), slog.LevelInfo)
	if err == nil {
		if ok {
			c.counters.released.Add(1)
		} else {
			c.counters.ignored.Add(1)
		}
	}
	return ok, err
}

func checkRelease(r ReleaseRequest) error {
	if err := checkID("dataplane id", r.DataplaneID); err != nil {
		return err
	}
	if err := checkID("session id", r.SessionID); err != nil {
		return err
	}
	if len(r.InstanceID) > MaxIDLen {
		return invalid("instance id is %d bytes long, more than %d", len(r.InstanceID), MaxIDLen)
	}
	return checkIPv4(r.Addr)
}

// ReleaseMany is ReleaseFor for a batch of one data plane's releases (its
// queue of releases, retried until they succeed), in one store call: it
// returns how many freed an address. Repeating a batch that succeeded
// frees nothing more. Every release must name dataplaneID (or none).
func (c *Controller) ReleaseMany(ctx context.Context, dataplaneID, instanceID string, rs []ReleaseRequest) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := checkID("dataplane id", dataplaneID); err != nil {
		return 0, err
	}
	ls := make([]store.Lease, 0, len(rs))
	for i, r := range rs {
		if r.DataplaneID == "" {
			r.DataplaneID = dataplaneID
		}
		if r.DataplaneID != dataplaneID {
			return 0, invalid("release %d: data plane %q is not %q, the batch's", i, clip(r.DataplaneID), clip(dataplaneID))
		}
		r.InstanceID = instanceID
		if err := checkRelease(r); err != nil {
			return 0, invalid("release %d: %v", i, err)
		}
		ls = append(ls, store.Lease{Addr: r.Addr, Owner: store.Owner{Dataplane: dataplaneID, Session: r.SessionID}})
	}
	t, err := c.active()
	if err != nil {
		return 0, err
	}
	t.heard(dataplaneID, instanceID)
	reasons := make(map[store.Owner]string, len(rs))
	for _, r := range rs {
		reasons[store.Owner{Dataplane: dataplaneID, Session: r.SessionID}] = clip(r.Reason)
	}
	n, err := t.releaseBatch(ctx, ls, func(o store.Owner) string { return reasons[o] }, slog.LevelInfo)
	c.counters.released.Add(uint64(n))
	if err == nil {
		c.counters.ignored.Add(uint64(len(rs) - n))
	}
	return n, err
}

// release frees one lease in the store, then in the index.
func (t *term) release(ctx context.Context, owner store.Owner, addr netip.Addr, reason string, lvl slog.Level) (bool, error) {
	c := t.c
	for {
		l, busy, ok := t.idx.BeginRelease(owner, addr)
		if busy != nil {
			if err := wait(ctx, busy); err != nil {
				return false, err
			}
			continue
		}
		if !ok {
			c.log.Debug("release ignored: not held by this session", "address", addr,
				"dataplane", owner.Dataplane, "session", owner.Session, "reason", reason)
			return false, nil
		}
		now := c.now()
		if err := t.storeRelease(ctx, owner, addr, now, reason); err != nil {
			return false, c.storeErr("release", err)
		}
		c.log.Log(context.Background(), lvl, "release", "address", addr, "dataplane", owner.Dataplane,
			"session", owner.Session, "client", netip.AddrPortFrom(l.ClientIPv6, l.ClientPort),
			"reason", reason, "held", now.Sub(l.LeasedAt).Round(time.Second))
		return true, nil
	}
}

// storeRelease makes the store release of a release started in the index
// and settles it there: EndRelease when the store answered, CancelRelease
// otherwise, even if the store call panics.
func (t *term) storeRelease(ctx context.Context, owner store.Owner, addr netip.Addr, now time.Time, reason string) (err error) {
	settled := false
	defer func() {
		if !settled {
			t.idx.CancelRelease(owner, addr)
		}
	}()
	if _, err := t.c.store.Release(ctx, addr, owner, now); err != nil {
		return err
	}
	t.idx.EndRelease(owner, addr, now, reason)
	settled = true
	return nil
}

// Clients returns the client table, sorted by address.
func (c *Controller) Clients(ctx context.Context, f Filter) ([]Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t, err := c.active()
	if err != nil {
		return nil, err
	}
	return t.idx.Rows(f), nil
}

// Client returns the client holding addr; the error matches ErrNotFound if
// there is none.
func (c *Controller) Client(ctx context.Context, addr netip.Addr) (Client, error) {
	if err := ctx.Err(); err != nil {
		return Client{}, err
	}
	if err := checkIPv4(addr); err != nil {
		return Client{}, err
	}
	t, err := c.active()
	if err != nil {
		return Client{}, err
	}
	row, ok := t.idx.Row(addr)
	if !ok {
		return Client{}, notFound("no client holds %s", addr)
	}
	return row, nil
}

// PoolInfo describes the pool and its use.
func (c *Controller) PoolInfo(ctx context.Context) (PoolInfo, error) {
	t, err := c.active()
	if err != nil {
		return PoolInfo{}, err
	}
	return PoolInfo{Stats: t.idx.Stats(), Route: c.route, DNS: t.dnsServers()}, nil
}

func checkID(what, id string) error {
	if id == "" {
		return invalid("%s is empty", what)
	}
	if len(id) > MaxIDLen {
		return invalid("%s is %d bytes long, more than %d", what, len(id), MaxIDLen)
	}
	return nil
}

func checkIPv4(a netip.Addr) error {
	if !a.IsValid() {
		return invalid("IPv4 address is missing")
	}
	if !a.Is4() {
		return invalid("address %s is not an IPv4 address", a)
	}
	return nil
}

func clip(s string) string {
	if len(s) <= maxTextLen {
		return s
	}
	// Cutting may split a rune; drop the broken tail.
	return strings.ToValidUTF8(s[:maxTextLen], "") + "…"
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}
