// Package server adapts controller.Controller to the gRPC API: LeaseService
// for data planes and ControllerService for operators. It only converts
// messages and maps errors to status codes; all logic is in the controller.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"runtime/debug"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
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

// withPeer notes the gRPC peer's address in ctx for the controller's
// registry (where a data plane runs).
func withPeer(ctx context.Context) context.Context {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		if a := p.Addr.String(); a != "" && a != "@" {
			return controller.WithPeer(ctx, a)
		}
	}
	return ctx
}

func (s *LeaseServer) RegisterDataplane(ctx context.Context, req *pb.RegisterDataplaneRequest) (*pb.RegisterDataplaneResponse, error) {
	ctx = withPeer(ctx)
	reg, err := s.c.RegisterDataplane(ctx, controller.Registration{
		DataplaneID: req.GetDataplaneId(), InstanceID: req.GetInstanceId(), Version: req.GetVersion(),
		Listen: req.GetClientListen(), APIAddress: req.GetApiAddress(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.RegisterDataplaneResponse{
		Gateway:             reg.Gateway.String(),
		Pool:                reg.Prefix.String(),
		ControllerVersion:   reg.ControllerVersion,
		HeartbeatIntervalMs: uint64(reg.HeartbeatInterval / time.Millisecond),
		Draining:            reg.Draining,
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
	l, err := s.c.AllocateFor(ctx, controller.AllocateRequest{
		DataplaneID: req.GetDataplaneId(), InstanceID: req.GetInstanceId(), SessionID: req.GetSessionId(),
		ClientIPv6: client, ClientPort: port,
	})
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
	ok, err := s.c.ReleaseFor(ctx, controller.ReleaseRequest{
		DataplaneID: req.GetDataplaneId(), InstanceID: req.GetInstanceId(), SessionID: req.GetSessionId(),
		Addr: addr, Reason: req.GetReason(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ReleaseAddressResponse{Released: ok}, nil
}

func (s *LeaseServer) ReleaseAddresses(ctx context.Context, req *pb.ReleaseAddressesRequest) (*pb.ReleaseAddressesResponse, error) {
	rs := make([]controller.ReleaseRequest, 0, len(req.GetReleases()))
	for i, r := range req.GetReleases() {
		addr, err := parseIPv4("address", r.GetAddress(), true)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "releases[%d]: %s", i, status.Convert(err).Message())
		}
		rs = append(rs, controller.ReleaseRequest{
			DataplaneID: r.GetDataplaneId(), SessionID: r.GetSessionId(), Addr: addr, Reason: r.GetReason(),
		})
	}
	n, err := s.c.ReleaseMany(ctx, req.GetDataplaneId(), req.GetInstanceId(), rs)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ReleaseAddressesResponse{Released: uint32(n)}, nil
}

func (s *LeaseServer) StopDataplane(ctx context.Context, req *pb.StopDataplaneRequest) (*pb.StopDataplaneResponse, error) {
	n, err := s.c.StopDataplane(ctx, req.GetDataplaneId(), req.GetInstanceId(), req.GetReason())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.StopDataplaneResponse{Released: uint32(n)}, nil
}

// MaxUnknownIDs bounds the session ids a StreamSessionReport answer lists
// (it counts them all), so the answer stays far below a message's size
// limit however large the report.
const MaxUnknownIDs = 10000

// StreamSessionReport receives one report in chunks: the first message
// carries the header, every message (the first too) sessions. Each chunk
// is applied as it arrives; the report is finished (a complete one vouches
// for its leases) only when the data plane closes its side cleanly.
func (s *LeaseServer) StreamSessionReport(stream grpc.ClientStreamingServer[pb.StreamSessionReportRequest, pb.StreamSessionReportResponse]) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return status.Error(codes.InvalidArgument, "empty report stream: the first message carries dataplane_id and instance_id")
	}
	if err != nil {
		return err
	}
	rep, err := s.c.BeginReport(ctx, first.GetDataplaneId(), first.GetInstanceId(), first.GetComplete())
	if err != nil {
		return toStatus(err)
	}
	n := 0
	for m := first; ; {
		reports := make([]controller.SessionReport, 0, len(m.GetSessions()))
		for _, r := range m.GetSessions() {
			sr, err := reportFromPB(r)
			if err != nil {
				return status.Errorf(codes.InvalidArgument, "sessions[%d]: %s", n, status.Convert(err).Message())
			}
			reports = append(reports, sr)
			n++
		}
		if err := rep.Add(ctx, reports); err != nil {
			return toStatus(err)
		}
		if m, err = stream.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return err // the report was not finished: it vouches for nothing
		}
	}
	res, err := rep.Finish(ctx)
	if err != nil {
		return toStatus(err)
	}
	ids := res.Unknown
	if len(ids) > MaxUnknownIDs {
		ids = ids[:MaxUnknownIDs]
	}
	return stream.SendAndClose(&pb.StreamSessionReportResponse{
		UnknownSessionIds: ids, UnknownSessions: uint32(len(res.Unknown)), Sessions: uint32(res.Sessions),
	})
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
	unknown, err := s.c.Report(ctx, req.GetDataplaneId(), req.GetInstanceId(), req.GetComplete(), reports)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ReportSessionsResponse{UnknownSessionIds: unknown}, nil
}

func (s *LeaseServer) Heartbeat(ctx context.Context, req *pb.HeartbeatRequest) (*pb.HeartbeatResponse, error) {
	ctx = withPeer(ctx)
	known, draining, err := s.c.Heartbeat(ctx, req.GetDataplaneId(), req.GetInstanceId(), req.GetSessions(), req.GetLeasedSessions())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.HeartbeatResponse{Known: known, Draining: draining}, nil
}

func (s *LeaseServer) WatchCommands(req *pb.WatchCommandsRequest, stream grpc.ServerStreamingServer[pb.WatchCommandsResponse]) error {
	// Headers go out at once, so the data plane knows the stream is open.
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	err := s.c.WatchCommands(withPeer(stream.Context()), req.GetDataplaneId(), req.GetInstanceId(), func(c controller.Command) error {
		var cmd *pb.Command
		switch {
		case c.Kick != nil:
			cmd = &pb.Command{Kind: &pb.Command_Kick{Kick: &pb.KickCommand{
				Address: c.Kick.Addr.String(), SessionId: c.Kick.SessionID, Reason: c.Kick.Reason,
			}}}
		case c.Drain != nil:
			cmd = &pb.Command{Kind: &pb.Command_Drain{Drain: &pb.DrainCommand{Draining: *c.Drain}}}
		case c.IDConflict != nil:
			cmd = &pb.Command{Kind: &pb.Command_IdConflict{IdConflict: &pb.IdConflictCommand{
				InstanceId: c.IDConflict.InstanceID, PeerAddress: c.IDConflict.Peer,
				ClientListen: c.IDConflict.Listen, ApiAddress: c.IDConflict.APIAddress,
			}}}
		default:
			return nil
		}
		return stream.Send(&pb.WatchCommandsResponse{Command: cmd})
	})
	return toStatus(err)
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
		Traffic: controller.Traffic{
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

func clientFilter(dp, prefix string) (controller.Filter, error) {
	f := controller.Filter{DataplaneID: dp}
	if prefix != "" {
		p, err := controller.ParseClient(prefix)
		if err != nil {
			return f, status.Errorf(codes.InvalidArgument, "ipv6_prefix: %v", err)
		}
		f.IPv6Prefix = p
	}
	return f, nil
}

func (s *ControllerServer) ListClients(req *pb.ListClientsRequest, stream grpc.ServerStreamingServer[pb.ListClientsResponse]) error {
	f, err := clientFilter(req.GetDataplaneId(), req.GetIpv6Prefix())
	if err != nil {
		return err
	}
	rows, err := s.c.Clients(stream.Context(), f)
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
	info, err := s.c.PoolInfo(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.GetPoolResponse{Pool: poolToPB(info)}, nil
}

func poolToPB(info controller.PoolInfo) *pb.Pool {
	return &pb.Pool{
		Prefix:     info.Prefix.String(),
		Gateway:    info.Gateway.String(),
		RangeFirst: info.First.String(),
		RangeLast:  info.Last.String(),
		Size:       info.Size,
		Leased:     info.Leased,
		Free:       info.Free,
		Reserved:   info.Reserved,
		Route:      info.Route.String(),
		Dns:        addrStrings(info.DNS[:]),

		FreeRemembered: info.FreeRemembered,
		ReservedInUse:  info.ReservedInUse,
	}
}

func addrStrings(as []netip.Addr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}

func (s *ControllerServer) GetVersion(context.Context, *pb.GetVersionRequest) (*pb.GetVersionResponse, error) {
	return &pb.GetVersionResponse{Version: s.c.Version()}, nil
}

// ErrorDomain is the google.rpc.ErrorInfo domain of the controller's
// errors. Their reasons are pb.ErrorReason values: a standby answers
// UNAVAILABLE with reason NOT_LEADER, its metadata "leader_id" naming the
// leader when one is known; clients (controlplane/ctlclient) look for it to
// move to another controller.
const ErrorDomain = "fourover6.io"

// withInfo is a status with a google.rpc.ErrorInfo of reason.
func withInfo(code codes.Code, msg string, reason pb.ErrorReason, md map[string]string) error {
	st := status.New(code, msg)
	if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: ErrorDomain, Metadata: md}); derr == nil {
		st = d
	}
	return st.Err()
}

// toStatus maps the controller's errors to gRPC codes. The messages are the
// controller's own: they are written to be shown as they are. Errors a
// client acts on carry an ErrorInfo (see pb.ErrorReason).
func toStatus(err error) error {
	var (
		nl *controller.NotLeaderError
		ce *controller.IDConflictError
		ip *controller.IDPendingError
		nr *controller.NotRegisteredError
		le *pool.LimitError
	)
	switch {
	case err == nil:
		return nil
	case status.Code(err) != codes.Unknown:
		return err // a gRPC error already (a failed Send)
	case errors.As(err, &nl):
		md := map[string]string{}
		if nl.LeaderID != "" {
			md["leader_id"] = nl.LeaderID
		}
		return withInfo(codes.Unavailable, nl.Error(), pb.ErrorReason_NOT_LEADER, md)
	case errors.As(err, &ce):
		return withInfo(codes.AlreadyExists, ce.Error(), pb.ErrorReason_DATAPLANE_ID_IN_USE, map[string]string{
			"dataplane_id": ce.DataplaneID, "instance_id": ce.Live.InstanceID, "peer_address": ce.Live.Peer,
			"client_listen": ce.Live.Listen, "api_address": ce.Live.APIAddress,
		})
	case errors.As(err, &ip):
		return withInfo(codes.Unavailable, ip.Error(), pb.ErrorReason_DATAPLANE_ID_PENDING, map[string]string{
			"dataplane_id": ip.DataplaneID, "instance_id": ip.Registered,
			"retry_after_ms": strconv.FormatInt(ip.Wait.Milliseconds(), 10),
		})
	case errors.As(err, &nr):
		return withInfo(codes.FailedPrecondition, nr.Error(), pb.ErrorReason_DATAPLANE_NOT_REGISTERED, map[string]string{
			"dataplane_id": nr.DataplaneID, "instance_id": nr.InstanceID, "registered_instance_id": nr.Registered,
		})
	case errors.As(err, &le):
		client := le.Client.String()
		if le.Kind == pool.LimitIP {
			client = le.Client.Addr().String()
		}
		return withInfo(codes.ResourceExhausted, le.Error(), pb.ErrorReason_LEASE_LIMIT, map[string]string{
			"limit": le.Kind.String(), "max": strconv.Itoa(le.Max), "client": client,
		})
	case errors.Is(err, controller.ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, controller.ErrFailedPrecondition):
		return status.Error(codes.FailedPrecondition, err.Error())
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
			BytesFromClient:   r.Traffic.BytesFromClient,
			PacketsFromClient: r.Traffic.PacketsFromClient,
			BytesToClient:     r.Traffic.BytesToClient,
			PacketsToClient:   r.Traffic.PacketsToClient,
		},
		Sticky: r.Sticky,
		Rates: &pb.Rates{
			BytesFromClient:   r.Rates.BytesFromClient,
			PacketsFromClient: r.Rates.PacketsFromClient,
			BytesToClient:     r.Rates.BytesToClient,
			PacketsToClient:   r.Rates.PacketsToClient,
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

func (s *ControllerServer) GetStatus(ctx context.Context, _ *pb.GetStatusRequest) (*pb.GetStatusResponse, error) {
	st := s.c.Status()
	out := &pb.ControllerStatus{
		ControllerId: st.ID, Version: st.Version, Store: st.Store,
		Leader: st.Leader, LeaderId: st.LeaderID, StartedAt: timeToPB(st.StartedAt),
	}
	if st.StoreErr != nil {
		out.StoreError = st.StoreErr.Error()
	}
	return &pb.GetStatusResponse{Status: out}, nil
}

func (s *ControllerServer) WatchClients(req *pb.WatchClientsRequest, stream grpc.ServerStreamingServer[pb.WatchClientsResponse]) error {
	f, err := clientFilter(req.GetDataplaneId(), req.GetIpv6Prefix())
	if err != nil {
		return err
	}
	err = s.c.WatchClients(stream.Context(), f, func(ev controller.ClientEvent) error {
		out := &pb.ClientEvent{Reason: ev.Reason, Time: timeToPB(ev.Time)}
		switch ev.Type {
		case controller.EventExisting:
			out.Type = pb.ClientEvent_TYPE_EXISTING
		case controller.EventSynced:
			out.Type = pb.ClientEvent_TYPE_SYNCED
		case controller.EventConnected:
			out.Type = pb.ClientEvent_TYPE_CONNECTED
		case controller.EventDisconnected:
			out.Type = pb.ClientEvent_TYPE_DISCONNECTED
		}
		if ev.Type != controller.EventSynced {
			out.Client = clientToPB(ev.Client)
		}
		return stream.Send(&pb.WatchClientsResponse{Event: out})
	})
	return toStatus(err)
}

func (s *ControllerServer) KickClient(ctx context.Context, req *pb.KickClientRequest) (*pb.KickClientResponse, error) {
	addr, err := parseIPv4("address", req.GetAddress(), true)
	if err != nil {
		return nil, err
	}
	dp, session, err := s.c.KickClient(ctx, addr, req.GetReason())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.KickClientResponse{DataplaneId: dp, SessionId: session}, nil
}

func (s *ControllerServer) ListReservations(_ *pb.ListReservationsRequest, stream grpc.ServerStreamingServer[pb.ListReservationsResponse]) error {
	rs, err := s.c.Reservations(stream.Context())
	if err != nil {
		return toStatus(err)
	}
	for _, r := range rs {
		if err := stream.Send(&pb.ListReservationsResponse{Reservation: reservationToPB(r)}); err != nil {
			return err
		}
	}
	return nil
}

// reservationToPB writes a single address as an address, not a /128.
func reservationToPB(r controller.Reservation) *pb.Reservation {
	client := r.Client.String()
	if r.Client.IsSingleIP() {
		client = r.Client.Addr().String()
	}
	return &pb.Reservation{Client: client, Address: r.Addr.String()}
}

func (s *ControllerServer) SetReservation(ctx context.Context, req *pb.SetReservationRequest) (*pb.SetReservationResponse, error) {
	r := req.GetReservation()
	if r == nil {
		return nil, status.Error(codes.InvalidArgument, "reservation is missing")
	}
	client, err := controller.ParseClient(r.GetClient())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "reservation.client: %v", err)
	}
	addr, err := parseIPv4("reservation.address", r.GetAddress(), true)
	if err != nil {
		return nil, err
	}
	res := controller.Reservation{Client: client, Addr: addr}
	changed, err := s.c.SetReservation(ctx, res)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.SetReservationResponse{Reservation: reservationToPB(res), Changed: changed}, nil
}

func (s *ControllerServer) DeleteReservation(ctx context.Context, req *pb.DeleteReservationRequest) (*pb.DeleteReservationResponse, error) {
	client, err := controller.ParseClient(req.GetClient())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "client: %v", err)
	}
	deleted, err := s.c.DeleteReservation(ctx, client)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.DeleteReservationResponse{Deleted: deleted}, nil
}

func (s *ControllerServer) GetDNS(ctx context.Context, _ *pb.GetDNSRequest) (*pb.GetDNSResponse, error) {
	d, err := s.c.DNS(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.GetDNSResponse{Servers: addrStrings(d[:])}, nil
}

func (s *ControllerServer) SetDNS(ctx context.Context, req *pb.SetDNSRequest) (*pb.SetDNSResponse, error) {
	var list []netip.Addr
	for i, v := range req.GetServers() {
		a, err := parseIPv4(fmt.Sprintf("servers[%d]", i), v, true)
		if err != nil {
			return nil, err
		}
		list = append(list, a)
	}
	d, changed, err := s.c.SetDNS(ctx, list)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.SetDNSResponse{Servers: addrStrings(d[:]), Changed: changed}, nil
}

func (s *ControllerServer) UpdatePool(ctx context.Context, req *pb.UpdatePoolRequest) (*pb.UpdatePoolResponse, error) {
	var r pool.Range
	if req.GetRangeFirst() != "" || req.GetRangeLast() != "" {
		first, err := parseIPv4("range_first", req.GetRangeFirst(), true)
		if err != nil {
			return nil, err
		}
		last, err := parseIPv4("range_last", req.GetRangeLast(), true)
		if err != nil {
			return nil, err
		}
		r = pool.Range{First: first, Last: last}
	}
	info, changed, err := s.c.UpdatePool(ctx, r)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.UpdatePoolResponse{Pool: poolToPB(info), Changed: changed}, nil
}

func (s *ControllerServer) ListDataplanes(_ *pb.ListDataplanesRequest, stream grpc.ServerStreamingServer[pb.ListDataplanesResponse]) error {
	dps, err := s.c.Dataplanes(stream.Context())
	if err != nil {
		return toStatus(err)
	}
	for _, d := range dps {
		if err := stream.Send(&pb.ListDataplanesResponse{Dataplane: dataplaneToPB(d)}); err != nil {
			return err
		}
	}
	return nil
}

func dataplaneToPB(d controller.Dataplane) *pb.Dataplane {
	st := pb.Dataplane_STATE_UNSPECIFIED
	switch d.State {
	case controller.StateUp:
		st = pb.Dataplane_STATE_UP
	case controller.StateDraining:
		st = pb.Dataplane_STATE_DRAINING
	case controller.StateDown:
		st = pb.Dataplane_STATE_DOWN
	case controller.StateStopped:
		st = pb.Dataplane_STATE_STOPPED
	}
	return &pb.Dataplane{
		DataplaneId: d.ID, InstanceId: d.InstanceID, Version: d.Version, ClientListen: d.Listen,
		ApiAddress: d.APIAddress, State: st, Sessions: d.Sessions, Leases: d.Leases,
		RegisteredAt: timeToPB(d.RegisteredAt), LastHeartbeat: timeToPB(d.LastContact),
	}
}

func (s *ControllerServer) DrainDataplane(ctx context.Context, req *pb.DrainDataplaneRequest) (*pb.DrainDataplaneResponse, error) {
	d, err := s.c.DrainDataplane(ctx, req.GetDataplaneId(), req.GetDraining())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.DrainDataplaneResponse{Dataplane: dataplaneToPB(d)}, nil
}

func (s *ControllerServer) RemoveDataplane(ctx context.Context, req *pb.RemoveDataplaneRequest) (*pb.RemoveDataplaneResponse, error) {
	d, n, err := s.c.RemoveDataplane(ctx, req.GetDataplaneId(), req.GetForce())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.RemoveDataplaneResponse{Released: uint32(n), Dataplane: dataplaneToPB(d)}, nil
}

func (s *ControllerServer) SetLogLevel(_ context.Context, req *pb.SetLogLevelRequest) (*pb.SetLogLevelResponse, error) {
	prev, err := s.c.SetLogLevel(req.GetLevel())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.SetLogLevelResponse{Previous: prev}, nil
}
