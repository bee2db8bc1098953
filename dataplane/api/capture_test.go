package api_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/dataplane/dataplanetest"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

type captureStream = grpc.ServerStreamingClient[dpv1.CaptureClientResponse]

// startCapture opens a capture and returns it once its first message (the
// start) arrived: the tap is attached then.
func (e *env) startCapture(ctx context.Context, req *dpv1.CaptureClientRequest) (captureStream, *dpv1.CaptureStart) {
	e.T.Helper()
	stream, err := e.api.CaptureClient(ctx, req)
	if err != nil {
		e.T.Fatalf("CaptureClient: %v", err)
	}
	m, err := stream.Recv()
	if err != nil {
		e.T.Fatalf("CaptureClient: first message: %v", err)
	}
	if m.GetStart() == nil {
		e.T.Fatalf("first message of a capture has no start: %v", m)
	}
	return stream, m.GetStart()
}

// packets reads until n packets arrived.
func packets(t *testing.T, stream captureStream, n int) []*dpv1.CapturedPacket {
	t.Helper()
	var out []*dpv1.CapturedPacket
	for len(out) < n {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %d of %d packets: %v", len(out), n, err)
		}
		if m.GetEnd() != nil {
			t.Fatalf("capture ended (%v) after %d of %d packets", m.GetEnd(), len(out), n)
		}
		out = append(out, m.GetPackets()...)
	}
	return out
}

// end reads the rest of a capture: packets, then its end.
func end(t *testing.T, stream captureStream) ([]*dpv1.CapturedPacket, *dpv1.CaptureEnd) {
	t.Helper()
	var out []*dpv1.CapturedPacket
	var last *dpv1.CaptureEnd
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if last == nil {
				t.Fatal("capture stream ended without an end message")
			}
			return out, last
		}
		if err != nil {
			t.Fatalf("capture: %v", err)
		}
		if last != nil {
			t.Fatalf("message after the end: %v", m)
		}
		out = append(out, m.GetPackets()...)
		last = m.GetEnd()
	}
}

func TestCaptureClient(t *testing.T) {
	e := start(t)
	c := e.Dial()
	addr := e.LeaseRouted(c)

	stream, st := e.startCapture(e.ctx(), &dpv1.CaptureClientRequest{Address: addr.String(), Count: 4})
	if st.GetDataplaneId() != "dp-api" || st.GetAddress() != addr.String() || st.GetSessionId() == "" ||
		st.GetClientIpv6() != e.ClientIP || st.GetClientPort() != port(c) || st.GetSnaplen() != 65535 {
		t.Errorf("capture start = %v", st)
	}

	up := packet.BuildICMPEcho(addr, dataplanetest.Pool.Gateway, 7, 1, []byte("ping"), false)
	c.Write(wire.AppendMsg(nil, wire.TypeNetRequest, up))
	e.FromTUN()
	down := packet.BuildICMPEcho(dataplanetest.Pool.Gateway, addr, 7, 1, []byte("ping"), true)
	e.TUN.Inject(down)
	c.NextOf(wire.TypeNetResponse)
	// A 103 is published to the capture once the queue has taken it, which
	// may be after the client has it: wait for its record before the next
	// packets from the client, so that the order below is the order sent.
	got := packets(t, stream, 2)
	spoofed := packet.BuildICMPEcho(netip.MustParseAddr("13.8.0.99"), dataplanetest.Pool.Gateway, 7, 2, []byte("spoof"), false)
	c.Write(wire.AppendMsg(nil, wire.TypeNetRequest, spoofed))
	toHost := packet.BuildICMPEcho(addr, netip.MustParseAddr("224.0.0.1"), 7, 3, nil, false)
	c.Write(wire.AppendMsg(nil, wire.TypeNetRequest, toHost))
	got = append(got, packets(t, stream, 2)...)
	rest, last := end(t, stream)
	if len(rest) != 0 || last.GetReason() != "count" || last.GetCaptured() != 4 || last.GetLost() != 0 {
		t.Errorf("after 4 packets: %d more, end %v; want none and count, 4 captured, 0 lost", len(rest), last)
	}

	want := []struct {
		dir  dpv1.CaptureDirection
		drop string
		data []byte
	}{
		{dpv1.CaptureDirection_CAPTURE_DIRECTION_FROM_CLIENT, "", up},
		{dpv1.CaptureDirection_CAPTURE_DIRECTION_TO_CLIENT, "", down},
		{dpv1.CaptureDirection_CAPTURE_DIRECTION_FROM_CLIENT, "spoofed_source", spoofed},
		{dpv1.CaptureDirection_CAPTURE_DIRECTION_FROM_CLIENT, "policy_multicast", toHost},
	}
	for i, w := range want {
		p := got[i]
		if p.GetDirection() != w.dir || p.GetDropReason() != w.drop || !bytes.Equal(p.GetData(), w.data) ||
			p.GetLength() != uint32(len(w.data)) || p.GetTime() == nil || p.GetLost() != 0 {
			t.Errorf("packet %d = %v %q len %d data %x, want %v %q %x", i, p.GetDirection(), p.GetDropReason(), p.GetLength(), p.GetData(), w.dir, w.drop, w.data)
		}
	}
}

