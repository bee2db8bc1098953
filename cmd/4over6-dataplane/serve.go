package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/fourover6/fourover6/cmd/internal/config"
	"github.com/fourover6/fourover6/cmd/internal/debug"
	"github.com/fourover6/fourover6/cmd/internal/logging"
	"github.com/fourover6/fourover6/cmd/internal/metrics"
	"github.com/fourover6/fourover6/cmd/internal/nice"
	"github.com/fourover6/fourover6/cmd/internal/sdnotify"
	"github.com/fourover6/fourover6/cmd/internal/version"
	"github.com/fourover6/fourover6/controlplane/authz"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/api"
	"github.com/fourover6/fourover6/dataplane/bgp"
	"github.com/fourover6/fourover6/dataplane/ctlink"
	"github.com/fourover6/fourover6/dataplane/handoff"
	"github.com/fourover6/fourover6/dataplane/limit"
	dpmetrics "github.com/fourover6/fourover6/dataplane/metrics"
	"github.com/fourover6/fourover6/dataplane/nat"
	"github.com/fourover6/fourover6/dataplane/netcfg"
	"github.com/fourover6/fourover6/dataplane/policy"
	"github.com/fourover6/fourover6/dataplane/tun"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

// daemon is a data plane process: what it opened, closed in reverse order
// by close (the one cleanup path, however serve ends).
type daemon struct {
	o      *options
	log    *slog.Logger
	level  *slog.LevelVar
	link   *ctlink.Link
	dev    tun.Device
	apiEP  endpoint.Endpoint
	apiLn  net.Listener
	gs     *grpc.Server
	health *health.Server
	ms     *metrics.Server // nil without --metrics
	notify *sdnotify.Notifier

	grpcMetrics *metrics.GRPC
	guard       *authz.Guard
	dp          *dataplane.Dataplane
	pol         *policy.Policy
	hosts       atomic.Pointer[policy.HostWatcher] // set by configure
	undo        []func()

	ln         net.Listener // clients'
	metricsLn  net.Listener // --metrics, handed over by a predecessor
	upgrades   *upgrader
	bgpHandoff bgpHandoff  // the BGP speaker's part in a hand-off
	handedOver atomic.Bool // a successor serves: leave what it uses alone
	tookOver   bool        // this process took over from a predecessor
	tunBackend string      // the TUN's backend as opened (never "auto")
	// bgp announces the clients' addresses (nil without --bgp-asn). It is
	// stopped after the data plane, or handed off (Handoff) to a successor
	// process that keeps the routes.
	bgp *bgp.Speaker
}

