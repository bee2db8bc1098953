// Package api serves the data plane's gRPC API (DataplaneService): a thin
// adapter over dataplane.Dataplane.
package api

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/fourover6/fourover6/controlplane/loglevel"
	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/bgp"
	"github.com/fourover6/fourover6/dataplane/session"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Server implements dpv1.DataplaneServiceServer.
type Server struct {
	dpv1.UnimplementedDataplaneServiceServer
	dp       *dataplane.Dataplane
	level    *slog.LevelVar
	log      *slog.Logger
	upgrader Upgrader
	bgp      BGPSource // nil: BGP is off
}

// Upgrader hands the data plane over to a new process (the daemon's
// SIGUSR2) and says how it went.
type Upgrader func(ctx context.Context) (UpgradeResult, error)

// UpgradeResult is what a hand-off did.
type UpgradeResult struct {
	OldPID, NewPID int
	OldVersion     string
	Sessions       int
	Took, Paused   time.Duration
}

// SetUpgrader makes Upgrade available (without one it is Unimplemented).
func (s *Server) SetUpgrader(u Upgrader) { s.upgrader = u }

// Upgrade implements dpv1.DataplaneServiceServer.
func (s *Server) Upgrade(ctx context.Context, _ *dpv1.UpgradeRequest) (*dpv1.UpgradeResponse, error) {
	if s.upgrader == nil {
		return nil, status.Error(codes.Unimplemented, "this data plane cannot hand over to a new process")
	}
	s.log.Info("API: hand-off to a new process requested")
	r, err := s.upgrader(ctx)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "hand-off failed, the data plane serves on in process %d: %v", r.OldPID, err)
	}
	return &dpv1.UpgradeResponse{
		OldPid: uint32(r.OldPID), NewPid: uint32(r.NewPID), OldVersion: r.OldVersion,
		Sessions: uint32(r.Sessions), TookMs: uint64(r.Took.Milliseconds()), PausedMs: uint64(r.Paused.Milliseconds()),
	}, nil
}

// BGPSource is the data plane's BGP speaker, as the status shows it
// (*bgp.Speaker is one).
type BGPSource interface {
	Status() bgp.Status
	Config() bgp.Config
}

// SetBGP makes GetStatus show the BGP speaker src. Call it before serving.
func (s *Server) SetBGP(src BGPSource) { s.bgp = src }

// New returns the API over dp. level, when not nil, is the daemon's log
// level, changed by SetLogLevel.
func New(dp *dataplane.Dataplane, level *slog.LevelVar, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{dp: dp, level: level, log: log}
}

// Register adds the service to a gRPC server.
func (s *Server) Register(g *grpc.Server) { dpv1.RegisterDataplaneServiceServer(g, s) }

// GetStatus implements dpv1.DataplaneServiceServer.
func (s *Server) GetStatus(context.Context, *dpv1.GetStatusRequest) (*dpv1.GetStatusResponse, error) {
	st := s.dp.Status()
	return &dpv1.GetStatusResponse{Status: &dpv1.Status{
		DataplaneId:         st.ID,
		Version:             st.Version,
		ClientListen:        st.ClientListen,
		Tun:                 st.TUN,
		Mtu:                 uint32(st.MTU),
		Gateway:             addrString(st.Gateway.String(), st.Gateway.IsValid()),
		Pool:                addrString(st.Pool.String(), st.Pool.IsValid()),
		Controller:          st.Controller,
		ControllerConnected: st.ControllerConnected,
		StartedAt:           timestamppb.New(st.StartedAt),
		Sessions:            uint32(st.Sessions),
		LeasedSessions:      uint32(st.LeasedSessions),
		AcceptedTotal:       st.Accepted,
		ClosedTotal:         st.Closed,
		Counters:            counters(st.Traffic),
		Drops:               st.Drops,
		KeepaliveIntervalMs: uint64(st.KeepaliveInterval.Milliseconds()),
		KeepaliveTimeoutMs:  uint64(st.KeepaliveTimeout.Milliseconds()),
		Draining:            st.Draining,
		InstanceId:          st.InstanceID,
		Goroutines:          uint32(st.Goroutines),
		OpenFds:             uint32(max(st.OpenFDs, 0)),
		Refused:             st.Refused,
		Pid:                 uint32(st.PID),
		ProcessStartedAt:    timestamppb.New(st.ProcessStartedAt),
		HandoffsTotal:       st.Handoffs,
		Limits: &dpv1.Limits{
			MaxClients:        uint32(st.Limits.MaxClients),
			MaxConnsPerIp:     uint32(st.Limits.MaxConnsPerIP),
			MaxConnsPerPrefix: uint32(st.Limits.MaxConnsPerPrefix),
			PrefixLength:      uint32(st.Limits.PrefixLen),
			AcceptRate:        st.Limits.AcceptRate,
			AcceptBurst:       uint32(st.Limits.AcceptBurst),
		},
		Bgp: s.bgpStatus(),
	}}, nil
}

