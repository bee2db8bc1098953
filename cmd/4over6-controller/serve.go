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

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/fourover6/fourover6/cmd/internal/logging"
	"github.com/fourover6/fourover6/cmd/internal/version"
	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/dns"
	"github.com/fourover6/fourover6/controlplane/server"
	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// shutdownGrace bounds how long in-flight calls may finish after a signal;
// then the server stops hard so the process always exits.
const shutdownGrace = 5 * time.Second

// serve runs the controller until ctx is done.
func serve(ctx context.Context, cfg config, logw io.Writer) error {
	log, _, err := logging.New(logw, cfg.log)
	if err != nil {
		return usageError{err}
	}

	servers, err := pickDNS(cfg, log)
	if err != nil {
		return usageError{fmt.Errorf("--dns: %v", err)}
	}
	ctl, err := controller.New(controller.Config{
		Pool:    cfg.pool,
		Route:   cfg.route,
		DNS:     servers,
		Version: version.String(),
		Logger:  log,
	})
	if err != nil {
		return err // flags were validated; this is unexpected
	}

	log.Info("leases are kept in memory in this version; they do not survive a restart",
		"state", cfg.state)
	if !cfg.listen.IsLoopback() {
		log.Warn("listening on a non-loopback TCP address without TLS: anyone who can reach it can lease and release addresses",
			"listen", cfg.listen.String())
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

	gs := grpc.NewServer(server.Options(log)...)
	server.Register(gs, ctl)
	hs := health.NewServer()
	for _, svc := range []string{"", pb.LeaseService_ServiceDesc.ServiceName, pb.ControllerService_ServiceDesc.ServiceName} {
		hs.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(gs, hs)

	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()

	info := ctl.PoolInfo()
	log.Info("controller started",
		"version", version.String(),
		"listen", cfg.listen.String(),
		"pool", info.Prefix,
		"range", fmt.Sprintf("%s-%s", info.First, info.Last),
		"size", info.Size,
		"gateway", info.Gateway,
		"route", info.Route,
		"dns", joinAddrs(info.DNS[:]))

	select {
	case err := <-served:
		// Serve only returns on its own when the listener fails.
		return fmt.Errorf("serve gRPC on %s: %w", cfg.listen, err)
	case <-ctx.Done():
	}

	log.Info("shutting down", "grace", shutdownGrace)
	hs.Shutdown() // health checkers see NOT_SERVING while calls drain
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
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve gRPC on %s: %w", cfg.listen, err)
	}
	log.Info("controller stopped", "leases_dropped", ctl.PoolInfo().Leased)
	return nil
}

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
