// Package ctlink is the data plane's gRPC client of the controller: it
// implements dataplane.ControlPlane over controlplanev1.LeaseService and
// maps gRPC status codes to the data plane's error kinds.
//
// Dial takes one or more controller endpoints and follows the leader with
// controlplane/ctlclient, the client 4over6ctl uses too: a standby's
// NOT_LEADER answer and a dead controller both move the link to the
// controller that leads, and look like ErrControllerUnavailable to the
// data plane until one does.
package ctlink

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/fourover6/fourover6/controlplane/ctlclient"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/wire"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Link talks to the controller.
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
// Options are ctlclient's (dial options for TLS, probe timeout).
func Dial(endpoints []endpoint.Endpoint, opts ...ctlclient.Option) (*Link, error) {
	conn, err := ctlclient.Dial(endpoints, opts...)
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

// Register implements dataplane.Controller.
func (l *Link) Register(ctx context.Context, r dataplane.Registration) (dataplane.Assignment, error) {
	resp, err := l.c.RegisterDataplane(ctx, &cpv1.RegisterDataplaneRequest{
		DataplaneId: r.DataplaneID, Version: r.Version, ClientListen: r.ClientListen,
		InstanceId: r.InstanceID, ApiAddress: r.APIAddress,
	})
	if err != nil {
		return dataplane.Assignment{}, mapErr("register", err)
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

// Allocate implements dataplane.Controller.
func (l *Link) Allocate(ctx context.Context, r dataplane.AllocateRequest) (wire.AddrResponse, error) {
	resp, err := l.c.AllocateAddress(ctx, &cpv1.AllocateAddressRequest{
		DataplaneId: r.DataplaneID, SessionId: r.SessionID,
		ClientIpv6: addrString(r.Client.Addr()), ClientPort: uint32(r.Client.Port()),
	})
	if err != nil {
		return wire.AddrResponse{}, mapErr("allocate", err)
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

// Release implements dataplane.Controller.
func (l *Link) Release(ctx context.Context, r dataplane.ReleaseRequest) error {
	_, err := l.c.ReleaseAddress(ctx, &cpv1.ReleaseAddressRequest{
		DataplaneId: r.DataplaneID, SessionId: r.SessionID, Address: addrString(r.Addr), Reason: r.Reason,
	})
	return mapErr("release", err)
}

// Report implements dataplane.Controller.
func (l *Link) Report(ctx context.Context, r dataplane.Report) ([]string, error) {
	req := &cpv1.ReportSessionsRequest{
		DataplaneId: r.DataplaneID, InstanceId: r.InstanceID, Complete: r.Complete,
		Sessions: make([]*cpv1.SessionReport, 0, len(r.Sessions)),
	}
	for _, s := range r.Sessions {
		req.Sessions = append(req.Sessions, &cpv1.SessionReport{
			SessionId: s.SessionID, Address: addrString(s.Addr),
			ClientIpv6: addrString(s.Client.Addr()), ClientPort: uint32(s.Client.Port()),
			ConnectedAt: timestamppb.New(s.ConnectedAt), LastHeard: timestamppb.New(s.LastHeard),
			Counters: &cpv1.Counters{
				BytesFromClient: s.Traffic.BytesFromClient, PacketsFromClient: s.Traffic.PacketsFromClient,
				BytesToClient: s.Traffic.BytesToClient, PacketsToClient: s.Traffic.PacketsToClient,
			},
		})
	}
	resp, err := l.c.ReportSessions(ctx, req)
	if err != nil {
		return nil, mapErr("report", err)
	}
	return resp.GetUnknownSessionIds(), nil
}

// Heartbeat implements dataplane.Controller.
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

// WatchDirectives implements dataplane.Controller.
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
		}
	}
}

// mapErr turns gRPC status codes into the error kinds the data plane acts on,
// keeping the controller's message.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.ResourceExhausted:
		return fmt.Errorf("%s: %w: %s", op, dataplane.ErrPoolExhausted, st.Message())
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted:
		return fmt.Errorf("%s: %w: %s", op, dataplane.ErrControllerUnavailable, st.Message())
	}
	return fmt.Errorf("%s: controller said %s: %s", op, st.Code(), st.Message())
}

// addrString renders an unset address as "" (netip prints "invalid IP"),
// which the controller reads as "not given".
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
