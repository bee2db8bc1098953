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
// The pool keeps its state in memory behind one mutex. Durability,
// reservations and a reuse cooldown (issue 4) are meant to slot in behind the
// same methods: the free queue is the one place that decides which address
// comes next.
package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
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

// ConfigError is a configuration mistake. Field is "prefix" or "range" so a
// caller can name its own flag or setting in the message.
type ConfigError struct {
	Field string
	Msg   string
}

func (e *ConfigError) Error() string { return e.Msg }

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

// Stats is a snapshot of the pool's use. Size = Leased + Free + Reserved.
type Stats struct {
	Prefix      netip.Prefix
	Gateway     netip.Addr
	First, Last netip.Addr
	Size        uint32
	Leased      uint32
	Free        uint32
	Reserved    uint32 // always 0 until reservations exist (issue 4)
}

// Pool is safe for concurrent use.
type Pool struct {
	prefix        netip.Prefix
	gateway       netip.Addr
	first, last   uint32 // client range, inclusive
	size          uint32
	narrowed      bool
	firstA, lastA netip.Addr
	mu            sync.Mutex
	next          uint64   // next never-leased address; > last when all were handed out once
	released      []uint32 // freed addresses, oldest first: the back of the free queue
	byOwner       map[Owner]uint32
	byAddr        map[uint32]Owner
}

// New validates cfg and returns an empty pool.
func New(cfg Config) (*Pool, error) {
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
	gateway := network + 1
	first, last := gateway+1, broadcast-1

	r := cfg.Range
	narrowed := false
	if !r.IsZero() {
		if !r.First.Is4() || !r.Last.Is4() {
			return nil, configErr("range", "range %s: both ends must be IPv4 addresses", r)
		}
		a, b := u32(r.First), u32(r.Last)
		switch {
		case a > b:
			return nil, configErr("range", "range %s is backwards: the first address must not come after the last", r)
		case !p.Contains(r.First):
			return nil, configErr("range", "range %s: %s is outside the pool %s", r, r.First, p)
		case !p.Contains(r.Last):
			return nil, configErr("range", "range %s: %s is outside the pool %s", r, r.Last, p)
		case a == network:
			return nil, configErr("range", "range %s includes the network address %s: start at %s or later", r, r.First, addr(first))
		case a <= gateway:
			return nil, configErr("range", "range %s includes the gateway %s: start at %s or later", r, addr(gateway), addr(first))
		case b == broadcast:
			return nil, configErr("range", "range %s includes the broadcast address %s: end at %s or earlier", r, r.Last, addr(last))
		}
		narrowed = a != first || b != last
		first, last = a, b
	}
	return &Pool{
		prefix:   p,
		gateway:  addr(gateway),
		first:    first,
		last:     last,
		firstA:   addr(first),
		lastA:    addr(last),
		size:     last - first + 1,
		narrowed: narrowed,
		next:     uint64(first),
		byOwner:  make(map[Owner]uint32),
		byAddr:   make(map[uint32]Owner),
	}, nil
}

// Prefix returns the pool prefix.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Gateway returns the first host address of the prefix.
func (p *Pool) Gateway() netip.Addr { return p.gateway }

// Range returns the client range actually in use.
func (p *Pool) Range() Range { return Range{First: p.firstA, Last: p.lastA} }

// Allocate leases an address to owner. If owner already holds one, that
// address is returned again and fresh is false.
func (p *Pool) Allocate(owner Owner) (a netip.Addr, fresh bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v, ok := p.byOwner[owner]; ok {
		return addr(v), false, nil
	}
	v, ok := p.takeFree()
	if !ok {
		return netip.Addr{}, false, &ExhaustedError{
			Prefix: p.prefix, First: p.firstA, Last: p.lastA, Narrowed: p.narrowed,
			Leased: uint32(len(p.byAddr)), Size: p.size,
		}
	}
	p.byOwner[owner] = v
	p.byAddr[v] = owner
	return addr(v), true, nil
}

// takeFree pops the front of the free queue. The queue is the never-leased
// addresses in order followed by released ones oldest first; the never-leased
// part is kept as a cursor so a large pool costs no memory until it is used.
func (p *Pool) takeFree() (uint32, bool) {
	if p.next <= uint64(p.last) {
		v := uint32(p.next)
		p.next++
		return v, true
	}
	if len(p.released) == 0 {
		return 0, false
	}
	v := p.released[0]
	p.released = p.released[1:]
	return v, true
}

// Release frees a only if owner holds it, and reports whether it did. A
// release by anyone else (a stale or duplicate release) changes nothing.
func (p *Pool) Release(a netip.Addr, owner Owner) bool {
	if !a.Is4() {
		return false
	}
	v := u32(a)
	p.mu.Lock()
	defer p.mu.Unlock()
	held, ok := p.byAddr[v]
	if !ok || held != owner {
		return false
	}
	delete(p.byAddr, v)
	delete(p.byOwner, owner)
	p.released = append(p.released, v)
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
	o, ok := p.byAddr[u32(a)]
	return o, ok
}

// Stats returns a snapshot of the pool's use.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	leased := uint32(len(p.byAddr))
	p.mu.Unlock()
	return Stats{
		Prefix:  p.prefix,
		Gateway: p.gateway,
		First:   p.firstA,
		Last:    p.lastA,
		Size:    p.size,
		Leased:  leased,
		Free:    p.size - leased,
	}
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
