// Package pool is the controller's IPv4 address space: one prefix whose first
// host address is the gateway (the data planes' TUN address) and whose other
// host addresses, or a narrower range of them, are leased to clients.
//
// Addresses are handed out in order on a fresh pool, and released addresses
// go to the back of the free queue (FIFO), so an address that was just freed
// is the last one to be reused: a late packet for a departed client is less
// likely to reach a newcomer.
//
// Every lease belongs to an Owner (data plane + session). Leasing again for
// the same owner returns the same address, so a data plane may retry an
// allocation after a lost reply without leaking addresses.
//
// Reservations bind a client IPv6 address or prefix to one address: a
// reserved address never enters the free queue, so nobody else gets it; the
// most specific reservation matching a client wins.
//
// Reuse cooldown: the queue orders released addresses by release time (the
// times are kept in the store, so the order survives restarts), so an
// address is only handed out again when every address released after it is
// in use too. An address still within its cooldown is therefore handed out
// only when nothing else is free; Grant.EarlyReuse says so, for the log.
// Refusing it instead would turn a busy pool into a full one.
//
// The pool is the controller's in-memory index of its store: it chooses
// candidates (Acquire) that the store then claims atomically (Commit or
// Abort). It keeps its state behind one mutex and does no I/O.
package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrExhausted is matched (errors.Is) by the error Allocate returns when no
// address is free.
var ErrExhausted = errors.New("address pool exhausted")

// ExhaustedError is the detailed form of ErrExhausted.
type ExhaustedError struct {
	Prefix      netip.Prefix
	First, Last netip.Addr // the client range
	Narrowed    bool       // the range is narrower than the prefix's host addresses
	Leased      uint32
	Size        uint32
}

func (e *ExhaustedError) Error() string {
	where := e.Prefix.String()
	if e.Narrowed {
		where += fmt.Sprintf(" (range %s-%s)", e.First, e.Last)
	}
	return fmt.Sprintf("address pool %s exhausted: %d of %d addresses leased", where, e.Leased, e.Size)
}

// Unwrap lets errors.Is(err, ErrExhausted) match.
func (e *ExhaustedError) Unwrap() error { return ErrExhausted }

// ErrInUse is matched (errors.Is) by the error SetRange returns when the
// new range would leave out an address that is leased or reserved: the
// request conflicts with the pool's state rather than being malformed.
var ErrInUse = errors.New("range leaves out addresses in use")

// ConfigError is a configuration mistake. Field is "prefix" or "range" so a
// caller can name its own flag or setting in the message.
type ConfigError struct {
	Field string
	Msg   string
	Err   error // a sentinel the error matches (ErrInUse), or nil
}

func (e *ConfigError) Error() string { return e.Msg }

// Unwrap lets errors.Is(err, ErrInUse) match.
func (e *ConfigError) Unwrap() error { return e.Err }

func configErr(field, format string, args ...any) error {
	return &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Range is an inclusive span of client addresses. The zero Range means "all
// host addresses of the prefix except the gateway".
type Range struct {
	First, Last netip.Addr
}

// IsZero reports whether r is unset.
func (r Range) IsZero() bool { return !r.First.IsValid() && !r.Last.IsValid() }

func (r Range) String() string {
	if r.IsZero() {
		return ""
	}
	return r.First.String() + "-" + r.Last.String()
}

// ParseRange parses "FIRST-LAST", e.g. "13.8.0.2-13.8.0.128". An empty string
// gives the zero Range.
func ParseRange(s string) (Range, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Range{}, nil
	}
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return Range{}, configErr("range", "%q: want FIRST-LAST, e.g. 13.8.0.2-13.8.0.128", s)
	}
	first, err1 := netip.ParseAddr(strings.TrimSpace(a))
	last, err2 := netip.ParseAddr(strings.TrimSpace(b))
	if err1 != nil || err2 != nil || !first.Is4() || !last.Is4() {
		return Range{}, configErr("range", "%q: both ends must be IPv4 addresses, e.g. 13.8.0.2-13.8.0.128", s)
	}
	return Range{First: first, Last: last}, nil
}

// Config describes a pool.
type Config struct {
	// Prefix is the whole pool, e.g. 13.8.0.0/24. Its first host address is
	// the gateway.
	Prefix netip.Prefix
	// Range optionally narrows the client addresses.
	Range Range
}

// DefaultPrefix is the lab's pool.
var DefaultPrefix = netip.MustParsePrefix("13.8.0.0/24")

// Owner identifies who holds a lease: one client session on one data plane.
type Owner struct {
	Dataplane string
	Session   string
}