// serve runs the data plane until SIGINT or SIGTERM. The order matters:
// everything this host must provide (the TUN, the client listener, the
// API, the metrics listener) is opened first, so that a start that fails
// for a local reason (a busy TUN, a port in use) leaves nothing at the
// controller; then the data plane registers, configures the TUN from the
// registration's answer and serves. Errors an operator must fix are
// usageErrors (exit 2, which the unit does not restart).
func serve(ctx context.Context, o *options, fs *pflag.FlagSet, stderr io.Writer) error {
	log, level, err := logging.New(stderr, o.logOptions())
	if err != nil {
		return usageError{err}
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	nice.Apply(log, o.nice, o.rtPriority) // early: threads made later take it from their creators
	d := &daemon{o: o, log: log, level: level, notify: sdnotify.New(log)}
	d.upgrades = newUpgrader(d)
	defer d.close()
	parent, err := handoff.Inherited()
	if err != nil {
		return err
	}
	if parent != nil {
		// Started by a running data plane to take over from it.
		if err := d.takeOver(parent); err != nil {
			return fmt.Errorf("hand-off: %w", err)
		}
		return d.run(ctx, fs)
	}
	if err := d.open(); err != nil {
		return usageError{err}
	}
	return d.run(ctx, fs)
}

// onClose adds f to what close undoes.
func (d *daemon) onClose(f func()) { d.undo = append(d.undo, f) }

// close undoes whatever was set up, in reverse order.
func (d *daemon) close() {
	for i := len(d.undo) - 1; i >= 0; i-- {
		d.undo[i]()
	}
	d.undo = nil
}

// open opens the local resources and builds the data plane; nothing is
// said to the controller yet.
func (d *daemon) open() error {
	o := d.o
	if err := debug.ServePprof(o.pprof, d.log); err != nil {
		return fmt.Errorf("--pprof: %w", err)
	}
	if err := d.dial(); err != nil {
		return err
	}
	dev, opened, err := tun.OpenReport(tun.Config{Name: o.tunName, Backend: tun.Backend(o.tunBackend), MTU: o.mtu})
	if err != nil {
		return fmt.Errorf("--tun %s: %w", o.tunName, err)
	}
	d.log.Info("TUN opened", "tun", dev.Name(), "backend", string(opened.Backend), "asked", o.tunBackend, "why", opened.Reason)
	d.dev, d.tunBackend = dev, string(opened.Backend)
	d.onClose(func() { dev.Close() }) // Run closes it too; closing twice is harmless
	ln, err := net.Listen(listenNetwork(o.listen), o.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", o.listen, err)
	}
	d.ln = ln
	d.onClose(func() { ln.Close() })
	if err := d.newPolicy(); err != nil {
		return err
	}
	if err := d.newSpeaker(false); err != nil {
		return err
	}
	if d.dp, err = dataplane.New(d.config(ln)); err != nil {
		return err
	}
	if err := d.buildAPI(); err != nil {
		return err
	}
	if err := d.openMetrics(); err != nil {
		return err
	}
	return d.listenAPI() // last: its socket says the daemon is up
}

// dial prepares the link to the controller (it connects on first use).
func (d *daemon) dial() error {
	eps, err := endpoint.ParseList(d.o.controller)
	if err != nil {
		return fmt.Errorf("--controller: %w", err)
	}
	creds, err := d.o.tls.DialOption()
	if err != nil {
		return err
	}
	if d.link, err = ctlink.Dial(eps, []grpc.DialOption{creds}); err != nil {
		return fmt.Errorf("--controller %s: %w", d.o.controller, err)
	}
	d.onClose(func() { d.link.Close() })
	return nil
}

func (d *daemon) config(ln net.Listener) dataplane.Config {
	o := d.o
	d.apiEP, _ = endpoint.Parse(o.api) // validated
	cfg := dataplane.Config{
		ID: o.id, InstanceID: newInstanceID(), Version: version.String(), APIAddress: d.apiEP.String(),
		Listener: ln, TUN: d.dev, MTU: o.mtu, Configure: d.configure,
		ControlPlane: d.link, ControllerAddr: d.link.String(), Logger: d.log, Policy: d.pol,
		KeepaliveInterval: o.keepaliveInterval, KeepaliveTimeout: o.keepaliveTimeout,
		WriteTimeout: o.writeTimeout, ReportInterval: o.reportInterval,
		AllocateTimeout: o.allocateTimeout, SendQueueLen: o.sendQueue,
		SendQueueBytes: o.sendQueueBytes, SendQueueDelay: o.sendQueueDelay,
		Limits: limit.Config{
			MaxClients: o.maxClients, MaxConnsPerIP: o.maxConnsPerIP, MaxConnsPerPrefix: o.maxConnsPerPrefix,
			PrefixLen: o.prefixLen, AcceptRate: o.acceptRate, AcceptBurst: o.acceptBurst,
			PrefixAcceptRate: o.prefixAcceptRate, PrefixAcceptBurst: o.prefixAcceptBurst,
		},
	}
	if d.bgp != nil { // a nil *Speaker in the interface would not be nil
		cfg.Routes = d.bgp
	}
	return cfg
}

// buildAPI builds the gRPC server (served by run).
func (d *daemon) buildAPI() error {
	sopt, err := d.o.tls.ServerOption()
	if err != nil {
		return err
	}
	d.grpcMetrics = metrics.NewGRPC()
	d.guard = authz.New(d.log, &dpv1.DataplaneService_ServiceDesc, &healthpb.Health_ServiceDesc)
	d.gs = grpc.NewServer(append(append(d.grpcMetrics.ServerOptions(), sopt), d.guard.ServerOptions()...)...)
	as := api.New(d.dp, d.level, d.log)
	// A hand-off asked for over the API runs to its end (its own timeout
	// bounds it) even if the caller goes away.
	as.SetUpgrader(func(ctx context.Context) (api.UpgradeResult, error) {
		return d.upgrades.Upgrade(context.WithoutCancel(ctx))
	})
	if d.bgp != nil {
		as.SetBGP(d.bgp)
	}
	as.Register(d.gs)
	d.health = health.NewServer()
	healthpb.RegisterHealthServer(d.gs, d.health)
	d.grpcMetrics.InitializeMethods(d.gs)
	d.onClose(func() { d.gs.Stop() }) // closes the listener even if Serve never ran
	return nil
}

// listenAPI listens on --api.
func (d *daemon) listenAPI() error {
	var err error
	if d.apiLn, err = d.apiEP.Listen(); err != nil {
		return fmt.Errorf("--api: %w", err)
	}
	d.onClose(func() {
		d.apiLn.Close()
		if d.apiEP.Network == "unix" && !d.handedOver.Load() {
			os.Remove(d.apiEP.Address)
		}
	})
	return nil
}

func parseAPI(s string) (endpoint.Endpoint, error) { return endpoint.Parse(s) }

// openMetrics starts --metrics, if set: /metrics, /healthz, /readyz.
func (d *daemon) openMetrics() error {
	if d.o.metrics == "" {
		return nil
	}
	reg := metrics.NewRegistry()
	reg.MustRegister(dpmetrics.New(d.dp), d.grpcMetrics, dpmetrics.NewAudit(d.guard))
	if d.bgp != nil {
		reg.MustRegister(dpmetrics.NewBGP(d.bgp))
	}
	cfg := metrics.Config{Addr: d.o.metrics, Registry: reg, Logger: d.log,
		Ready: func(context.Context) error { return d.dp.Ready() }}
	var ms *metrics.Server
	if d.metricsLn != nil {
		ms = metrics.Serve(d.metricsLn, cfg)
	} else {
		var err error
		if ms, err = metrics.Start(cfg); err != nil {
			return err // says --metrics
		}
	}
	d.ms = ms
	d.onClose(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ms.Shutdown(ctx)
	})
	return nil
}

