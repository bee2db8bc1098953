// Package limit decides whether the data plane admits a new connection: a
// cap on clients, on connections per client IPv6 address and per prefix
// (a /64 is one subscriber), and an accept rate, both overall and per
// prefix. It keeps a flood from exhausting the pool or the file
// descriptors, and one prefix's flood from using up the overall rate that
// every other prefix needs too.
package limit

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Config holds the limits; zero means unlimited.
type Config struct {
	MaxClients        int     // open connections in all
	MaxConnsPerIP     int     // per client address
	MaxConnsPerPrefix int     // per client prefix of PrefixLen bits
	PrefixLen         int     // default 64 (IPv6), 24 for IPv4 clients
	AcceptRate        float64 // new connections per second, overall
	AcceptBurst       int
	PrefixAcceptRate  float64 // new connections per second from one prefix
	PrefixAcceptBurst int
}

// maxBuckets bounds the per-prefix rate buckets kept at once: a flood from
// more prefixes than that is held by the overall rate alone, rather than
// by memory without bound.
const maxBuckets = 65536

// sweepEvery is how often buckets that have filled up again (no
// connection from that prefix for a while: a new bucket would be the
// same) are dropped.
const sweepEvery = 10 * time.Second

// Reasons a connection is refused; they name counters and log lines.
const (
	ReasonMaxClients = "max_clients"
	ReasonPerIP      = "max_conns_per_ip"
	ReasonPerPrefix  = "max_conns_per_prefix"
	ReasonRate       = "accept_rate"
	ReasonPrefixRate = "accept_rate_per_prefix"
)

// Limiter is safe for concurrent use.
type Limiter struct {
	cfg   Config
	rate  *rate.Limiter
	mu    sync.Mutex
	total int
	byIP  map[netip.Addr]int
	byNet map[netip.Prefix]int

	buckets   map[netip.Prefix]*rate.Limiter // per-prefix accept rate
	lastSweep time.Time
}

// New returns a limiter enforcing cfg.
func New(cfg Config) *Limiter {
	if cfg.PrefixLen <= 0 {
		cfg.PrefixLen = 64
	}
	l := &Limiter{cfg: cfg, byIP: make(map[netip.Addr]int), byNet: make(map[netip.Prefix]int),
		buckets: make(map[netip.Prefix]*rate.Limiter)}
	if cfg.AcceptRate > 0 {
		l.cfg.AcceptBurst = burstOf(cfg.AcceptRate, cfg.AcceptBurst)
		l.rate = rate.NewLimiter(rate.Limit(cfg.AcceptRate), l.cfg.AcceptBurst)
	}
	if cfg.PrefixAcceptRate > 0 {
		l.cfg.PrefixAcceptBurst = burstOf(cfg.PrefixAcceptRate, cfg.PrefixAcceptBurst)
	}
	return l
}

func burstOf(r float64, burst int) int {
	if burst <= 0 {
		return max(1, int(r))
	}
	return burst
}

// Config returns the limits in force.
func (l *Limiter) Config() Config { return l.cfg }

// Admit decides on a connection from addr at time now. When admitted it
// returns a release function to call exactly once when the connection
// closes; otherwise the reason it was refused.
//
// The prefix's rate is taken first and given back when the overall rate
// refuses, so a prefix over its own rate takes nothing from the others.
func (l *Limiter) Admit(addr netip.Addr, now time.Time) (release func(), reason string) {
	addr = addr.Unmap()
	pfx := l.PrefixOf(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	var taken *rate.Reservation
	if b := l.bucketLocked(pfx, now); b != nil {
		if taken = b.ReserveN(now, 1); !taken.OK() || taken.DelayFrom(now) > 0 {
			taken.CancelAt(now)
			return nil, ReasonPrefixRate
		}
	}
	if l.rate != nil && !l.rate.AllowN(now, 1) {
		if taken != nil {
			taken.CancelAt(now)
		}
		return nil, ReasonRate
	}
	switch {
	case l.cfg.MaxClients > 0 && l.total >= l.cfg.MaxClients:
		return nil, ReasonMaxClients
	case l.cfg.MaxConnsPerIP > 0 && l.byIP[addr] >= l.cfg.MaxConnsPerIP:
		return nil, ReasonPerIP
	case l.cfg.MaxConnsPerPrefix > 0 && l.byNet[pfx] >= l.cfg.MaxConnsPerPrefix:
		return nil, ReasonPerPrefix
	}
	l.total++
	l.byIP[addr]++
	l.byNet[pfx]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.total--
			if l.byIP[addr]--; l.byIP[addr] <= 0 {
				delete(l.byIP, addr)
			}
			if l.byNet[pfx]--; l.byNet[pfx] <= 0 {
				delete(l.byNet, pfx)
			}
		})
	}, ""
}

// PrefixOf returns the client prefix addr counts in: PrefixLen bits (at
// most 24 for an IPv4 client).
func (l *Limiter) PrefixOf(addr netip.Addr) netip.Prefix {
	addr = addr.Unmap()
	bits := l.cfg.PrefixLen
	if addr.Is4() {
		bits = min(bits, 24)
	}
	pfx, _ := addr.Prefix(bits)
	return pfx
}

// bucketLocked returns pfx's accept-rate bucket (nil: no per-prefix rate,
// or too many prefixes are tracked), dropping full buckets now and then.
func (l *Limiter) bucketLocked(pfx netip.Prefix, now time.Time) *rate.Limiter {
	if l.cfg.PrefixAcceptRate <= 0 {
		return nil
	}
	since := now.Sub(l.lastSweep)
	if since >= sweepEvery || (len(l.buckets) >= maxBuckets && since >= time.Second) {
		l.lastSweep = now
		full := float64(l.cfg.PrefixAcceptBurst)
		for p, b := range l.buckets {
			if b.TokensAt(now) >= full {
				delete(l.buckets, p)
			}
		}
	}
	b := l.buckets[pfx]
	if b == nil && len(l.buckets) < maxBuckets {
		b = rate.NewLimiter(rate.Limit(l.cfg.PrefixAcceptRate), l.cfg.PrefixAcceptBurst)
		l.buckets[pfx] = b
	}
	return b
}

// Buckets returns how many per-prefix rate buckets are kept.
func (l *Limiter) Buckets() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// Open returns how many admitted connections are open.
func (l *Limiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}
