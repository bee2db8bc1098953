package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/rcvwin"
	"github.com/fourover6/fourover6/dataplane/sendq"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// Reasons a session ends, for the disconnect log line.
var (
	errServerClosed = errors.New("server closed the connection")
	errStopping     = errors.New("client stopping")
)

// dialError marks a session that never connected, for the log.
type dialError struct{ error }

func (e *dialError) Unwrap() error { return e.error }

// client owns the TUN for its whole life and runs one session (one TCP
// connection) at a time over it.
//
// Goroutines: run (control: dial, lease, routes, reconnect; the only one that
// touches netlink, because netlink acts on the calling thread's network
// namespace), tunLoop (TUN -> 102, for the client's lifetime) and, per
// session, readLoop (server -> TUN) and keepaliveLoop (104s).
type client struct {
	cfg   config
	log   *slog.Logger
	epoch time.Time // origin of the monotonic timestamps in session.heard

	dev tun.Device
	ns  netState
	// applied is the lease whose address and routes are in place (the zero
	// lease: none); a 101 equal to it changes nothing, on any connection.
	// held is when the connection that leased it ended, while its routes
	// stay for --route-hold (zero: connected, or nothing held). Both belong
	// to run's goroutine.
	applied lease
	held    time.Time

	// cur is the leased session the TUN reader sends to; nil while there is
	// none (packets are then dropped: the kernel retransmits what matters).
	cur atomic.Pointer[session]

	stats stats

	// Seams for tests.
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	backoff *backoff

	// Used by tunLoop only: reused for every batch.
	out []*sendq.Buf
}

// stats are cumulative over the client's life.
type stats struct {
	up, upDropped     atomic.Uint64 // TUN -> 102
	down, downDropped atomic.Uint64 // 103 -> TUN
}

func newClient(cfg config, log *slog.Logger) *client {
	d := &net.Dialer{}
	return &client{
		cfg:     cfg,
		log:     log,
		epoch:   time.Now(),
		ns:      netState{log: log, ifName: cfg.tunName, mtu: cfg.mtu, resolvConf: cfg.resolvConf},
		dial:    d.DialContext,
		backoff: newBackoff(cfg.reconnectMin, cfg.reconnectMax),
	}
}

// now is a monotonic timestamp, cheap enough for every message.
func (c *client) now() int64 { return int64(time.Since(c.epoch)) }

// run creates the TUN and keeps a session up until ctx is done (or, with
// --once, until the first session ends). It returns nil when stopped by ctx,
// and the reason otherwise.
//
// run must be called on the thread whose network namespace the client should
// configure (any thread, in a normal process): every netlink call happens on
// this goroutine.
func (c *client) run(parent context.Context) (err error) {
	dev, opened, err := tun.OpenReport(tun.Config{Name: c.cfg.tunName, Backend: c.cfg.tunBackend, MTU: c.cfg.mtu})
	if err != nil {
		return err
	}
	c.log.Info("TUN opened", "tun", dev.Name(), "backend", string(opened.Backend), "asked", string(c.cfg.tunBackend), "why", opened.Reason)
	c.dev = dev
	c.ns.ifName = dev.Name()

	// A failing TUN ends the client with that cause.
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	tunDone := make(chan struct{})
	go func() {
		defer close(tunDone)
		if err := c.tunLoop(); err != nil {
			cancel(err)
		}
	}()
	defer func() {
		// Undo in reverse: routes and DNS while the TUN still exists, then
		// the TUN itself (which also ends tunLoop).
		c.cleanup()
		if cerr := dev.Close(); cerr != nil && !tun.IsClosed(cerr) {
			c.log.Warn("close TUN", "err", cerr)
		}
		<-tunDone
		if cause := context.Cause(ctx); err == nil && parent.Err() == nil && cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause
		}
	}()

	for {
		start := time.Now()
		leased, err := c.session(ctx)
		level := slog.LevelWarn
		if ctx.Err() != nil {
			level = slog.LevelInfo
		}
		msg := "disconnected"
		if _, ok := errors.AsType[*dialError](err); ok {
			msg = "connect failed"
		}
		c.log.Log(context.Background(), level, msg, "reason", err.Error(), "leased", leased,
			"duration", time.Since(start).Round(time.Millisecond),
			"up_packets", c.stats.up.Load(), "down_packets", c.stats.down.Load(),
			"up_dropped", c.stats.upDropped.Load(), "down_dropped", c.stats.downDropped.Load())
		if ctx.Err() != nil {
			return nil // stopped; the deferred function reports a TUN failure
		}
		if c.cfg.once {
			return err
		}
		// The address and routes stay while we reconnect: packets meanwhile
		// are dropped (the inner TCP retransmits) instead of taking another
		// route, whose resets would kill the connections inside the tunnel.
		// Only an outage longer than --route-hold gives the host its own
		// routes back, so IPv4 works outside the tunnel.
		if leased {
			c.held = time.Now()
		}
		if !c.held.IsZero() && time.Since(c.held) >= c.cfg.routeHold {
			c.releaseRoutes()
		}
		// An established connection that broke is retried at once; after
		// that, and after a session that had a lease but did not last (a
		// server that leases and drops us at once must not be hammered),
		// the delays back off.
		var d time.Duration
		if leased && time.Since(start) >= c.cfg.reconnectMax {
			c.backoff.reset()
		} else {
			d = c.backoff.next()
		}
		c.log.Info("reconnecting", "delay", d, "routes_held", !c.held.IsZero())
		if !c.wait(ctx, d) {
			return nil
		}
	}
}