// Stats is a snapshot of the pool's use. Size = Leased + Free + Reserved,
// all counted within the client range.
type Stats struct {
	Prefix      netip.Prefix
	Gateway     netip.Addr
	First, Last netip.Addr
	Size        uint32
	Leased      uint32
	Free        uint32
	Reserved    uint32 // reserved addresses not leased right now
}

// Reservation binds a client IPv6 address (a /128) or prefix to an address.
type Reservation struct {
	Client netip.Prefix
	Addr   netip.Addr
}

// Grant is what Acquire chose.
type Grant struct {
	Addr netip.Addr
	// Existing: the owner already held (or was being given) Addr.
	Existing bool
	// Reserved: Addr is the client's reservation.
	Reserved bool
	// ReservationBusy: the client has a reservation, but its address is
	// held by another session; Addr is an ordinary one.
	ReservationBusy bool
	// EarlyReuse: Addr was released less than the cooldown ago; nothing
	// else was free.
	EarlyReuse bool
}

type queued struct {
	v  uint32
	at time.Time
}

// Pool is safe for concurrent use.
type Pool struct {
	prefix            netip.Prefix
	gateway           netip.Addr
	network, bcast    uint32
	defFirst, defLast uint32 // all hosts but the gateway
	cooldown          time.Duration

	mu       sync.Mutex
	first    uint32 // client range, inclusive
	last     uint32
	cursor   uint64   // next address never released; > last when all were seen
	queue    []queued // released addresses, oldest first; stale entries skipped
	inQueue  map[uint32]time.Time
	held     map[uint32]Owner // leased or being leased
	pending  map[uint32]bool  // being leased: chosen, not yet committed
	byOwner  map[Owner]uint32
	reserved map[uint32]netip.Prefix
	byClient map[netip.Prefix]uint32
}

// Options are the pool's tunables.
type Options struct {
	// Cooldown: how long a released address rests before it is reused
	// (when anything else is free).
	Cooldown time.Duration
}

// New validates cfg and returns an empty pool.
func New(cfg Config, opts ...Options) (*Pool, error) {
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
	pl := &Pool{
		prefix:   p,
		gateway:  addr(network + 1),
		network:  network,
		bcast:    broadcast,
		defFirst: network + 2,
		defLast:  broadcast - 1,
		inQueue:  make(map[uint32]time.Time),
		held:     make(map[uint32]Owner),
		pending:  make(map[uint32]bool),
		byOwner:  make(map[Owner]uint32),
		reserved: make(map[uint32]netip.Prefix),
		byClient: make(map[netip.Prefix]uint32),
	}
	for _, o := range opts {
		pl.cooldown = o.Cooldown
	}
	first, last, err := pl.checkRange(cfg.Range)
	if err != nil {
		return nil, err
	}
	pl.first, pl.last, pl.cursor = first, last, uint64(first)
	return pl, nil
}

// checkRange validates r against the prefix; the zero Range is every host
// address but the gateway.
func (p *Pool) checkRange(r Range) (first, last uint32, err error) {
	if r.IsZero() {
		return p.defFirst, p.defLast, nil
	}
	if !r.First.Is4() || !r.Last.Is4() {
		return 0, 0, configErr("range", "range %s: both ends must be IPv4 addresses", r)
	}
	a, b := u32(r.First), u32(r.Last)
	switch {
	case a > b:
		return 0, 0, configErr("range", "range %s is backwards: the first address must not come after the last", r)
	case !p.prefix.Contains(r.First):
		return 0, 0, configErr("range", "range %s: %s is outside the pool %s", r, r.First, p.prefix)
	case !p.prefix.Contains(r.Last):
		return 0, 0, configErr("range", "range %s: %s is outside the pool %s", r, r.Last, p.prefix)
	case a == p.network:
		return 0, 0, configErr("range", "range %s includes the network address %s: start at %s or later", r, r.First, addr(p.defFirst))
	case a <= p.network+1:
		return 0, 0, configErr("range", "range %s includes the gateway %s: start at %s or later", r, p.gateway, addr(p.defFirst))
	case b == p.bcast:
		return 0, 0, configErr("range", "range %s includes the broadcast address %s: end at %s or earlier", r, r.Last, addr(p.defLast))
	}
	return a, b, nil
}

// Prefix returns the pool prefix.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Gateway returns the first host address of the prefix.
func (p *Pool) Gateway() netip.Addr { return p.gateway }

// Range returns the client range in use.
func (p *Pool) Range() Range {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Range{First: addr(p.first), Last: addr(p.last)}
}

