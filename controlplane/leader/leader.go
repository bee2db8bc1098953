// Package leader decides which controller serves. With the embedded store
// there is one controller and it always leads (Static). With etcd, several
// controllers campaign with etcd's concurrency election (Etcd): one leads,
// the others stand by and take over when the leader's session expires
// (kill -9, crash, partition) or when it resigns (graceful stop).
package leader

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/fourover6/fourover6/controlplane/store"
)

// Callbacks are told about leadership changes, one at a time.
type Callbacks struct {
	// Elected is called when this controller wins. It must load the
	// state; if it fails, the controller resigns and campaigns again.
	Elected func(ctx context.Context) error
	// Lost is called when this controller stops leading.
	Lost func(leaderID string)
	// Leader is called on a standby when the leader changes.
	Leader func(leaderID string)
}

// Elector runs an election until ctx ends.
type Elector interface {
	Run(ctx context.Context, cb Callbacks) error
}

// Static always leads.
type Static struct{}

func (Static) Run(ctx context.Context, cb Callbacks) error {
	if err := cb.Elected(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// Etcd campaigns in etcd under Prefix+"election".
type Etcd struct {
	Store  *store.Etcd
	ID     string
	TTL    time.Duration // session TTL: how long a dead leader blocks a takeover
	Logger *slog.Logger
}

// ElectionKey is where the election lives under the store's prefix.
func ElectionKey(s *store.Etcd) string { return s.Prefix() + "election" }

func (e *Etcd) Run(ctx context.Context, cb Callbacks) error {
	log := e.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ttl := int(e.TTL / time.Second)
	if ttl < 1 {
		ttl = 1
	}
	cli := e.Store.Client()
	var mu sync.Mutex // serializes callbacks
	leading := false
	wait := 200 * time.Millisecond
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			log.Error("etcd session failed; retrying", "store", e.Store.String(), "error", err, "retry_in", wait)
			sleep(ctx, wait)
			wait = min(2*wait, 5*time.Second)
			continue
		}
		wait = 200 * time.Millisecond
		el := concurrency.NewElection(sess, ElectionKey(e.Store))

		// Standby: follow who leads, for GetStatus and error messages.
		octx, ocancel := context.WithCancel(ctx)
		go func() {
			for resp := range el.Observe(octx) {
				if len(resp.Kvs) == 0 {
					continue
				}
				id := string(resp.Kvs[0].Value)
				mu.Lock()
				if !leading && cb.Leader != nil {
					cb.Leader(id)
				}
				mu.Unlock()
			}
		}()

		err = el.Campaign(ctx, e.ID)
		if err != nil {
			ocancel()
			sess.Close()
			if ctx.Err() == nil {
				log.Warn("election campaign failed; retrying", "error", err)
				sleep(ctx, wait)
			}
			continue
		}
		// Writes from now on require our election key to stand.
		e.Store.SetFence(el.Key(), el.Rev())
		mu.Lock()
		leading = true
		err = cb.Elected(ctx)
		mu.Unlock()
		if err != nil {
			log.Error("elected, but could not take over; resigning", "error", err)
			e.resign(el, sess)
			mu.Lock()
			leading = false
			cb.Lost("")
			mu.Unlock()
			ocancel()
			sleep(ctx, time.Second)
			continue
		}
		log.Info("elected leader", "controller", e.ID, "store", e.Store.String())
		select {
		case <-ctx.Done():
			e.resign(el, sess)
		case <-sess.Done():
			log.Error("etcd session lost: stepping down", "controller", e.ID)
		}
		mu.Lock()
		leading = false
		cb.Lost("")
		mu.Unlock()
		ocancel()
		sess.Close()
	}
	return nil
}

// resign gives the leadership away at once so a standby does not wait
// for the session to expire.
func (e *Etcd) resign(el *concurrency.Election, sess *concurrency.Session) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := el.Resign(ctx); err != nil && !errors.Is(err, context.Canceled) && e.Logger != nil {
		e.Logger.Warn("resigning the leadership failed; the standby takes over when the session expires", "error", err)
	}
	sess.Close()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
