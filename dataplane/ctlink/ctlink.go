// Package ctlink is the data plane's gRPC client of the controller: it
// implements dataplane.ControlPlane over controlplanev1.LeaseService and
// maps gRPC status codes and error reasons to the data plane's error kinds.
//
// Dial takes one or more controller endpoints and follows the leader with
// controlplane/ctlclient, the client 4over6ctl uses too: a standby's
// NOT_LEADER answer and a dead controller both move the link to the
// controller that leads, and look like ErrControllerUnavailable to the
// data plane until one does.
//
// Reports go in chunks on one StreamSessionReport stream (ReportChunk
// sessions a message), so that no report is bounded by gRPC's message
// size; releases go in batches (ReleaseAddresses).
package ctlink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/fourover6/fourover6/controlplane/ctlclient"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/wire"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ReportChunk is how many sessions one StreamSessionReport message
// carries. A session's report is about 100 bytes on the wire (ids,
// addresses, two timestamps, four counters), so a chunk is about 100 KiB:
// far below gRPC's 4 MiB message limit even with long session ids, small
// enough that the data plane converts and the controller applies one chunk
// at a time (the controller applies 512 sessions per hold of its index
// lock), and large enough that per-message costs do not matter.
const ReportChunk = 1024

// ReconnectMaxDelay caps gRPC's reconnect backoff (by default it grows to
// 120 s): a controller that comes back is found within about a second.
const ReconnectMaxDelay = time.Second

// ConnectParams is the dial option that sets the reconnect backoff: from
// 100 ms up to ReconnectMaxDelay. A connection attempt may take up to
// 5 s (a TLS handshake over a slow link); gRPC's default is 20 s.
func ConnectParams() grpc.DialOption {
	return grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  100 * time.Millisecond,
			Multiplier: 1.6,
			Jitter:     0.2,
			MaxDelay:   ReconnectMaxDelay,
		},
		MinConnectTimeout: 5 * time.Second,
	})
}

// Link talks to the controller. With one controller endpoint,
// registration, allocations, releases and the stop wait for a connection
// (gRPC's wait-for-ready) up to their deadline instead of failing at once
// while gRPC reconnects: they go out the moment the controller is back.
// Heartbeats and reports fail fast.
type Link struct {
	c    cpv1.LeaseServiceClient
	conn *ctlclient.Conn // set by Dial
}

// New wraps a gRPC connection to the controller.
func New(cc grpc.ClientConnInterface) *Link {
	return &Link{c: cpv1.NewLeaseServiceClient(cc)}
}

