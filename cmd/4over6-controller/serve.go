package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	cfgpkg "github.com/fourover6/fourover6/cmd/internal/config"
	"github.com/fourover6/fourover6/cmd/internal/debug"
	"github.com/fourover6/fourover6/cmd/internal/logging"
	"github.com/fourover6/fourover6/cmd/internal/metrics"
	"github.com/fourover6/fourover6/cmd/internal/sdnotify"
	"github.com/fourover6/fourover6/cmd/internal/version"
	"github.com/fourover6/fourover6/controlplane/authz"
	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/dns"
	"github.com/fourover6/fourover6/controlplane/leader"
	ctlmetrics "github.com/fourover6/fourover6/controlplane/metrics"
	"github.com/fourover6/fourover6/controlplane/server"
	"github.com/fourover6/fourover6/controlplane/store"
	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// shutdownGrace bounds how long in-flight calls may finish after a signal;
// then the server stops hard so the process always exits.
const shutdownGrace = 5 * time.Second

// daemon is one running controller: what start opened, in the order it was
// opened, and closes in reverse.
type daemon struct {
	cfg     config
	flags   *pflag.FlagSet
	log     *slog.Logger
	level   *slog.LevelVar
	dns     [dns.Count]netip.Addr // configured (flag, file or resolv.conf)
	dnsRes  dns.Result            // how dns was chosen
	store   *store.Monitor
	etcd    *store.Etcd // nil with bbolt
	elector leader.Elector
	ctl     *controller.Controller
	metrics *metrics.Server // nil without --metrics
	lis     net.Listener
	grpc    *grpc.Server
	health  *health.Server
	gm      *metrics.GRPC // counts and times the gRPC requests
	guard   *authz.Guard  // access and audit of the gRPC API
	notify  *sdnotify.Notifier
	// leading is what readiness reads: set when this controller starts and
	// stops leading.
	leading atomic.Bool

	closers []func()
}

// serve runs the controller until ctx is done or a part of it fails.
func serve(ctx context.Context, cfg config, flagSet *pflag.FlagSet, logw io.Writer) error {
	d, err := start(ctx, cfg, flagSet, logw)
	if err != nil {
		return err
	}
	err = d.run(ctx)
	d.close()
	if err == nil {
		d.log.Info("controller stopped", "store", d.store.String())
	}
	return err
}

// start opens everything the controller needs, or closes what it opened
// and fails.
func start(ctx context.Context, cfg config, flagSet *pflag.FlagSet, logw io.Writer) (*daemon, error) {
	d := &daemon{cfg: cfg, flags: flagSet, gm: metrics.NewGRPC()}
	if err := d.open(ctx, logw); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

func (d *daemon) open(ctx context.Context, logw io.Writer) error {
	var err error
	if d.log, d.level, err = logging.New(logw, d.cfg.log); err != nil {
		return usageError{err}
	}
	d.notify = sdnotify.New(d.log)
	if d.dnsRes, err = pickDNS(d.cfg, d.log); err != nil {
		return usageError{fmt.Errorf("--dns: %v", err)}
	}
	d.dns = d.dnsRes.Servers
	d.guard = authz.New(d.log, &pb.ControllerService_ServiceDesc, &pb.LeaseService_ServiceDesc, &healthpb.Health_ServiceDesc)
	for _, step := range []func(context.Context) error{d.openStore, d.restore, d.newController, d.startMetrics, d.listen, d.newServer} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	return nil
}

// onClose registers f to run at close, before what was registered earlier.
func (d *daemon) onClose(f func()) { d.closers = append(d.closers, f) }

func (d *daemon) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	d.closers = nil
}

