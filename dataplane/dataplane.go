package dataplane

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fourover6/fourover6/dataplane/limit"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/policy"
	"github.com/fourover6/fourover6/dataplane/route"
	"github.com/fourover6/fourover6/dataplane/sendq"
	"github.com/fourover6/fourover6/dataplane/session"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/fourover6/fourover6/dataplane/wire"
	"golang.org/x/sync/errgroup"
)

// Config holds a data plane's settings. Zero durations and sizes take the
// defaults below.
type Config struct {
	ID             string
	InstanceID     string // random per process start; generated when empty
	Version        string
	APIAddress     string       // the data plane's gRPC API, for the controller's registry
	Listener       net.Listener // clients connect here (TCP over IPv6)
	TUN            tun.Device   // open; Configure gives it its address
	MTU            int
	ControlPlane   ControlPlane
	ControllerAddr string // for status output
	Logger         *slog.Logger

	// Configure is called once, after the first registration, with the
	// pool the controller assigned (the TUN's address, NAT), on the
	// goroutine that called Run; nil: nothing to do. An error ends Run.
	Configure func(Assignment) error

	KeepaliveInterval time.Duration // default 20s
	KeepaliveTimeout  time.Duration // default 60s
	WriteTimeout      time.Duration // default 10s
	ReportInterval    time.Duration // default 5s
	AllocateTimeout   time.Duration // how long a 100 waits for an unreachable controller; default 5s
	ReleaseTimeout    time.Duration // per release attempt; default 3s
	RegisterTimeout   time.Duration // per registration attempt; default 5s
	StopTimeout       time.Duration // how long a stop waits for the controller; default 2s
	HeartbeatInterval time.Duration // default: what the controller said at registration, else 5s
	SendQueueLen      int           // default 256 messages
	SendQueueBytes    int           // message bytes per client's send queue; default sendq.DefaultMaxBytes
	SendQueueDelay    time.Duration // longest wait of a 103 in it; default sendq.DefaultMaxDelay
	SendQueueTarget   time.Duration // its CoDel target; default sendq.DefaultTarget
	ReadBufferSize    int           // first decoder buffer per client; default 512 bytes
	MaxReadBufferSize int           // busy clients' buffers grow up to this; default 256 KiB
	Limits            limit.Config  // zero values: unlimited
	// Policy says where clients' packets may go; Run gives it the pool
	// the controller assigned. Nil: the built-in rules, without the host's
	// addresses beyond the gateway (Policy.WatchHost reads them).
	Policy *policy.Policy
	// Routes, when set, is told of every client address this data plane
	// starts and stops holding (the BGP speaker, which announces a /32 for
	// each to the routers); nil: addresses are not announced.
	Routes Routes
}

// Routes announces where client addresses are. Announce comes once the
// 101 is queued, Withdraw at the release; both must return at once (they
// run on the lease path, under a session's lock for Announce). For one
// address the calls come in the order the data plane's route table
// changed, so the last call always says whether the address is here.
type Routes interface {
	Announce(addr netip.Addr) error
	Withdraw(addr netip.Addr) error
}

