package controller

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"time"

	"github.com/fourover6/fourover6/controlplane/dns"
	"github.com/fourover6/fourover6/controlplane/loglevel"
	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
)

// Status is the controller's view of itself.
type Status struct {
	ID        string
	Version   string
	Store     string
	Leader    bool
	LeaderID  string
	StartedAt time.Time
	// StoreErr is why the store is failing (its last write failed), when
	// the store reports that (store.Monitor does); nil otherwise.
	StoreErr error
}

// storeHealth is a store that knows whether its last write succeeded.
type storeHealth interface{ LastWriteErr() error }

// Status works on standbys too.
func (c *Controller) Status() Status {
	c.mu.RLock()
	defer c.mu.RUnlock()
	st := Status{
		ID: c.id, Version: c.version, Store: c.store.String(),
		Leader: c.term != nil, LeaderID: c.leaderID, StartedAt: c.started,
	}
	if h, ok := c.store.(storeHealth); ok {
		st.StoreErr = h.LastWriteErr()
	}
	return st
}

// Reservation binds a client IPv6 address (a /128) or prefix to an IPv4
// address.
type Reservation = pool.Reservation

// ParseClient parses a reservation's client: an IPv6 address (a /128) or
// prefix with its host bits clear.
func ParseClient(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
			return netip.Prefix{}, invalid("client %q: want an IPv6 address or prefix, e.g. fd00:46::2 or fd00:46::/64", clip(s))
		}
		if p.Masked() != p {
			return netip.Prefix{}, invalid("client %s has host bits set: did you mean %s?", p, p.Masked())
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
		return netip.Prefix{}, invalid("client %q: want an IPv6 address or prefix, e.g. fd00:46::2 or fd00:46::/64", clip(s))
	}
	return netip.PrefixFrom(a, 128), nil
}

// Reservations lists the reservations.
func (c *Controller) Reservations(ctx context.Context) ([]Reservation, error) {
	t, err := c.active()
	if err != nil {
		return nil, err
	}
	return t.idx.Reservations(), nil
}

// SetReservation binds r.Client to r.Addr, replacing the client's previous
// binding. It is refused when the address is reserved for another client,
// is outside the client range, or is leased right now to a client the
// reservation does not cover (kick that client first).
func (c *Controller) SetReservation(ctx context.Context, r Reservation) (changed bool, err error) {
	t, err := c.active()
	if err != nil {
		return false, err
	}
	t.smu.Lock() // one settings change at a time
	defer t.smu.Unlock()
	if err := t.idx.CheckReservation(r); err != nil {
		return false, invalid("reservation %s -> %s: %v", r.Client, r.Addr, err)
	}
	if l, ok := t.idx.Lease(r.Addr); ok && !r.Client.Contains(l.ClientIPv6) {
		return false, precondition("%s is leased to %s (%s on %s), which the reservation for %s does not cover: kick it first",
			r.Addr, l.ClientIPv6, l.Session, l.Dataplane, r.Client)
	}
	changed, err = c.store.PutReservation(ctx, store.Reservation{Client: r.Client, Addr: r.Addr})
	if err != nil {
		return false, c.storeErr("set reservation", err)
	}
	if err := t.idx.SetReservation(r, c.now()); err != nil {
		return false, invalid("reservation %s -> %s: %v", r.Client, r.Addr, err)
	}
	if changed {
		c.log.Info("reservation set", "client", r.Client, "address", r.Addr)
	}
	return changed, nil
}

// DeleteReservation removes the binding of client.
func (c *Controller) DeleteReservation(ctx context.Context, client netip.Prefix) (bool, error) {
	t, err := c.active()
	if err != nil {
		return false, err
	}
	t.smu.Lock()
	defer t.smu.Unlock()
	deleted, err := c.store.DeleteReservation(ctx, client)
	if err != nil {
		return false, c.storeErr("delete reservation", err)
	}
	if a, ok := t.idx.DeleteReservation(client, c.now()); ok {
		deleted = true
		c.log.Info("reservation deleted", "client", client, "address", a)
	}
	return deleted, nil
}