// openStore opens the configured store and the matching elector.
func (d *daemon) openStore(ctx context.Context) error {
	var st store.Store
	if d.cfg.etcd == nil {
		b, err := store.OpenBoltWith(d.cfg.state, store.BoltOptions{Logger: d.log, Fresh: d.cfg.restore.fresh})
		if err != nil {
			return d.stateProblem(fmt.Errorf("--state: %w", err))
		}
		st, d.elector = b, leader.Static{}
	} else {
		ec := *d.cfg.etcd
		ec.Logger = d.log
		e, err := store.OpenEtcd(ctx, ec)
		if err != nil {
			return fmt.Errorf("--store: %w", err)
		}
		st, d.etcd = e, e
		d.elector = &leader.Etcd{Store: e, ID: d.cfg.id, TTL: d.cfg.electTTL, Logger: d.log}
	}
	d.store = store.NewMonitor(st, store.MonitorOptions{Logger: d.log})
	d.onClose(func() {
		if err := d.store.Close(); err != nil {
			d.log.Error("closing the store", "store", d.store.String(), "error", err)
		}
	})
	return nil
}

// restore starts the store from --restore FILE (see store.Restore).
func (d *daemon) restore(ctx context.Context) error {
	file := d.cfg.restore.file
	if file == "" {
		return nil
	}
	snap, err := store.ReadSnapshot(file, d.log)
	if err != nil {
		return stateError{fmt.Errorf("--restore: %w\nthe backup cannot be restored: take another one (4over6ctl backup -o FILE)", err)}
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	saveTo := d.cfg.state + ".replaced-" + stamp
	if d.etcd != nil {
		saveTo = file + ".replaced-" + stamp
		if err := d.noController(ctx); err != nil {
			return err
		}
	}
	res, err := store.Restore(ctx, d.store, snap, d.cfg.restore.replace, saveTo)
	switch {
	case errors.Is(err, store.ErrHoldsState):
		return stateError{fmt.Errorf("--restore %s: %w\nto replace it, add --restore-replace (the state it replaces is first saved as a backup, %s); to keep it, start without --restore", file, err, saveTo)}
	case err != nil:
		return fmt.Errorf("--restore %s: %w", file, err)
	case res.Skipped:
		d.log.Info("the store was restored from this backup before: --restore does nothing", "backup", file, "sha256", snap.ID, "store", d.store.String())
	default:
		replaced := res.Replaced.String()
		if res.ReplacedDamaged {
			replaced = "a damaged state (saved as it was)"
		}
		d.log.Warn("state restored from a backup", "backup", file, "sha256", snap.ID, "store", d.store.String(),
			"restored", res.Restored.String(), "replaced", replaced, "replaced_saved_to", res.SavedTo)
	}
	return nil
}

// noController refuses a restore into etcd while a controller campaigns on
// it: it would keep serving the state it loaded, not the restored one.
func (d *daemon) noController(ctx context.Context) error {
	key := leader.ElectionKey(d.etcd) + "/"
	resp, err := d.etcd.Client().Get(ctx, key, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("--restore: %w", err)
	}
	if len(resp.Kvs) > 0 {
		return stateError{fmt.Errorf("--restore: controller %q is running on %s (leading or standing by)\nstop every controller of this store before restoring (a controller killed without stopping drops out within --election-ttl)",
			resp.Kvs[0].Value, d.etcd)}
	}
	return nil
}

func (d *daemon) newController(context.Context) error {
	cfg := d.cfg
	ctl, err := controller.New(controller.Config{
		Pool:              cfg.pool,
		Route:             cfg.route,
		DNS:               d.dns,
		Version:           version.String(),
		ID:                cfg.id,
		Store:             d.store,
		Standby:           cfg.etcd != nil,
		LogLevel:          d.level,
		Logger:            d.log,
		HeartbeatInterval: cfg.heartbeat,
		DataplaneTimeout:  cfg.dpTimeout,
		GracePeriod:       cfg.grace,
		ReuseCooldown:     cfg.cooldown,
		Limits:            cfg.limits,
		DNSFrom:           d.dnsFrom(),
		RangeFrom:         d.origin("pool-range"),
	})
	if err != nil {
		return d.stateProblem(err)
	}
	d.ctl = ctl
	d.leading.Store(cfg.etcd == nil) // bbolt: New loaded the state, this controller leads
	d.warnPublicDNS()
	return nil
}

// origin is where the value of a flag came from: "default", "flag" or
// "file PATH:LINE".
func (d *daemon) origin(flag string) string {
	if d.flags == nil {
		return cfgpkg.Origin{}.String()
	}
	return cfgpkg.OriginOf(d.flags, flag).String()
}

// dnsFrom is where the configured DNS servers came from: --dns (flag or
// file), else resolv.conf and/or the public fallbacks.
func (d *daemon) dnsFrom() string {
	if len(d.cfg.dns) > 0 {
		return d.origin("dns")
	}
	var from []string
	for _, s := range d.dnsRes.Sources {
		switch s {
		case dns.FromResolvConf:
			from = append(from, "resolv.conf "+d.cfg.resolvConf)
		default:
			from = append(from, string(s))
		}
	}
	return strings.Join(from, " + ")
}

// warnPublicDNS says, loudly, that clients are told to use public DNS
// servers because neither --dns nor resolv.conf gave three: an operator
// whose clients must use their own resolvers wants to know at once. A DNS
// list set at run time, in effect instead, silences it.
func (d *daemon) warnPublicDNS() {
	if !slices.Contains(d.dnsRes.Sources, dns.FromFallbacks) {
		return
	}
	if set, err := d.ctl.Settings(); err == nil && set.DNSStored {
		return
	}
	var public []netip.Addr
	for _, a := range d.dns {
		if slices.Contains(dns.DefaultFallbacks(), a) && !slices.Contains(public, a) {
			public = append(public, a)
		}
	}
	attrs := []any{"dns", joinAddrs(d.dns[:]), "public", joinAddrs(public), "resolv_conf", d.cfg.resolvConf}
	if err := d.dnsRes.ResolvConfErr; err != nil {
		attrs = append(attrs, "resolv_conf_error", err)
	}
	why := "--dns is not set and --resolv-conf has fewer than three usable nameservers"
	if len(d.cfg.dns) > 0 {
		why = "--dns gives fewer than three servers"
	}
	d.log.Warn("handing out public DNS servers: "+why+"; give three with --dns (or 4over6ctl dns set)", attrs...)
}

func (d *daemon) startMetrics(context.Context) error {
	if err := debug.ServePprof(d.cfg.pprof, d.log); err != nil {
		return fmt.Errorf("--pprof: %w", err)
	}
	if d.cfg.metrics == "" {
		return nil
	}
	reg := metrics.NewRegistry()
	reg.MustRegister(d.gm, ctlmetrics.New(metricsSource(d.ctl), d.ctl.Counts), ctlmetrics.NewAudit(d.guard),
		ctlmetrics.NewStoreCollector(d.store))
	ms, err := metrics.Start(metrics.Config{Addr: d.cfg.metrics, Registry: reg, Logger: d.log, Ready: d.ready})
	if err != nil {
		return fmt.Errorf("--metrics: %w", err)
	}
	d.metrics = ms
	d.onClose(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		ms.Shutdown(ctx)
	})
	return nil
}