// retryCap bounds the data plane's waits between attempts to reach the
// controller (registration, the command stream, allocations, releases):
// a controller that comes back is used within about a second.
const retryCap = time.Second

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
	def(&c.RegisterTimeout, 5*time.Second)
	def(&c.StopTimeout, 2*time.Second)
	if c.InstanceID == "" {
		var b [8]byte
		rand.Read(b[:])
		c.InstanceID = hex.EncodeToString(b[:])
	}
	if c.SendQueueLen <= 0 {
		c.SendQueueLen = 256
	}
	if c.ReadBufferSize <= 0 {
		// Idle clients (ten thousand of them) only ever send keepalives.
		c.ReadBufferSize = 512
	}
	if c.MaxReadBufferSize < c.ReadBufferSize {
		c.MaxReadBufferSize = max(c.ReadBufferSize, 256<<10)
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
	// routesMu orders route table changes with their Announce/Withdraw
	// (only with Config.Routes): a withdrawal of an address's old session
	// cannot overtake the announcement of its new one.
	routesMu sync.Mutex
	sweeper  *session.Sweeper
	queue    *releaseQueue

	mu       sync.Mutex
	sessions map[*session.Session]func() // value: the limiter's release
	gone     session.Traffic             // counters of closed sessions
	pool     Assignment                  // from the last registration
	lastReg  time.Time                   // last registration attempt

	limiter  *limit.Limiter
	refused  sync.Map // reason -> *refusal
	draining atomic.Bool

	idPrefix   string
	seq        atomic.Uint64
	accepted   atomic.Uint64
	closed     atomic.Uint64
	closedBy   [session.NumCauses]atomic.Uint64 // closes by cause
	merged     atomic.Uint64                    // 100s answered by a pending lease's 101
	ctrlOK     atomic.Bool
	registered atomic.Bool
	stopping   atomic.Bool
	handedOff  atomic.Bool  // a successor took the sessions over
	heartbeat  atomic.Int64 // the interval in force, in nanoseconds
	beatAt     atomic.Int64 // when the heartbeat loop last went round (Unix ns; 0 before it runs)
	started    time.Time

	reregister chan struct{} // asks the heartbeat loop to register again

	reportMu       sync.Mutex // guards the report buffers
	reportSessions []*session.Session
	reportBuf      []SessionReport

	conns sync.WaitGroup // session goroutines

	// Hand-offs (handoff.go); under mu.
	loopCancel      context.CancelFunc // stops Run's loops; nil when they do not run
	handoff         *handoff           // a Freeze in progress
	handoffs        atomic.Uint64
	handoffFailures atomic.Uint64
	lastPause       atomic.Int64 // the last hand-off's freeze, in ns, measured by the successor
	processStart    time.Time
	lastHandoff     *HandoffState // what Restore took over; Run starts its sessions
	closeLater      []closeReq
	serving         chan struct{} // closed when Run first starts its loops
	servingOnce     sync.Once
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
	case cfg.ControlPlane == nil:
		return nil, errors.New("no controller")
	case cfg.KeepaliveTimeout <= cfg.KeepaliveInterval:
		return nil, fmt.Errorf("keepalive timeout %s must be longer than the interval %s", cfg.KeepaliveTimeout, cfg.KeepaliveInterval)
	}
	if cfg.Policy == nil {
		cfg.Policy, _ = policy.New(policy.Config{}) // the built-in rules: cannot fail
	}
	now := time.Now()
	d := &Dataplane{
		cfg:          cfg,
		log:          cfg.Logger.With("dataplane", cfg.ID),
		sessions:     make(map[*session.Session]func()),
		limiter:      limit.New(cfg.Limits),
		started:      now,
		processStart: now,
		reregister:   make(chan struct{}, 1),
		serving:      make(chan struct{}),
		// Session ids must not repeat across restarts of this data plane:
		// the controller keys leases by them.
		idPrefix: strconv.FormatInt(now.UnixNano()/int64(time.Millisecond), 36) + "-",
	}
	d.ctrlOK.Store(true)
	d.heartbeat.Store(int64(cmp.Or(cfg.HeartbeatInterval, 5*time.Second)))
	d.scfg = session.Config{
		Host:              (*host)(d),
		TUN:               cfg.TUN,
		Drops:             &d.drops,
		Logger:            d.log,
		Policy:            cfg.Policy,
		KeepaliveInterval: cfg.KeepaliveInterval,
		KeepaliveTimeout:  cfg.KeepaliveTimeout,
		SendQueueLen:      cfg.SendQueueLen,
		SendQueueBytes:    cfg.SendQueueBytes,
		SendQueueDelay:    cfg.SendQueueDelay,
		SendQueueTarget:   cfg.SendQueueTarget,
		WriteTimeout:      cfg.WriteTimeout,
		ReadBufferSize:    cfg.ReadBufferSize,
		MaxReadBufferSize: cfg.MaxReadBufferSize,
		Epoch:             now,
		Merged:            &d.merged,
	}
	d.sweeper = session.NewSweeper(d.scfg.Now)
	d.scfg.Sweeper = d.sweeper
	d.queue = newReleaseQueue(d.log, cfg.ReleaseTimeout, d.sendReleases, d.resolveLease)
	return d, nil
}