// Dial returns a Link to the controllers at endpoints (several when
// controllers run active/passive): every call goes to the one that leads.
// dialOpts are gRPC's (transport credentials; nil: insecure); the link adds
// ConnectParams. opts are ctlclient's (a probe timeout).
func Dial(endpoints []endpoint.Endpoint, dialOpts []grpc.DialOption, opts ...ctlclient.Option) (*Link, error) {
	if dialOpts == nil {
		dialOpts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	all := append(append([]grpc.DialOption{}, dialOpts...), ConnectParams())
	conn, err := ctlclient.Dial(endpoints, append([]ctlclient.Option{ctlclient.WithDialOptions(all...)}, opts...)...)
	if err != nil {
		return nil, err
	}
	return &Link{c: cpv1.NewLeaseServiceClient(conn), conn: conn}, nil
}

// String names the controller addresses (for logs).
func (l *Link) String() string {
	if l.conn == nil {
		return ""
	}
	return l.conn.String()
}

// Leader is the address calls go to now ("" before the first call, or
// for a Link made with New).
func (l *Link) Leader() string {
	if l.conn == nil {
		return ""
	}
	return l.conn.Leader()
}

// Close closes the connections a Dial opened.
func (l *Link) Close() error {
	if l.conn == nil {
		return nil
	}
	return l.conn.Close()
}

var _ dataplane.ControlPlane = (*Link)(nil)

// Register implements dataplane.ControlPlane.
func (l *Link) Register(ctx context.Context, r dataplane.Registration) (dataplane.Assignment, error) {
	var resp *cpv1.RegisterDataplaneResponse
	err := l.waiting("register", func(opts ...grpc.CallOption) (err error) {
		resp, err = l.c.RegisterDataplane(ctx, &cpv1.RegisterDataplaneRequest{
			DataplaneId: r.DataplaneID, Version: r.Version, ClientListen: r.ClientListen,
			InstanceId: r.InstanceID, ApiAddress: r.APIAddress,
		}, opts...)
		return err
	})
	if err != nil {
		return dataplane.Assignment{}, err
	}
	gw, err := netip.ParseAddr(resp.GetGateway())
	if err != nil || !gw.Is4() {
		return dataplane.Assignment{}, fmt.Errorf("controller sent gateway %q: not an IPv4 address", resp.GetGateway())
	}
	pool, err := netip.ParsePrefix(resp.GetPool())
	if err != nil || !pool.Addr().Is4() || !pool.Contains(gw) {
		return dataplane.Assignment{}, fmt.Errorf("controller sent pool %q: not an IPv4 prefix holding the gateway %s", resp.GetPool(), gw)
	}
	return dataplane.Assignment{
		Gateway: gw, Pool: pool,
		HeartbeatInterval: time.Duration(resp.GetHeartbeatIntervalMs()) * time.Millisecond,
		Draining:          resp.GetDraining(),
	}, nil
}

// Allocate implements dataplane.ControlPlane.
func (l *Link) Allocate(ctx context.Context, r dataplane.AllocateRequest) (wire.AddrResponse, error) {
	var resp *cpv1.AllocateAddressResponse
	err := l.waiting("allocate", func(opts ...grpc.CallOption) (err error) {
		resp, err = l.c.AllocateAddress(ctx, &cpv1.AllocateAddressRequest{
			DataplaneId: r.DataplaneID, InstanceId: r.InstanceID, SessionId: r.SessionID,
			ClientIpv6: addrString(r.Client.Addr()), ClientPort: uint32(r.Client.Port()),
		}, opts...)
		return err
	})
	if err != nil {
		return wire.AddrResponse{}, err
	}
	return leaseToAddrResponse(resp.GetLease())
}

func leaseToAddrResponse(l *cpv1.Lease) (wire.AddrResponse, error) {
	var out wire.AddrResponse
	parse := func(what, s string) (netip.Addr, error) {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return netip.Addr{}, fmt.Errorf("controller sent %s %q: not an IPv4 address", what, s)
		}
		return a, nil
	}
	var err error
	if out.Addr, err = parse("address", l.GetAddress()); err != nil {
		return out, err
	}
	if out.Route, err = parse("route", l.GetRoute()); err != nil {
		return out, err
	}
	if len(l.GetDns()) != 3 {
		return out, fmt.Errorf("controller sent %d DNS servers, want 3", len(l.GetDns()))
	}
	for i, s := range l.GetDns() {
		if out.DNS[i], err = parse("DNS server", s); err != nil {
			return out, err
		}
	}
	return out, nil
}

// ReleaseBatch implements dataplane.ControlPlane with one ReleaseAddresses
// call.
func (l *Link) ReleaseBatch(ctx context.Context, b dataplane.ReleaseBatch) (int, error) {
	req := &cpv1.ReleaseAddressesRequest{
		DataplaneId: b.DataplaneID, InstanceId: b.InstanceID,
		Releases: make([]*cpv1.ReleaseAddressRequest, len(b.Releases)),
	}
	for i, r := range b.Releases {
		req.Releases[i] = &cpv1.ReleaseAddressRequest{SessionId: r.SessionID, Address: addrString(r.Addr), Reason: r.Reason}
	}
	var resp *cpv1.ReleaseAddressesResponse
	err := l.waiting("release", func(opts ...grpc.CallOption) (err error) {
		resp, err = l.c.ReleaseAddresses(ctx, req, opts...)
		return err
	})
	if err != nil {
		return 0, err
	}
	return int(resp.GetReleased()), nil
}