// ready is /readyz: it reads two cheap values, never a full status.
func (d *daemon) ready(context.Context) error {
	if !d.leading.Load() {
		return errors.New("standby: not the leader")
	}
	if err := d.store.LastWriteErr(); err != nil {
		return fmt.Errorf("store %s: %w", d.store, err)
	}
	return nil
}

func (d *daemon) listen(context.Context) error {
	lis, err := d.cfg.listen.Listen()
	if err != nil {
		return err
	}
	d.lis = lis
	if d.cfg.listen.Network == "unix" {
		path := d.cfg.listen.Address
		d.onClose(func() {
			// The listener unlinks its socket on close; this covers the
			// paths where it did not, so no stale socket is left behind.
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				d.log.Warn("cannot remove socket", "path", path, "error", err)
			}
		})
	}
	d.onClose(func() { lis.Close() }) // a no-op once Serve ran: it closes it
	return nil
}

func (d *daemon) newServer(context.Context) error {
	tlsOpt, err := d.cfg.tls.ServerOption()
	if err != nil {
		return usageError{err}
	}
	// Interceptors, outermost first: metrics, access and audit (guard),
	// the server's own (panic recovery).
	opts := append(append(d.gm.ServerOptions(), tlsOpt), d.guard.ServerOptions()...)
	d.grpc = grpc.NewServer(append(opts, server.Options(d.log)...)...)
	server.Register(d.grpc, d.ctl)
	d.health = health.NewServer()
	d.setHealth(d.cfg.etcd == nil)
	healthpb.RegisterHealthServer(d.grpc, d.health)
	d.gm.InitializeMethods(d.grpc)
	return nil
}