// Run registers with the controller (retrying while it cannot be reached),
// calls Configure with the pool it assigned, and serves until ctx ends or
// serving fails; then it stops (Stop). It returns nil when asked to stop,
// an *IDInUseError when another instance of the id is live, ErrHandedOver
// once a successor took over (Freeze), or why it could not serve.
//
// A data plane made by Restore does not register first: its predecessor's
// registration is its own. It serves its sessions at once and registers
// again on the side, which tells the controller its version.
func (d *Dataplane) Run(ctx context.Context) error {
	var err error
	if d.lastHandoff != nil {
		d.registered.Store(true)
	} else {
		err = d.register(ctx)
	}
	if err == nil {
		a := d.Assignment()
		_, err = d.cfg.Policy.SetPool(a.Gateway, a.Pool)
	}
	if err == nil && d.cfg.Configure != nil {
		a := d.Assignment()
		a.HandedOver = d.lastHandoff != nil
		if err = d.cfg.Configure(a); err != nil {
			err = fmt.Errorf("configure: %w", err)
		}
	}
	if err != nil {
		if d.registered.Load() && d.lastHandoff == nil {
			d.stop("start failed: " + err.Error())
		}
		if d.lastHandoff != nil {
			d.abandon()
		}
		d.cfg.Listener.Close()
		d.cfg.TUN.Close()
		if ctx.Err() != nil && !errors.Is(err, ErrIDInUse) {
			return nil // asked to stop before the controller answered
		}
		if errors.Is(err, ErrIDInUse) {
			return err
		}
		return &StartError{Err: err}
	}
	a := d.Assignment()
	if h := d.lastHandoff; h != nil {
		d.startRestored()
		d.log.Info("data plane took over from its predecessor", "instance", d.cfg.InstanceID,
			"sessions", len(h.Sessions), "releases_pending", len(h.Releases), "predecessor_version", h.Version,
			"handoffs", h.Handoffs, "listen", d.cfg.Listener.Addr().String(), "tun", d.cfg.TUN.Name(), "pool", a.Pool)
		d.lastHandoff = nil
		go d.announce(ctx)
	} else {
		d.log.Info("data plane started", "instance", d.cfg.InstanceID, "listen", d.cfg.Listener.Addr().String(),
			"tun", d.cfg.TUN.Name(), "gateway", a.Gateway, "pool", a.Pool)
	}
	for {
		err, paused := d.serveLoops(ctx)
		if !paused {
			return err
		}
		d.mu.Lock()
		h := d.handoff
		d.mu.Unlock()
		close(h.stopped)
		// Asked to stop meanwhile or not, the hand-off's outcome decides
		// (its own deadline bounds the wait): the successor may hold the
		// sessions already.
		resume := <-h.decided
		d.mu.Lock()
		d.handoff = nil
		d.mu.Unlock()
		if !resume {
			d.stopping.Store(true)
			d.conns.Wait()
			return ErrHandedOver
		}
		if ctx.Err() != nil {
			d.shutdown(ctx)
			return nil
		}
		d.log.Info("hand-off abandoned: this process serves on", "sessions", len(d.snapshot()))
	}
}

// announce registers the instance again after a hand-off (same instance:
// the controller keeps its leases) so the controller learns this process's
// version; the heartbeat loop registers again if this fails.
func (d *Dataplane) announce(ctx context.Context) {
	if _, err := d.registerOnce(ctx); err != nil {
		if ctx.Err() == nil {
			d.log.Warn("registering after the hand-off failed; the heartbeat tries again", "err", err)
			d.askRegister()
		}
		return
	}
	d.log.Info("registered with controller after the hand-off", "controller", d.cfg.ControllerAddr, "instance", d.cfg.InstanceID, "version", d.cfg.Version)
	d.report(ctx)
}

// serveLoops runs the data plane's loops until ctx ends, one fails, or a
// hand-off stops them (paused).
func (d *Dataplane) serveLoops(ctx context.Context) (err error, paused bool) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.mu.Lock()
	d.loopCancel = cancel
	d.mu.Unlock()
	g, gctx := errgroup.WithContext(lctx)
	d.servingOnce.Do(func() { close(d.serving) })
	g.Go(func() error { return d.acceptLoop(gctx) })
	g.Go(func() error { return d.tunLoop(gctx) })
	g.Go(func() error { d.sweeper.Run(gctx); return nil })
	g.Go(func() error { d.queue.Run(gctx); return nil })
	g.Go(func() error { d.reportLoop(gctx); return nil })
	g.Go(func() error { return d.heartbeatLoop(gctx) })
	g.Go(func() error { d.commandLoop(gctx); return nil })
	var shut bool
	g.Go(func() error {
		<-gctx.Done()
		d.mu.Lock()
		freezing := d.handoff != nil
		d.mu.Unlock()
		if freezing {
			return nil // Freeze stops the loops at message boundaries instead
		}
		// Closing the listener and the TUN is what ends the loops blocked
		// on them.
		d.shutdown(ctx)
		shut = true
		return nil
	})
	err = g.Wait() // nil when asked to stop: the loops fail only for a reason
	d.mu.Lock()
	d.loopCancel = nil
	paused = d.handoff != nil && !shut
	d.mu.Unlock()
	if !paused && !shut {
		d.shutdown(ctx) // a hand-off ended the loops only to be refused
	}
	return err, paused
}

// shutdown stops accepting, closes every session and tells the controller
// this instance stopped: it releases all the leases at once, instead of
// one release per session, and shows the data plane stopped.
func (d *Dataplane) shutdown(ctx context.Context) {
	d.stopping.Store(true)
	d.cfg.Listener.Close()
	live := d.snapshot()
	for _, s := range live {
		s.Close(session.Reason{Cause: session.CauseShutdown})
	}
	d.conns.Wait()
	why := "shutting down"
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		why = cause.Error()
	}
	d.stop(why)
	d.cfg.TUN.Close()
}

