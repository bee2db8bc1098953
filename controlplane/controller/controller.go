// Package controller is the control plane's core: it leases pool addresses to
// data plane sessions, hands out the route and DNS servers of the 101
// message, and keeps the client table true from the data planes' reports.
// It speaks plain Go; controlplane/server adapts it to gRPC.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fourover6/fourover6/controlplane/dns"
	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/table"
)

// Errors callers can match with errors.Is. Pool exhaustion is
// pool.ErrExhausted.
var (
	// ErrInvalidArgument: the request itself is wrong (empty id, an
	// address of the wrong family...); retrying it cannot succeed.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: no client holds the address asked about.
	ErrNotFound = errors.New("not found")
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

// MaxIDLen bounds data plane and session ids: they come from the network
// and are kept in memory and in logs.
const MaxIDLen = 256

// maxTextLen bounds free-form text (versions, reasons) kept or logged.
const maxTextLen = 256

// Client is one row of the client table.
type Client = table.Row

// Counters of one session.
type Counters = table.Counters

// Filter selects clients; the zero Filter selects all.
type Filter = table.Filter

// Config configures a Controller.
type Config struct {
	Pool pool.Config
	// Route is the route field of every 101; the zero Addr means 0.0.0.0
	// (the default route through the tunnel).
	Route netip.Addr
	// DNS are the three servers of every 101 (see package dns). All zero
	// means dns.DefaultFallbacks.
	DNS [dns.Count]netip.Addr
	// Version is the controller's software version.
	Version string
	// Logger receives one line per lease and release; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now. Tests set it.
	Now func() time.Time
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

// Registration is what a data plane needs to configure its TUN.
type Registration struct {
	Gateway           netip.Addr
	Prefix            netip.Prefix
	ControllerVersion string
}

// SessionReport is a data plane's view of one of its sessions.
type SessionReport struct {
	SessionID string
	// Addr is the address the data plane believes the session holds; the
	// zero Addr means "whatever it holds".
	Addr        netip.Addr
	ClientIPv6  netip.Addr
	ClientPort  uint16
	ConnectedAt time.Time
	LastHeard   time.Time
	Counters    Counters
}

// PoolInfo describes the pool, its use and what every 101 carries.
type PoolInfo struct {
	pool.Stats
	Route netip.Addr
	DNS   [dns.Count]netip.Addr
}

// Dataplane is a data plane the controller has heard from.
type Dataplane struct {
	ID           string
	Version      string
	Listen       string
	RegisteredAt time.Time // zero if it never called RegisterDataplane
	LastContact  time.Time
}

// Controller is safe for concurrent use.
type Controller struct {
	pool    *pool.Pool
	table   *table.Table
	route   netip.Addr
	dns     [dns.Count]netip.Addr
	version string
	log     *slog.Logger
	now     func() time.Time

	// mu makes a pool change and its table change one step, so a release
	// racing an allocation for the same session cannot leave a row without
	// a lease or a lease without a row. Reads of the table need no mu.
	mu sync.Mutex

	dpMu       sync.Mutex
	dataplanes map[string]*Dataplane
}

// New validates cfg and returns a Controller with an empty pool.
func New(cfg Config) (*Controller, error) {
	p, err := pool.New(cfg.Pool)
	if err != nil {
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
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	version := cfg.Version
	if version == "" {
		version = "dev"
	}
	return &Controller{
		pool:       p,
		table:      table.New(),
		route:      route,
		dns:        servers,
		version:    version,
		log:        log,
		now:        now,
		dataplanes: make(map[string]*Dataplane),
	}, nil
}

// Version returns the controller's software version.
func (c *Controller) Version() string { return c.version }

// RegisterDataplane records a data plane (again, harmlessly, on every call)
// and returns the pool settings it needs for its TUN.
func (c *Controller) RegisterDataplane(ctx context.Context, id, version, listen string) (Registration, error) {
	if err := ctx.Err(); err != nil {
		return Registration{}, err
	}
	if err := checkID("dataplane id", id); err != nil {
		return Registration{}, err
	}
	now := c.now()
	c.dpMu.Lock()
	dp, known := c.dataplanes[id]
	if !known {
		dp = &Dataplane{ID: id}
		c.dataplanes[id] = dp
	}
	dp.Version = clip(version)
	dp.Listen = clip(listen)
	dp.RegisteredAt = now
	dp.LastContact = now
	c.dpMu.Unlock()

	// A data plane that restarted may leave leases behind; showing how many
	// it still holds makes that visible to the operator.
	held := len(c.table.List(Filter{DataplaneID: id}))
	c.log.Info("data plane registered", "dataplane", id, "version", clip(version),
		"listen", clip(listen), "known", known, "leases", held)
	return Registration{Gateway: c.pool.Gateway(), Prefix: c.pool.Prefix(), ControllerVersion: c.version}, nil
}

// Allocate leases an address to one client session. It is idempotent per
// (dataplaneID, sessionID): a retry returns the same lease, LeasedAt
// included. On a full pool the error matches pool.ErrExhausted.
func (c *Controller) Allocate(ctx context.Context, dataplaneID, sessionID string, clientIPv6 netip.Addr, clientPort uint16) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	if err := checkID("dataplane id", dataplaneID); err != nil {
		return Lease{}, err
	}
	if err := checkID("session id", sessionID); err != nil {
		return Lease{}, err
	}
	if !clientIPv6.IsValid() {
		return Lease{}, invalid("client IPv6 address is missing")
	}
	if clientIPv6.Is4() {
		return Lease{}, invalid("client address %s is not an IPv6 address", clientIPv6)
	}
	c.touch(dataplaneID)
	owner := pool.Owner{Dataplane: dataplaneID, Session: sessionID}

	c.mu.Lock()
	addr, fresh, err := c.pool.Allocate(owner)
	if err != nil {
		c.mu.Unlock()
		if errors.Is(err, pool.ErrExhausted) {
			c.log.Warn("address pool exhausted", "dataplane", dataplaneID, "session", sessionID,
				"client", netip.AddrPortFrom(clientIPv6, clientPort), "error", err)
		}
		return Lease{}, err
	}
	var leasedAt time.Time
	if fresh {
		leasedAt = c.now()
		c.table.Insert(table.Row{
			Addr:        addr,
			ClientIPv6:  clientIPv6,
			ClientPort:  clientPort,
			DataplaneID: dataplaneID,
			SessionID:   sessionID,
			LeasedAt:    leasedAt,
			ConnectedAt: leasedAt, // until the data plane reports its own
			LastHeard:   leasedAt, // the 100 that caused this was just heard
		})
	} else if row, ok := c.table.Get(addr); ok {
		leasedAt = row.LeasedAt
	}
	c.mu.Unlock()

	if fresh {
		c.log.Info("lease", "address", addr, "dataplane", dataplaneID, "session", sessionID,
			"client", netip.AddrPortFrom(clientIPv6, clientPort))
	} else {
		c.log.Debug("lease repeated", "address", addr, "dataplane", dataplaneID, "session", sessionID)
	}
	return Lease{
		Addr:        addr,
		Route:       c.route,
		DNS:         c.dns,
		DataplaneID: dataplaneID,
		SessionID:   sessionID,
		LeasedAt:    leasedAt,
	}, nil
}

// Release returns addr to the pool if that session holds it, and reports
// whether it did. Anything else (a duplicate or stale release) is a no-op.
func (c *Controller) Release(ctx context.Context, dataplaneID, sessionID string, addr netip.Addr, reason string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := checkID("dataplane id", dataplaneID); err != nil {
		return false, err
	}
	if err := checkID("session id", sessionID); err != nil {
		return false, err
	}
	if err := checkIPv4(addr); err != nil {
		return false, err
	}
	c.touch(dataplaneID)

	c.mu.Lock()
	row, _ := c.table.Get(addr)
	released := c.pool.Release(addr, pool.Owner{Dataplane: dataplaneID, Session: sessionID})
	if released {
		c.table.Delete(addr, dataplaneID, sessionID)
	}
	c.mu.Unlock()

	if !released {
		c.log.Debug("release ignored: not held by this session", "address", addr,
			"dataplane", dataplaneID, "session", sessionID, "reason", clip(reason))
		return false, nil
	}
	c.log.Info("release", "address", addr, "dataplane", dataplaneID, "session", sessionID,
		"client", netip.AddrPortFrom(row.ClientIPv6, row.ClientPort), "reason", clip(reason),
		"held", c.now().Sub(row.LeasedAt).Round(time.Second))
	return true, nil
}

// Report applies a data plane's session reports to the client table and
// returns the ids of reported sessions that hold no lease here (or hold a
// different address than the data plane thinks), so the data plane can
// act on them.
func (c *Controller) Report(ctx context.Context, dataplaneID string, reports []SessionReport) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkID("dataplane id", dataplaneID); err != nil {
		return nil, err
	}
	for i, r := range reports {
		if err := checkID("session id", r.SessionID); err != nil {
			return nil, invalid("report %d: %v", i, err)
		}
		if r.Addr.IsValid() && !r.Addr.Is4() {
			return nil, invalid("report %d (session %s): address %s is not an IPv4 address", i, r.SessionID, r.Addr)
		}
		if r.ClientIPv6.IsValid() && r.ClientIPv6.Is4() {
			return nil, invalid("report %d (session %s): client address %s is not an IPv6 address", i, r.SessionID, r.ClientIPv6)
		}
	}
	c.touch(dataplaneID)

	var unknown []string
	c.mu.Lock()
	for _, r := range reports {
		addr, ok := c.pool.Lookup(pool.Owner{Dataplane: dataplaneID, Session: r.SessionID})
		if !ok || (r.Addr.IsValid() && r.Addr != addr) {
			unknown = append(unknown, r.SessionID)
			continue
		}
		c.table.Update(addr, dataplaneID, r.SessionID, table.Update{
			ClientIPv6:  r.ClientIPv6,
			ClientPort:  r.ClientPort,
			ConnectedAt: r.ConnectedAt,
			LastHeard:   r.LastHeard,
			Counters:    r.Counters,
		})
	}
	c.mu.Unlock()
	if len(unknown) > 0 {
		c.log.Debug("report names sessions without a lease", "dataplane", dataplaneID, "sessions", len(unknown))
	}
	return unknown, nil
}

// Clients returns the client table, sorted by address.
func (c *Controller) Clients(ctx context.Context, f Filter) ([]Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return c.table.List(f), nil
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
	row, ok := c.table.Get(addr)
	if !ok {
		return Client{}, &kindError{kind: ErrNotFound, msg: fmt.Sprintf("no client holds %s", addr)}
	}
	return row, nil
}

// PoolInfo describes the pool and its use.
func (c *Controller) PoolInfo() PoolInfo {
	return PoolInfo{Stats: c.pool.Stats(), Route: c.route, DNS: c.dns}
}

// Dataplanes returns the data planes heard from, sorted by id.
func (c *Controller) Dataplanes() []Dataplane {
	c.dpMu.Lock()
	out := make([]Dataplane, 0, len(c.dataplanes))
	for _, dp := range c.dataplanes {
		out = append(out, *dp)
	}
	c.dpMu.Unlock()
	slices.SortFunc(out, func(a, b Dataplane) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// touch notes that a data plane was heard from. A data plane that leases
// before registering (say, after a controller restart) is recorded too.
func (c *Controller) touch(id string) {
	now := c.now()
	c.dpMu.Lock()
	defer c.dpMu.Unlock()
	dp, ok := c.dataplanes[id]
	if !ok {
		dp = &Dataplane{ID: id}
		c.dataplanes[id] = dp
	}
	dp.LastContact = now
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
