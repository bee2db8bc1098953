// Package limit decides whether the data plane admits a new connection: a
// cap on clients, on connections per client IPv6 address and per prefix
// (a /64 is one subscriber), and an accept rate. It keeps a flood from
// exhausting the pool or the file descriptors.
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
	AcceptRate        float64 // new connections per second
	AcceptBurst       int
}

// Reasons a connection is refused; they name counters and log lines.
const (
	ReasonMaxClients = "max_clients"
	ReasonPerIP      = "max_conns_per_ip"
	ReasonPerPrefix  = "max_conns_per_prefix"
	ReasonRate       = "accept_rate"
)

// Limiter is safe for concurrent use.
type Limiter struct {
	cfg   Config
	rate  *rate.Limiter
	mu    sync.Mutex
	total int
	byIP  map[netip.Addr]int
	byNet map[netip.Prefix]int
}

// New returns a limiter enforcing cfg.
func New(cfg Config) *Limiter {
	if cfg.PrefixLen <= 0 {
		cfg.PrefixLen = 64
	}
	l := &Limiter{cfg: cfg, byIP: make(map[netip.Addr]int), byNet: make(map[netip.Prefix]int)}
	if cfg.AcceptRate > 0 {
		burst := cfg.AcceptBurst
		if burst <= 0 {
			burst = max(1, int(cfg.AcceptRate))
		}
		l.rate = rate.NewLimiter(rate.Limit(cfg.AcceptRate), burst)
	}
	return l
}

// Config returns the limits in force.
func (l *Limiter) Config() Config { return l.cfg }

// Admit decides on a connection from addr at time now. When admitted it
// returns a release function to call exactly once when the connection
// closes; otherwise the reason it was refused.
func (l *Limiter) Admit(addr netip.Addr, now time.Time) (release func(), reason string) {
	if l.rate != nil && !l.rate.AllowN(now, 1) {
		return nil, ReasonRate
	}
	addr = addr.Unmap()
	bits := l.cfg.PrefixLen
	if addr.Is4() {
		bits = min(bits, 24)
	}
	pfx, _ := addr.Prefix(bits)
	l.mu.Lock()
	defer l.mu.Unlock()
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

// Open returns how many admitted connections are open.
func (l *Limiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}
