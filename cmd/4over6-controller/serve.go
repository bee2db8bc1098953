package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	cfgpkg "github.com/fourover6/fourover6/cmd/internal/config"
	"github.com/fourover6/fourover6/cmd/internal/logging"
	"github.com/fourover6/fourover6/cmd/internal/metrics"
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

// serve runs the controller until ctx is done.
func serve(ctx context.Context, cfg config, flagSet *pflag.FlagSet, logw io.Writer) error {
	log, level, err := logging.New(logw, cfg.log)
	if err != nil {
		return usageError{err}
	}
	servers, err := pickDNS(cfg, log)
	if err != nil {
		return usageError{fmt.Errorf("--dns: %v", err)}
	}
	st, elector, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("closing the store", "store", st.String(), "error", err)
		}
	}()
	ctl, err := controller.New(controller.Config{
		Pool:              cfg.pool,
		Route:             cfg.route,
		DNS:               servers,
		Version:           version.String(),
		ID:                cfg.id,
		Store:             st,
		Standby:           cfg.etcd != nil,
		LogLevel:          level,
		Logger:            log,
		HeartbeatInterval: cfg.heartbeat,
		DataplaneTimeout:  cfg.dpTimeout,
		GracePeriod:       cfg.grace,
		ReuseCooldown:     cfg.cooldown,
	})
	if err != nil {
		return err
	}
	tlsOpt, err := cfg.tls.ServerOption()
	if err != nil {
		return usageError{err}
	}
	grpcMetrics := metrics.NewGRPC()
	guard := authz.New(log, &pb.ControllerService_ServiceDesc, &pb.LeaseService_ServiceDesc, &healthpb.Health_ServiceDesc)
	var ms *metrics.Server
	if cfg.metrics != "" {
		reg := metrics.NewRegistry()
		reg.MustRegister(grpcMetrics, ctlmetrics.New(metricsSource(ctl), ctl.Counts), ctlmetrics.NewAudit(guard))
		ms, err = metrics.Start(metrics.Config{Addr: cfg.metrics, Registry: reg, Logger: log,
			Ready: func(context.Context) error {
				if !ctl.Status().Leader {
					return errors.New("standby: not the leader")
				}
				return nil
			}})
		if err != nil {
			return fmt.Errorf("--metrics: %w", err)
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
			defer cancel()
			ms.Shutdown(sctx)
		}()
	}
	lis, err := cfg.listen.Listen()
	if err != nil {
		return err
	}
	if cfg.listen.Network == "unix" {
		defer func() {
			// The listener unlinks its socket on close; this covers the
			// paths where it did not, so no stale socket is left behind.
			if err := os.Remove(cfg.listen.Address); err != nil && !errors.Is(err, fs.ErrNotExist) {
				log.Warn("cannot remove socket", "path", cfg.listen.Address, "error", err)
			}
		}()
	}

	// Interceptors, outermost first: metrics, access and audit (guard),
	// the server's own (panic recovery).
	opts := append(append(grpcMetrics.ServerOptions(), tlsOpt), guard.ServerOptions()...)
	gs := grpc.NewServer(append(opts, server.Options(log)...)...)
	server.Register(gs, ctl)
	hs := health.NewServer()
	setHealth := func(leading bool) {
		// A standby is alive (overall health) but does not serve leases.
		hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		s := healthpb.HealthCheckResponse_NOT_SERVING
		if leading {
			s = healthpb.HealthCheckResponse_SERVING
		}
		hs.SetServingStatus(pb.LeaseService_ServiceDesc.ServiceName, s)
		hs.SetServingStatus(pb.ControllerService_ServiceDesc.ServiceName, s)
	}
	setHealth(cfg.etcd == nil)
	healthpb.RegisterHealthServer(gs, hs)
	grpcMetrics.InitializeMethods(gs)
	go cfgpkg.ReloadOnHUP(ctx, flagSet, cfg.configFile, level, log)

	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()

	// Leadership: always ours with bbolt; an etcd election otherwise.
	ectx, stopElection := context.WithCancel(context.Background())
	elected := make(chan struct{})
	go func() {
		defer close(elected)
		err := elector.Run(ectx, leader.Callbacks{
			Elected: func(ctx context.Context) error {
				if err := ctl.Activate(ctx); err != nil {
					return err
				}
				setHealth(true)
				return nil
			},
			Lost: func(id string) {
				setHealth(false)
				ctl.Deactivate(id)
			},
			Leader: ctl.SetLeader,
		})
		if err != nil {
			log.Error("leader election stopped", "error", err)
		}
	}()
	rctx, stopReconcile := context.WithCancel(context.Background())
	reconciled := make(chan struct{})
	go func() { defer close(reconciled); ctl.Run(rctx) }()

	status := ctl.Status()
	log.Info("controller started",
		"version", version.String(),
		"id", cfg.id,
		"listen", cfg.listen.String(),
		"store", st.String(),
		"leader", status.Leader,
		"pool", cfg.pool.Prefix,
		"range", rangeString(ctl, cfg),
		"gateway", gatewayOf(cfg.pool.Prefix),
		"route", cfg.route,
		"dns", joinAddrs(servers[:]),
		"grace_period", cfg.grace,
		"dataplane_timeout", cfg.dpTimeout,
		"reuse_cooldown", cfg.cooldown)

	var serveErr error
	select {
	case err := <-served:
		// Serve only returns on its own when the listener fails.
		serveErr = fmt.Errorf("serve gRPC on %s: %w", cfg.listen, err)
	case <-ctx.Done():
	}

	log.Info("shutting down", "grace", shutdownGrace)
	if ms != nil {
		ms.NotReady("shutting down")
	}
	hs.Shutdown() // health checkers see NOT_SERVING while calls drain
	stopReconcile()
	<-reconciled
	// Resign (etcd) so a standby takes over at once, and end the command
	// streams and watchers, which would otherwise hold GracefulStop.
	stopElection()
	<-elected
	ctl.Deactivate("")
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(shutdownGrace)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		log.Warn("graceful stop timed out; closing remaining connections")
		gs.Stop()
		<-stopped
	}
	if serveErr != nil {
		return serveErr
	}
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve gRPC on %s: %w", cfg.listen, err)
	}
	log.Info("controller stopped", "store", st.String())
	return nil
}