// Report implements dataplane.ControlPlane: one StreamSessionReport stream
// of ReportChunk sessions a message. The messages are reused from chunk to
// chunk (Send has marshalled a message when it returns), so a report of
// 100,000 sessions costs one chunk's worth of messages.
func (l *Link) Report(ctx context.Context, r dataplane.Report) (dataplane.ReportReply, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // a stream given up half way is cancelled: it vouches for nothing
	stream, err := l.c.StreamSessionReport(ctx)
	if err != nil {
		return dataplane.ReportReply{}, mapErr("report", err)
	}
	n := min(len(r.Sessions), ReportChunk)
	reps := make([]cpv1.SessionReport, n)
	ptrs := make([]*cpv1.SessionReport, n)
	stamps := make([]timestamppb.Timestamp, 2*n)
	counters := make([]cpv1.Counters, n)
	for i := range reps {
		reps[i].ConnectedAt, reps[i].LastHeard, reps[i].Counters = &stamps[2*i], &stamps[2*i+1], &counters[i]
		ptrs[i] = &reps[i]
	}
	msg := &cpv1.StreamSessionReportRequest{DataplaneId: r.DataplaneID, InstanceId: r.InstanceID, Complete: r.Complete}
	for start := 0; start == 0 || start < len(r.Sessions); start += ReportChunk {
		chunk := r.Sessions[start:min(start+ReportChunk, len(r.Sessions))]
		for i, s := range chunk {
			fillReport(&reps[i], s)
		}
		msg.Sessions = ptrs[:len(chunk)]
		if err := stream.Send(msg); err != nil {
			// The stream's status says why, on the receive side.
			if errors.Is(err, io.EOF) {
				_, err = stream.CloseAndRecv()
			}
			return dataplane.ReportReply{}, mapErr("report", err)
		}
		if start == 0 {
			// The header is read from the first chunk only.
			msg.DataplaneId, msg.InstanceId, msg.Complete = "", "", false
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return dataplane.ReportReply{}, mapErr("report", err)
	}
	return dataplane.ReportReply{
		Unknown:      resp.GetUnknownSessionIds(),
		UnknownCount: max(int(resp.GetUnknownSessions()), len(resp.GetUnknownSessionIds())),
	}, nil
}

func fillReport(p *cpv1.SessionReport, s dataplane.SessionReport) {
	p.SessionId, p.Address = s.SessionID, addrString(s.Addr)
	p.ClientIpv6, p.ClientPort = addrString(s.Client.Addr()), uint32(s.Client.Port())
	setTime(p.ConnectedAt, s.ConnectedAt)
	setTime(p.LastHeard, s.LastHeard)
	*p.Counters = cpv1.Counters{
		BytesFromClient: s.Traffic.BytesFromClient, PacketsFromClient: s.Traffic.PacketsFromClient,
		BytesToClient: s.Traffic.BytesToClient, PacketsToClient: s.Traffic.PacketsToClient,
	}
}

func setTime(ts *timestamppb.Timestamp, t time.Time) {
	ts.Seconds, ts.Nanos = t.Unix(), int32(t.Nanosecond())
}

// Heartbeat implements dataplane.ControlPlane.
func (l *Link) Heartbeat(ctx context.Context, h dataplane.Heartbeat) (dataplane.HeartbeatReply, error) {
	resp, err := l.c.Heartbeat(ctx, &cpv1.HeartbeatRequest{
		DataplaneId: h.DataplaneID, InstanceId: h.InstanceID,
		Sessions: uint32(h.Sessions), LeasedSessions: uint32(h.LeasedSessions),
	})
	if err != nil {
		return dataplane.HeartbeatReply{}, mapErr("heartbeat", err)
	}
	return dataplane.HeartbeatReply{Known: resp.GetKnown(), Draining: resp.GetDraining()}, nil
}

// Stop implements dataplane.ControlPlane with StopDataplane.
func (l *Link) Stop(ctx context.Context, s dataplane.StopRequest) (int, error) {
	var resp *cpv1.StopDataplaneResponse
	err := l.waiting("stop", func(opts ...grpc.CallOption) (err error) {
		resp, err = l.c.StopDataplane(ctx, &cpv1.StopDataplaneRequest{DataplaneId: s.DataplaneID, InstanceId: s.InstanceID, Reason: s.Reason}, opts...)
		return err
	})
	if err != nil {
		return 0, err
	}
	return int(resp.GetReleased()), nil
}

// WatchDirectives implements dataplane.ControlPlane.
func (l *Link) WatchDirectives(ctx context.Context, id, instance string, fn func(dataplane.Directive)) error {
	stream, err := l.c.WatchCommands(ctx, &cpv1.WatchCommandsRequest{DataplaneId: id, InstanceId: instance})
	if err != nil {
		return mapErr("watch commands", err)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return mapErr("watch commands", err)
		}
		c := m.GetCommand()
		switch {
		case c.GetKick() != nil:
			k := c.GetKick()
			addr, _ := netip.ParseAddr(k.GetAddress())
			fn(dataplane.Directive{Kick: &dataplane.KickDirective{Addr: addr, SessionID: k.GetSessionId(), Reason: k.GetReason()}})
		case c.GetDrain() != nil:
			on := c.GetDrain().GetDraining()
			fn(dataplane.Directive{Drain: &on})
		case c.GetIdConflict() != nil:
			ic := c.GetIdConflict()
			fn(dataplane.Directive{IDConflict: &dataplane.Instance{
				InstanceID: ic.GetInstanceId(), Peer: ic.GetPeerAddress(),
				ClientListen: ic.GetClientListen(), APIAddress: ic.GetApiAddress(),
			}})
		}
	}
}

