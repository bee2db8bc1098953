// Package api serves the data plane's gRPC API (DataplaneService): a thin
// adapter over dataplane.Dataplane.
package api

import (
	"context"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/session"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Server implements dpv1.DataplaneServiceServer.
type Server struct {
	dpv1.UnimplementedDataplaneServiceServer
	dp *dataplane.Dataplane
}

// New returns the API over dp.
func New(dp *dataplane.Dataplane) *Server { return &Server{dp: dp} }

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
		Counters:            counters(st.Counters),
		Drops:               st.Drops,
		KeepaliveIntervalMs: uint64(st.KeepaliveInterval.Milliseconds()),
		KeepaliveTimeoutMs:  uint64(st.KeepaliveTimeout.Milliseconds()),
	}}, nil
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
			Counters:    counters(in.Counters),
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

func counters(c session.Counters) *dpv1.Counters {
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