// setHealth: a standby is alive (overall health) but does not serve leases.
func (d *daemon) setHealth(leading bool) {
	d.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s := healthpb.HealthCheckResponse_NOT_SERVING
	if leading {
		s = healthpb.HealthCheckResponse_SERVING
	}
	d.health.SetServingStatus(pb.LeaseService_ServiceDesc.ServiceName, s)
	d.health.SetServingStatus(pb.ControllerService_ServiceDesc.ServiceName, s)
}

// run serves until ctx ends or a part fails; then it stops in order:
// readiness and health first, then the background parts (the reconcile
// loop; the election, which resigns), then the gRPC server (gracefully,
// within shutdownGrace). It returns the first failure.
func (d *daemon) run(ctx context.Context) error {
	d.logStarted()
	// The listener was opened by start: connections made from here on are
	// accepted (queued until Serve takes them). READY=1 is the first thing
	// systemd hears, before any watchdog ping.
	d.notify.Ready(d.statusLine())
	g, gctx := errgroup.WithContext(ctx)
	bg, bgctx := errgroup.WithContext(gctx)
	bg.Go(func() error { d.ctl.Run(bgctx); return nil })
	bg.Go(func() error { d.notify.Watchdog(bgctx, d.ctl.Stuck); return nil })
	bg.Go(func() error { return d.elect(bgctx) })
	bg.Go(func() error { cfgpkg.ReloadOnHUP(bgctx, d.flags, d.cfg.configFile, d.level, d.log); return nil })
	if d.metrics != nil {
		bg.Go(func() error { return d.watchMetrics(bgctx) })
	}
	g.Go(d.serveGRPC)
	g.Go(func() error {
		<-bgctx.Done()
		d.notify.Stopping("shutting down")
		d.log.Info("shutting down", "grace", shutdownGrace)
		if d.metrics != nil {
			d.metrics.NotReady("shutting down")
		}
		d.health.Shutdown() // health checkers see NOT_SERVING while calls drain
		err := bg.Wait()
		// The election resigned (etcd: a standby takes over at once); end
		// the command streams and watchers, which would hold GracefulStop.
		d.ctl.Deactivate("")
		d.leading.Store(false)
		d.stopGRPC()
		return err
	})
	return g.Wait()
}

