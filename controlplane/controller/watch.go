package controller

import (
	"context"
	"time"
)

// EventType is the kind of a ClientEvent.
type EventType int

const (
	EventExisting EventType = iota + 1 // part of the initial set
	EventSynced                        // the initial set is complete
	EventConnected
	EventDisconnected
)

// ClientEvent is one change of the client table.
type ClientEvent struct {
	Type   EventType
	Client Client // zero for EventSynced
	Reason string // why a client disconnected
	Time   time.Time
}

// watchQueue bounds the events waiting for one watcher; one that falls
// further behind is cut off (it can reconnect and get the current set).
const watchQueue = 4096

type watcher struct {
	f    Filter
	ch   chan ClientEvent
	lost chan struct{} // closed when the watcher fell behind
}

// publishLocked delivers ev to matching watchers; t.lmu is held.
func (t *term) publishLocked(ev ClientEvent) {
	for w := range t.watchers {
		if !w.f.Match(ev.Client) {
			continue
		}
		select {
		case w.ch <- ev:
		default:
			delete(t.watchers, w)
			close(w.lost)
		}
	}
}

// WatchClients calls fn with the current clients (EventExisting), then one
// EventSynced, then every connect and disconnect, until ctx ends, fn fails,
// the watcher falls too far behind, or this controller stops leading.
func (c *Controller) WatchClients(ctx context.Context, f Filter, fn func(ClientEvent) error) error {
	t, err := c.active()
	if err != nil {
		return err
	}
	w := &watcher{f: f, ch: make(chan ClientEvent, watchQueue), lost: make(chan struct{})}
	t.lmu.Lock()
	rows := t.table.List(f)
	t.watchers[w] = struct{}{}
	t.lmu.Unlock()
	defer func() {
		t.lmu.Lock()
		delete(t.watchers, w)
		t.lmu.Unlock()
	}()
	now := c.now()
	for _, r := range rows {
		if err := fn(ClientEvent{Type: EventExisting, Client: r, Time: now}); err != nil {
			return err
		}
	}
	if err := fn(ClientEvent{Type: EventSynced, Time: now}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.done:
			return &NotLeaderError{}
		case <-w.lost:
			return unavailable("client watcher fell more than %d events behind; watch again", watchQueue)
		case ev := <-w.ch:
			if err := fn(ev); err != nil {
				return err
			}
		}
	}
}