// run serves until ctx ends or a part fails: the data plane (which
// registers first), the API, the metrics listener and SIGHUP reloads. The
// data plane runs on this goroutine, so it configures the TUN in the
// network namespace the daemon started in (a test locks its thread in
// one); the other parts run in an errgroup whose failure stops it.
func (d *daemon) run(ctx context.Context, fs *pflag.FlagSet) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := d.gs.Serve(d.apiLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("--api %s: %w", d.apiEP, err)
		}
		return nil
	})
	if d.ms != nil {
		g.Go(func() error {
			select {
			case <-d.ms.Done():
				if err := d.ms.Err(); err != nil {
					return fmt.Errorf("--metrics: %w", err)
				}
			case <-gctx.Done():
			}
			return nil
		})
	}
	g.Go(func() error {
		config.ReloadOnHUP(gctx, fs, *d.o.configFile, d.level, d.log, d.policyReloader())
		return nil
	})
	g.Go(func() error { d.upgrades.watch(gctx); return nil })
	d.log.Info("data plane starting",
		"id", d.o.id, "version", version.String(), "listen", d.o.listen,
		"tun", d.dev.Name(), "tun_backend", d.o.tunBackend, "mtu", d.o.mtu,
		"api", d.apiEP.String(), "controller", d.link.String(), "metrics", d.o.metrics, "nat", d.o.nat, "bgp", d.bgp != nil,
		"keepalive_interval", d.o.keepaliveInterval, "keepalive_timeout", d.o.keepaliveTimeout)
	// Every listener is open (open, or taken over): connections are
	// accepted from here on, and served once the controller answered the
	// registration.
	d.notifyReady()
	// READY=1 is the first thing systemd hears from this process: a
	// successor's watchdog ping before its READY would reach a manager that
	// still takes the old process for the main one.
	g.Go(func() error { d.notify.Watchdog(gctx, d.dp.Stuck); return nil })
	g.Go(func() error { d.showStatus(gctx); return nil })
	err := classify(d.dp.Run(gctx))
	if errors.Is(err, dataplane.ErrHandedOver) {
		err = nil
		d.log.Info("data plane handed over; this process exits", "pid", os.Getpid())
		if ul, ok := d.apiLn.(*net.UnixListener); ok {
			ul.SetUnlinkOnClose(false) // the socket is the new process's now
		}
	} else {
		d.stopBGP() // the clients are gone: so are their routes
		d.log.Info("data plane stopped")
	}
	cancel() // the rest stops with it
	d.stopServing()
	if gerr := g.Wait(); err == nil {
		err = gerr
	}
	return err
}