// statusLine is what `systemctl status` shows.
func (d *daemon) statusLine() string {
	if d.leading.Load() {
		return "leading; serving on " + d.cfg.listen.String()
	}
	return "standby (leader: " + orUnknown(d.ctl.Status().LeaderID) + "); serving on " + d.cfg.listen.String()
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// serveGRPC serves until the server is stopped; a listener that fails is
// an error of the daemon.
func (d *daemon) serveGRPC() error {
	if err := d.grpc.Serve(d.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve gRPC on %s: %w", d.cfg.listen, err)
	}
	return nil
}

func (d *daemon) stopGRPC() {
	stopped := make(chan struct{})
	go func() {
		d.grpc.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(shutdownGrace)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		d.log.Warn("graceful stop timed out; closing remaining connections")
		d.grpc.Stop()
		<-stopped
	}
}

// elect runs the election until ctx ends (bbolt: this controller always
// leads). An election that stops on its own is an error of the daemon.
func (d *daemon) elect(ctx context.Context) error {
	// A state that cannot be used will not be better at the next term:
	// stop campaigning and exit, rather than resign and win again forever.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var unusable error
	err := d.elector.Run(ctx, leader.Callbacks{
		Elected: func(ctx context.Context) error {
			if err := d.ctl.Activate(ctx); err != nil {
				if errors.As(err, new(*store.StateError)) {
					unusable = err
					cancel()
				}
				return err
			}
			d.leading.Store(true)
			d.setHealth(true)
			d.notify.Status(d.statusLine())
			return nil
		},
		Lost: func(id string) {
			d.leading.Store(false)
			d.setHealth(false)
			d.ctl.Deactivate(id)
			d.notify.Status(d.statusLine())
		},
		Leader: func(id string) {
			d.ctl.SetLeader(id)
			d.notify.Status(d.statusLine())
		},
	})
	if unusable != nil {
		return d.stateProblem(unusable)
	}
	if err != nil {
		d.log.Error("leader election stopped", "error", err)
		return fmt.Errorf("leader election: %w", err)
	}
	return nil
}

// watchMetrics turns a failure of the metrics listener into an error of the
// daemon.
func (d *daemon) watchMetrics(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case <-d.metrics.Done():
		if err := d.metrics.Err(); err != nil {
			return fmt.Errorf("--metrics %s: %w", d.metrics.Addr(), err)
		}
		return nil
	}
}

// logStarted says what the controller runs with: the values in effect and
// where each came from (default, flag, file PATH:LINE, or stored: set at
// run time with dns set, pool set-range or apply, which wins over both).
// A standby does not have the store's settings yet: it shows the
// configured ones, and the state loaded line of its election the rest.
func (d *daemon) logStarted() {
	cfg := d.cfg
	dnsNow, dnsFrom, rangeFrom := d.dns, d.dnsFrom(), d.origin("pool-range")
	if set, err := d.ctl.Settings(); err == nil {
		dnsNow = set.DNS
		if set.DNSStored {
			dnsFrom = fromStored
		}
		if set.RangeStored {
			rangeFrom = fromStored
		}
	}
	o := d.origin
	d.log.Info("controller started",
		"version", version.String(),
		"id", cfg.id,
		"listen", cfg.listen.String(),
		"store", d.store.String(),
		"leader", d.leading.Load(),
		"pool", cfg.pool.Prefix,
		"range", rangeString(d.ctl, cfg),
		"gateway", gatewayOf(cfg.pool.Prefix),
		"route", cfg.route,
		"dns", joinAddrs(dnsNow[:]),
		"grace_period", cfg.grace,
		"dataplane_timeout", cfg.dpTimeout,
		"reuse_cooldown", cfg.cooldown,
		"max_leases_per_ip", limitText(cfg.limits.PerIP),
		"max_leases_per_prefix", limitText(cfg.limits.PerPrefix),
		"lease_prefix_length", cfg.limits.PrefixLen,
		slog.Group("from",
			"id", o("controller-id"), "listen", o("listen"), "store", o("store"), "pool", o("pool"),
			"range", rangeFrom, "route", o("route"), "dns", dnsFrom,
			"grace_period", o("grace-period"), "dataplane_timeout", o("dataplane-timeout"),
			"reuse_cooldown", o("reuse-cooldown"), "max_leases_per_ip", o("max-leases-per-ip"),
			"max_leases_per_prefix", o("max-leases-per-prefix"), "lease_prefix_length", o("lease-prefix-length")))
}

