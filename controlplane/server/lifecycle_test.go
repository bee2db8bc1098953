package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// fakeClock moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// tcpEnv is a controller served over TCP on the loopback (so calls have
// peer addresses), with a fake clock.
type tcpEnv struct {
	env
	c   *controller.Controller
	clk *fakeClock
	cc  *grpc.ClientConn
}

func startTCP(t testing.TB, cfg controller.Config) tcpEnv {
	t.Helper()
	clk := &fakeClock{t: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)}
	cfg.Now = clk.Now
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c, err := controller.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(Options(nil)...)
	Register(s, c)
	go s.Serve(l)
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close(); s.Stop() })
	return tcpEnv{env: env{lease: pb.NewLeaseServiceClient(cc), ctl: pb.NewControllerServiceClient(cc)}, c: c, clk: clk, cc: cc}
}

// elapse moves the clock in reconcile steps, reconciling after each, and
// calls between (heartbeats) every 5 s of it.
func (e tcpEnv) elapse(d time.Duration, between func()) {
	step := e.c.ReconcileInterval()
	var since time.Duration
	for d > 0 {
		s := min(step, d)
		e.clk.Add(s)
		e.c.Reconcile(context.Background())
		d -= s
		if since += s; since >= 5*time.Second && between != nil {
			between()
			since = 0
		}
	}
}

// errorInfo returns the ErrorInfo of a gRPC error.
func errorInfo(t *testing.T, err error) *errdetails.ErrorInfo {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			if ei.Domain != ErrorDomain {
				t.Fatalf("domain %q", ei.Domain)
			}
			return ei
		}
	}
	t.Fatalf("no ErrorInfo in %v", err)
	return nil
}

