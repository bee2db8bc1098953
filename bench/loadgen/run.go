package main

import (
	"context"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// event is one JSON line on stdout. Field names are read by the harness.
type event struct {
	Event          string  `json:"event"` // connected, echo_done, idle_start, idle_end, done, storm_done, flooding, flood_done, error
	UnixNano       int64   `json:"unix_nano"`
	N              int     `json:"n"`
	Connected      int     `json:"connected"`
	Failed         int     `json:"failed"`
	ConnectSeconds float64 `json:"connect_seconds,omitempty"`
	FirstError     string  `json:"first_error,omitempty"`
	EchoSent       uint64  `json:"echo_sent"`
	EchoReceived   uint64  `json:"echo_received"`
	KeepaliveSent  uint64  `json:"keepalive_sent"`
	KeepaliveRecvd uint64  `json:"keepalive_received"`
	WriteErrors    uint64  `json:"write_errors"`
	Dropped        int64   `json:"dropped"`
	FDLimit        uint64  `json:"fd_limit"`
	Error          string  `json:"error,omitempty"`

	// storm_done: of the Connected clients, Lost saw the server drop them,
	// Reconnected got a 101 again (at ReconnectUnixNano, one per client,
	// in the order they came back), Failed did not within -storm-timeout.
	Lost              int     `json:"lost,omitempty"`
	Reconnected       int     `json:"reconnected,omitempty"`
	ReconnectAttempts int64   `json:"reconnect_attempts,omitempty"`
	ReconnectUnixNano []int64 `json:"reconnect_unix_nano,omitempty"`

	// flood_done: what the flooding clients' TCP connections took.
	FloodBytes   int64   `json:"flood_bytes,omitempty"`
	FloodFrames  int64   `json:"flood_frames,omitempty"`
	FloodSeconds float64 `json:"flood_seconds,omitempty"`
}

type result struct {
	cl  *client
	err error
}

func run(ctx context.Context, c config, log *slog.Logger, emit func(event)) error {
	var rl syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) // Go has raised the soft limit to this already
	if rl.Max < uint64(c.n)+64 {
		log.Warn("file descriptor limit too low for N: some connections will fail", "hard_limit", rl.Max, "n", c.n)
	}
	st := &stats{}
	snap := func(name string) event {
		return event{Event: name, N: c.n, FDLimit: rl.Max,
			EchoSent: st.echoSent.Load(), EchoReceived: st.echoReceived.Load(),
			KeepaliveSent: st.keepaliveSent.Load(), KeepaliveRecvd: st.keepaliveRecvd.Load(),
			WriteErrors: st.writeErrors.Load(), Dropped: st.dropped.Load()}
	}

	// In storm mode every original connection reports its loss here; the
	// buffer holds all of them, so no reader ever blocks on it.
	var lost chan *client
	var onLoss func(*client)
	if c.storm {
		lost = make(chan *client, c.n)
		onLoss = func(cl *client) { lost <- cl }
	}

	// Connect phase.
	log.Info("connecting", "n", c.n, "server", c.server, "inflight", c.inflight)
	cr := connectAll(ctx, c, log, st, onLoss)
	clients, failed, firstErr, last := cr.clients, cr.failed, cr.firstErr, cr.last
	var reconnected []*client // storm mode: the connections that replaced the lost ones
	defer func() {
		st.closing.Store(true)
		for _, cl := range append(clients, reconnected...) {
			cl.conn.Close()
		}
	}()
	e := snap("connected")
	e.Connected, e.Failed, e.ConnectSeconds = len(clients), failed, last.Seconds()
	if firstErr != nil {
		e.FirstError = firstErr.Error()
	}
	emit(e)
	log.Info("connect phase over", "connected", len(clients), "failed", failed, "seconds", last.Seconds(), "first_error", firstErr)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(clients) == 0 {
		return fmt.Errorf("no client connected: %v", firstErr)
	}

	switch {
	case c.storm:
		var err error
		reconnected, err = storm(ctx, c, log, len(clients), st, lost, emit)
		return err
	case c.flood > 0:
		return flood(ctx, c, log, clients, st, emit)
	}

	s := newScheduler(c, clients, st)
	// Echo phase, then a grace period with keepalives only.
	if c.echoPhase > 0 {
		log.Info("echo phase", "duration", c.echoPhase, "interval", c.echoInterval)
		if err := s.run(ctx, c.echoPhase, true); err != nil {
			return err
		}
		if err := s.run(ctx, c.echoGrace, false); err != nil {
			return err
		}
	}
	emit(snap("echo_done"))

	log.Info("idle phase", "duration", c.idle)
	emit(snap("idle_start"))
	if err := s.run(ctx, c.idle, false); err != nil {
		return err
	}
	emit(snap("idle_end"))
	end := snap("done")
	end.Connected, end.Failed, end.ConnectSeconds = len(clients), failed, last.Seconds()
	emit(end)
	return nil
}