// wait sleeps for d or until ctx ends (then it reports false), giving the
// held routes back when --route-hold runs out meanwhile.
func (c *client) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	hold, stop := c.holdTimer()
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-hold:
			c.releaseRoutes()
			hold = nil
		}
	}
}

// holdTimer fires when the routes held since the last lease must be given
// back (a nil channel when none are held).
func (c *client) holdTimer() (<-chan time.Time, func() bool) {
	if c.held.IsZero() {
		return nil, func() bool { return false }
	}
	h := time.NewTimer(max(0, c.cfg.routeHold-time.Since(c.held)))
	return h.C, h.Stop
}

// releaseRoutes gives the host its own routes back after an outage longer
// than --route-hold (the TUN and its address stay).
func (c *client) releaseRoutes() {
	c.log.Warn("still reconnecting: giving the host its routes back", "down_for",
		time.Since(c.held).Round(time.Millisecond), "route_hold", c.cfg.routeHold)
	if err := c.ns.withdraw(); err != nil {
		c.log.Warn("remove routes", "err", err)
	}
	c.applied, c.held = lease{}, time.Time{}
}

// cleanup restores everything the client changed on the host.
func (c *client) cleanup() {
	if err := c.ns.withdraw(); err != nil {
		c.log.Warn("remove routes", "err", err)
	}
	if err := c.ns.restoreDNS(); err != nil {
		c.log.Warn("restore DNS", "file", c.cfg.resolvConf, "err", err)
	}
}