// openStore opens the configured store and the matching elector.
func openStore(ctx context.Context, cfg config, log *slog.Logger) (store.Store, leader.Elector, error) {
	if cfg.etcd == nil {
		b, err := store.OpenBolt(cfg.state)
		if err != nil {
			return nil, nil, fmt.Errorf("--state: %w", err)
		}
		return b, leader.Static{}, nil
	}
	e, err := store.OpenEtcd(ctx, *cfg.etcd)
	if err != nil {
		return nil, nil, fmt.Errorf("--store: %w", err)
	}
	return e, &leader.Etcd{Store: e, ID: cfg.id, TTL: cfg.electTTL, Logger: log}, nil
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

// pickDNS chooses the three DNS servers and logs where they came from.
func pickDNS(cfg config, log *slog.Logger) ([dns.Count]netip.Addr, error) {
	res, err := dns.Servers(cfg.dns, cfg.resolvConf, nil)
	if err != nil {
		return res.Servers, err
	}
	if res.ResolvConfErr != nil {
		lvl := slog.LevelWarn
		if errors.Is(res.ResolvConfErr, fs.ErrNotExist) {
			lvl = slog.LevelInfo // normal in containers and tests
		}
		log.Log(context.Background(), lvl, "cannot read resolv.conf; using fallback DNS servers",
			"path", cfg.resolvConf, "error", res.ResolvConfErr)
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
	return res.Servers, nil
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
		s := ctlmetrics.Snapshot{Version: st.Version, Leader: st.Leader}
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
			}
		}
		return s
	})
}