// connectResult is the outcome of the connect phase.
type connectResult struct {
	clients  []*client // those that got their 101
	failed   int
	firstErr error         // the first failure
	last     time.Duration // when the last 101 arrived
}

// connectAll opens c.n connections, at most c.inflight handshakes at once.
func connectAll(ctx context.Context, c config, log *slog.Logger, st *stats, onLoss func(*client)) connectResult {
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, c.connectTimeout)
	defer cancel()
	results := make(chan result, c.n)
	go func() {
		sem := make(chan struct{}, c.inflight)
		for i := range c.n {
			select {
			case sem <- struct{}{}:
			case <-cctx.Done():
				results <- result{err: cctx.Err()}
				continue
			}
			go func() {
				cl, err := connect(cctx, c, i, st, c.maxDialAttempts, onLoss)
				<-sem
				results <- result{cl, err}
			}()
		}
	}()
	clients := make([]*client, 0, c.n)
	var failed int
	var firstErr error
	var last time.Duration
	for range c.n {
		r := <-results
		if r.err != nil {
			failed++
			if firstErr == nil {
				firstErr = r.err
			}
			continue
		}
		clients = append(clients, r.cl)
		last = time.Since(start)
		if len(clients)%1000 == 0 {
			log.Info("progress", "connected", len(clients), "elapsed", last.Round(time.Millisecond))
		}
	}
	return connectResult{clients, failed, firstErr, last}
}

// scheduler spreads keepalives and echoes evenly: with S ticks per
// interval, client i is served on the ticks where tick%S == i%S. One
// goroutine does every write, so the load generator stays light and its
// own CPU use does not disturb the server it measures.
type scheduler struct {
	c       config
	clients []*client
	st      *stats
	tick    uint64
	buf     []byte
}

func newScheduler(c config, clients []*client, st *stats) *scheduler {
	return &scheduler{c: c, clients: clients, st: st, buf: make([]byte, 0, 128)}
}

func slots(interval, tick time.Duration) uint64 { return uint64(max(1, interval/tick)) }

func (s *scheduler) run(ctx context.Context, d time.Duration, echo bool) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTicker(s.c.tick)
	defer t.Stop()
	end := time.After(d)
	kSlots, eSlots := slots(s.c.keepalive, s.c.tick), slots(s.c.echoInterval, s.c.tick)
	payload := []byte("4over6-loadgen-echo-payload!")
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-end:
			return nil
		case <-t.C:
		}
		k := s.tick
		s.tick++
		for i, cl := range s.clients {
			if uint64(i)%kSlots == k%kSlots && cl.write(wire.Keepalive[:], s.st) {
				s.st.keepaliveSent.Add(1)
			}
			if echo && uint64(i)%eSlots == k%eSlots {
				cl.seq++
				p := packet.BuildICMPEcho(cl.addr, s.c.gateway, uint16(cl.id), cl.seq, payload, false)
				s.buf = wire.AppendMsg(s.buf[:0], wire.TypeNetRequest, p)
				if cl.write(s.buf, s.st) {
					s.st.echoSent.Add(1)
				}
			}
		}
	}
}