// showStatus keeps the status systemd shows up to date until ctx ends,
// and says STOPPING=1 then.
func (d *daemon) showStatus(ctx context.Context) {
	if !d.notify.Enabled() {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			d.notify.Stopping("shutting down")
			return
		case <-t.C:
			d.notify.Status(d.statusLine())
		}
	}
}

// statusLine is what `systemctl status` shows.
func (d *daemon) statusLine() string {
	if err := d.dp.Ready(); err != nil {
		return "not ready: " + err.Error() + "; controller " + d.link.String()
	}
	return "serving clients on " + d.o.listen + "; controller " + d.link.String()
}

// stopServing ends the API (gracefully, within 5 s) once the data plane
// has stopped, so that run's other parts return.
func (d *daemon) stopServing() {
	d.health.Shutdown()
	if d.ms != nil {
		d.ms.NotReady("shutting down")
	}
	done := make(chan struct{})
	go func() { d.gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		d.gs.Stop()
	}
	if d.ms != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.ms.Shutdown(ctx)
	}
}

// classify marks the data plane's errors an operator must fix (another
// instance holds the id; the controller refused the registration or the
// TUN could not be configured) as usageErrors: exit code 2.
func classify(err error) error {
	var se *dataplane.StartError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, dataplane.ErrIDInUse), errors.As(err, &se):
		return usageError{err}
	}
	return err
}

// configure is the data plane's Configure: the TUN's address from the
// registration, then NAT, then BGP.
func (d *daemon) configure(a dataplane.Assignment) error {
	if a.HandedOver {
		// The predecessor configured the TUN; it stays as it is.
		return d.configureAfterHandoff(a)
	}
	if err := netcfg.Configure(netcfg.LinkConfig{Name: d.dev.Name(), MTU: d.o.mtu, Addr: netip.PrefixFrom(a.Gateway, a.Pool.Bits()), TUNQueue: true}); err != nil {
		return fmt.Errorf("configure TUN %s: %w", d.dev.Name(), err)
	}
	d.log.Info("TUN configured", "tun", d.dev.Name(), "gateway", a.Gateway, "pool", a.Pool)
	if err := d.watchHost(); err != nil {
		return err
	}
	if d.o.nat {
		if err := d.enableNAT(a); err != nil {
			return err
		}
	}
	return d.startBGP(a)
}

// configureAfterHandoff takes charge of what the predecessor configured:
// the host watcher, and NAT (installing the table again replaces it in one
// step, so forwarding never stops, and gives this process its undo).
func (d *daemon) configureAfterHandoff(a dataplane.Assignment) error {
	if err := d.watchHost(); err != nil {
		return err
	}
	if d.o.nat {
		if err := d.enableNAT(a); err != nil {
			return err
		}
	}
	// The sessions are this process's already: a speaker that cannot start
	// must not cost the clients their connections.
	if err := d.startBGP(a); err != nil {
		d.log.Error("BGP: the speaker did not start after the hand-off; the clients are not announced from this process", "err", err)
	}
	return nil
}

// enableNAT masquerades the pool (--nat) until the daemon closes.
func (d *daemon) enableNAT(a dataplane.Assignment) error {
	undoNAT, err := nat.Enable(nat.Config{Pool: a.Pool, TUN: d.dev.Name(), Interfaces: d.o.natInterfaces, Logger: d.log})
	if err != nil {
		return fmt.Errorf("--nat: %w", err)
	}
	d.onClose(func() {
		if d.handedOver.Load() {
			return // the new process forwards on with these rules
		}
		if err := undoNAT(); err != nil {
			d.log.Error("removing NAT rules failed", "err", err)
		}
	})
	return nil
}

// newInstanceID names this process start: the controller tells a restarted
// data plane (whose old sessions are all gone) from a reconnecting one.
func newInstanceID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
