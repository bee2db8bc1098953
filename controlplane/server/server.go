// Package server adapts controller.Controller to the gRPC API: LeaseService
// for data planes and ControllerService for operators. It only converts
// messages and maps errors to status codes; all logic is in the controller.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/pool"
	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// Register registers both services of c on s.
func Register(s grpc.ServiceRegistrar, c *controller.Controller) {
	pb.RegisterLeaseServiceServer(s, NewLeaseServer(c))
	pb.RegisterControllerServiceServer(s, NewControllerServer(c))
}

// Options returns server options every controller gRPC server should use:
// a panic in a handler becomes an Internal error for that call (and a log
// line) instead of taking the whole controller, and every lease, down.
func Options(log *slog.Logger) []grpc.ServerOption {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
			defer recoverTo(log, info.FullMethod, &err)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
			defer recoverTo(log, info.FullMethod, &err)
			return h(srv, ss)
		}),
	}
}

func recoverTo(log *slog.Logger, method string, err *error) {
	if r := recover(); r != nil {
		log.Error("panic in gRPC handler", "method", method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		*err = status.Error(codes.Internal, "internal error")
	}
}

// LeaseServer implements pb.LeaseServiceServer.
type LeaseServer struct {
	pb.UnimplementedLeaseServiceServer
	c *controller.Controller
}

// NewLeaseServer returns the data planes' API over c.
func NewLeaseServer(c *controller.Controller) *LeaseServer { return &LeaseServer{c: c} }

func (s *LeaseServer) RegisterDataplane(ctx context.Context, req *pb.RegisterDataplaneRequest) (*pb.RegisterDataplaneResponse, error) {
	reg, err := s.c.RegisterDataplane(ctx, req.GetDataplaneId(), req.GetVersion(), req.GetClientListen())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.RegisterDataplaneResponse{
		Gateway:           reg.Gateway.String(),
		Pool:              reg.Prefix.String(),
		ControllerVersion: reg.ControllerVersion,
	}, nil
}

func (s *LeaseServer) AllocateAddress(ctx context.Context, req *pb.AllocateAddressRequest) (*pb.AllocateAddressResponse, error) {
	client, err := parseIPv6("client_ipv6", req.GetClientIpv6(), true)
	if err != nil {
		return nil, err
	}
	port, err := parsePort("client_port", req.GetClientPort())
	if err != nil {
		return nil, err
	}
	l, err := s.c.Allocate(ctx, req.GetDataplaneId(), req.GetSessionId(), client, port)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.AllocateAddressResponse{Lease: leaseToPB(l)}, nil
}

func (s *LeaseServer) ReleaseAddress(ctx context.Context, req *pb.ReleaseAddressRequest) (*pb.ReleaseAddressResponse, error) {
	addr, err := parseIPv4("address", req.GetAddress(), true)
	if err != nil {
		return nil, err
	}
	ok, err := s.c.Release(ctx, req.GetDataplaneId(), req.GetSessionId(), addr, req.GetReason())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ReleaseAddressResponse{Released: ok}, nil
}

func (s *LeaseServer) ReportSessions(ctx context.Context, req *pb.ReportSessionsRequest) (*pb.ReportSessionsResponse, error) {
	reports := make([]controller.SessionReport, 0, len(req.GetSessions()))
	for i, r := range req.GetSessions() {
		rep, err := reportFromPB(r)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "sessions[%d]: %s", i, status.Convert(err).Message())
		}
		reports = append(reports, rep)
	}
	unknown, err := s.c.Report(ctx, req.GetDataplaneId(), reports)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ReportSessionsResponse{UnknownSessionIds: unknown}, nil
}

func reportFromPB(r *pb.SessionReport) (controller.SessionReport, error) {
	addr, err := parseIPv4("address", r.GetAddress(), false)
	if err != nil {
		return controller.SessionReport{}, err
	}
	client, err := parseIPv6("client_ipv6", r.GetClientIpv6(), false)
	if err != nil {
		return controller.SessionReport{}, err
	}
	port, err := parsePort("client_port", r.GetClientPort())
	if err != nil {
		return controller.SessionReport{}, err
	}
	connected, err := timeFromPB("connected_at", r.GetConnectedAt())
	if err != nil {
		return controller.SessionReport{}, err
	}
	heard, err := timeFromPB("last_heard", r.GetLastHeard())
	if err != nil {
		return controller.SessionReport{}, err
	}
	c := r.GetCounters()
	return controller.SessionReport{
		SessionID:   r.GetSessionId(),
		Addr:        addr,
		ClientIPv6:  client,
		ClientPort:  port,
		ConnectedAt: connected,
		LastHeard:   heard,
		Counters: controller.Counters{
			BytesFromClient:   c.GetBytesFromClient(),
			PacketsFromClient: c.GetPacketsFromClient(),
			BytesToClient:     c.GetBytesToClient(),
			PacketsToClient:   c.GetPacketsToClient(),
		},
	}, nil
}

// ControllerServer implements pb.ControllerServiceServer.
type ControllerServer struct {
	pb.UnimplementedControllerServiceServer
	c *controller.Controller
}

