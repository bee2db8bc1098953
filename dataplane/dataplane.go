package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/route"
	"github.com/fourover6/fourover6/dataplane/session"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/fourover6/fourover6/dataplane/wire"
	"golang.org/x/sync/errgroup"
)

// Config holds a data plane's settings. Zero durations and sizes take the
// defaults below.
type Config struct {
	ID             string
	Version        string
	Listener       net.Listener // clients connect here (TCP over IPv6)
	TUN            tun.Device   // configured with Gateway/Pool, up
	MTU            int
	Pool           PoolInfo
	Controller     Controller
	ControllerAddr string // for status output
	Logger         *slog.Logger

	KeepaliveInterval time.Duration // default 20s
	KeepaliveTimeout  time.Duration // default 60s
	WriteTimeout      time.Duration // default 10s
	ReportInterval    time.Duration // default 5s
	AllocateTimeout   time.Duration // how long a 100 waits for an unreachable controller; default 5s
	ReleaseTimeout    time.Duration // per release attempt; default 3s
	SendQueueLen      int           // default 256 messages
	ReadBufferSize    int           // default 16 KiB
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.KeepaliveInterval, 20*time.Second)
	def(&c.KeepaliveTimeout, 60*time.Second)
	def(&c.WriteTimeout, 10*time.Second)
	def(&c.ReportInterval, 5*time.Second)
	def(&c.AllocateTimeout, 5*time.Second)
	def(&c.ReleaseTimeout, 3*time.Second)
	if c.SendQueueLen <= 0 {
		c.SendQueueLen = 256
	}
	if c.ReadBufferSize <= 0 {
		c.ReadBufferSize = 16 << 10
	}
	if c.MTU <= 0 {
		c.MTU = 1500
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Dataplane serves clients. Create it with New, run it with Run.
type Dataplane struct {
	cfg    Config
	scfg   session.Config
	log    *slog.Logger
	drops  session.Drops
	routes route.Table[session.Session]

	mu       sync.Mutex
	sessions map[*session.Session]struct{}
	gone     session.Counters // counters of closed sessions

	idPrefix string
	seq      atomic.Uint64
	accepted atomic.Uint64
	closed   atomic.Uint64
	ctrlOK   atomic.Bool
	started  time.Time

	conns    sync.WaitGroup // session goroutines
	releases sync.WaitGroup // release calls in flight
}

// New checks the configuration and returns a data plane ready to Run.
func New(cfg Config) (*Dataplane, error) {
	cfg.setDefaults()
	switch {
	case cfg.ID == "":
		return nil, errors.New("data plane id is empty")
	case cfg.Listener == nil:
		return nil, errors.New("no client listener")
	case cfg.TUN == nil:
		return nil, errors.New("no TUN device")
	case cfg.Controller == nil:
		return nil, errors.New("no controller")
	case cfg.KeepaliveTimeout <= cfg.KeepaliveInterval:
		return nil, fmt.Errorf("keepalive timeout %s must be longer than the interval %s", cfg.KeepaliveTimeout, cfg.KeepaliveInterval)
	}
	now := time.Now()
	d := &Dataplane{
		cfg:      cfg,
		log:      cfg.Logger.With("dataplane", cfg.ID),
		sessions: make(map[*session.Session]struct{}),
		started:  now,
		// Session ids must not repeat across restarts of this data plane:
		// the controller keys leases by them.
		idPrefix: strconv.FormatInt(now.UnixNano()/int64(time.Millisecond), 36) + "-",
	}
	d.ctrlOK.Store(true)
	d.scfg = session.Config{
		Host:              (*host)(d),
		TUN:               cfg.TUN,
		Drops:             &d.drops,
		Logger:            d.log,
		KeepaliveInterval: cfg.KeepaliveInterval,
		KeepaliveTimeout:  cfg.KeepaliveTimeout,
		SendQueueLen:      cfg.SendQueueLen,
		WriteTimeout:      cfg.WriteTimeout,
		ReadBufferSize:    cfg.ReadBufferSize,
		Epoch:             now,
	}
	return d, nil
}

// Run serves until ctx ends, then closes every session (releasing their
// addresses), the listener and the TUN.
func (d *Dataplane) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.acceptLoop(gctx) })
	g.Go(func() error { return d.tunLoop(gctx) })
	g.Go(func() error { d.sweepLoop(gctx); return nil })
	g.Go(func() error { d.reportLoop(gctx); return nil })
	g.Go(func() error {
		<-gctx.Done()
		d.shutdown()
		return nil
	})
	err := g.Wait()
	if ctx.Err() != nil {
		return nil // asked to stop
	}
	return err
}

