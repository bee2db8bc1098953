package bgp

import (
	"net/netip"
	"sync"
)

// changes is what the data plane asked for and the speaker has not yet put
// into GoBGP's table: for each prefix, whether it should be announced
// (true) or withdrawn (false).
//
// Invariant: a prefix appears at most once, with the latest wish. So the
// set never holds more entries than distinct prefixes touched since the
// worker last took it — at most the pool's addresses plus the aggregate —
// however fast addresses churn: announce, withdraw, announce of one
// address is one entry, and the router only ever sees the final state.
// Adding is a map write under a mutex and a non-blocking send; it never
// waits for the worker or for GoBGP.
type changes struct {
	mu       sync.Mutex
	want     map[netip.Prefix]bool
	inflight int           // taken and not yet reported done
	kick     chan struct{} // capacity 1: "there is something to take"
}

func newChanges() *changes {
	return &changes{want: make(map[netip.Prefix]bool), kick: make(chan struct{}, 1)}
}

func (c *changes) set(p netip.Prefix, announce bool) {
	c.mu.Lock()
	c.want[p] = announce
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default: // a wake-up is pending already; it will see this change too
	}
}

// take returns every pending change and leaves the set empty; they count
// as pending until done.
func (c *changes) take() map[netip.Prefix]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.want) == 0 {
		return nil
	}
	m := c.want
	c.want = make(map[netip.Prefix]bool)
	c.inflight = len(m)
	return m
}

// done says the changes last taken are applied (or given up on).
func (c *changes) done() {
	c.mu.Lock()
	c.inflight = 0
	c.mu.Unlock()
}

// len counts the changes not yet applied, taken ones included.
func (c *changes) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.want) + c.inflight
}