// DNS returns the three servers of every 101.
func (c *Controller) DNS(ctx context.Context) ([dns.Count]netip.Addr, error) {
	t, err := c.active()
	if err != nil {
		return [dns.Count]netip.Addr{}, err
	}
	return t.dnsServers(), nil
}

// SetDNS replaces the DNS servers (one to three IPv4 addresses, padded as
// at startup) durably; new leases carry them.
func (c *Controller) SetDNS(ctx context.Context, servers []netip.Addr) ([dns.Count]netip.Addr, bool, error) {
	var out [dns.Count]netip.Addr
	if len(servers) == 0 {
		return out, false, invalid("no DNS server given: want one to three IPv4 addresses")
	}
	res, err := dns.Servers(servers, "", nil)
	if err != nil {
		return out, false, invalid("%v", err)
	}
	t, err := c.active()
	if err != nil {
		return out, false, err
	}
	t.smu.Lock()
	defer t.smu.Unlock()
	if res.Servers == t.dnsServers() {
		return res.Servers, false, nil
	}
	set := t.settings
	set.DNS = res.Servers[:]
	if err := c.store.PutSettings(ctx, set); err != nil {
		return out, false, c.storeErr("set DNS", err)
	}
	t.settings = set
	t.dnsStored = res.Servers != c.flagDNS
	t.dns.Store(&res.Servers)
	c.log.Info("DNS servers set", "dns", joinAddrs(res.Servers[:]))
	return res.Servers, true, nil
}

// UpdatePool changes the client range within the pool prefix (the zero
// Range is the whole prefix). It is refused when a leased or reserved
// address would fall outside.
func (c *Controller) UpdatePool(ctx context.Context, r pool.Range) (PoolInfo, bool, error) {
	t, err := c.active()
	if err != nil {
		return PoolInfo{}, false, err
	}
	t.smu.Lock()
	defer t.smu.Unlock()
	old := t.idx.Range()
	changed, err := t.idx.SetRange(r)
	if err != nil {
		if errors.Is(err, pool.ErrInUse) {
			return PoolInfo{}, false, precondition("%v", err)
		}
		return PoolInfo{}, false, invalid("%v", err)
	}
	set := t.settings
	if r.IsZero() {
		set.RangeFirst, set.RangeLast, set.WholePrefix = netip.Addr{}, netip.Addr{}, true
	} else {
		set.RangeFirst, set.RangeLast, set.WholePrefix = r.First, r.Last, false
	}
	prev := t.settings
	if changed || set.RangeFirst != prev.RangeFirst || set.RangeLast != prev.RangeLast || set.WholePrefix != prev.WholePrefix {
		if err := c.store.PutSettings(ctx, set); err != nil {
			if changed {
				t.idx.SetRange(old) // nothing moved in between: smu is held
			}
			return PoolInfo{}, false, c.storeErr("update pool", err)
		}
		t.settings = set
	}
	t.rangeStored = r != c.poolCfg.Range
	if changed {
		c.log.Info("pool range changed", "from", old.String(), "to", t.idx.Range().String())
	}
	return PoolInfo{Stats: t.idx.Stats(), Route: c.route, DNS: t.dnsServers()}, changed, nil
}

// SetLogLevel changes the log level ("debug", "info", "warn", "error") and
// returns the previous one. It works on standbys too.
func (c *Controller) SetLogLevel(level string) (string, error) {
	l, err := loglevel.Parse(level)
	if err != nil {
		return "", invalid("%v", err)
	}
	prev := c.level.Level()
	c.level.Set(l)
	c.log.Info("log level changed", "from", loglevel.Name(prev), "to", loglevel.Name(l))
	return loglevel.Name(prev), nil
}