func (d *Dataplane) shutdown() {
	d.cfg.Listener.Close()
	for _, s := range d.snapshot() {
		s.Close("data plane shutting down")
	}
	d.conns.Wait()
	d.releases.Wait()
	d.cfg.TUN.Close()
}

func (d *Dataplane) acceptLoop(ctx context.Context) error {
	var backoff time.Duration
	for {
		c, err := d.cfg.Listener.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: wait and retry,
			// as net/http does, rather than spin or exit.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			d.log.Error("accept failed", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
				continue
			case <-ctx.Done():
				return nil
			}
		}
		backoff = 0
		d.accepted.Add(1)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		s := session.New(&d.scfg, d.idPrefix+strconv.FormatUint(d.seq.Add(1), 10), c)
		d.mu.Lock()
		d.sessions[s] = struct{}{}
		d.mu.Unlock()
		d.log.Debug("client connected", "session", s.ID(), "client", s.Remote())
		d.conns.Add(1)
		go func() {
			defer d.conns.Done()
			s.Serve()
		}()
	}
}

// tunLoop reads packets from the TUN and queues each, framed as a 103, to
// the session owning its destination. It never blocks on a session.
func (d *Dataplane) tunLoop(ctx context.Context) error {
	n := max(d.cfg.TUN.BatchSize(), 1)
	bufs := make([]*session.Buf, n)
	vecs := make([][]byte, n)
	sizes := make([]int, n)
	for {
		for i := range bufs {
			if bufs[i] == nil {
				bufs[i] = session.GetBuf()
			}
			vecs[i] = bufs[i].B
		}
		count, err := d.cfg.TUN.Read(vecs, sizes, wire.HeaderLen)
		if err != nil {
			if tun.IsClosed(err) || ctx.Err() != nil {
				return nil
			}
			d.log.Error("TUN read failed", "err", err)
			select {
			case <-time.After(100 * time.Millisecond):
				continue
			case <-ctx.Done():
				return nil
			}
		}
		for i := 0; i < count; i++ {
			size := sizes[i]
			p := vecs[i][wire.HeaderLen : wire.HeaderLen+size]
			if size < packet.MinHeaderLen || packet.Version(p) != 4 {
				d.drops.Add(session.DropTUNNotIPv4)
				continue
			}
			s := d.routes.Lookup(packet.Dst4(p))
			if s == nil {
				d.drops.Add(session.DropNoRoute)
				continue
			}
			wire.PutHeader(vecs[i], wire.TypeNetResponse, size)
			bufs[i].N = wire.HeaderLen + size
			if s.SendData(bufs[i]) {
				bufs[i] = nil // the session owns it now
			}
		}
	}
}

// sweepInterval is how often keepalives and timeouts are checked: the seed
// uses one second; short test settings need finer steps to be exact.
func (d *Dataplane) sweepInterval() time.Duration {
	t := min(d.cfg.KeepaliveInterval, d.cfg.KeepaliveTimeout) / 4
	return min(max(t, 10*time.Millisecond), time.Second)
}

func (d *Dataplane) sweepLoop(ctx context.Context) {
	t := time.NewTicker(d.sweepInterval())
	defer t.Stop()
	var all []*session.Session
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		all = d.appendSessions(all[:0])
		now := d.scfg.Now()
		for _, s := range all {
			s.Tick(now)
		}
		clear(all)
	}
}

func (d *Dataplane) reportLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.ReportInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.report(ctx)
	}
}

func (d *Dataplane) report(ctx context.Context) {
	var reps []SessionReport
	for _, s := range d.snapshot() {
		in := s.Info()
		if in.State != session.Leased {
			continue
		}
		reps = append(reps, SessionReport{
			SessionID: in.ID, Addr: in.Addr, Client: in.Remote,
			ConnectedAt: in.ConnectedAt, LastHeard: in.LastHeard, Counters: in.Counters,
		})
	}
	rctx, cancel := context.WithTimeout(ctx, d.cfg.ReportInterval)
	defer cancel()
	unknown, err := d.cfg.Controller.Report(rctx, d.cfg.ID, reps)
	d.setControllerOK(err)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Warn("session report to controller failed", "sessions", len(reps), "err", err)
		}
		return
	}
	if len(unknown) > 0 {
		d.log.Warn("controller holds no lease for sessions of this data plane", "sessions", unknown)
	}
}

