package controller

import (
	"context"
	"time"

	"github.com/fourover6/fourover6/controlplane/pool"
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

// WatchClients calls fn with the current clients (EventExisting), then one
// EventSynced, then every connect and disconnect, until ctx ends, fn fails,
// the watcher falls too far behind, or this controller stops leading.
func (c *Controller) WatchClients(ctx context.Context, f Filter, fn func(ClientEvent) error) error {
	t, err := c.active()
	if err != nil {
		return err
	}
	// The rows and the subscription are one step in the index: no change
	// is missed or seen twice.
	rows, sub := t.idx.Subscribe(f, watchQueue)
	defer sub.Close()
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
		case <-sub.Lost:
			return unavailable("client watcher fell more than %d events behind; watch again", watchQueue)
		case ch := <-sub.C:
			ev := ClientEvent{Type: EventConnected, Client: ch.Row, Reason: ch.Reason, Time: ch.Time}
			if ch.Kind == pool.Disconnected {
				ev.Type = EventDisconnected
			}
			if err := fn(ev); err != nil {
				return err
			}
		}
	}
}
