package pool

import (
	"time"

	"github.com/fourover6/fourover6/controlplane/table"
)

// ChangeKind says whether a client connected or disconnected.
type ChangeKind uint8

const (
	Connected    ChangeKind = iota + 1 // a lease was committed (or adopted)
	Disconnected                       // a lease was released
)

// Change is one change of the client table.
type Change struct {
	Kind   ChangeKind
	Row    table.Row
	Reason string // why a client disconnected
	Time   time.Time
}

// Subscription delivers the changes of the client table's selected rows
// after the rows Subscribe returned, in order, none missed: until the
// subscriber falls queue changes behind. Then Lost is closed and nothing
// more comes (subscribe again for the current rows).
type Subscription struct {
	C    <-chan Change
	Lost <-chan struct{}

	x    *Index
	f    table.Filter
	ch   chan Change
	lost chan struct{}
}

// Subscribe returns the selected rows (sorted by address) and a
// subscription to their changes from that moment on.
func (x *Index) Subscribe(f table.Filter, queue int) ([]table.Row, *Subscription) {
	s := &Subscription{x: x, f: f, ch: make(chan Change, queue), lost: make(chan struct{})}
	s.C, s.Lost = s.ch, s.lost
	x.mu.Lock()
	rows := x.rowsLocked(f)
	x.subs[s] = struct{}{}
	x.mu.Unlock()
	sortRows(rows)
	return rows, s
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.x.mu.Lock()
	delete(s.x.subs, s)
	s.x.mu.Unlock()
}

// publishLocked delivers a change of e to the matching subscribers without
// waiting: one whose queue is full is cut off.
func (x *Index) publishLocked(kind ChangeKind, e *entry, reason string, at time.Time) {
	if len(x.subs) == 0 {
		return
	}
	c := Change{Kind: kind, Row: rowOf(e), Reason: reason, Time: at}
	for s := range x.subs {
		if !s.f.Match(c.Row) {
			continue
		}
		select {
		case s.ch <- c:
		default:
			delete(x.subs, s)
			close(s.lost)
		}
	}
}