func (d *Dataplane) setControllerOK(err error) {
	ok := err == nil || !errors.Is(err, ErrControllerUnavailable)
	if d.ctrlOK.Swap(ok) != ok {
		if ok {
			d.log.Info("controller reachable again", "controller", d.cfg.ControllerAddr)
		} else {
			d.log.Error("controller unreachable", "controller", d.cfg.ControllerAddr, "err", err)
		}
	}
}

func (d *Dataplane) snapshot() []*session.Session {
	return d.appendSessions(nil)
}

func (d *Dataplane) appendSessions(dst []*session.Session) []*session.Session {
	d.mu.Lock()
	defer d.mu.Unlock()
	for s := range d.sessions {
		dst = append(dst, s)
	}
	return dst
}

// host implements session.Host for the data plane's sessions.
type host Dataplane

func (h *host) dp() *Dataplane { return (*Dataplane)(h) }

func (h *host) Lease(ctx context.Context, s *session.Session) (wire.AddrResponse, error) {
	d := h.dp()
	req := AllocateRequest{DataplaneID: d.cfg.ID, SessionID: s.ID(), Client: s.Remote()}
	deadline := time.Now().Add(d.cfg.AllocateTimeout)
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithDeadline(ctx, deadline)
		lease, err := d.cfg.Controller.Allocate(actx, req)
		cancel()
		d.setControllerOK(err)
		if err == nil {
			return lease, nil
		}
		if ctx.Err() != nil {
			return wire.AddrResponse{}, ctx.Err()
		}
		if errors.Is(err, ErrPoolExhausted) {
			d.log.Warn("no address for client: pool exhausted; closing its connection",
				"session", s.ID(), "client", s.Remote(), "err", err)
			return wire.AddrResponse{}, err
		}
		if !errors.Is(err, ErrControllerUnavailable) || time.Now().Add(wait).After(deadline) {
			d.log.Error("no address for client: allocation failed; closing its connection",
				"session", s.ID(), "client", s.Remote(), "attempts", attempt, "err", err)
			return wire.AddrResponse{}, err
		}
		d.log.Debug("allocation failed, retrying", "session", s.ID(), "attempt", attempt, "retry_in", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return wire.AddrResponse{}, ctx.Err()
		}
		wait = min(2*wait, time.Second)
	}
}

func (h *host) Leased(s *session.Session) {
	d := h.dp()
	addr := s.Addr()
	if prev := d.routes.Insert(packet.Addr4(addr), s); prev != nil && prev != s {
		// The controller leased one address twice, or a release was lost.
		// The newer lease wins; the older session cannot be trusted.
		d.log.Error("address conflict: address was still routed to another session; closing it",
			"addr", addr, "session", s.ID(), "previous_session", prev.ID())
		go prev.Close("address conflict: leased to session " + s.ID())
	}
	d.log.Info("client connected", "session", s.ID(), "client", s.Remote(), "addr", addr)
}

func (h *host) Release(s *session.Session, addr netip.Addr, reason string) {
	d := h.dp()
	d.routes.Remove(packet.Addr4(addr), s)
	d.releases.Add(1)
	go func() {
		defer d.releases.Done()
		req := ReleaseRequest{DataplaneID: d.cfg.ID, SessionID: s.ID(), Addr: addr, Reason: reason}
		var err error
		for attempt := 0; attempt < 3; attempt++ {
			if attempt > 0 {
				time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
			}
			ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ReleaseTimeout)
			err = d.cfg.Controller.Release(ctx, req)
			cancel()
			d.setControllerOK(err)
			if err == nil || !errors.Is(err, ErrControllerUnavailable) {
				break
			}
		}
		if err != nil {
			d.log.Error("release at controller failed; the controller keeps the lease until it learns otherwise",
				"addr", addr, "session", s.ID(), "err", err)
		}
	}()
}

func (h *host) Closed(s *session.Session, reason string) {
	d := h.dp()
	in := s.Info()
	d.mu.Lock()
	delete(d.sessions, s)
	d.gone = d.gone.Add(in.Counters)
	d.mu.Unlock()
	d.closed.Add(1)
	if in.Addr.IsValid() {
		d.log.Info("client disconnected", "session", s.ID(), "client", in.Remote, "addr", in.Addr,
			"reason", reason, "duration", time.Since(in.ConnectedAt).Round(time.Millisecond),
			"bytes_from_client", in.Counters.BytesFromClient, "bytes_to_client", in.Counters.BytesToClient)
	} else {
		d.log.Info("connection closed before lease", "session", s.ID(), "client", in.Remote, "reason", reason)
	}
}