// stop calls the controller's StopDataplane once, within StopTimeout: a
// controller that is down does not hold the exit up for long (its grace
// period frees the leases then).
func (d *Dataplane) stop(why string) {
	if !d.registered.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.StopTimeout)
	defer cancel()
	start := time.Now()
	n, err := d.cfg.ControlPlane.Stop(ctx, StopRequest{DataplaneID: d.cfg.ID, InstanceID: d.cfg.InstanceID, Reason: why})
	if err != nil {
		d.log.Warn("could not tell the controller this data plane stops; it frees the leases after its grace period",
			"controller", d.cfg.ControllerAddr, "releases_waiting", d.queue.Len(), "err", err)
		return
	}
	dropped := d.queue.Drop() // the controller released them all
	d.log.Info("stopped at the controller", "leases_released", n, "queued_releases_dropped", dropped,
		"took", time.Since(start).Round(time.Millisecond))
}

// register registers until the controller answers; it gives up on ctx, on
// an id conflict and on any answer but "unavailable".
func (d *Dataplane) register(ctx context.Context) error {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		a, err := d.registerOnce(ctx)
		if err == nil {
			d.log.Info("registered with controller", "controller", d.cfg.ControllerAddr, "instance", d.cfg.InstanceID,
				"gateway", a.Gateway, "pool", a.Pool, "draining", a.Draining)
			return nil
		}
		if !errors.Is(err, ErrControllerUnavailable) || ctx.Err() != nil {
			return err
		}
		var pending *IDPendingError
		if errors.As(err, &pending) {
			d.log.Warn("the controller is waiting to learn whether the previous instance of this --id still runs; retrying",
				"id", d.cfg.ID, "previous_instance", pending.Registered, "waits_at_most", pending.Wait, "retry_in", wait)
		} else {
			d.log.Warn("controller not reachable yet; retrying", "controller", d.cfg.ControllerAddr,
				"attempt", attempt, "retry_in", wait, "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped before the controller at %s answered: %w", d.cfg.ControllerAddr, err)
		case <-time.After(wait):
		}
		wait = min(2*wait, retryCap)
	}
}

// registerOnce makes one registration attempt and applies its answer.
func (d *Dataplane) registerOnce(ctx context.Context) (Assignment, error) {
	d.mu.Lock()
	d.lastReg = time.Now()
	d.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, d.cfg.RegisterTimeout)
	a, err := d.cfg.ControlPlane.Register(rctx, d.registration())
	cancel()
	d.setControllerOK(err)
	if err != nil {
		var inUse *IDInUseError
		if errors.As(err, &inUse) {
			if inUse.DataplaneID == "" {
				inUse.DataplaneID = d.cfg.ID
			}
			d.log.Error("controller refused this data plane: "+inUse.Error(),
				"id", d.cfg.ID, "live_instance", inUse.Live.InstanceID, "live_peer", inUse.Live.Peer,
				"live_listen", inUse.Live.ClientListen, "live_api", inUse.Live.APIAddress)
			return a, inUse
		}
		return a, err
	}
	d.mu.Lock()
	if d.pool.Pool.IsValid() && (a.Pool != d.pool.Pool || a.Gateway != d.pool.Gateway) {
		d.log.Warn("controller assigned another pool; it takes effect on restart",
			"pool", a.Pool, "gateway", a.Gateway, "in_use", d.pool.Pool, "gateway_in_use", d.pool.Gateway)
		a.Pool, a.Gateway = d.pool.Pool, d.pool.Gateway
	}
	d.pool = a
	d.mu.Unlock()
	if d.cfg.HeartbeatInterval <= 0 && a.HeartbeatInterval > 0 {
		d.heartbeat.Store(int64(a.HeartbeatInterval))
	}
	d.SetDraining(a.Draining)
	d.registered.Store(true)
	return a, nil
}

