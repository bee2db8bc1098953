// Package table is the client table as the operator sees it: one row per
// leased IPv4 address. It keeps no rows of its own: the table is a view of
// the controller's lease index (controlplane/pool), which builds each row
// from a lease and what the lease's data plane last reported about the
// session. This package defines that vocabulary: the row, the filter that
// selects rows, a data plane's report of a session, and the rule by which
// reports change what is known (Session.Apply).
package table

import (
	"net/netip"
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

// Add returns t + u.
func (t Traffic) Add(u Traffic) Traffic {
	return Traffic{
		BytesFromClient:   t.BytesFromClient + u.BytesFromClient,
		PacketsFromClient: t.PacketsFromClient + u.PacketsFromClient,
		BytesToClient:     t.BytesToClient + u.BytesToClient,
		PacketsToClient:   t.PacketsToClient + u.PacketsToClient,
	}
}

// Rates are traffic per second, each way: the growth of a session's
// counters between two reports, over the time between them.
type Rates struct {
	BytesFromClient   float64
	PacketsFromClient float64
	BytesToClient     float64
	PacketsToClient   float64
}

// Total is bytes per second both ways: what "the busiest client" means.
func (r Rates) Total() float64 { return r.BytesFromClient + r.BytesToClient }

// Row is one client.
type Row struct {
	Addr        netip.Addr
	ClientIPv6  netip.Addr
	ClientPort  uint16
	DataplaneID string
	SessionID   string
	LeasedAt    time.Time // when the controller leased Addr
	// Sticky: Addr is the one the client (its IPv6 address) held last,
	// given back to it when it returned.
	Sticky      bool
	ConnectedAt time.Time // when the client connected, per its data plane
	LastHeard   time.Time // last message from the client, per its data plane
	Traffic     Traffic
	Rates       Rates // over the last two reports; zero until there are two
}

// Report is a data plane's view of one of its sessions. Zero fields were
// not reported, so a report that lacks a value does not erase what is
// known.
type Report struct {
	SessionID string
	// Addr is the address the data plane believes the session holds; the
	// zero Addr means "whatever it holds".
	Addr        netip.Addr
	ClientIPv6  netip.Addr
	ClientPort  uint16
	ConnectedAt time.Time
	LastHeard   time.Time
	Traffic     Traffic
	// ReceivedAt is when the controller received the report: rates are
	// the counters' growth over the time between two reports. Zero: no
	// rate is computed from this report.
	ReceivedAt time.Time
}

// Filter selects rows. The zero Filter selects all.
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

// Session is what its data plane's reports have told about one session so
// far; zero fields were not reported. The zero Session is that of a lease
// rebuilt after a restart: its traffic so far is unknown (see NewSession).
type Session struct {
	ClientIPv6  netip.Addr
	ClientPort  uint16
	ConnectedAt time.Time
	LastHeard   time.Time
	Traffic     Traffic
	Rates       Rates
	reportedAt  time.Time // ReceivedAt of the report Traffic is from

	// counted: Traffic is a baseline that deltas may be taken from. A
	// session rebuilt after a restart learns its baseline from the first
	// report, so traffic counted before the restart is not counted twice.
	counted bool
}

// NewSession is the Session of a lease made just now: its traffic starts
// at zero, so the first report's counters all count.
func NewSession() Session { return Session{counted: true} }

// Apply records a report of the session (its SessionID and Addr aside) and
// returns how much the counters grew since the previous one (zero for the
// first report of a rebuilt session, whose history is unknown).
func (r *Session) Apply(u Report) Traffic {
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
	if dt := u.ReceivedAt.Sub(r.reportedAt); !r.reportedAt.IsZero() && dt > 0 {
		// The growth over this interval, whether or not it counts in the
		// totals (a rebuilt session's first delta does not, its rate does).
		g := Traffic{
			BytesFromClient:   growth(r.Traffic.BytesFromClient, u.Traffic.BytesFromClient),
			PacketsFromClient: growth(r.Traffic.PacketsFromClient, u.Traffic.PacketsFromClient),
			BytesToClient:     growth(r.Traffic.BytesToClient, u.Traffic.BytesToClient),
			PacketsToClient:   growth(r.Traffic.PacketsToClient, u.Traffic.PacketsToClient),
		}
		sec := dt.Seconds()
		r.Rates = Rates{
			BytesFromClient:   float64(g.BytesFromClient) / sec,
			PacketsFromClient: float64(g.PacketsFromClient) / sec,
			BytesToClient:     float64(g.BytesToClient) / sec,
			PacketsToClient:   float64(g.PacketsToClient) / sec,
		}
	}
	// An untimed report's counters are no base for the next rate.
	r.reportedAt = u.ReceivedAt
	r.counted = true
	r.Traffic = u.Traffic
	return delta
}

// Fill sets the fields of row that reports have told: they win over what
// the lease said (row's client address and port as leased; its connect and
// last-heard times default to the lease time).
func (r Session) Fill(row *Row) {
	if r.ClientIPv6.IsValid() {
		row.ClientIPv6 = r.ClientIPv6
	}
	if r.ClientPort != 0 {
		row.ClientPort = r.ClientPort
	}
	if !r.ConnectedAt.IsZero() {
		row.ConnectedAt = r.ConnectedAt
	}
	if !r.LastHeard.IsZero() {
		row.LastHeard = r.LastHeard
	}
	row.Traffic = r.Traffic
	row.Rates = r.Rates
}

func growth(old, cur uint64) uint64 {
	if cur < old {
		return 0 // a counter never runs back; a restarted session starts anew
	}
	return cur - old
}