// session runs one connection: 100 until a 101 arrives, apply it, then
// carry traffic until the connection fails, the server falls silent or ctx
// ends. It always returns a non-nil reason; leased reports whether a 101 was
// applied.
func (c *client) session(ctx context.Context) (leased bool, err error) {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.keepaliveTimeout)
	conn, err := c.dial(dctx, "tcp6", c.cfg.server)
	cancel()
	if err != nil {
		return false, &dialError{fmt.Errorf("connect to %s: %w", c.cfg.server, err)}
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		// Go sets it by default; say it anyway: each message must leave at once.
		_ = tc.SetNoDelay(true)
		// What waits for the server waits in the session's queue, by flow,
		// not in the kernel's FIFO.
		if err := sendq.SetNotSentLowat(tc, sendq.NotSentLowat); err != nil {
			c.log.Debug("cannot shorten the send buffer", "err", err)
		}
	}
	c.log.Info("connected", "server", c.cfg.server, "local", conn.LocalAddr().String(), "remote", conn.RemoteAddr().String())

	s, err := newSession(conn, &c.stats)
	if err != nil {
		conn.Close()
		return false, err
	}
	s.heard.Store(c.now())
	s.wg.Add(1)
	go c.readLoop(s)
	defer func() {
		// After this no goroutine of s runs: the caller may reconfigure.
		c.cur.CompareAndSwap(s, nil)
		s.close(errStopping)
		s.wg.Wait()
		s.q.Close()
		s.q.Wait()
	}()

	timeout := c.cfg.keepaliveTimeout
	_ = s.write(addrRequest) // a failure closes s: seen below
	hello := time.NewTicker(c.cfg.helloResend)
	defer hello.Stop()
	giveUp := time.NewTimer(timeout)
	defer giveUp.Stop()
	// The watchdog runs once leased; before that giveUp bounds the wait.
	watchdog := time.NewTimer(timeout)
	watchdog.Stop()
	defer watchdog.Stop()
	helloC, giveUpC := hello.C, giveUp.C
	var watchdogC <-chan time.Time
	// Routes held from the previous connection go back to the host if this
	// one gets no lease before --route-hold runs out.
	holdC, stopHold := c.holdTimer()
	defer stopHold()

	for {
		select {
		case <-ctx.Done():
			s.close(errStopping)
			return leased, errStopping

		case <-s.done:
			return leased, s.reason

		case <-helloC:
			_ = s.write(addrRequest)

		case <-giveUpC:
			s.close(fmt.Errorf("no 101 (address response) within %s", timeout))

		case <-holdC:
			c.releaseRoutes()
			holdC = nil

		case l := <-s.leases:
			if leased && l.Addr == c.ns.addr {
				// A repeated 101 for the same address: nothing to do.
				c.log.Debug("repeated 101 ignored", "lease", l.String())
				continue
			}
			if err := c.apply(s, l, leased); err != nil {
				s.close(fmt.Errorf("apply lease %s: %w", l.Addr, err))
				continue
			}
			if !leased {
				leased = true
				c.held = time.Time{}
				helloC, giveUpC, holdC = nil, nil, nil
				hello.Stop()
				giveUp.Stop()
				c.cur.Store(s)
				s.wg.Add(1)
				go c.keepaliveLoop(s)
				watchdog.Reset(timeout)
				watchdogC = watchdog.C
			}

		case <-watchdogC:
			// Fires when nothing may have been heard for timeout; re-armed
			// for the rest of the window otherwise. One timer per session, no
			// clock read per tick beyond this.
			idle := time.Duration(c.now() - s.heard.Load())
			if idle >= timeout {
				s.close(fmt.Errorf("server silent for %s (keepalive timeout %s)", idle.Round(time.Millisecond), timeout))
				continue
			}
			watchdog.Reset(timeout - idle)
		}
	}
}

// apply configures the TUN, routes and DNS for lease l (the first one of a
// session, or a new address mid-session). The lease still in place from
// the previous connection (the same address after a reconnect) is kept as
// it is: no netlink change, so nothing inside the tunnel notices.
func (c *client) apply(s *session, l lease, midSession bool) error {
	if !midSession && l == c.applied {
		s.addr4.Store(packet.Addr4(l.Addr))
		c.log.Info("lease unchanged: address and routes kept", "addr", l.Addr.String(), "tun", c.ns.ifName)
		return nil
	}
	// Stop delivering 103s for the old address while the TUN changes.
	s.addr4.Store(0)
	c.applied = lease{}
	if err := c.ns.configure(l.Addr); err != nil {
		return err
	}
	want := planRoutes(l, &c.cfg)
	if err := c.ns.setRoutes(want, l.Addr); err != nil {
		return err
	}
	if err := c.ns.writeDNS(l.DNS); err != nil {
		// DNS is a convenience: the tunnel works without it.
		c.log.Warn("write DNS servers", "file", c.cfg.resolvConf, "err", err)
	}
	s.addr4.Store(packet.Addr4(l.Addr))
	c.applied = l
	routes := make([]string, len(want))
	for i, p := range want {
		routes[i] = p.String()
	}
	c.log.Info("lease", "addr", l.Addr.String(), "route", l.route.String(), "dns", dnsList(l.DNS),
		"tun", c.ns.ifName, "mtu", c.cfg.mtu, "routes", routes)
	return nil
}