// Assignment returns what the controller assigned at the last
// registration (the zero Assignment before the first).
func (d *Dataplane) Assignment() Assignment {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pool
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
		release, refused := d.admit(c)
		if refused != "" {
			c.Close()
			continue
		}
		d.accepted.Add(1)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
			// What waits for the client waits in its send queue, by flow,
			// not in the kernel's FIFO.
			if err := sendq.SetNotSentLowat(tc, sendq.NotSentLowat); err != nil {
				d.log.Debug("cannot shorten the send buffer", "client", c.RemoteAddr().String(), "err", err)
			}
		}
		s, err := session.New(&d.scfg, d.idPrefix+strconv.FormatUint(d.seq.Add(1), 10), c)
		if err != nil {
			// A listener whose connections are not sockets (a wrapper
			// hiding the *net.TCPConn): nothing can be served on it.
			d.log.Error("cannot serve connection", "client", c.RemoteAddr().String(), "err", err)
			c.Close()
			if release != nil {
				release()
			}
			continue
		}
		d.mu.Lock()
		d.sessions[s] = release
		d.mu.Unlock()
		d.log.Debug("connection accepted", "session", s.ID(), "client", s.Remote())
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
	bufs := make([]*sendq.Buf, n)
	vecs := make([][]byte, n)
	sizes := make([]int, n)
	run := make([]*sendq.Buf, 0, n)
	var failures int
	for {
		for i := range bufs {
			if bufs[i] == nil {
				bufs[i] = sendq.Get()
			}
			vecs[i] = bufs[i].B
		}
		count, err := d.cfg.TUN.Read(vecs, sizes, wire.HeaderLen)
		if err != nil {
			if tun.IsClosed(err) || ctx.Err() != nil {
				return nil
			}
			// One bad read (an odd offload packet) loses that packet
			// only; a stream of them must not spin or flood the log.
			failures++
			if failures == 1 || failures%1000 == 0 {
				d.log.Error("TUN read failed", "err", err, "failures", failures)
			}
			if failures%100 == 0 {
				select {
				case <-time.After(10 * time.Millisecond):
				case <-ctx.Done():
					return nil
				}
			}
			continue
		}
		// Packets of one super-packet go to one client: each run of
		// packets for the same session is handed over at once.
		var owner *session.Session
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
			if s != owner {
				run = handOver(owner, run)
				owner = s
			}
			wire.PutHeader(vecs[i], wire.TypeNetResponse, size)
			bufs[i].N = wire.HeaderLen + size
			run = append(run, bufs[i])
			bufs[i] = nil // taken: refilled before the next read
		}
		run = handOver(owner, run)
	}
}

// handOver gives a run of framed packets to their session (which keeps
// what it queued or wrote) and recycles the rest; it returns run emptied.
func handOver(s *session.Session, run []*sendq.Buf) []*sendq.Buf {
	if len(run) == 0 {
		return run
	}
	n := s.SendData(run)
	for _, b := range run[n:] {
		sendq.Put(b)
	}
	clear(run)
	return run[:0]
}

func (d *Dataplane) reportLoop(ctx context.Context) {
	every(ctx, d.cfg.ReportInterval, func() { d.report(ctx) })
}

// every calls fn every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}

// admit applies draining and the connection limits to a new connection.
func (d *Dataplane) admit(c net.Conn) (release func(), refused string) {
	remote, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	if d.draining.Load() {
		d.refuse("draining", remote)
		return nil, "draining"
	}
	release, why := d.limiter.Admit(remote.Addr(), time.Now())
	if why != "" {
		d.refuse(why, remote)
	}
	return release, why
}

// refusal counts connections refused for one reason and throttles the log:
// a flood must not turn into a flood of log lines.
type refusal struct {
	n       atomic.Uint64
	mu      sync.Mutex
	logged  time.Time
	pending uint64
}

func (d *Dataplane) refuse(reason string, remote netip.AddrPort) {
	v, _ := d.refused.LoadOrStore(reason, new(refusal))
	r := v.(*refusal)
	r.n.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending++
	if time.Since(r.logged) < 10*time.Second {
		return
	}
	msg := "connection refused by a limit"
	if reason == "draining" {
		msg = "connection refused: data plane is draining"
	}
	d.log.Warn(msg, "limit", reason, "client", remote, "refused_since_last_log", r.pending, "refused_total", r.n.Load())
	r.logged, r.pending = time.Now(), 0
}

// Refused returns connections refused, by reason.
func (d *Dataplane) Refused() map[string]uint64 {
	m := make(map[string]uint64)
	d.refused.Range(func(k, v any) bool {
		m[k.(string)] = v.(*refusal).n.Load()
		return true
	})
	return m
}

// SetDraining stops (true) or resumes (false) accepting new clients;
// established sessions go on.
func (d *Dataplane) SetDraining(on bool) {
	if d.draining.Swap(on) != on {
		d.log.Info("draining changed", "draining", on)
	}
}

// Draining reports whether new clients are refused.
func (d *Dataplane) Draining() bool { return d.draining.Load() }

// ErrNoSession is returned by Kick when no session matches.
var ErrNoSession = errors.New("no such session")

// Kick closes the session holding addr (when valid) or with id sessionID
// (when not empty; both must match when both are given).
func (d *Dataplane) Kick(addr netip.Addr, sessionID, reason string) (session.Info, error) {
	var s *session.Session
	if addr.IsValid() {
		if addr.Is4() {
			s = d.routes.Lookup(packet.Addr4(addr))
		}
		if s != nil && sessionID != "" && s.ID() != sessionID {
			s = nil
		}
	} else if sessionID != "" {
		for _, c := range d.snapshot() {
			if c.ID() == sessionID {
				s = c
				break
			}
		}
	}
	if s == nil {
		return session.Info{}, ErrNoSession
	}
	in := s.Info()
	s.Close(session.Reason{Cause: session.CauseKicked, Detail: reason})
	return in, nil
}

