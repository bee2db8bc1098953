// Package table is the client table as the operator sees it: one row per
// leased IPv4 address, created when the address is leased, refreshed by the
// data plane's session reports and deleted when the lease is released.
package table

import (
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Traffic of one session. "From client" is 102 traffic (client to the IPv4
// side), "to client" is 103 traffic.
type Traffic struct {
	BytesFromClient   uint64
	PacketsFromClient uint64
	BytesToClient     uint64
	PacketsToClient   uint64
}

// Row is one client.
type Row struct {
	Addr        netip.Addr
	ClientIPv6  netip.Addr
	ClientPort  uint16
	DataplaneID string
	SessionID   string
	LeasedAt    time.Time // when the controller leased Addr
	ConnectedAt time.Time // when the client connected, per its data plane
	LastHeard   time.Time // last message from the client, per its data plane
	Traffic     Traffic

	// counted: the traffic totals are a baseline that deltas may be taken from. A
	// row rebuilt after a restart learns its baseline from the first
	// report, so traffic counted before the restart is not counted twice.
	counted bool
}

// Update is what a session report changes in a row. Zero fields are left
// alone, so a report that lacks a value does not erase what is known.
type Update struct {
	ClientIPv6  netip.Addr
	ClientPort  uint16
	ConnectedAt time.Time
	LastHeard   time.Time
	Traffic     Traffic
}

// Filter selects rows in List. The zero Filter selects all.
type Filter struct {
	DataplaneID string
	// IPv6Prefix selects clients whose IPv6 address is inside it, when
	// valid.
	IPv6Prefix netip.Prefix
}

// Match reports whether r is selected.
func (f Filter) Match(r Row) bool {
	if f.DataplaneID != "" && r.DataplaneID != f.DataplaneID {
		return false
	}
	if f.IPv6Prefix.IsValid() && !f.IPv6Prefix.Contains(r.ClientIPv6) {
		return false
	}
	return true
}

// Table is safe for concurrent use.
type Table struct {
	mu   sync.RWMutex
	rows map[netip.Addr]*Row
}

// New returns an empty table.
func New() *Table {
	return &Table{rows: make(map[netip.Addr]*Row)}
}

// Insert adds r, replacing any row for the same address. fresh says the
// session is new (its traffic starts at zero) rather than rebuilt after a
// restart (its traffic so far is unknown).
func (t *Table) Insert(r Row, fresh bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r.counted = fresh
	t.rows[r.Addr] = &r
}

// Update applies u to the row for addr, only if that row belongs to the same
// data plane and session: a late report from a session that has since lost
// the address must not overwrite its new holder. It reports whether a row
// was updated.
//
// It also returns how much the counters grew since the last update (zero
// for the first update of a rebuilt row, whose history is unknown).
func (t *Table) Update(addr netip.Addr, dataplaneID, sessionID string, u Update) (Traffic, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.rows[addr]
	if !ok || r.DataplaneID != dataplaneID || r.SessionID != sessionID {
		return Traffic{}, false
	}
	if u.ClientIPv6.IsValid() {
		r.ClientIPv6 = u.ClientIPv6
	}
	if u.ClientPort != 0 {
		r.ClientPort = u.ClientPort
	}
	if !u.ConnectedAt.IsZero() {
		r.ConnectedAt = u.ConnectedAt
	}
	// The data plane's clock is the authority on when its client was heard,
	// even if it lags the controller's clock that set the initial value.
	if !u.LastHeard.IsZero() {
		r.LastHeard = u.LastHeard
	}
	var delta Traffic
	if r.counted {
		delta = Traffic{
			BytesFromClient:   growth(r.Traffic.BytesFromClient, u.Traffic.BytesFromClient),
			PacketsFromClient: growth(r.Traffic.PacketsFromClient, u.Traffic.PacketsFromClient),
			BytesToClient:     growth(r.Traffic.BytesToClient, u.Traffic.BytesToClient),
			PacketsToClient:   growth(r.Traffic.PacketsToClient, u.Traffic.PacketsToClient),
		}
	}
	r.counted = true
	r.Traffic = u.Traffic
	return delta, true
}

func growth(old, cur uint64) uint64 {
	if cur < old {
		return 0 // a counter never runs back; a restarted session starts anew
	}
	return cur - old
}

// Delete removes the row for addr if it belongs to that data plane and
// session, and reports whether it did.
func (t *Table) Delete(addr netip.Addr, dataplaneID, sessionID string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.rows[addr]
	if !ok || r.DataplaneID != dataplaneID || r.SessionID != sessionID {
		return false
	}
	delete(t.rows, addr)
	return true
}

// Get returns a copy of the row for addr.
func (t *Table) Get(addr netip.Addr) (Row, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	r, ok := t.rows[addr]
	if !ok {
		return Row{}, false
	}
	return *r, true
}

// List returns copies of the selected rows, sorted by address.
func (t *Table) List(f Filter) []Row {
	t.mu.RLock()
	out := make([]Row, 0, len(t.rows))
	for _, r := range t.rows {
		if !f.Match(*r) {
			continue
		}
		out = append(out, *r)
	}
	t.mu.RUnlock()
	slices.SortFunc(out, func(a, b Row) int { return a.Addr.Compare(b.Addr) })
	return out
}

// Len returns the number of rows.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.rows)
}
