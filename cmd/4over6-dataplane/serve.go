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
	"syscall"
	"time"

	"github.com/fourover6/fourover6/cmd/internal/config"
	"github.com/fourover6/fourover6/cmd/internal/debug"
	"github.com/fourover6/fourover6/cmd/internal/logging"
	"github.com/fourover6/fourover6/cmd/internal/metrics"
	"github.com/fourover6/fourover6/cmd/internal/version"
	"github.com/fourover6/fourover6/controlplane/authz"
	"github.com/fourover6/fourover6/controlplane/ctlclient"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/api"
	"github.com/fourover6/fourover6/dataplane/ctlink"
	"github.com/fourover6/fourover6/dataplane/limit"
	dpmetrics "github.com/fourover6/fourover6/dataplane/metrics"
	"github.com/fourover6/fourover6/dataplane/nat"
	"github.com/fourover6/fourover6/dataplane/netcfg"
	"github.com/fourover6/fourover6/dataplane/tun"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func serve(ctx context.Context, o *options, fs *pflag.FlagSet, stderr io.Writer) (err error) {
	log, level, err := logging.New(stderr, logging.Options{Level: o.logLevel, Format: o.logFormat})
	if err != nil {
		return usageError{err}
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// Undo in reverse order whatever was set up, however we leave.
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()

	if err := debug.ServePprof(o.pprof, log); err != nil {
		return usageError{fmt.Errorf("--pprof: %w", err)}
	}
	ctlAddrs, _ := endpoint.ParseList(o.controller)
	creds, err := o.tls.DialOption()
	if err != nil {
		return usageError{err}
	}
	link, err := ctlink.Dial(ctlAddrs, ctlclient.WithDialOptions(creds))
	if err != nil {
		return fmt.Errorf("controller %s: %w", o.controller, err)
	}
	undo = append(undo, func() { link.Close() })

	instance := newInstanceID()
	apiEP, _ := endpoint.Parse(o.api)
	reg := dataplane.Registration{DataplaneID: o.id, InstanceID: instance, Version: version.String(), ClientListen: o.listen, APIAddress: apiEP.String()}
	pool, err := register(ctx, log, link, reg, link.String())
	if err != nil {
		return err
	}

	dev, err := tun.Open(tun.Config{Name: o.tunName, Backend: tun.Backend(o.tunBackend), MTU: o.mtu})
	if err != nil {
		return err
	}
	tunOpen := true
	undo = append(undo, func() {
		if tunOpen {
			dev.Close()
		}
	})
	if err := netcfg.Configure(netcfg.LinkConfig{Name: dev.Name(), MTU: o.mtu, Addr: netip.PrefixFrom(pool.Gateway, pool.Pool.Bits())}); err != nil {
		return fmt.Errorf("configure TUN %s: %w", dev.Name(), err)
	}
	if o.nat {
		undoNAT, err := nat.Enable(nat.Config{Pool: pool.Pool, TUN: dev.Name(), Interfaces: o.natInterfaces, Logger: log})
		if err != nil {
			return fmt.Errorf("--nat: %w", err)
		}
		undo = append(undo, func() {
			if err := undoNAT(); err != nil {
				log.Error("removing NAT rules failed", "err", err)
			}
		})
	}

	ln, err := net.Listen(listenNetwork(o.listen), o.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", o.listen, err)
	}
	dp, err := dataplane.New(dataplane.Config{
		ID: o.id, InstanceID: instance, Version: version.String(), APIAddress: apiEP.String(),
		Listener: ln, TUN: dev, MTU: o.mtu, Pool: pool,
		ControlPlane: link, ControllerAddr: link.String(), Logger: log,
		KeepaliveInterval: o.keepaliveInterval, KeepaliveTimeout: o.keepaliveTimeout,
		WriteTimeout: o.writeTimeout, ReportInterval: o.reportInterval,
		AllocateTimeout: o.allocateTimeout, SendQueueLen: o.sendQueue,
		Limits: limit.Config{
			MaxClients: o.maxClients, MaxConnsPerIP: o.maxConnsPerIP, MaxConnsPerPrefix: o.maxConnsPerPrefix,
			PrefixLen: o.prefixLen, AcceptRate: o.acceptRate, AcceptBurst: o.acceptBurst,
		},
	})
	if err != nil {
		ln.Close()
		return err
	}
	tunOpen = false // Run closes it

	grpcMetrics := metrics.NewGRPC()
	sopt, err := o.tls.ServerOption()
	if err != nil {
		ln.Close()
		return usageError{err}
	}
	guard := authz.New(log, &dpv1.DataplaneService_ServiceDesc, &healthpb.Health_ServiceDesc)
	gs := grpc.NewServer(append(append(grpcMetrics.ServerOptions(), sopt), guard.ServerOptions()...)...)
	api.New(dp, level, log).Register(gs)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	grpcMetrics.InitializeMethods(gs)

	var ms *metrics.Server
	if o.metrics != "" {
		reg := metrics.NewRegistry()
		reg.MustRegister(dpmetrics.New(dp), grpcMetrics, dpmetrics.NewAudit(guard))
		ms, err = metrics.Start(metrics.Config{Addr: o.metrics, Registry: reg, Logger: log, Ready: readiness(dp)})
		if err != nil {
			ln.Close()
			return fmt.Errorf("--metrics: %w", err)
		}
	}

	apiLn, err := apiEP.Listen()
	if err != nil {
		ln.Close()
		return fmt.Errorf("--api: %w", err)
	}
	go gs.Serve(apiLn)
	go config.ReloadOnHUP(ctx, fs, *o.configFile, level, log)

	log.Info("data plane started",
		"id", o.id, "version", version.String(), "listen", ln.Addr().String(),
		"tun", dev.Name(), "tun_backend", o.tunBackend, "gateway", pool.Gateway, "pool", pool.Pool, "mtu", o.mtu,
		"api", apiEP.String(), "controller", link.String(), "metrics", o.metrics, "nat", o.nat,
		"keepalive_interval", o.keepaliveInterval, "keepalive_timeout", o.keepaliveTimeout)

	runErr := dp.Run(ctx)
	log.Info("data plane stopping")
	hs.Shutdown()
	if ms != nil {
		ms.NotReady("shutting down")
	}
	stopGRPC(gs, 5*time.Second)
	if apiEP.Network == "unix" {
		os.Remove(apiEP.Address)
	}
	if ms != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ms.Shutdown(sctx)
		cancel()
	}
	return runErr
}