// session is one TCP connection to the server.
type session struct {
	conn   net.Conn
	leases chan lease // 101s, from readLoop to the control loop

	// q is what goes to the server: 102s from tunLoop, 100s and 104s. One
	// writer at a time keeps every message whole on the stream; it waits
	// by flow (a ping never behind a bulk upload), bounded in bytes and
	// time (sendq.Queue).
	q *sendq.Queue

	done      chan struct{}
	closeOnce sync.Once
	reason    error // why it ended; read after done is closed

	heard atomic.Int64  // client.now() when the server was last heard from
	addr4 atomic.Uint32 // leased address (packet.Addr4 form); 0 drops 103s

	wg sync.WaitGroup // readLoop and keepaliveLoop
}

// Control messages, shared by every session (the queue copies one it must
// keep).
var (
	addrRequest = sendq.Static(wire.AddrRequest[:])
	keepalive   = sendq.Static(wire.Keepalive[:])
)

// upQueueLen bounds the messages waiting for the server (each holds a
// pooled buffer); sendq's defaults bound their bytes and waiting time.
const upQueueLen = 256

func newSession(conn net.Conn, st *stats) (*session, error) {
	s := &session{conn: conn, leases: make(chan lease, 1), done: make(chan struct{})}
	q, err := sendq.New(conn, sendq.Config{
		Limit:  upQueueLen,
		OnFail: func(err error) { s.close(fmt.Errorf("write: %w", err)) },
		OnDrop: func(full, late int) { st.upDropped.Add(uint64(full + late)) },
	})
	if err != nil {
		return nil, err
	}
	s.q = q
	return s, nil
}

// close ends the session once, recording the first reason. Closing the
// connection unblocks any reader or writer stuck on it.
func (s *session) close(reason error) {
	s.closeOnce.Do(func() {
		s.reason = reason
		close(s.done)
		_ = s.conn.Close()
	})
}

// write queues a control message (a 100 or 104); a write that fails
// closes the session.
func (s *session) write(b *sendq.Buf) error {
	one := [1]*sendq.Buf{b}
	_, err := s.q.Send(one[:])
	return err
}

// readLoop decodes the server's stream: 103 -> TUN, 101 -> control loop,
// 104 and anything else only prove the server is alive.
func (c *client) readLoop(s *session) {
	defer s.wg.Done()
	// The receive window follows what the connection carries: 103s wait
	// unread in the socket for as little as the path allows (rcvwin).
	dec := wire.NewDecoder(rcvwin.NewReader(s.conn), 0)
	tw := c.dev.NewWriter() // with offloads, the 103s of one read merge into few writes
	defer c.flushDown(tw)
	gotLease := false
	for {
		if tw.Buffered() > 0 && !dec.Ready() {
			c.flushDown(tw) // Next would block
		}
		m, err := dec.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errServerClosed
			} else {
				err = fmt.Errorf("read: %w", err)
			}
			s.close(err)
			return
		}
		s.heard.Store(c.now())
		switch m.Type {
		case wire.TypeNetResponse:
			c.down(s, tw, m.Data)
		case wire.TypeAddrResponse:
			l, err := parseLease(m.Data)
			if err != nil {
				if !gotLease {
					// Nothing to run the tunnel with: fail, reconnect.
					s.close(fmt.Errorf("bad 101: %w", err))
					return
				}
				c.log.Warn("ignoring a bad 101 during the session", "err", err)
				continue
			}
			gotLease = true
			select {
			case s.leases <- l:
			case <-s.done:
				return
			}
		case wire.TypeKeepalive:
			// Liveness only, noted above.
		default:
			// Unknown types (forks send 105/106/199/200) are skipped by length.
		}
	}
}

// down hands the IPv4 packet of a 103 to the TUN writer. With the water
// backend it is written at once, straight from the decoder's buffer; with
// offloads it is merged into the super-packet under construction.
func (c *client) down(s *session, tw tun.Writer, p []byte) {
	addr := s.addr4.Load()
	total, prob := packet.CheckIPv4(p)
	// Only packets for our address: the server sends nothing else, and a
	// host with forwarding enabled must not route what a server injects.
	if addr == 0 || prob != packet.OK || packet.Dst4(p) != addr {
		c.stats.downDropped.Add(1)
		return
	}
	if err := tw.WritePacket(p[:total]); err != nil {
		c.stats.downDropped.Add(1)
		return
	}
	c.stats.down.Add(1)
}

