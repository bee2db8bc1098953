package api

import (
	"errors"
	"net/netip"
	"strconv"
	"time"

	"github.com/fourover6/fourover6/controlplane/authz"
	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/capture"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// maxPerMessage bounds the packets of one CaptureClientResponse: a busy
// client's packets go out in few messages, none of them large.
const maxPerMessage = 64

// Trailer keys of a capture's end (also in its last message).
const (
	TrailerCaptured = "fourover6-capture-captured"
	TrailerLost     = "fourover6-capture-lost"
)

// CaptureClient implements dpv1.DataplaneServiceServer.
func (s *Server) CaptureClient(r *dpv1.CaptureClientRequest, stream grpc.ServerStreamingServer[dpv1.CaptureClientResponse]) error {
	addr, err := netip.ParseAddr(r.GetAddress())
	if err != nil || !addr.Is4() {
		return status.Errorf(codes.InvalidArgument, "address %q: want an IPv4 address", r.GetAddress())
	}
	snaplen := int(r.GetSnaplen())
	if snaplen <= 0 || snaplen > capture.MaxSnaplen {
		snaplen = capture.MaxSnaplen
	}
	tap := capture.NewTap(snaplen, 0)
	in, done, detach, err := s.dp.Capture(addr, tap)
	if errors.Is(err, dataplane.ErrNoSession) {
		return status.Errorf(codes.NotFound, "no client holds %s on data plane %s", addr, s.dp.ID())
	}
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	defer detach()
	ctx := stream.Context()
	start := time.Now()
	log := s.log.With("addr", addr, "session", in.ID, "client", in.Remote, "who", authz.PeerFrom(ctx))
	log.Info("capture started", "snaplen", snaplen, "count", r.GetCount(), "duration", time.Duration(r.GetDurationMs())*time.Millisecond)
	err = stream.Send(&dpv1.CaptureClientResponse{Start: &dpv1.CaptureStart{
		DataplaneId: s.dp.ID(), SessionId: in.ID, Address: addr.String(),
		ClientIpv6: in.Remote.Addr().String(), ClientPort: uint32(in.Remote.Port()),
		Snaplen: uint32(snaplen), StartedAt: timestamppb.New(start),
	}})
	if err != nil {
		return err
	}
	var timeout <-chan time.Time
	if d := time.Duration(r.GetDurationMs()) * time.Millisecond; d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	limit := r.GetCount()
	var sent uint64
	// send sends up to maxPerMessage waiting packets, first the one given,
	// in one message; the records go back to the tap once it is sent
	// (the message points into them).
	// The messages are reused from one send to the next: a busy capture
	// allocates nothing per packet here.
	held := make([]*capture.Packet, 0, maxPerMessage)
	msg := &dpv1.CaptureClientResponse{}
	pkts := make([]dpv1.CapturedPacket, maxPerMessage)
	times := make([]timestamppb.Timestamp, maxPerMessage)
	send := func(first *capture.Packet) error {
		p := first
		for {
			if limit == 0 || sent < limit {
				i := len(msg.Packets)
				msg.Packets = append(msg.Packets, capturedPacket(&pkts[i], &times[i], p))
				sent++
			}
			held = append(held, p)
			if len(held) == maxPerMessage || (limit > 0 && sent >= limit) {
				break
			}
			select {
			case p = <-tap.C():
				continue
			default:
			}
			break
		}
		err := stream.Send(msg)
		for _, p := range held {
			tap.Release(p)
		}
		clear(held)
		held = held[:0]
		clear(msg.Packets)
		msg.Packets = msg.Packets[:0]
		return err
	}
	reason := ""
	for reason == "" {
		select {
		case p := <-tap.C():
			if err := send(p); err != nil {
				log.Info("capture ended", "reason", "caller gone", "captured", sent, "lost", tap.Lost(), "took", time.Since(start).Round(time.Millisecond))
				return err
			}
			if limit > 0 && sent >= limit {
				reason = "count"
			}
		case <-done:
			// What the session sent before it closed is still waiting.
			detach()
			for reason == "" {
				select {
				case p := <-tap.C():
					if err := send(p); err != nil {
						return err
					}
					if limit > 0 && sent >= limit {
						reason = "count"
					}
				default:
					reason = "disconnected"
					switch {
					case s.dp.HandedOff():
						reason = "handoff"
					case s.dp.Stopping():
						reason = "shutdown"
					}
				}
			}
		case <-timeout:
			reason = "duration"
		case <-ctx.Done():
			log.Info("capture ended", "reason", "caller canceled", "captured", sent, "lost", tap.Lost(), "took", time.Since(start).Round(time.Millisecond))
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	detach()
	lost := tap.Lost()
	log.Info("capture ended", "reason", reason, "captured", sent, "lost", lost, "took", time.Since(start).Round(time.Millisecond))
	stream.SetTrailer(metadata.Pairs(TrailerCaptured, strconv.FormatUint(sent, 10), TrailerLost, strconv.FormatUint(lost, 10)))
	return stream.Send(&dpv1.CaptureClientResponse{End: &dpv1.CaptureEnd{
		Reason: reason, Captured: sent, Lost: lost, EndedAt: timestamppb.Now(),
	}})
}

// capturedPacket fills m (and its time ts) with p; m's data is p's until
// the message is sent.
func capturedPacket(m *dpv1.CapturedPacket, ts *timestamppb.Timestamp, p *capture.Packet) *dpv1.CapturedPacket {
	dir := dpv1.CaptureDirection_CAPTURE_DIRECTION_FROM_CLIENT
	if p.Dir == capture.ToClient {
		dir = dpv1.CaptureDirection_CAPTURE_DIRECTION_TO_CLIENT
	}
	ts.Seconds, ts.Nanos = p.Time.Unix(), int32(p.Time.Nanosecond())
	m.Time, m.Direction, m.DropReason = ts, dir, p.Drop
	m.Length, m.Data, m.Lost = uint32(p.Len), p.Data, p.Lost
	return m
}
