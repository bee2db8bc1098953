package pool

import (
	"errors"
	"fmt"
	"net/netip"
)

// Limits bound how many leases one client may hold at once, across every
// data plane (the index sees them all): per client IPv6 address, and per
// prefix of PrefixLen bits (a site). Zero fields are unlimited. A client's
// reservation is exempt: a reserved client always gets its address, and
// leases held by any means (reservations, leases adopted from reports)
// count.
type Limits struct {
	PerIP     int
	PerPrefix int
	// PrefixLen is the length of the prefixes PerPrefix counts, 1 to 128;
	// 0 means DefaultLimitPrefixLen.
	PrefixLen int
}

// DefaultLimitPrefixLen is the prefix length PerPrefix counts by default: a
// /64 is one IPv6 subnet, usually one site.
const DefaultLimitPrefixLen = 64

// LimitKind names the limit a LimitError hit.
type LimitKind uint8

const (
	LimitIP     LimitKind = iota + 1 // Limits.PerIP
	LimitPrefix                      // Limits.PerPrefix
)

// String is the kind's name in metrics labels and the API's error
// metadata: "ip" or "prefix".
func (k LimitKind) String() string {
	switch k {
	case LimitIP:
		return "ip"
	case LimitPrefix:
		return "prefix"
	}
	return "unknown"
}

// ErrLimit is matched (errors.Is) by the error Acquire returns when the
// client holds as many leases as Limits allow.
var ErrLimit = errors.New("lease limit reached")

// LimitError is the detailed form of ErrLimit.
type LimitError struct {
	Kind LimitKind
	Max  int
	// Client is what was counted: the client's address (a /128) for
	// LimitIP, its prefix for LimitPrefix.
	Client netip.Prefix
}

func (e *LimitError) Error() string {
	if e.Kind == LimitPrefix {
		return fmt.Sprintf("clients in %s hold %d leases, the most one prefix may (--max-leases-per-prefix)", e.Client, e.Max)
	}
	return fmt.Sprintf("client %s holds %d leases, the most one IPv6 address may (--max-leases-per-ip)", e.Client.Addr(), e.Max)
}

// Unwrap lets errors.Is(err, ErrLimit) match.
func (e *LimitError) Unwrap() error { return ErrLimit }

// clientKeys are the keys one client is counted under.
type clientKeys struct {
	ip     netip.Addr
	prefix netip.Prefix
	ok     bool
}

// keysLocked returns the counting keys of client (ok is false for an unset
// or non-IPv6 client, which is not counted).
func (x *Index) keysLocked(client netip.Addr) clientKeys {
	if !client.IsValid() {
		return clientKeys{}
	}
	client = client.Unmap().WithZone("")
	if !client.Is6() {
		return clientKeys{}
	}
	p, _ := client.Prefix(x.limits.PrefixLen)
	return clientKeys{ip: client, prefix: p, ok: true}
}

// countLocked adds d to the counts of client.
func (x *Index) countLocked(client netip.Addr, d int) {
	k := x.keysLocked(client)
	if !k.ok {
		return
	}
	if n := x.byIP[k.ip] + d; n > 0 {
		x.byIP[k.ip] = n
	} else {
		delete(x.byIP, k.ip)
	}
	if n := x.byPrefix[k.prefix] + d; n > 0 {
		x.byPrefix[k.prefix] = n
	} else {
		delete(x.byPrefix, k.prefix)
	}
}

// limitLocked returns the LimitError a new lease for client would hit.
func (x *Index) limitLocked(client netip.Addr) error {
	k := x.keysLocked(client)
	if !k.ok {
		return nil
	}
	if m := x.limits.PerIP; m > 0 && x.byIP[k.ip] >= m {
		return &LimitError{Kind: LimitIP, Max: m, Client: netip.PrefixFrom(k.ip, 128)}
	}
	if m := x.limits.PerPrefix; m > 0 && x.byPrefix[k.prefix] >= m {
		return &LimitError{Kind: LimitPrefix, Max: m, Client: k.prefix}
	}
	return nil
}

// ClientLeases returns how many leases (in any phase) client and its
// prefix hold.
func (x *Index) ClientLeases(client netip.Addr) (ip, prefix int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := x.keysLocked(client)
	if !k.ok {
		return 0, 0
	}
	return x.byIP[k.ip], x.byPrefix[k.prefix]
}

// Limits returns the limits in force.
func (x *Index) Limits() Limits { return x.limits }

func checkLimits(l Limits) (Limits, error) {
	if l.PerIP < 0 || l.PerPrefix < 0 {
		return l, configErr("limits", "lease limits must be 0 (unlimited) or more, not %d and %d", l.PerIP, l.PerPrefix)
	}
	if l.PrefixLen == 0 {
		l.PrefixLen = DefaultLimitPrefixLen
	}
	if l.PrefixLen < 1 || l.PrefixLen > 128 {
		return l, configErr("limits", "lease limit prefix length %d: want 1 to 128", l.PrefixLen)
	}
	return l, nil
}