// heartbeatLoop sends a heartbeat every interval and registers again when
// the controller no longer knows this instance (a heartbeat says so, or a
// call was refused as not registered). Registering again with this
// instance's id never takes the id from another live instance: the
// controller refuses that, and then this instance has lost its id (its
// leases went to the other): the loop returns the *IDInUseError and the
// data plane stops.
func (d *Dataplane) heartbeatLoop(ctx context.Context) error {
	t := time.NewTimer(d.heartbeatInterval())
	defer t.Stop()
	for {
		d.beatAt.Store(time.Now().UnixNano())
		again := false
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			t.Reset(d.heartbeatInterval())
			again = !d.heartbeat1(ctx)
		case <-d.reregister:
			again = true
		}
		if !again || ctx.Err() != nil {
			continue
		}
		if err := d.registerAgain(ctx); errors.Is(err, ErrIDInUse) {
			return err
		}
	}
}

func (d *Dataplane) heartbeatInterval() time.Duration { return time.Duration(d.heartbeat.Load()) }

// heartbeat1 sends one heartbeat; it returns false when the controller does
// not know this instance.
func (d *Dataplane) heartbeat1(ctx context.Context) bool {
	open, leased := d.counts()
	hctx, cancel := context.WithTimeout(ctx, d.heartbeatInterval())
	r, err := d.cfg.ControlPlane.Heartbeat(hctx, Heartbeat{
		DataplaneID: d.cfg.ID, InstanceID: d.cfg.InstanceID,
		Sessions: open, LeasedSessions: leased,
	})
	cancel()
	d.setControllerOK(err)
	if err != nil {
		return !errors.Is(err, ErrNotRegistered)
	}
	d.SetDraining(r.Draining)
	return r.Known
}

// askRegister asks the heartbeat loop to register again (a call was
// refused: this instance is not registered).
func (d *Dataplane) askRegister() {
	select {
	case d.reregister <- struct{}{}:
	default:
	}
}

// registerAgain registers this instance again, at most once a second
// however often it is asked, then reports every live session at once.
func (d *Dataplane) registerAgain(ctx context.Context) error {
	d.mu.Lock()
	wait := time.Until(d.lastReg.Add(retryCap))
	d.mu.Unlock()
	if wait > 0 {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	d.log.Warn("controller does not know this data plane instance; registering again", "instance", d.cfg.InstanceID)
	if _, err := d.registerOnce(ctx); err != nil {
		if !errors.Is(err, ErrIDInUse) {
			d.log.Error("registering again failed; trying again with the next heartbeat", "err", err)
		}
		return err
	}
	d.log.Info("registered with controller again", "controller", d.cfg.ControllerAddr, "instance", d.cfg.InstanceID)
	d.report(ctx)
	return nil
}

func (d *Dataplane) registration() Registration {
	return Registration{
		DataplaneID: d.cfg.ID, InstanceID: d.cfg.InstanceID, Version: d.cfg.Version,
		ClientListen: d.cfg.Listener.Addr().String(), APIAddress: d.cfg.APIAddress,
	}
}

// commandLoop keeps the command stream from the controller open,
// reopening it within retryCap of its end.
func (d *Dataplane) commandLoop(ctx context.Context) {
	wait := 100 * time.Millisecond
	for {
		start := time.Now()
		err := d.cfg.ControlPlane.WatchDirectives(ctx, d.cfg.ID, d.cfg.InstanceID, d.command)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrNotRegistered) {
			d.askRegister()
		}
		if time.Since(start) > 10*time.Second {
			wait = 100 * time.Millisecond
		}
		d.log.Debug("command stream from controller ended; reopening", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, retryCap)
	}
}

func (d *Dataplane) command(c Directive) {
	switch {
	case c.Kick != nil:
		in, err := d.Kick(c.Kick.Addr, c.Kick.SessionID, c.Kick.Reason)
		if err != nil {
			d.log.Warn("controller asked to kick a client this data plane does not have",
				"addr", c.Kick.Addr, "session", c.Kick.SessionID)
			return
		}
		d.log.Info("client kicked on the controller's request", "addr", in.Addr, "session", in.ID, "reason", c.Kick.Reason)
	case c.Drain != nil:
		d.SetDraining(*c.Drain)
	case c.IDConflict != nil:
		in := c.IDConflict
		d.log.Error("DATA PLANE ID IN USE: another data plane tried to register with this one's --id and was refused; this one keeps serving. Give the other a different --id",
			"id", d.cfg.ID, "other", in.Where(), "other_instance", in.InstanceID, "other_peer", in.Peer,
			"other_listen", in.ClientListen, "other_api", in.APIAddress)
	}
}

