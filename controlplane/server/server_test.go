package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/pool"
	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

type env struct {
	lease pb.LeaseServiceClient
	ctl   pb.ControllerServiceClient
}

// start serves a controller with the given pool on a real unix socket.
func start(t *testing.T, prefix, rng string) env {
	t.Helper()
	r, err := pool.ParseRange(rng)
	if err != nil {
		t.Fatal(err)
	}
	c, err := controller.New(controller.Config{
		Pool:    pool.Config{Prefix: netip.MustParsePrefix(prefix), Range: r},
		Version: "test-1",
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "c.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(Options(nil)...)
	Register(s, c)
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc.Close()
		s.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return env{lease: pb.NewLeaseServiceClient(cc), ctl: pb.NewControllerServiceClient(cc)}
}

func code(err error) codes.Code { return status.Code(err) }

func TestRegisterAndVersion(t *testing.T) {
	e := start(t, "13.8.0.0/24", "")
	ctx := t.Context()
	resp, err := e.lease.RegisterDataplane(ctx, &pb.RegisterDataplaneRequest{DataplaneId: "dp1", Version: "v1", ClientListen: "[::]:5678"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Gateway != "13.8.0.1" || resp.Pool != "13.8.0.0/24" || resp.ControllerVersion != "test-1" {
		t.Fatalf("register = %v", resp)
	}
	if _, err := e.lease.RegisterDataplane(ctx, &pb.RegisterDataplaneRequest{}); code(err) != codes.InvalidArgument {
		t.Fatalf("empty register: %v", err)
	}
	v, err := e.ctl.GetVersion(ctx, &pb.GetVersionRequest{})
	if err != nil || v.Version != "test-1" {
		t.Fatalf("version = %v %v", v, err)
	}
}

func TestConcurrentAllocateDistinct(t *testing.T) {
	e := start(t, "13.8.0.0/24", "")
	ctx := t.Context()
	const n = 200
	addrs := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := e.lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{
				DataplaneId: "dp1", SessionId: fmt.Sprint("s", i),
				ClientIpv6: fmt.Sprintf("2001:db8::%x", i+1), ClientPort: uint32(40000 + i),
			})
			if err != nil {
				t.Error(err)
				return
			}
			if len(resp.Lease.Dns) != 3 || resp.Lease.Route != "0.0.0.0" || resp.Lease.LeasedAt == nil {
				t.Errorf("lease = %v", resp.Lease)
			}
			addrs[i] = resp.Lease.Address
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i, a := range addrs {
		if j, dup := seen[a]; dup {
			t.Fatalf("sessions %d and %d both got %q", j, i, a)
		}
		seen[a] = i
	}
	p, err := e.ctl.GetPool(ctx, &pb.GetPoolRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Pool.Leased != n || p.Pool.Free != 253-n || p.Pool.Size != 253 {
		t.Fatalf("pool = %v", p.Pool)
	}
}

func TestExhaustion(t *testing.T) {
	e := start(t, "13.8.0.0/24", "13.8.0.2-13.8.0.4")
	ctx := t.Context()
	alloc := func(sess string) (*pb.AllocateAddressResponse, error) {
		return e.lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{DataplaneId: "dp1", SessionId: sess, ClientIpv6: "2001:db8::1", ClientPort: 1})
	}
	for i := range 3 {
		if _, err := alloc(fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := alloc("one too many")
	if code(err) != codes.ResourceExhausted {
		t.Fatalf("err = %v, want ResourceExhausted", err)
	}
	want := "address pool 13.8.0.0/24 (range 13.8.0.2-13.8.0.4) exhausted: 3 of 3 addresses leased"
	if msg := status.Convert(err).Message(); msg != want {
		t.Fatalf("message = %q, want %q", msg, want)
	}
	// A retry by a holder still works on a full pool.
	if r, err := alloc("1"); err != nil || r.Lease.Address != "13.8.0.3" {
		t.Fatalf("retry = %v %v", r, err)
	}
}

func TestListGetRelease(t *testing.T) {
	e := start(t, "13.8.0.0/24", "")
	ctx := t.Context()
	for i, dp := range []string{"dp1", "dp2", "dp1"} {
		_, err := e.lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{
			DataplaneId: dp, SessionId: fmt.Sprint("s", i), ClientIpv6: fmt.Sprintf("2001:db8::%d", i+1), ClientPort: uint32(5000 + i),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	heard := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	rep, err := e.lease.ReportSessions(ctx, &pb.ReportSessionsRequest{DataplaneId: "dp1", Sessions: []*pb.SessionReport{
		{SessionId: "s0", Address: "13.8.0.2", ClientIpv6: "2001:db8::1", ClientPort: 5000, LastHeard: timestamppb.New(heard),
			Counters: &pb.Counters{BytesFromClient: 11, PacketsFromClient: 1, BytesToClient: 22, PacketsToClient: 2}},
		{SessionId: "nobody"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.UnknownSessionIds) != 1 || rep.UnknownSessionIds[0] != "nobody" {
		t.Fatalf("unknown = %v", rep.UnknownSessionIds)
	}

	list := func(dp string) []*pb.Client {
		t.Helper()
		stream, err := e.ctl.ListClients(ctx, &pb.ListClientsRequest{DataplaneId: dp})
		if err != nil {
			t.Fatal(err)
		}
		var out []*pb.Client
		for {
			m, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, m.Client)
		}
	}
	all := list("")
	if len(all) != 3 || all[0].Address != "13.8.0.2" || all[1].Address != "13.8.0.3" || all[2].Address != "13.8.0.4" {
		t.Fatalf("list = %v", all)
	}
	c0 := all[0]
	if c0.ClientIpv6 != "2001:db8::1" || c0.ClientPort != 5000 || c0.DataplaneId != "dp1" || c0.SessionId != "s0" ||
		!c0.LastHeard.AsTime().Equal(heard) || c0.Counters.BytesToClient != 22 || c0.ConnectedAt == nil {
		t.Fatalf("client = %v", c0)
	}
	if dp1 := list("dp1"); len(dp1) != 2 || dp1[0].SessionId != "s0" || dp1[1].SessionId != "s2" {
		t.Fatalf("dp1 list = %v", dp1)
	}

	got, err := e.ctl.GetClient(ctx, &pb.GetClientRequest{Address: "13.8.0.3"})
	if err != nil || got.Client.DataplaneId != "dp2" {
		t.Fatalf("GetClient = %v %v", got, err)
	}
	_, err = e.ctl.GetClient(ctx, &pb.GetClientRequest{Address: "13.8.0.9"})
	if code(err) != codes.NotFound || status.Convert(err).Message() != "no client holds 13.8.0.9" {
		t.Fatalf("GetClient unknown: %v", err)
	}

	r, err := e.lease.ReleaseAddress(ctx, &pb.ReleaseAddressRequest{DataplaneId: "dp1", SessionId: "s2", Address: "13.8.0.3", Reason: "eof"})
	if err != nil || r.Released {
		t.Fatalf("release by wrong session = %v %v", r, err)
	}
	r, err = e.lease.ReleaseAddress(ctx, &pb.ReleaseAddressRequest{DataplaneId: "dp2", SessionId: "s1", Address: "13.8.0.3", Reason: "eof"})
	if err != nil || !r.Released {
		t.Fatalf("release = %v %v", r, err)
	}
	if _, err := e.ctl.GetClient(ctx, &pb.GetClientRequest{Address: "13.8.0.3"}); code(err) != codes.NotFound {
		t.Fatalf("after release: %v", err)
	}
	if n := len(list("")); n != 2 {
		t.Fatalf("%d clients after release", n)
	}
}

func TestInvalidArguments(t *testing.T) {
	e := start(t, "13.8.0.0/24", "")
	ctx := t.Context()
	calls := map[string]error{}
	_, calls["allocate no dp"] = e.lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{SessionId: "s", ClientIpv6: "2001:db8::1"})
	_, calls["allocate no client"] = e.lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{DataplaneId: "d", SessionId: "s"})
	_, calls["allocate ipv4 client"] = e.lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{DataplaneId: "d", SessionId: "s", ClientIpv6: "192.0.2.1"})
	_, calls["allocate garbage client"] = e.lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{DataplaneId: "d", SessionId: "s", ClientIpv6: strings.Repeat("\u00e9", 1000)})
	_, calls["allocate big port"] = e.lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{DataplaneId: "d", SessionId: "s", ClientIpv6: "2001:db8::1", ClientPort: 70000})
	_, calls["release garbage"] = e.lease.ReleaseAddress(ctx, &pb.ReleaseAddressRequest{DataplaneId: "d", SessionId: "s", Address: "13.8.0"})
	_, calls["release empty"] = e.lease.ReleaseAddress(ctx, &pb.ReleaseAddressRequest{DataplaneId: "d", SessionId: "s"})
	_, calls["report bad time"] = e.lease.ReportSessions(ctx, &pb.ReportSessionsRequest{DataplaneId: "d", Sessions: []*pb.SessionReport{{SessionId: "s", LastHeard: &timestamppb.Timestamp{Nanos: -1}}}})
	_, calls["report bad addr"] = e.lease.ReportSessions(ctx, &pb.ReportSessionsRequest{DataplaneId: "d", Sessions: []*pb.SessionReport{{SessionId: "s", Address: "2001:db8::1"}}})
	_, calls["report nil session"] = e.lease.ReportSessions(ctx, &pb.ReportSessionsRequest{DataplaneId: "d", Sessions: []*pb.SessionReport{nil}})
	_, calls["get client garbage"] = e.ctl.GetClient(ctx, &pb.GetClientRequest{Address: "nope"})
	for name, err := range calls {
		if code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	p, err := e.ctl.GetPool(ctx, &pb.GetPoolRequest{})
	if err != nil || p.Pool.Leased != 0 {
		t.Fatalf("pool after invalid calls = %v %v", p, err)
	}
	want := &pb.Pool{Prefix: "13.8.0.0/24", Gateway: "13.8.0.1", RangeFirst: "13.8.0.2", RangeLast: "13.8.0.254",
		Size: 253, Free: 253, Route: "0.0.0.0", Dns: []string{"8.8.8.8", "1.1.1.1", "9.9.9.9"}}
	if p.Pool.String() != want.String() {
		t.Fatalf("pool = %v, want %v", p.Pool, want)
	}
}

func TestToStatus(t *testing.T) {
	for _, c := range []struct {
		err  error
		want codes.Code
	}{
		{nil, codes.OK},
		{fmt.Errorf("wrapped: %w", pool.ErrExhausted), codes.ResourceExhausted},
		{controller.ErrInvalidArgument, codes.InvalidArgument},
		{controller.ErrNotFound, codes.NotFound},
		{context.Canceled, codes.Canceled},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{errors.New("disk on fire"), codes.Internal},
	} {
		if got := code(toStatus(c.err)); got != c.want {
			t.Errorf("toStatus(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestPanicBecomesInternal(t *testing.T) {
	opts := Options(nil)
	s := grpc.NewServer(opts...)
	pb.RegisterControllerServiceServer(s, panicky{})
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	defer s.Stop()
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := pb.NewControllerServiceClient(cc)
	if _, err := c.GetPool(t.Context(), &pb.GetPoolRequest{}); code(err) != codes.Internal {
		t.Fatalf("unary panic: %v", err)
	}
	stream, err := c.ListClients(t.Context(), &pb.ListClientsRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if code(err) != codes.Internal {
		t.Fatalf("stream panic: %v", err)
	}
	// The server survived.
	if _, err := c.GetPool(t.Context(), &pb.GetPoolRequest{}); code(err) != codes.Internal {
		t.Fatalf("after panic: %v", err)
	}
}

type panicky struct {
	pb.UnimplementedControllerServiceServer
}

func (panicky) GetPool(context.Context, *pb.GetPoolRequest) (*pb.GetPoolResponse, error) {
	panic("boom")
}

func (panicky) ListClients(*pb.ListClientsRequest, grpc.ServerStreamingServer[pb.ListClientsResponse]) error {
	panic("boom")
}