// Narrowed reports whether the range is narrower than the prefix's hosts.
func (p *Pool) Narrowed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.first != p.defFirst || p.last != p.defLast
}

// IsClientAddr reports whether a is a host address of the prefix other
// than the gateway (range aside).
func (p *Pool) IsClientAddr(a netip.Addr) bool {
	if !a.Is4() || !p.prefix.Contains(a) {
		return false
	}
	v := u32(a)
	return v >= p.defFirst && v <= p.defLast
}

func (p *Pool) inRange(v uint32) bool { return v >= p.first && v <= p.last }

func (p *Pool) free(v uint32) bool {
	_, h := p.held[v]
	_, r := p.reserved[v]
	return !h && !r && p.inRange(v)
}

// Acquire chooses an address for owner, whose client has IPv6 address
// client (may be unset), and marks it as being leased. Commit or Abort it
// once the store has answered. An owner that holds an address gets it
// again (Existing). On a full pool the error matches ErrExhausted.
func (p *Pool) Acquire(owner Owner, client netip.Addr, now time.Time) (Grant, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v, ok := p.byOwner[owner]; ok {
		_, r := p.reserved[v]
		return Grant{Addr: addr(v), Existing: true, Reserved: r}, nil
	}
	var g Grant
	if client.IsValid() {
		if v, ok := p.matchLocked(client); ok {
			if _, busy := p.held[v]; !busy {
				p.holdLocked(v, owner, true)
				return Grant{Addr: addr(v), Reserved: true}, nil
			}
			g.ReservationBusy = true
		}
	}
	v, at, ok := p.takeLocked()
	if !ok {
		return Grant{}, p.exhaustedLocked()
	}
	p.holdLocked(v, owner, true)
	g.Addr = addr(v)
	g.EarlyReuse = !at.IsZero() && p.cooldown > 0 && now.Sub(at) < p.cooldown
	return g, nil
}

func (p *Pool) holdLocked(v uint32, owner Owner, pending bool) {
	p.held[v] = owner
	p.byOwner[owner] = v
	if pending {
		p.pending[v] = true
	}
}

// takeLocked pops the front of the free queue: the never-released
// addresses in order, then released ones oldest first. The never-released
// part is a cursor, so a large pool costs no memory until it is used.
func (p *Pool) takeLocked() (uint32, time.Time, bool) {
	for p.cursor <= uint64(p.last) {
		v := uint32(p.cursor)
		p.cursor++
		if _, q := p.inQueue[v]; !q && p.free(v) {
			return v, time.Time{}, true
		}
	}
	for len(p.queue) > 0 {
		e := p.queue[0]
		p.queue = p.queue[1:]
		if at, ok := p.inQueue[e.v]; !ok || !at.Equal(e.at) {
			continue // stale: queued again later, or taken
		}
		delete(p.inQueue, e.v)
		if p.free(e.v) {
			return e.v, e.at, true
		}
	}
	return 0, time.Time{}, false
}

func (p *Pool) exhaustedLocked() error {
	st := p.statsLocked()
	return &ExhaustedError{
		Prefix: p.prefix, First: addr(p.first), Last: addr(p.last),
		Narrowed: p.first != p.defFirst || p.last != p.defLast,
		Leased:   st.Leased + st.Reserved, Size: st.Size,
	}
}

// Commit marks a granted address as leased.
func (p *Pool) Commit(owner Owner, a netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := u32(a)
	if p.held[v] == owner {
		delete(p.pending, v)
	}
}

// Abort undoes a grant whose claim failed: the address goes back to the
// front of the queue.
func (p *Pool) Abort(owner Owner, a netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := u32(a)
	if p.held[v] != owner || !p.pending[v] {
		return
	}
	delete(p.held, v)
	delete(p.pending, v)
	delete(p.byOwner, owner)
	if _, r := p.reserved[v]; !r {
		at := time.Time{}.Add(time.Duration(len(p.queue))) // unique, oldest
		p.inQueue[v] = at
		p.queue = append([]queued{{v, at}}, p.queue...)
	}
}

// Allocate leases an address to owner at once (Acquire and Commit), for
// callers without a store. fresh is false when owner held it already.
func (p *Pool) Allocate(owner Owner) (a netip.Addr, fresh bool, err error) {
	g, err := p.Acquire(owner, netip.Addr{}, time.Now())
	if err != nil {
		return netip.Addr{}, false, err
	}
	p.Commit(owner, g.Addr)
	return g.Addr, !g.Existing, nil
}