func (s *Server) bgpStatus() *dpv1.Bgp {
	if s.bgp == nil {
		return nil
	}
	st, cfg := s.bgp.Status(), s.bgp.Config()
	out := &dpv1.Bgp{
		Asn:               st.ASN,
		RouterId:          addrString(st.RouterID.String(), st.RouterID.IsValid()),
		NextHop:           addrString(st.NextHop.String(), st.NextHop.IsValid()),
		HoldTimeMs:        uint64(max(cfg.HoldTime, 0).Milliseconds()),
		GracefulRestartMs: uint64(st.RestartTime.Milliseconds()),
		Announced:         uint32(st.Announced),
		Aggregate:         addrString(st.Aggregate.String(), st.Aggregate.IsValid()),
		Pending:           uint32(st.Pending),
		FailedTotal:       st.Failed,
	}
	for _, p := range st.Peers {
		ps := &dpv1.BgpSession{
			PeerAddress:      p.Addr.String(),
			PeerPort:         uint32(p.Port),
			PeerAsn:          p.ASN,
			State:            p.State,
			UptimeMs:         uint64(p.Uptime.Milliseconds()),
			LocalAddress:     addrString(p.LocalAddress.String(), p.LocalAddress.IsValid()),
			RouterId:         addrString(p.RouterID.String(), p.RouterID.IsValid()),
			PrefixesSent:     p.PrefixesSent,
			PrefixesReceived: p.PrefixesReceived,
			Flaps:            p.Flaps,
			GracefulRestart:  p.GracefulRestart,
			LastError:        p.LastError,
		}
		if ps.PeerPort == 0 {
			ps.PeerPort = bgp.BGPPort
		}
		if !p.Since.IsZero() {
			ps.EstablishedAt = timestamppb.New(p.Since)
		}
		out.Sessions = append(out.Sessions, ps)
	}
	return out
}

// KickSession implements dpv1.DataplaneServiceServer.
func (s *Server) KickSession(_ context.Context, r *dpv1.KickSessionRequest) (*dpv1.KickSessionResponse, error) {
	var addr netip.Addr
	if r.GetAddress() != "" {
		a, err := netip.ParseAddr(r.GetAddress())
		if err != nil || !a.Is4() {
			return nil, status.Errorf(codes.InvalidArgument, "address %q: want an IPv4 address", r.GetAddress())
		}
		addr = a
	}
	if !addr.IsValid() && r.GetSessionId() == "" {
		return nil, status.Error(codes.InvalidArgument, "give an address or a session id")
	}
	in, err := s.dp.Kick(addr, r.GetSessionId(), r.GetReason())
	if errors.Is(err, dataplane.ErrNoSession) {
		return nil, status.Errorf(codes.NotFound, "no session holds %s", strings.TrimSpace(r.GetAddress()+" "+r.GetSessionId()))
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &dpv1.KickSessionResponse{SessionId: in.ID, Address: addrString(in.Addr.String(), in.Addr.IsValid())}, nil
}

// SetDraining implements dpv1.DataplaneServiceServer.
func (s *Server) SetDraining(_ context.Context, r *dpv1.SetDrainingRequest) (*dpv1.SetDrainingResponse, error) {
	s.dp.SetDraining(r.GetDraining())
	return &dpv1.SetDrainingResponse{Draining: s.dp.Draining()}, nil
}

// SetLogLevel implements dpv1.DataplaneServiceServer.
func (s *Server) SetLogLevel(_ context.Context, r *dpv1.SetLogLevelRequest) (*dpv1.SetLogLevelResponse, error) {
	if s.level == nil {
		return nil, status.Error(codes.Unimplemented, "this data plane has no adjustable log level")
	}
	l, err := loglevel.Parse(r.GetLevel())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	prev := s.level.Level()
	s.level.Set(l)
	s.log.Info("log level changed", "from", loglevel.Name(prev), "to", loglevel.Name(l))
	return &dpv1.SetLogLevelResponse{Previous: loglevel.Name(prev)}, nil
}

// ListSessions implements dpv1.DataplaneServiceServer.
func (s *Server) ListSessions(_ *dpv1.ListSessionsRequest, stream grpc.ServerStreamingServer[dpv1.ListSessionsResponse]) error {
	id := s.dp.ID()
	for _, in := range s.dp.Sessions() {
		sess := &dpv1.Session{
			DataplaneId: id,
			SessionId:   in.ID,
			State:       state(in.State),
			Address:     addrString(in.Addr.String(), in.Addr.IsValid()),
			ClientIpv6:  in.Remote.Addr().String(),
			ClientPort:  uint32(in.Remote.Port()),
			ConnectedAt: timestamppb.New(in.ConnectedAt),
			LastHeard:   timestamppb.New(in.LastHeard),
			Counters:    counters(in.Traffic),
			SendQueue:   uint32(in.SendQueue),
		}
		if err := stream.Send(&dpv1.ListSessionsResponse{Session: sess}); err != nil {
			return err
		}
	}
	return nil
}

func addrString(s string, ok bool) string {
	if !ok {
		return ""
	}
	return s
}

func counters(c session.Traffic) *dpv1.Counters {
	return &dpv1.Counters{
		BytesFromClient: c.BytesFromClient, PacketsFromClient: c.PacketsFromClient,
		BytesToClient: c.BytesToClient, PacketsToClient: c.PacketsToClient,
	}
}

func state(s session.State) dpv1.SessionState {
	switch s {
	case session.Accepted:
		return dpv1.SessionState_SESSION_STATE_ACCEPTED
	case session.Leased:
		return dpv1.SessionState_SESSION_STATE_LEASED
	case session.Closing, session.Closed:
		return dpv1.SessionState_SESSION_STATE_CLOSING
	}
	return dpv1.SessionState_SESSION_STATE_UNSPECIFIED
}