// waiting makes a unary call that waits for a connection (wait-for-ready)
// and maps its error. A call that never had a connection (gRPC names the
// peer once it has one) had no effect: its error matches ErrNotSent and,
// for a Link made by Dial, says why each endpoint could not be reached
// (wait-for-ready hides the dial's errno).
//
// With several endpoints the call does not wait: ctlclient moves it to the
// leader, which a call waiting on a dead endpoint would never do.
func (l *Link) waiting(op string, call func(...grpc.CallOption) error) error {
	var p peer.Peer
	opts := []grpc.CallOption{grpc.Peer(&p)}
	if l.conn == nil || len(l.conn.Endpoints()) == 1 {
		opts = append(opts, grpc.WaitForReady(true))
	}
	err := call(opts...)
	if err == nil {
		return nil
	}
	mapped := mapErr(op, err)
	if p.Addr != nil || !errors.Is(mapped, dataplane.ErrControllerUnavailable) {
		return mapped
	}
	if why := l.unreachable(); why != "" {
		return fmt.Errorf("%s: %w: %s (%w)", op, dataplane.ErrControllerUnavailable, why, dataplane.ErrNotSent)
	}
	return fmt.Errorf("%w (%w)", mapped, dataplane.ErrNotSent)
}

// unreachable dials every endpoint and says why those that fail do ("" if
// none does, or for a Link made with New).
func (l *Link) unreachable() string {
	if l.conn == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var why []string
	for _, ep := range l.conn.Endpoints() {
		if err := ep.Check(ctx); err != nil {
			why = append(why, ep.String()+": "+endpoint.Cause(err))
		}
	}
	return strings.Join(why, "; ")
}

// mapErr turns gRPC status codes and error reasons into the error kinds the
// data plane acts on, keeping the controller's message.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w: %w", op, dataplane.ErrControllerUnavailable, err)
	}
	st, _ := status.FromError(err)
	reason, md := errorInfo(st)
	switch {
	case reason == cpv1.ErrorReason_DATAPLANE_ID_IN_USE.String():
		return fmt.Errorf("%s: %w", op, &dataplane.IDInUseError{
			DataplaneID: md["dataplane_id"], Msg: st.Message(),
			Live: dataplane.Instance{InstanceID: md["instance_id"], Peer: md["peer_address"],
				ClientListen: md["client_listen"], APIAddress: md["api_address"]},
		})
	case reason == cpv1.ErrorReason_DATAPLANE_ID_PENDING.String():
		ms, _ := strconv.ParseInt(md["retry_after_ms"], 10, 64)
		return fmt.Errorf("%s: %w", op, &dataplane.IDPendingError{
			Registered: md["instance_id"], Wait: time.Duration(ms) * time.Millisecond, Msg: st.Message()})
	case reason == cpv1.ErrorReason_DATAPLANE_NOT_REGISTERED.String():
		return fmt.Errorf("%s: %w: %s", op, dataplane.ErrNotRegistered, st.Message())
	case reason == cpv1.ErrorReason_LEASE_LIMIT.String():
		return fmt.Errorf("%s: %w", op, &dataplane.LeaseLimitError{Limit: md["limit"], Max: md["max"], Client: md["client"], Msg: st.Message()})
	}
	switch st.Code() {
	case codes.ResourceExhausted:
		return fmt.Errorf("%s: %w: %s", op, dataplane.ErrPoolExhausted, st.Message())
	case codes.Canceled:
		// Our side gave up (its context ended), as gRPC reports it.
		return fmt.Errorf("%s: %w: %s: %w", op, dataplane.ErrControllerUnavailable, st.Message(), context.Canceled)
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted:
		return fmt.Errorf("%s: %w: %s", op, dataplane.ErrControllerUnavailable, st.Message())
	}
	return fmt.Errorf("%s: controller said %s: %s", op, st.Code(), st.Message())
}

// errorInfo returns the google.rpc.ErrorInfo reason and metadata of st.
func errorInfo(st *status.Status) (string, map[string]string) {
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetReason(), ei.GetMetadata()
		}
	}
	return "", nil
}

// addrString renders an unset address as "" (netip prints "invalid IP"),
// which the controller reads as "not given".
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