// NewControllerServer returns the operators' API over c.
func NewControllerServer(c *controller.Controller) *ControllerServer {
	return &ControllerServer{c: c}
}

func (s *ControllerServer) ListClients(req *pb.ListClientsRequest, stream grpc.ServerStreamingServer[pb.ListClientsResponse]) error {
	rows, err := s.c.Clients(stream.Context(), controller.Filter{DataplaneID: req.GetDataplaneId()})
	if err != nil {
		return toStatus(err)
	}
	for _, r := range rows {
		if err := stream.Send(&pb.ListClientsResponse{Client: clientToPB(r)}); err != nil {
			return err
		}
	}
	return nil
}

func (s *ControllerServer) GetClient(ctx context.Context, req *pb.GetClientRequest) (*pb.GetClientResponse, error) {
	addr, err := parseIPv4("address", req.GetAddress(), true)
	if err != nil {
		return nil, err
	}
	r, err := s.c.Client(ctx, addr)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.GetClientResponse{Client: clientToPB(r)}, nil
}

func (s *ControllerServer) GetPool(ctx context.Context, _ *pb.GetPoolRequest) (*pb.GetPoolResponse, error) {
	info := s.c.PoolInfo()
	dns := make([]string, len(info.DNS))
	for i, d := range info.DNS {
		dns[i] = d.String()
	}
	return &pb.GetPoolResponse{Pool: &pb.Pool{
		Prefix:     info.Prefix.String(),
		Gateway:    info.Gateway.String(),
		RangeFirst: info.First.String(),
		RangeLast:  info.Last.String(),
		Size:       info.Size,
		Leased:     info.Leased,
		Free:       info.Free,
		Reserved:   info.Reserved,
		Route:      info.Route.String(),
		Dns:        dns,
	}}, nil
}

func (s *ControllerServer) GetVersion(context.Context, *pb.GetVersionRequest) (*pb.GetVersionResponse, error) {
	return &pb.GetVersionResponse{Version: s.c.Version()}, nil
}

// toStatus maps the controller's errors to gRPC codes. The messages are the
// controller's own: they are written to be shown as they are.
func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, pool.ErrExhausted):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, controller.ErrInvalidArgument):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, controller.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}

func parseIPv4(field, s string, required bool) (netip.Addr, error) {
	if s == "" {
		if required {
			return netip.Addr{}, status.Errorf(codes.InvalidArgument, "%s is empty: want an IPv4 address", field)
		}
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, status.Errorf(codes.InvalidArgument, "%s %q is not an IPv4 address", field, clip(s))
	}
	return a, nil
}

func parseIPv6(field, s string, required bool) (netip.Addr, error) {
	if s == "" {
		if required {
			return netip.Addr{}, status.Errorf(codes.InvalidArgument, "%s is empty: want the client's IPv6 address", field)
		}
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is6() {
		return netip.Addr{}, status.Errorf(codes.InvalidArgument, "%s %q is not an IPv6 address", field, clip(s))
	}
	return a, nil
}

func parsePort(field string, p uint32) (uint16, error) {
	if p > math.MaxUint16 {
		return 0, status.Errorf(codes.InvalidArgument, "%s %d is not a TCP port", field, p)
	}
	return uint16(p), nil
}

func timeFromPB(field string, ts *timestamppb.Timestamp) (time.Time, error) {
	if ts == nil {
		return time.Time{}, nil
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, status.Errorf(codes.InvalidArgument, "%s: %v", field, err)
	}
	return ts.AsTime(), nil
}

// timeToPB leaves unknown times unset rather than sending year 1.
func timeToPB(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func leaseToPB(l controller.Lease) *pb.Lease {
	dns := make([]string, len(l.DNS))
	for i, d := range l.DNS {
		dns[i] = d.String()
	}
	return &pb.Lease{
		Address:     l.Addr.String(),
		Route:       l.Route.String(),
		Dns:         dns,
		DataplaneId: l.DataplaneID,
		SessionId:   l.SessionID,
		LeasedAt:    timeToPB(l.LeasedAt),
	}
}

func clientToPB(r controller.Client) *pb.Client {
	var v6 string
	if r.ClientIPv6.IsValid() {
		v6 = r.ClientIPv6.String()
	}
	return &pb.Client{
		Address:     r.Addr.String(),
		ClientIpv6:  v6,
		ClientPort:  uint32(r.ClientPort),
		DataplaneId: r.DataplaneID,
		SessionId:   r.SessionID,
		ConnectedAt: timeToPB(r.ConnectedAt),
		LastHeard:   timeToPB(r.LastHeard),
		Counters: &pb.Counters{
			BytesFromClient:   r.Counters.BytesFromClient,
			PacketsFromClient: r.Counters.PacketsFromClient,
			BytesToClient:     r.Counters.BytesToClient,
			PacketsToClient:   r.Counters.PacketsToClient,
		},
	}
}

// clip keeps echoed input short in error messages.
func clip(s string) string {
	const limit = 64
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "..."
}