// readiness: a data plane is ready for new clients when it is not draining
// and can reach the controller (a 100 needs it).
func readiness(dp *dataplane.Dataplane) metrics.ReadyFunc {
	return func(context.Context) error {
		if dp.Draining() {
			return errors.New("draining")
		}
		if !dp.Status().ControllerConnected {
			return errors.New("controller unreachable")
		}
		return nil
	}
}

// register retries until the controller answers: a data plane without a
// pool cannot configure its TUN or serve anyone.
func register(ctx context.Context, log *slog.Logger, link dataplane.ControlPlane, r dataplane.Registration, addr string) (dataplane.Assignment, error) {
	wait := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		pool, err := link.Register(rctx, r)
		cancel()
		if err == nil {
			log.Info("registered with controller", "controller", addr, "gateway", pool.Gateway, "pool", pool.Pool)
			return pool, nil
		}
		if !errors.Is(err, dataplane.ErrControllerUnavailable) {
			return dataplane.Assignment{}, fmt.Errorf("register with controller %s: %w", addr, err)
		}
		log.Warn("controller not reachable yet; retrying", "controller", addr, "attempt", attempt, "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
			return dataplane.Assignment{}, fmt.Errorf("stopped before the controller at %s answered", addr)
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

func stopGRPC(gs *grpc.Server, grace time.Duration) {
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		gs.Stop()
	}
}

// newInstanceID names this process start: the controller tells a restarted
// data plane (whose old sessions are all gone) from a reconnecting one.
func newInstanceID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