func (d *Dataplane) report(ctx context.Context) {
	// Ten thousand sessions make a big report: its buffers are reused.
	d.reportMu.Lock()
	defer d.reportMu.Unlock()
	d.reportSessions = d.appendSessions(d.reportSessions[:0])
	reps := d.reportBuf[:0]
	for _, s := range d.reportSessions {
		in := s.Info()
		if in.State != session.Leased {
			continue
		}
		reps = append(reps, SessionReport{
			SessionID: in.ID, Addr: in.Addr, Client: in.Remote,
			ConnectedAt: in.ConnectedAt, LastHeard: in.LastHeard, Traffic: in.Traffic,
		})
	}
	clear(d.reportSessions)
	d.reportBuf = reps
	rctx, cancel := context.WithTimeout(ctx, d.cfg.ReportInterval)
	defer cancel()
	r, err := d.cfg.ControlPlane.Report(rctx, Report{
		DataplaneID: d.cfg.ID, InstanceID: d.cfg.InstanceID, Complete: true, Sessions: reps,
	})
	d.setControllerOK(err)
	if err != nil {
		if errors.Is(err, ErrNotRegistered) {
			d.askRegister()
		}
		if ctx.Err() == nil {
			d.log.Warn("session report to controller failed", "sessions", len(reps), "err", err)
		}
		return
	}
	if r.UnknownCount > 0 {
		d.log.Warn("controller holds no lease for sessions of this data plane",
			"unknown", r.UnknownCount, "sessions", r.Unknown[:min(len(r.Unknown), 20)])
	}
}

func (d *Dataplane) setControllerOK(err error) {
	// A controller asking us to wait (IDPendingError) answered: it is reachable.
	var pending *IDPendingError
	if errors.Is(err, context.Canceled) {
		// Our own shutdown cut the call short: it says nothing of the controller.
		return
	}
	ok := err == nil || !errors.Is(err, ErrControllerUnavailable) || errors.As(err, &pending)
	if d.ctrlOK.Swap(ok) != ok {
		if ok {
			d.log.Info("controller reachable again", "controller", d.cfg.ControllerAddr)
		} else {
			d.log.Error("controller unreachable", "controller", d.cfg.ControllerAddr, "err", err)
		}
	}
}

// counts returns open and leased sessions, cheaply (a heartbeat needs no
// more).
func (d *Dataplane) counts() (open, leased int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for s := range d.sessions {
		open++
		if s.State() == session.Leased {
			leased++
		}
	}
	return open, leased
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

// Lease asks the controller for s's address, retrying within
// AllocateTimeout while it cannot be reached (or does not know this
// instance, which then registers again). An allocation that ends without
// the controller's answer may have leased an address all the same: its
// release is queued unresolved (see releaseQueue).
func (h *host) Lease(ctx context.Context, s *session.Session) (wire.AddrResponse, error) {
	d := h.dp()
	req := AllocateRequest{DataplaneID: d.cfg.ID, InstanceID: d.cfg.InstanceID, SessionID: s.ID(), Client: s.Remote()}
	deadline := time.Now().Add(d.cfg.AllocateTimeout)
	wait := 50 * time.Millisecond
	unknown := false // an attempt may have reached the controller unanswered
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithDeadline(ctx, deadline)
		lease, err := d.cfg.ControlPlane.Allocate(actx, req)
		cancel()
		if ctx.Err() == nil { // a session that closed says nothing of the controller
			d.setControllerOK(err)
		}
		if err == nil {
			return lease, nil
		}
		retry := errors.Is(err, ErrControllerUnavailable)
		unknown = unknown || (retry && !errors.Is(err, ErrNotSent))
		if errors.Is(err, ErrNotRegistered) {
			d.askRegister()
			retry = true
		}
		switch {
		case ctx.Err() != nil:
			// The session closed while it waited for the controller.
		case errors.Is(err, ErrLeaseLimit):
			d.refuse("lease_limit", s.Remote())
			return wire.AddrResponse{}, &session.Refusal{Cause: session.CauseLeaseLimit, Err: err}
		case errors.Is(err, ErrPoolExhausted):
			d.log.Warn("no address for client: pool exhausted; closing its connection",
				"session", s.ID(), "client", s.Remote(), "err", err)
			return wire.AddrResponse{}, err
		case !retry || time.Now().Add(wait).After(deadline):
			d.log.Error("no address for client: allocation failed; closing its connection",
				"session", s.ID(), "client", s.Remote(), "attempts", attempt, "err", err)
		default:
			d.log.Debug("allocation failed, retrying", "session", s.ID(), "attempt", attempt, "retry_in", wait, "err", err)
			select {
			case <-time.After(wait):
				wait = min(2*wait, retryCap)
				continue
			case <-ctx.Done():
			}
		}
		if unknown {
			d.queue.AddUnresolved(s.ID(), s.Remote(), "allocation given up without an answer")
		}
		if ctx.Err() != nil {
			return wire.AddrResponse{}, ctx.Err()
		}
		return wire.AddrResponse{}, err
	}
}