// Insert records an existing lease (loaded from the store, or adopted from
// a data plane's report). It fails if another owner holds the address or
// owner holds another one.
func (p *Pool) Insert(owner Owner, a netip.Addr) error {
	if !p.prefix.Contains(a) || !a.Is4() {
		return fmt.Errorf("%s is outside the pool %s", a, p.prefix)
	}
	v := u32(a)
	p.mu.Lock()
	defer p.mu.Unlock()
	if h, ok := p.held[v]; ok {
		if h == owner {
			delete(p.pending, v)
			return nil
		}
		return fmt.Errorf("%s is held by %s/%s", a, h.Dataplane, h.Session)
	}
	if w, ok := p.byOwner[owner]; ok {
		return fmt.Errorf("%s/%s holds %s already", owner.Dataplane, owner.Session, addr(w))
	}
	p.holdLocked(v, owner, false)
	return nil
}

// Released records when free addresses were released, so reuse stays in
// release order across restarts. Leased and reserved ones are ignored.
func (p *Pool) Released(times map[netip.Addr]time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var q []queued
	for a, at := range times {
		if !a.Is4() || !p.prefix.Contains(a) {
			continue
		}
		q = append(q, queued{u32(a), at})
	}
	slices.SortFunc(q, func(a, b queued) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return int(int64(a.v) - int64(b.v))
	})
	for _, e := range q {
		p.inQueue[e.v] = e.at
	}
	p.queue = append(p.queue, q...)
}

// Release frees a only if owner holds it (committed), and reports whether
// it did. A release by anyone else changes nothing.
func (p *Pool) Release(a netip.Addr, owner Owner) bool {
	return p.ReleaseAt(a, owner, time.Now())
}

// ReleaseAt is Release with the release time given.
func (p *Pool) ReleaseAt(a netip.Addr, owner Owner, at time.Time) bool {
	if !a.Is4() {
		return false
	}
	v := u32(a)
	p.mu.Lock()
	defer p.mu.Unlock()
	held, ok := p.held[v]
	if !ok || held != owner || p.pending[v] {
		return false
	}
	delete(p.held, v)
	delete(p.byOwner, owner)
	if _, r := p.reserved[v]; !r {
		p.inQueue[v] = at
		p.queue = append(p.queue, queued{v, at})
	}
	return true
}

// Lookup returns the address owner holds.
func (p *Pool) Lookup(owner Owner) (netip.Addr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, ok := p.byOwner[owner]
	if !ok {
		return netip.Addr{}, false
	}
	return addr(v), true
}

// Holder returns the owner of a leased address.
func (p *Pool) Holder(a netip.Addr) (Owner, bool) {
	if !a.Is4() {
		return Owner{}, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	o, ok := p.held[u32(a)]
	return o, ok
}

// Match returns the reservation for client: the most specific one.
func (p *Pool) Match(client netip.Addr) (Reservation, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, ok := p.matchLocked(client)
	if !ok {
		return Reservation{}, false
	}
	return Reservation{Client: p.reserved[v], Addr: addr(v)}, true
}

func (p *Pool) matchLocked(client netip.Addr) (uint32, bool) {
	if len(p.byClient) == 0 || !client.IsValid() {
		return 0, false
	}
	client = client.Unmap()
	for bits := client.BitLen(); bits >= 0; bits-- {
		pf, err := client.Prefix(bits)
		if err != nil {
			continue
		}
		if v, ok := p.byClient[pf]; ok {
			return v, true
		}
	}
	return 0, false
}

// ReservationError explains why a reservation was refused.
type ReservationError struct{ Msg string }

func (e *ReservationError) Error() string { return e.Msg }

// CheckReservation reports whether r could be set: the address must be a
// client address in the range, and not reserved for another client.
func (p *Pool) CheckReservation(r Reservation) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checkReservationLocked(r)
}

func (p *Pool) checkReservationLocked(r Reservation) error {
	if !r.Client.IsValid() || r.Client.Addr().Is4() || r.Client.Masked() != r.Client {
		return &ReservationError{fmt.Sprintf("client %s: want an IPv6 address or prefix (host bits clear)", r.Client)}
	}
	if !r.Addr.Is4() || !p.prefix.Contains(r.Addr) {
		return &ReservationError{fmt.Sprintf("%s is not an address of the pool %s", r.Addr, p.prefix)}
	}
	v := u32(r.Addr)
	if !p.inRange(v) {
		return &ReservationError{fmt.Sprintf("%s is outside the client range %s-%s", r.Addr, addr(p.first), addr(p.last))}
	}
	if c, ok := p.reserved[v]; ok && c != r.Client {
		return &ReservationError{fmt.Sprintf("%s is reserved for %s already", r.Addr, c)}
	}
	return nil
}