func TestIDConflictAPI(t *testing.T) {
	e := startTCP(t, controller.Config{Pool: pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/24")}})
	ctx := t.Context()
	if _, err := e.lease.RegisterDataplane(ctx, &pb.RegisterDataplaneRequest{
		DataplaneId: "dp1", InstanceId: "i1", ClientListen: "[::]:5678", ApiAddress: "unix:///run/dp1.sock"}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmds, err := e.lease.WatchCommands(wctx, &pb.WatchCommandsRequest{DataplaneId: "dp1", InstanceId: "i1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cmds.Header(); err != nil {
		t.Fatal(err)
	}
	_, err = e.lease.RegisterDataplane(ctx, &pb.RegisterDataplaneRequest{DataplaneId: "dp1", InstanceId: "i2", ClientListen: "[::]:6789"})
	if code(err) != codes.AlreadyExists {
		t.Fatalf("second instance: %v", err)
	}
	ei := errorInfo(t, err)
	md := ei.Metadata
	if ei.Reason != pb.ErrorReason_DATAPLANE_ID_IN_USE.String() || md["dataplane_id"] != "dp1" || md["instance_id"] != "i1" ||
		md["client_listen"] != "[::]:5678" || md["api_address"] != "unix:///run/dp1.sock" {
		t.Fatalf("ErrorInfo %v", ei)
	}
	if host, _, err := net.SplitHostPort(md["peer_address"]); err != nil || host != "127.0.0.1" {
		t.Fatalf("peer_address %q", md["peer_address"])
	}
	m, err := cmds.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ic := m.GetCommand().GetIdConflict(); ic == nil || ic.InstanceId != "i2" || ic.ClientListen != "[::]:6789" || ic.PeerAddress == "" {
		t.Fatalf("command %v", m)
	}
	// The refused instance's calls: unknown, and refused with a reason.
	if hb, err := e.lease.Heartbeat(ctx, &pb.HeartbeatRequest{DataplaneId: "dp1", InstanceId: "i2"}); err != nil || hb.Known {
		t.Fatalf("heartbeat %v %v", hb, err)
	}
	_, err = e.lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{DataplaneId: "dp1", InstanceId: "i2", SessionId: "s", ClientIpv6: "2001:db8::1"})
	if code(err) != codes.FailedPrecondition {
		t.Fatalf("allocation of the refused instance: %v", err)
	}
	if ei := errorInfo(t, err); ei.Reason != pb.ErrorReason_DATAPLANE_NOT_REGISTERED.String() || ei.Metadata["registered_instance_id"] != "i1" {
		t.Fatalf("ErrorInfo %v", ei)
	}
	// The live instance allocates as before, with or without its id.
	for i, inst := range []string{"i1", ""} {
		if _, err := e.lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{DataplaneId: "dp1", InstanceId: inst, SessionId: fmt.Sprint("s", i), ClientIpv6: "2001:db8::1"}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLeaseLimitAPI(t *testing.T) {
	e := startTCP(t, controller.Config{Pool: pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/24")},
		Limits: pool.Limits{PerIP: 1, PerPrefix: 2, PrefixLen: 48}})
	ctx := t.Context()
	alloc := func(s, client string) error {
		_, err := e.lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{DataplaneId: "dp1", SessionId: s, ClientIpv6: client})
		return err
	}
	if err := alloc("a", "2001:db8::1"); err != nil {
		t.Fatal(err)
	}
	err := alloc("b", "2001:db8::1")
	if code(err) != codes.ResourceExhausted {
		t.Fatalf("over the limit: %v", err)
	}
	if ei := errorInfo(t, err); ei.Reason != pb.ErrorReason_LEASE_LIMIT.String() || ei.Metadata["limit"] != "ip" ||
		ei.Metadata["max"] != "1" || ei.Metadata["client"] != "2001:db8::1" {
		t.Fatalf("ErrorInfo %v", ei)
	}
	if err := alloc("c", "2001:db8:0:1::1"); err != nil { // the same /48
		t.Fatal(err)
	}
	err = alloc("d", "2001:db8:0:2::1")
	if ei := errorInfo(t, err); ei.Metadata["limit"] != "prefix" || ei.Metadata["client"] != "2001:db8::/48" {
		t.Fatalf("ErrorInfo %v", ei)
	}
	// A full pool is ResourceExhausted without that reason.
	if c := e.c.Counts(); c.LimitRefused != [2]uint64{1, 1} {
		t.Fatalf("counts %+v", c)
	}
}

func TestLifecycleAPI(t *testing.T) {
	e := startTCP(t, controller.Config{Pool: pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/24")}})
	ctx := t.Context()
	for _, dp := range []string{"dp1", "dp2"} {
		if _, err := e.lease.RegisterDataplane(ctx, &pb.RegisterDataplaneRequest{DataplaneId: dp, InstanceId: dp + "-i"}); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if _, err := e.lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{DataplaneId: dp, InstanceId: dp + "-i",
				SessionId: fmt.Sprint("s", i), ClientIpv6: fmt.Sprintf("2001:db8::%x", i+1)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A batch release, then the same batch again.
	batch := &pb.ReleaseAddressesRequest{DataplaneId: "dp1", InstanceId: "dp1-i", Releases: []*pb.ReleaseAddressRequest{
		{SessionId: "s0", Address: "13.8.0.2", Reason: "eof"},
		{SessionId: "s1", Address: "13.8.0.3", Reason: "eof"},
		{SessionId: "s2", Address: "13.8.0.2"}, // not its address
	}}
	for want := range []uint32{2, 0} {
		r, err := e.lease.ReleaseAddresses(ctx, batch)
		if err != nil || r.Released != []uint32{2, 0}[want] {
			t.Fatalf("ReleaseAddresses #%d = %v %v", want, r, err)
		}
	}
	if _, err := e.lease.ReleaseAddresses(ctx, &pb.ReleaseAddressesRequest{DataplaneId: "dp1",
		Releases: []*pb.ReleaseAddressRequest{{SessionId: "s0", Address: "nope"}}}); code(err) != codes.InvalidArgument {
		t.Fatalf("bad release: %v", err)
	}
	// Stop dp2: stopped, no leases.
	if _, err := e.lease.StopDataplane(ctx, &pb.StopDataplaneRequest{DataplaneId: "dp2", InstanceId: "other"}); code(err) != codes.FailedPrecondition {
		t.Fatalf("stop by another instance: %v", err)
	}
	r, err := e.lease.StopDataplane(ctx, &pb.StopDataplaneRequest{DataplaneId: "dp2", InstanceId: "dp2-i", Reason: "SIGTERM"})
	if err != nil || r.Released != 3 {
		t.Fatalf("stop = %v %v", r, err)
	}
	states := func() map[string]*pb.Dataplane {
		s, err := e.ctl.ListDataplanes(ctx, &pb.ListDataplanesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*pb.Dataplane{}
		for {
			m, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			out[m.Dataplane.DataplaneId] = m.Dataplane
		}
	}
	if d := states()["dp2"]; d.State != pb.Dataplane_STATE_STOPPED || d.Leases != 0 {
		t.Fatalf("dp2 %v", d)
	}
	// Remove: refused for the up dp1, fine for the stopped dp2, unknown.
	_, err = e.ctl.RemoveDataplane(ctx, &pb.RemoveDataplaneRequest{DataplaneId: "dp1"})
	if code(err) != codes.FailedPrecondition {
		t.Fatalf("remove of an up data plane: %v", err)
	}
	if rr, err := e.ctl.RemoveDataplane(ctx, &pb.RemoveDataplaneRequest{DataplaneId: "dp2"}); err != nil || rr.Released != 0 || rr.Dataplane.State != pb.Dataplane_STATE_STOPPED {
		t.Fatalf("remove of a stopped data plane: %v %v", rr, err)
	}
	if _, err := e.ctl.RemoveDataplane(ctx, &pb.RemoveDataplaneRequest{DataplaneId: "dp2"}); code(err) != codes.NotFound {
		t.Fatalf("remove of a removed data plane: %v", err)
	}
	if rr, err := e.ctl.RemoveDataplane(ctx, &pb.RemoveDataplaneRequest{DataplaneId: "dp1", Force: true}); err != nil || rr.Released != 1 {
		t.Fatalf("forced remove: %v %v", rr, err)
	}
	if n := len(states()); n != 0 {
		t.Fatalf("%d data planes left", n)
	}
	// A report stream without a header is refused; a bad session too.
	s, _ := e.lease.StreamSessionReport(ctx)
	if _, err := s.CloseAndRecv(); code(err) != codes.InvalidArgument {
		t.Fatalf("empty stream: %v", err)
	}
	s, _ = e.lease.StreamSessionReport(ctx)
	s.Send(&pb.StreamSessionReportRequest{DataplaneId: "dp3", Sessions: []*pb.SessionReport{{SessionId: ""}}})
	if _, err := s.CloseAndRecv(); code(err) != codes.InvalidArgument {
		t.Fatalf("bad session: %v", err)
	}
}

// TestHundredThousandSessions: a data plane with 100,000 leases reports them
// in one complete report streamed in chunks over real gRPC on a real
// socket (one message would be far above gRPC's 4 MiB limit): no lease is
// lost over the grace period and more. A report that fails midway vouches
// for nothing, though its chunks were applied: the next whole report that
// leaves out half the sessions releases exactly that half.
func TestHundredThousandSessions(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000 leases")
	}
	const n, chunk = 100_000, 5000
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// The leases, committed before the controller starts (it loads them).
	base := netip.MustParseAddr("13.8.0.2")
	addrs := make([]netip.Addr, n)
	a := base
	for i := range addrs {
		addrs[i], a = a, a.Next()
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 512 {
		wg.Go(func() {
			for i := w; i < n; i += 512 {
				l := store.Lease{Addr: addrs[i], Owner: store.Owner{Dataplane: "dp1", Session: fmt.Sprint("s", i)},
					InstanceID: "i1", ClientIPv6: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i), 14: byte(i >> 8), 13: byte(i >> 16)}),
					ClientPort: 40000, LeasedAt: time.Date(2026, 3, 4, 5, 0, 0, 0, time.UTC)}
				if _, _, err := st.Claim(context.Background(), l); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d leases stored in %v", n, time.Since(start).Round(time.Millisecond))
	e := startTCP(t, controller.Config{Pool: pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/15")}, Store: st})
	ctx := t.Context()
	if _, err := e.lease.RegisterDataplane(ctx, &pb.RegisterDataplaneRequest{DataplaneId: "dp1", InstanceId: "i1"}); err != nil {
		t.Fatal(err)
	}
	// Sessions as a data plane reports them: ids like its own, addresses,
	// times, counters.
	connected := timestamppb.New(time.Date(2026, 3, 4, 5, 0, 0, 0, time.UTC))
	sessions := func(from, to int, bytes uint64) []*pb.SessionReport {
		heard := timestamppb.New(e.clk.Now())
		out := make([]*pb.SessionReport, 0, to-from)
		for i := from; i < to; i++ {
			out = append(out, &pb.SessionReport{SessionId: fmt.Sprint("s", i), Address: addrs[i].String(),
				ClientIpv6: fmt.Sprintf("2001:db8:%x::%x", i>>16, i&0xffff), ClientPort: uint32(40000 + i%20000),
				ConnectedAt: connected, LastHeard: heard,
				Counters: &pb.Counters{BytesFromClient: bytes * 3, PacketsFromClient: bytes / 50, BytesToClient: bytes, PacketsToClient: bytes / 100}})
		}
		return out
	}
	all := sessions(0, n, 1000)
	size := proto.Size(&pb.ReportSessionsRequest{DataplaneId: "dp1", InstanceId: "i1", Complete: true, Sessions: all})
	if size <= 4<<20 {
		t.Fatalf("a report of %d sessions is only %d bytes: not beyond one message", n, size)
	}
	// One message is refused by the size limit.
	if _, err := e.lease.ReportSessions(ctx, &pb.ReportSessionsRequest{DataplaneId: "dp1", InstanceId: "i1", Complete: true, Sessions: all}); code(err) != codes.ResourceExhausted {
		t.Fatalf("unary report of %d sessions: %v", n, err)
	}
	// stream sends ss in chunks; finish closes it cleanly, otherwise it is
	// cancelled once the controller has applied every chunk.
	stream := func(ss []*pb.SessionReport, finish bool) *pb.StreamSessionReportResponse {
		t.Helper()
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		s, err := e.lease.StreamSessionReport(sctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(ss); i += chunk {
			m := &pb.StreamSessionReportRequest{Sessions: ss[i:min(i+chunk, len(ss))]}
			if i == 0 {
				m.DataplaneId, m.InstanceId, m.Complete = "dp1", "i1", true
			}
			if err := s.Send(m); err != nil {
				t.Fatal(err)
			}
		}
		if finish {
			resp, err := s.CloseAndRecv()
			if err != nil {
				t.Fatal(err)
			}
			return resp
		}
		last := addrs[len(ss)-1]
		want := ss[len(ss)-1].GetCounters().GetBytesToClient()
		deadline := time.Now().Add(time.Minute)
		for {
			r, err := e.ctl.GetClient(ctx, &pb.GetClientRequest{Address: last.String()})
			if err == nil && r.Client.Counters.BytesToClient == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the last chunk was never applied: %v %v", r, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// Cancelled, not closed: the controller's Recv fails.
		cancel()
		return nil
	}
	heartbeat := func() {
		if hb, err := e.lease.Heartbeat(ctx, &pb.HeartbeatRequest{DataplaneId: "dp1", InstanceId: "i1"}); err != nil || !hb.Known {
			t.Fatalf("heartbeat %v %v", hb, err)
		}
	}
	leased := func() uint32 {
		p, err := e.ctl.GetPool(ctx, &pb.GetPoolRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Pool.Leased
	}

	t0 := time.Now()
	resp := stream(all, true)
	t.Logf("a complete report of %d sessions (%d bytes) in chunks of %d: %v", n, size, chunk, time.Since(t0).Round(time.Millisecond))
	if resp.Sessions != n || resp.UnknownSessions != 0 || len(resp.UnknownSessionIds) != 0 {
		t.Fatalf("report answer: %d sessions, %d unknown", resp.Sessions, resp.UnknownSessions)
	}
	e.elapse(40*time.Second, heartbeat) // more than the grace period
	if got := leased(); got != n {
		t.Fatalf("%d leases after the grace period, want %d", got, n)
	}
	// A report that fails midway, then, 15 s later, a whole one without
	// the second half: 55 s since the second half was last vouched for,
	// 15 s since the failed report listed it.
	stream(sessions(0, n, 2000), false)
	e.elapse(15*time.Second, heartbeat)
	stream(all[:n/2], true)
	mark := time.Now()
	e.c.Reconcile(ctx)
	t.Logf("the reconcile that released %d leases: %v", n/2, time.Since(mark).Round(time.Millisecond))
	if got := leased(); got != n/2 {
		t.Fatalf("%d leases after the half report, want %d", got, n/2)
	}
	for _, i := range []int{0, n/2 - 1} {
		if _, err := e.ctl.GetClient(ctx, &pb.GetClientRequest{Address: addrs[i].String()}); err != nil {
			t.Fatalf("session %d lost: %v", i, err)
		}
	}
	if _, err := e.ctl.GetClient(ctx, &pb.GetClientRequest{Address: addrs[n/2].String()}); code(err) != codes.NotFound {
		t.Fatalf("session %d kept: %v", n/2, err)
	}
	// The store agrees: nothing lost, nothing extra.
	state, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(state.Leases) != n/2 {
		t.Fatalf("the store holds %d leases, want %d", len(state.Leases), n/2)
	}
}
