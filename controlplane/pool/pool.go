// Package pool is the controller's lease index: one IPv4 pool (a prefix
// whose first host address is the gateway, the data planes' TUN address,
// and whose other host addresses, or a narrower range of them, are leased
// to clients) and every lease in it, for one leadership term. The store
// (controlplane/store) is its durable copy; the index is rebuilt from the
// store whenever a controller starts leading.
//
// What the index decides:
//
//   - Which address a new session gets: its client's reservation, if it has
//     one; else the address the client (its IPv6 address) held last, if
//     that is free (sticky addresses: a client that reconnects after a
//     data-plane restart or a kick keeps its address, and so the
//     connections inside its tunnel); else the least recently used free
//     address: never-used ones in address order first, then released ones
//     oldest release first, so an address that was just freed is the last
//     one a newcomer gets. A late packet for a departed client is less
//     likely to reach a newcomer, and a remembered address goes to someone
//     else only when nothing older is free.
//   - Reuse cooldown: as reuse is least recently used first (the release
//     times are kept in the store, so the order survives restarts), an
//     address is only handed to another client when every address released
//     after it is in use too. An address still within its cooldown is
//     therefore handed out only when nothing else is free; Grant.EarlyReuse
//     says so, for the log. Refusing it instead would turn a busy pool into
//     a full one. The cooldown does not apply to the address's own last
//     holder: giving it back is the point.
//   - Reservations bind a client IPv6 address or prefix to one address: a
//     reserved address goes to no one else, remembered or not; the most
//     specific reservation matching a client wins, and a client with a
//     free reservation gets it rather than its remembered address.
//
// Every lease belongs to an Owner (data plane + session): an owner holds at
// most one address, and asking again returns the same one, so a data plane
// may retry an allocation after a lost reply without leaking addresses.
//
// The index does no I/O. It chooses candidates that the caller then claims
// in the store (Acquire, then Commit or Abort), and it drops a lease only
// after the caller released it in the store (BeginRelease, then EndRelease
// or CancelRelease); see Index for the rules.
package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ErrExhausted is matched (errors.Is) by the error Acquire (and so the
// controller's Allocate) returns when no address is free.
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

// Stats is a snapshot of the pool's use, all counted within the client
// range. Reserved counts every reservation there, in use or not, and
// ReservedInUse those of them leased right now, so a reserved address in
// use counts in both Leased and Reserved: Size = Leased + Free + Reserved -
// ReservedInUse.
type Stats struct {
	Prefix        netip.Prefix
	Gateway       netip.Addr
	First, Last   netip.Addr
	Size          uint32
	Leased        uint32
	Free          uint32 // neither leased nor reserved: for clients without a reservation
	Reserved      uint32 // reserved addresses, leased or not
	ReservedInUse uint32 // of Reserved, those leased
	// FreeRemembered: free addresses whose last holder is remembered (a
	// returning client gets its own back). Free - FreeRemembered were
	// never used, or their holder is forgotten.
	FreeRemembered uint32
}

// checkRange validates r against the prefix; the zero Range is every host
// address but the gateway.
func (x *Index) checkRange(r Range) (first, last uint32, err error) {
	if r.IsZero() {
		return x.defFirst, x.defLast, nil
	}
	if !r.First.Is4() || !r.Last.Is4() {
		return 0, 0, configErr("range", "range %s: both ends must be IPv4 addresses", r)
	}
	a, b := u32(r.First), u32(r.Last)
	switch {
	case a > b:
		return 0, 0, configErr("range", "range %s is backwards: the first address must not come after the last", r)
	case !x.prefix.Contains(r.First):
		return 0, 0, configErr("range", "range %s: %s is outside the pool %s", r, r.First, x.prefix)
	case !x.prefix.Contains(r.Last):
		return 0, 0, configErr("range", "range %s: %s is outside the pool %s", r, r.Last, x.prefix)
	case a == x.network:
		return 0, 0, configErr("range", "range %s includes the network address %s: start at %s or later", r, r.First, addr(x.defFirst))
	case a <= x.network+1:
		return 0, 0, configErr("range", "range %s includes the gateway %s: start at %s or later", r, x.gateway, addr(x.defFirst))
	case b == x.bcast:
		return 0, 0, configErr("range", "range %s includes the broadcast address %s: end at %s or earlier", r, r.Last, addr(x.defLast))
	}
	return a, b, nil
}

// Prefix returns the pool prefix.
func (x *Index) Prefix() netip.Prefix { return x.prefix }

// Gateway returns the first host address of the prefix.
func (x *Index) Gateway() netip.Addr { return x.gateway }

// Range returns the client range in use.
func (x *Index) Range() Range {
	x.mu.Lock()
	defer x.mu.Unlock()
	return Range{First: addr(x.first), Last: addr(x.last)}
}

// IsClientAddr reports whether a is a host address of the prefix other
// than the gateway (range aside).
func (x *Index) IsClientAddr(a netip.Addr) bool {
	if !a.Is4() || !x.prefix.Contains(a) {
		return false
	}
	v := u32(a)
	return v >= x.defFirst && v <= x.defLast
}

func (x *Index) inRange(v uint32) bool { return v >= x.first && v <= x.last }

// SetRange changes the client range. It is refused when a leased or
// reserved address would fall outside; changed is false when r is the
// range in use.
func (x *Index) SetRange(r Range) (changed bool, err error) {
	first, last, err := x.checkRange(r)
	if err != nil {
		return false, err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if first == x.first && last == x.last {
		return false, nil
	}
	var out []string
	for v, e := range x.byAddr {
		if v < first || v > last {
			out = append(out, fmt.Sprintf("%s (leased to %s)", addr(v), e.lease.Owner))
		}
	}
	for v, c := range x.reserved {
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
	x.first, x.last, x.free.cursor = first, last, uint64(first)
	x.recountHoldersLocked()
	return true, nil
}

// RestoreRange sets the range without checking leases (at load, before
// leases are added).
func (x *Index) RestoreRange(r Range) error {
	first, last, err := x.checkRange(r)
	if err != nil {
		return err
	}
	x.mu.Lock()
	x.first, x.last, x.free.cursor = first, last, uint64(first)
	x.recountHoldersLocked()
	x.mu.Unlock()
	return nil
}

// Stats returns a snapshot of the pool's use. Addresses being claimed or
// released count as leased.
func (x *Index) Stats() Stats {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.statsLocked()
}

func (x *Index) statsLocked() Stats {
	size := x.last - x.first + 1
	var leased, reserved uint32
	remembered := x.holdersIn // less those held (claiming) or reserved
	for v := range x.byAddr {
		if x.inRange(v) {
			leased++
			if _, ok := x.holders[v]; ok {
				remembered--
			}
		}
	}
	var inUse uint32
	for v := range x.reserved {
		if !x.inRange(v) {
			continue
		}
		reserved++
		if _, h := x.byAddr[v]; h {
			inUse++
		} else if _, ok := x.holders[v]; ok {
			remembered--
		}
	}
	return Stats{
		Prefix:        x.prefix,
		Gateway:       x.gateway,
		First:         addr(x.first),
		Last:          addr(x.last),
		Size:          size,
		Leased:        leased,
		Reserved:      reserved,
		ReservedInUse: inUse,
		Free:          size - leased - (reserved - inUse),

		FreeRemembered: uint32(remembered),
	}
}

func (x *Index) exhaustedLocked() error {
	st := x.statsLocked()
	return &ExhaustedError{
		Prefix: x.prefix, First: addr(x.first), Last: addr(x.last),
		Narrowed: x.first != x.defFirst || x.last != x.defLast,
		Leased:   st.Size - st.Free, Size: st.Size,
	}
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