// SetReservation creates or replaces the reservation of r.Client.
func (p *Pool) SetReservation(r Reservation) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.checkReservationLocked(r); err != nil {
		return err
	}
	p.setReservationLocked(r)
	return nil
}

// RestoreReservation records a stored reservation without the range check
// (the range may have been narrowed by a flag since).
func (p *Pool) RestoreReservation(r Reservation) error {
	if !r.Addr.Is4() || !p.prefix.Contains(r.Addr) {
		return fmt.Errorf("reservation %s -> %s: not an address of the pool %s", r.Client, r.Addr, p.prefix)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.reserved[u32(r.Addr)]; ok && c != r.Client {
		return fmt.Errorf("reservation %s -> %s: reserved for %s already", r.Client, r.Addr, c)
	}
	p.setReservationLocked(r)
	return nil
}

func (p *Pool) setReservationLocked(r Reservation) {
	if old, ok := p.byClient[r.Client]; ok {
		p.unreserveLocked(old)
	}
	v := u32(r.Addr)
	p.reserved[v] = r.Client
	p.byClient[r.Client] = v
}

func (p *Pool) unreserveLocked(v uint32) {
	c := p.reserved[v]
	delete(p.reserved, v)
	delete(p.byClient, c)
	if _, h := p.held[v]; !h {
		at := time.Now()
		p.inQueue[v] = at
		p.queue = append(p.queue, queued{v, at})
	}
}

// DeleteReservation removes the reservation of client; its address goes
// to the back of the free queue unless leased.
func (p *Pool) DeleteReservation(client netip.Prefix) (netip.Addr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, ok := p.byClient[client]
	if !ok {
		return netip.Addr{}, false
	}
	p.unreserveLocked(v)
	return addr(v), true
}

// Reservations lists the reservations by client.
func (p *Pool) Reservations() []Reservation {
	p.mu.Lock()
	out := make([]Reservation, 0, len(p.byClient))
	for c, v := range p.byClient {
		out = append(out, Reservation{Client: c, Addr: addr(v)})
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b Reservation) int {
		if c := a.Client.Addr().Compare(b.Client.Addr()); c != 0 {
			return c
		}
		return a.Client.Bits() - b.Client.Bits()
	})
	return out
}

// SetRange changes the client range. It is refused when a leased or
// reserved address would fall outside; changed is false when r is the
// range in use.
func (p *Pool) SetRange(r Range) (changed bool, err error) {
	first, last, err := p.checkRange(r)
	if err != nil {
		return false, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if first == p.first && last == p.last {
		return false, nil
	}
	var out []string
	for v, o := range p.held {
		if v < first || v > last {
			out = append(out, fmt.Sprintf("%s (leased to %s/%s)", addr(v), o.Dataplane, o.Session))
		}
	}
	for v, c := range p.reserved {
		if v < first || v > last {
			out = append(out, fmt.Sprintf("%s (reserved for %s)", addr(v), c))
		}
	}
	if len(out) > 0 {
		slices.Sort(out)
		if len(out) > 5 {
			out = append(out[:5], fmt.Sprintf("and %d more", len(out)-5))
		}
		return false, &ConfigError{Field: "range", Err: ErrInUse,
			Msg: fmt.Sprintf("range %s-%s would leave out %s", addr(first), addr(last), strings.Join(out, ", "))}
	}
	p.first, p.last, p.cursor = first, last, uint64(first)
	return true, nil
}

// RestoreRange sets the range without checking leases (at load, before
// leases are inserted).
func (p *Pool) RestoreRange(r Range) error {
	first, last, err := p.checkRange(r)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.first, p.last, p.cursor = first, last, uint64(first)
	p.mu.Unlock()
	return nil
}

// Stats returns a snapshot of the pool's use.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.statsLocked()
}

func (p *Pool) statsLocked() Stats {
	size := p.last - p.first + 1
	var leased, reserved uint32
	for v := range p.held {
		if p.inRange(v) {
			leased++
		}
	}
	for v := range p.reserved {
		if _, h := p.held[v]; !h && p.inRange(v) {
			reserved++
		}
	}
	return Stats{
		Prefix:   p.prefix,
		Gateway:  p.gateway,
		First:    addr(p.first),
		Last:     addr(p.last),
		Size:     size,
		Leased:   leased,
		Reserved: reserved,
		Free:     size - leased - reserved,
	}
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