func (c *client) flushDown(tw tun.Writer) {
	n := tw.Buffered()
	if err := tw.Flush(); err != nil {
		c.stats.downDropped.Add(uint64(n))
	}
}

// keepaliveLoop sends a 104 every --keepalive-interval. If the server stops
// reading, the queue's writer waits until the watchdog closes the
// connection.
func (c *client) keepaliveLoop(s *session) {
	defer s.wg.Done()
	t := time.NewTicker(c.cfg.keepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			if errors.Is(s.write(keepalive), sendq.ErrClosed) {
				return
			}
		}
	}
}

// tunLoop reads packets from the TUN for the client's lifetime and sends
// them as 102 on the current session. Each packet is read into a pooled
// send-queue buffer at wire.HeaderLen, so the header is written in place
// and the message goes out with no copy; the queue writes at once while
// the server keeps up and otherwise keeps the packets by flow, so this
// loop never waits for the server and the TUN's own queue stays short. It
// returns nil when the TUN is closed.
func (c *client) tunLoop() error {
	bs := max(c.dev.BatchSize(), 1)
	bufs := make([]*sendq.Buf, bs)
	vecs := make([][]byte, bs)
	sizes := make([]int, bs)
	c.out = make([]*sendq.Buf, 0, bs)
	defer func() {
		for _, b := range bufs {
			sendq.Put(b)
		}
	}()
	var r tunReader
	for {
		for i := range bufs {
			if bufs[i] == nil {
				bufs[i] = sendq.Get()
			}
			vecs[i] = bufs[i].B
		}
		n, err := r.read(c, vecs, sizes)
		if n == 0 {
			if err != nil || r.closed {
				return err
			}
			continue
		}
		c.up(bufs[:n], sizes[:n])
	}
}

// tunReader reads batches from the TUN. A malformed offload packet costs
// that packet, not the client; only a persistent failure ends it.
type tunReader struct {
	failures int
	closed   bool
}

// read returns the packets read; 0 with a nil error means try again,
// unless closed is set (the TUN is gone: stop).
func (r *tunReader) read(c *client, bufs [][]byte, sizes []int) (int, error) {
	n, err := c.dev.Read(bufs, sizes, wire.HeaderLen)
	if err == nil {
		r.failures = 0
		return n, nil
	}
	if tun.IsClosed(err) {
		r.closed = true
		return 0, nil
	}
	if r.failures++; r.failures >= 1000 {
		return 0, fmt.Errorf("read from TUN %s: %w", c.ns.ifName, err)
	}
	c.stats.upDropped.Add(1)
	return 0, nil
}

// up frames a batch read from the TUN as 102s and hands it to the
// session's queue, which takes the buffers it keeps (their slots in bufs
// are then nil: refilled before the next read).
func (c *client) up(bufs []*sendq.Buf, sizes []int) {
	s := c.cur.Load()
	out := c.out[:0]
	for i, b := range bufs {
		p := b.B[wire.HeaderLen : wire.HeaderLen+sizes[i]]
		total, prob := packet.CheckIPv4(p)
		if s == nil || prob != packet.OK {
			// No session (reconnecting), or not IPv4 (IPv6 is disabled on
			// the TUN, but a packet socket may still write anything).
			c.stats.upDropped.Add(1)
			continue
		}
		wire.PutHeader(b.B, wire.TypeNetRequest, total)
		b.N = wire.HeaderLen + total
		b.Kind = sendq.Data
		out = append(out, b)
		bufs[i] = nil
	}
	if len(out) > 0 {
		n, _ := s.q.Send(out)
		c.stats.up.Add(uint64(n))
		if rest := out[n:]; len(rest) > 0 {
			// Refused (full), or the session closed: dropped.
			c.stats.upDropped.Add(uint64(len(rest)))
			for _, b := range rest {
				sendq.Put(b)
			}
		}
	}
	clear(out)
	c.out = out[:0]
}