func (h *host) Leased(s *session.Session) {
	d := h.dp()
	addr := s.Addr()
	if d.cfg.Routes != nil {
		d.routesMu.Lock()
	}
	prev := d.routes.Insert(packet.Addr4(addr), s)
	if d.cfg.Routes != nil {
		d.announceRoute(addr, true)
		d.routesMu.Unlock()
	}
	if prev != nil && prev != s {
		// The controller leased one address twice, or a release was lost.
		// The newer lease wins; the older session cannot be trusted.
		d.log.Error("address conflict: address was still routed to another session; closing it",
			"addr", addr, "session", s.ID(), "previous_session", prev.ID())
		go prev.Close(session.Reason{Cause: session.CauseAddressConflict, Detail: "leased to session " + s.ID()})
	}
	d.log.Info("client connected", "session", s.ID(), "client", s.Remote(), "addr", addr)
}

// Release removes the route at once and queues the release: the queue
// delivers it, batched with others, however long the controller is away.
func (h *host) Release(s *session.Session, addr netip.Addr, why session.Reason) {
	d := h.dp()
	if d.cfg.Routes == nil {
		d.routes.Remove(packet.Addr4(addr), s)
	} else {
		d.routesMu.Lock()
		if d.routes.Remove(packet.Addr4(addr), s) {
			d.announceRoute(addr, false)
		}
		d.routesMu.Unlock()
	}
	// The controller keeps free text: the reason as a person reads it.
	d.queue.Add(ReleaseRequest{SessionID: s.ID(), Addr: addr, Reason: why.String()})
}

// announceRoute tells Routes that addr is here (on) or gone; a failure is
// logged, it never holds up the client.
func (d *Dataplane) announceRoute(addr netip.Addr, on bool) {
	var err error
	if on {
		err = d.cfg.Routes.Announce(addr)
	} else {
		err = d.cfg.Routes.Withdraw(addr)
	}
	switch {
	case err == nil:
	case d.stopping.Load():
		// The speaker stops with the data plane and takes every route.
	default:
		d.log.Warn("route announcement failed", "addr", addr, "announce", on, "err", err)
	}
}

func (h *host) Closed(s *session.Session, why session.Reason) {
	d := h.dp()
	in := s.Info()
	d.mu.Lock()
	release := d.sessions[s]
	delete(d.sessions, s)
	d.gone = d.gone.Add(in.Traffic)
	d.mu.Unlock()
	if release != nil {
		release()
	}
	d.closed.Add(1)
	if why.Cause < session.NumCauses {
		d.closedBy[why.Cause].Add(1)
	}
	if in.Addr.IsValid() {
		d.log.Info("client disconnected", "session", s.ID(), "client", in.Remote, "addr", in.Addr,
			"reason", why.Cause.String(), "detail", why.Detail, "duration", time.Since(in.ConnectedAt).Round(time.Millisecond),
			"bytes_from_client", in.Traffic.BytesFromClient, "bytes_to_client", in.Traffic.BytesToClient)
	} else {
		d.log.Info("connection closed before lease", "session", s.ID(), "client", in.Remote,
			"reason", why.Cause.String(), "detail", why.Detail)
	}
}

// sendReleases is the release queue's delivery.
func (d *Dataplane) sendReleases(ctx context.Context, rs []ReleaseRequest) (int, error) {
	n, err := d.cfg.ControlPlane.ReleaseBatch(ctx, ReleaseBatch{DataplaneID: d.cfg.ID, InstanceID: d.cfg.InstanceID, Releases: rs})
	d.setControllerOK(err)
	return n, err
}

// resolveLease is the release queue's question for an allocation of unknown
// outcome: the session's lease, if it has one (asking again is idempotent).
func (d *Dataplane) resolveLease(ctx context.Context, sessionID string, client netip.AddrPort) (netip.Addr, error) {
	lease, err := d.cfg.ControlPlane.Allocate(ctx, AllocateRequest{
		DataplaneID: d.cfg.ID, InstanceID: d.cfg.InstanceID, SessionID: sessionID, Client: client,
	})
	d.setControllerOK(err)
	if errors.Is(err, ErrNotRegistered) {
		d.askRegister()
	}
	return lease.Addr, err
}