// fromStored is the origin of a value set at run time and kept in the
// store.
const fromStored = "stored"

// stateProblem marks an unusable state (exit code 3) and says what the
// operator can do about it; other errors pass as they are.
func (d *daemon) stateProblem(err error) error {
	var se *store.StateError
	if !errors.As(err, &se) {
		return err
	}
	const aside = "the file is moved aside, never deleted, and the data planes' reports bring their clients' leases back"
	var what string
	switch {
	case d.etcd != nil:
		what = "restore a backup into the store: stop every controller, then start one with --restore BACKUP --restore-replace"
	case errors.Is(err, store.ErrFormat):
		what = "run the controller version that wrote it, restore an older backup (--fresh-state --restore BACKUP) or start with an empty store (--fresh-state); " + aside
	default:
		what = "restore a backup (--fresh-state --restore BACKUP) or start with an empty store (--fresh-state); " + aside
	}
	return stateError{fmt.Errorf("%w\nthe controller does not start on this state: %s", err, what)}
}

func rangeString(ctl *controller.Controller, cfg config) string {
	if info, err := ctl.PoolInfo(context.Background()); err == nil {
		return fmt.Sprintf("%s-%s", info.First, info.Last)
	}
	if !cfg.pool.Range.IsZero() {
		return cfg.pool.Range.String()
	}
	return "whole prefix"
}

func gatewayOf(p netip.Prefix) netip.Addr { return p.Addr().Next() }

func limitText(n int) string {
	if n == 0 {
		return "unlimited"
	}
	return fmt.Sprint(n)
}

// pickDNS chooses the three DNS servers of the configuration; the public
// fallbacks, if it had to use them, are warned about once the store's
// settings are known (warnPublicDNS).
func pickDNS(cfg config, log *slog.Logger) (dns.Result, error) {
	res, err := dns.Servers(cfg.dns, cfg.resolvConf, nil)
	if err != nil {
		return res, err
	}
	if res.ResolvConfErr != nil && !errors.Is(res.ResolvConfErr, fs.ErrNotExist) {
		// A missing file is normal in containers and tests: the warning
		// about the fallbacks says it.
		log.Warn("cannot read resolv.conf", "path", cfg.resolvConf, "error", res.ResolvConfErr)
	}
	if len(res.Ignored) > 0 {
		log.Info("ignoring resolv.conf nameservers that only work on this host",
			"path", cfg.resolvConf, "ignored", joinAddrs(res.Ignored))
	}
	sources := make([]string, len(res.Sources))
	for i, s := range res.Sources {
		sources[i] = string(s)
	}
	log.Debug("DNS servers chosen", "dns", joinAddrs(res.Servers[:]), "from", strings.Join(sources, "+"))
	return res, nil
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

// metricsSource reads what the collector needs at scrape time.
func metricsSource(ctl *controller.Controller) ctlmetrics.Source {
	return ctlmetrics.SourceFunc(func() ctlmetrics.Snapshot {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st := ctl.Status()
		s := ctlmetrics.Snapshot{ID: st.ID, Version: st.Version, Leader: st.Leader}
		if pi, err := ctl.PoolInfo(ctx); err == nil {
			p := ctlmetrics.FromPool(pi.Stats)
			s.Pool = &p
		}
		if rs, err := ctl.Reservations(ctx); err == nil {
			s.Reservations = len(rs)
		}
		if dps, err := ctl.Dataplanes(ctx); err == nil {
			s.Dataplanes = map[string]int{}
			for _, d := range dps {
				s.Dataplanes[strings.ToLower(d.State.String())]++
				up := d.State == controller.StateUp || d.State == controller.StateDraining
				s.DataplaneList = append(s.DataplaneList, ctlmetrics.Dataplane{ID: d.ID, Up: up, LastHeartbeat: d.LastContact})
			}
		}
		return s
	})
}