func TestCaptureSnaplenAndDisconnect(t *testing.T) {
	e := start(t)
	c := e.Dial()
	addr := e.LeaseRouted(c)
	stream, st := e.startCapture(e.ctx(), &dpv1.CaptureClientRequest{Address: addr.String(), Snaplen: 20})
	if st.GetSnaplen() != 20 {
		t.Errorf("snaplen = %d, want 20", st.GetSnaplen())
	}
	up := packet.BuildICMPEcho(addr, dataplanetest.Pool.Gateway, 7, 1, bytes.Repeat([]byte("x"), 100), false)
	c.Write(wire.AppendMsg(nil, wire.TypeNetRequest, up))
	e.FromTUN()
	p := packets(t, stream, 1)[0]
	if p.GetLength() != uint32(len(up)) || !bytes.Equal(p.GetData(), up[:20]) {
		t.Errorf("snaplen 20: length %d data %x, want %d and %x", p.GetLength(), p.GetData(), len(up), up[:20])
	}
	// The client leaves: the capture ends by itself, cleanly.
	c.Conn.Close()
	_, last := end(t, stream)
	if last.GetReason() != "disconnected" || last.GetCaptured() != 1 {
		t.Errorf("end after a disconnect = %v, want disconnected, 1 captured", last)
	}
}

func TestCaptureRefusals(t *testing.T) {
	e := start(t)
	for _, tc := range []struct {
		addr string
		code codes.Code
	}{
		{"13.8.0.77", codes.NotFound},
		{"fd00::1", codes.InvalidArgument},
		{"", codes.InvalidArgument},
	} {
		stream, err := e.api.CaptureClient(e.ctx(), &dpv1.CaptureClientRequest{Address: tc.addr})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != tc.code {
			t.Errorf("capture of %q: %v, want %v", tc.addr, err, tc.code)
		}
	}
}

// TestCaptureSlowReaderLoses: a capture whose reader reads nothing never
// holds the client's traffic up: every packet reaches the TUN, the capture
// loses what it cannot hold, and says how many when it ends.
func TestCaptureSlowReaderLoses(t *testing.T) {
	e := start(t)
	c := e.Dial()
	addr := e.LeaseRouted(c)
	stream, _ := e.startCapture(e.ctx(), &dpv1.CaptureClientRequest{Address: addr.String()})

	const n = 5000
	msgs := make([]byte, 0, n*1100)
	for i := range n {
		p := packet.BuildICMPEcho(addr, dataplanetest.Pool.Gateway, 7, uint16(i), bytes.Repeat([]byte("x"), 1000), false)
		msgs = wire.AppendMsg(msgs, wire.TypeNetRequest, p)
	}
	c.Write(msgs)
	for range n {
		e.FromTUN() // all of them, while the capture's reader sleeps
	}
	c.Conn.Close()
	got, last := end(t, stream)
	if last.GetReason() != "disconnected" || last.GetLost() == 0 || last.GetCaptured() != uint64(len(got)) ||
		last.GetCaptured()+last.GetLost() != n {
		t.Errorf("end %v after %d packets received; want disconnected, some lost, captured + lost = %d", last, len(got), n)
	}
	// Each packet says how many were lost before it, never more than in the end.
	var prev uint64
	for i, p := range got {
		if p.GetLost() < prev || p.GetLost() > last.GetLost() {
			t.Fatalf("packet %d: lost %d after %d (end: %d)", i, p.GetLost(), prev, last.GetLost())
		}
		prev = p.GetLost()
	}
}
