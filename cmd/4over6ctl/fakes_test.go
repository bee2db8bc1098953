package main

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

// ---- in-test daemons ----

var (
	t0 = time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	// Fractional seconds and a non-UTC zone: the CLI prints whole-second UTC.
	t1 = time.Date(2025, 3, 1, 11, 5, 7, 500_000_000, time.FixedZone("CET", 3600))
)

// fakeController is a controller that keeps its state in memory, so that
// commands that change something can be checked (and applied twice).
type fakeController struct {
	cpv1.UnimplementedControllerServiceServer
	version   string
	id        string
	leader    bool
	notLeader bool // a follower: refuses every request but GetStatus and GetVersion
	// stale: GetStatus says it leads until it has refused a request as
	// notLeader (leadership moved, and it learnt so).
	stale       bool
	statusDelay time.Duration // GetStatus answers this late
	storeError  string        // GetStatus's store_error
	clients     []*cpv1.Client
	pool        *cpv1.Pool
	hang        bool // GetPool waits for the caller to give up
	dataplanes  []*cpv1.Dataplane
	// WatchClients: after the current set and SYNCED, these events are sent
	// (after watchDelay), then the stream ends. nil: the stream stays open
	// until the client goes.
	events     []*cpv1.ClientEvent
	watchDelay time.Duration
	watchEnd   error // how the stream ends after the events (nil: OK)
	// beforeWatch, when set, is called (with mu held) at the start of each
	// WatchClients call, numbered from 1: it may change the fake.
	beforeWatch func(call int)
	watchCalls  int
	fail        map[string]error // method -> error to answer with

	mu           sync.Mutex
	calls        map[string]int // method -> count
	writes       int            // requests that changed something
	lastFilter   string
	lastPrefix   string
	getCalls     int
	reservations map[string]string // client -> IPv4
	dns          []string
	logLevel     string
	lastReason   string
}

// enter counts a call and answers as a follower or broken daemon would.
func (f *fakeController) enter(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	f.calls[method]++
	if err := f.fail[method]; err != nil {
		return err
	}
	if f.notLeader && method != "GetStatus" && method != "GetVersion" {
		f.stale = false
		return notLeaderError("ctl-c")
	}
	return nil
}

// notLeaderError is a standby's answer, as controlplane/server makes it.
func notLeaderError(leaderID string) error {
	st, err := status.New(codes.Unavailable, "not the leader; leader is "+leaderID).WithDetails(&errdetails.ErrorInfo{
		Reason: cpv1.ErrorReason_NOT_LEADER.String(), Domain: "fourover6.io", Metadata: map[string]string{"leader_id": leaderID}})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// claim sets whether GetStatus says this controller leads.
func (f *fakeController) claim(stale bool) {
	f.mu.Lock()
	f.stale = stale
	f.mu.Unlock()
}

func (f *fakeController) count(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

func (f *fakeController) writeCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

func (f *fakeController) ListClients(req *cpv1.ListClientsRequest, stream grpc.ServerStreamingServer[cpv1.ListClientsResponse]) error {
	if err := f.enter("ListClients"); err != nil {
		return err
	}
	f.mu.Lock()
	f.lastFilter, f.lastPrefix = req.GetDataplaneId(), req.GetIpv6Prefix()
	clients := f.matching(req.GetDataplaneId(), req.GetIpv6Prefix())
	f.mu.Unlock()
	for _, c := range clients {
		if err := stream.Send(&cpv1.ListClientsResponse{Client: c}); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeController) matching(dataplane, prefix string) []*cpv1.Client {
	var out []*cpv1.Client
	for _, c := range f.clients {
		if dataplane != "" && c.GetDataplaneId() != dataplane {
			continue
		}
		if prefix != "" {
			p, err := netip.ParsePrefix(prefix)
			a, err2 := netip.ParseAddr(c.GetClientIpv6())
			if err != nil || err2 != nil || !p.Contains(a) {
				continue
			}
		}
		out = append(out, c)
	}
	return out
}

func (f *fakeController) GetClient(_ context.Context, req *cpv1.GetClientRequest) (*cpv1.GetClientResponse, error) {
	if err := f.enter("GetClient"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.getCalls++
	for _, c := range f.clients {
		if c.GetAddress() == req.GetAddress() {
			return &cpv1.GetClientResponse{Client: c}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "no lease for %s", req.GetAddress())
}

func (f *fakeController) GetPool(ctx context.Context, _ *cpv1.GetPoolRequest) (*cpv1.GetPoolResponse, error) {
	if err := f.enter("GetPool"); err != nil {
		return nil, err
	}
	if f.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pool == nil {
		return nil, status.Error(codes.Internal, "pool store is broken")
	}
	p := proto.Clone(f.pool).(*cpv1.Pool)
	p.Dns = slices.Clone(f.dnsLocked())
	p.Reserved, p.ReservedInUse = uint32(len(f.reservations)), 0
	for _, ip := range f.reservations {
		for _, c := range f.clients {
			if c.GetAddress() == ip {
				p.ReservedInUse++
			}
		}
	}
	return &cpv1.GetPoolResponse{Pool: p}, nil
}

func (f *fakeController) GetVersion(context.Context, *cpv1.GetVersionRequest) (*cpv1.GetVersionResponse, error) {
	if err := f.enter("GetVersion"); err != nil {
		return nil, err
	}
	return &cpv1.GetVersionResponse{Version: f.version}, nil
}

func (f *fakeController) GetStatus(ctx context.Context, _ *cpv1.GetStatusRequest) (*cpv1.GetStatusResponse, error) {
	if err := f.enter("GetStatus"); err != nil {
		return nil, err
	}
	select {
	case <-time.After(f.statusDelay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	f.mu.Lock()
	leads := f.leader || f.stale
	f.mu.Unlock()
	leaderID := "ctl-c"
	if leads {
		leaderID = f.id
	}
	return &cpv1.GetStatusResponse{Status: &cpv1.ControllerStatus{ControllerId: f.id, Version: f.version,
		Store: "bbolt:/var/lib/fourover6/controller.db", Leader: leads, LeaderId: leaderID, StartedAt: timestamppb.New(t0),
		StoreError: f.storeError}}, nil
}

func (f *fakeController) WatchClients(req *cpv1.WatchClientsRequest, stream grpc.ServerStreamingServer[cpv1.WatchClientsResponse]) error {
	f.mu.Lock()
	f.watchCalls++
	if f.beforeWatch != nil {
		f.beforeWatch(f.watchCalls)
	}
	f.mu.Unlock()
	if err := f.enter("WatchClients"); err != nil {
		return err
	}
	f.mu.Lock()
	f.lastFilter, f.lastPrefix = req.GetDataplaneId(), req.GetIpv6Prefix()
	clients := f.matching(req.GetDataplaneId(), req.GetIpv6Prefix())
	events, watchEnd := f.events, f.watchEnd
	f.mu.Unlock()
	send := func(e *cpv1.ClientEvent) error { return stream.Send(&cpv1.WatchClientsResponse{Event: e}) }
	for _, c := range clients {
		if err := send(&cpv1.ClientEvent{Type: cpv1.ClientEvent_TYPE_EXISTING, Client: c}); err != nil {
			return err
		}
	}
	if err := send(&cpv1.ClientEvent{Type: cpv1.ClientEvent_TYPE_SYNCED, Time: timestamppb.New(t0)}); err != nil {
		return err
	}
	if events == nil {
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	select {
	case <-time.After(f.watchDelay):
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	for _, e := range events {
		if err := send(e); err != nil {
			return err
		}
	}
	return watchEnd
}

func (f *fakeController) KickClient(_ context.Context, req *cpv1.KickClientRequest) (*cpv1.KickClientResponse, error) {
	if err := f.enter("KickClient"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastReason = req.GetReason()
	for i, c := range f.clients {
		if c.GetAddress() == req.GetAddress() {
			f.clients = slices.Delete(slices.Clone(f.clients), i, i+1)
			f.writes++
			return &cpv1.KickClientResponse{DataplaneId: c.GetDataplaneId(), SessionId: c.GetSessionId()}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "no client holds %s", req.GetAddress())
}

func (f *fakeController) ListReservations(_ *cpv1.ListReservationsRequest, stream grpc.ServerStreamingServer[cpv1.ListReservationsResponse]) error {
	if err := f.enter("ListReservations"); err != nil {
		return err
	}
	f.mu.Lock()
	var rs []*cpv1.Reservation
	for c, a := range f.reservations {
		rs = append(rs, &cpv1.Reservation{Client: c, Address: a})
	}
	f.mu.Unlock()
	sort.Slice(rs, func(i, j int) bool { return rs[i].Client < rs[j].Client })
	for _, r := range rs {
		if err := stream.Send(&cpv1.ListReservationsResponse{Reservation: r}); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeController) SetReservation(_ context.Context, req *cpv1.SetReservationRequest) (*cpv1.SetReservationResponse, error) {
	if err := f.enter("SetReservation"); err != nil {
		return nil, err
	}
	r := req.GetReservation()
	addr, err := netip.ParseAddr(r.GetAddress())
	if err != nil || !f.inRange(addr) {
		return nil, status.Errorf(codes.InvalidArgument, "%s is outside the client range", r.GetAddress())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for c, a := range f.reservations {
		if a == r.GetAddress() && c != r.GetClient() {
			return nil, status.Errorf(codes.AlreadyExists, "%s is reserved for %s", a, c)
		}
	}
	if f.reservations == nil {
		f.reservations = map[string]string{}
	}
	changed := f.reservations[r.GetClient()] != r.GetAddress()
	if changed {
		f.reservations[r.GetClient()] = r.GetAddress()
		f.writes++
	}
	return &cpv1.SetReservationResponse{Reservation: r, Changed: changed}, nil
}

func (f *fakeController) inRange(a netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	first, err1 := netip.ParseAddr(f.pool.GetRangeFirst())
	last, err2 := netip.ParseAddr(f.pool.GetRangeLast())
	return err1 == nil && err2 == nil && !a.Less(first) && !last.Less(a)
}

func (f *fakeController) DeleteReservation(_ context.Context, req *cpv1.DeleteReservationRequest) (*cpv1.DeleteReservationResponse, error) {
	if err := f.enter("DeleteReservation"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.reservations[req.GetClient()]
	if ok {
		delete(f.reservations, req.GetClient())
		f.writes++
	}
	return &cpv1.DeleteReservationResponse{Deleted: ok}, nil
}

var fallbackDNS = []string{"9.9.9.9", "1.0.0.1", "8.8.4.4"}

func (f *fakeController) dnsLocked() []string {
	if f.dns == nil {
		return f.pool.GetDns()
	}
	return f.dns
}

func (f *fakeController) GetDNS(context.Context, *cpv1.GetDNSRequest) (*cpv1.GetDNSResponse, error) {
	if err := f.enter("GetDNS"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return &cpv1.GetDNSResponse{Servers: slices.Clone(f.dnsLocked())}, nil
}

// SetDNS pads fewer than three servers, as the real controller does.
func (f *fakeController) SetDNS(_ context.Context, req *cpv1.SetDNSRequest) (*cpv1.SetDNSResponse, error) {
	if err := f.enter("SetDNS"); err != nil {
		return nil, err
	}
	servers := slices.Clone(req.GetServers())
	if len(servers) == 0 || len(servers) > 3 {
		return nil, status.Error(codes.InvalidArgument, "want one to three servers")
	}
	for _, fb := range fallbackDNS {
		if len(servers) < 3 && !slices.Contains(servers, fb) {
			servers = append(servers, fb)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	changed := !slices.Equal(servers, f.dnsLocked())
	if changed {
		f.dns = servers
		f.writes++
	}
	return &cpv1.SetDNSResponse{Servers: servers, Changed: changed}, nil
}

func (f *fakeController) UpdatePool(_ context.Context, req *cpv1.UpdatePoolRequest) (*cpv1.UpdatePoolResponse, error) {
	if err := f.enter("UpdatePool"); err != nil {
		return nil, err
	}
	first, last := req.GetRangeFirst(), req.GetRangeLast()
	if first == "" && last == "" {
		first, last = "13.8.0.2", "13.8.0.254"
	}
	a, err1 := netip.ParseAddr(first)
	b, err2 := netip.ParseAddr(last)
	prefix := netip.MustParsePrefix("13.8.0.0/24")
	if err1 != nil || err2 != nil || !prefix.Contains(a) || !prefix.Contains(b) || b.Less(a) {
		return nil, status.Errorf(codes.InvalidArgument, "range %s-%s is not inside %s", first, last, prefix)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for c, r := range f.reservations {
		ra := netip.MustParseAddr(r)
		if ra.Less(a) || b.Less(ra) {
			return nil, status.Errorf(codes.FailedPrecondition, "reserved address %s (for %s) would be outside the range", r, c)
		}
	}
	changed := f.pool.RangeFirst != first || f.pool.RangeLast != last
	if changed {
		f.pool.RangeFirst, f.pool.RangeLast = first, last
		f.pool.Size = uint32(b.As4()[3]-a.As4()[3]) + 1
		f.writes++
	}
	p := proto.Clone(f.pool).(*cpv1.Pool)
	return &cpv1.UpdatePoolResponse{Pool: p, Changed: changed}, nil
}

func (f *fakeController) ListDataplanes(_ *cpv1.ListDataplanesRequest, stream grpc.ServerStreamingServer[cpv1.ListDataplanesResponse]) error {
	if err := f.enter("ListDataplanes"); err != nil {
		return err
	}
	f.mu.Lock()
	dps := make([]*cpv1.Dataplane, len(f.dataplanes))
	for i, d := range f.dataplanes {
		dps[i] = proto.Clone(d).(*cpv1.Dataplane)
	}
	f.mu.Unlock()
	for _, d := range dps {
		if err := stream.Send(&cpv1.ListDataplanesResponse{Dataplane: d}); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeController) DrainDataplane(_ context.Context, req *cpv1.DrainDataplaneRequest) (*cpv1.DrainDataplaneResponse, error) {
	if err := f.enter("DrainDataplane"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range f.dataplanes {
		if d.GetDataplaneId() == req.GetDataplaneId() {
			d.State = cpv1.Dataplane_STATE_UP
			if req.GetDraining() {
				d.State = cpv1.Dataplane_STATE_DRAINING
			}
			f.writes++
			return &cpv1.DrainDataplaneResponse{Dataplane: proto.Clone(d).(*cpv1.Dataplane)}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "no data plane %q", req.GetDataplaneId())
}

// RemoveDataplane removes a down or stopped data plane, an up one only
// with force, as the controller does.
func (f *fakeController) RemoveDataplane(_ context.Context, req *cpv1.RemoveDataplaneRequest) (*cpv1.RemoveDataplaneResponse, error) {
	if err := f.enter("RemoveDataplane"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, d := range f.dataplanes {
		if d.GetDataplaneId() != req.GetDataplaneId() {
			continue
		}
		up := d.State == cpv1.Dataplane_STATE_UP || d.State == cpv1.Dataplane_STATE_DRAINING
		if up && !req.GetForce() {
			return nil, status.Errorf(codes.FailedPrecondition, "data plane %s is up (last heard 1s ago, %d leases): stop it first, or remove it with --force (its clients lose their addresses)",
				d.GetDataplaneId(), d.GetLeases())
		}
		f.dataplanes = append(f.dataplanes[:i:i], f.dataplanes[i+1:]...)
		f.writes++
		return &cpv1.RemoveDataplaneResponse{Released: d.GetLeases(), Dataplane: proto.Clone(d).(*cpv1.Dataplane)}, nil
	}
	return nil, status.Errorf(codes.NotFound, "no data plane %q is known", req.GetDataplaneId())
}

func (f *fakeController) SetLogLevel(_ context.Context, req *cpv1.SetLogLevelRequest) (*cpv1.SetLogLevelResponse, error) {
	if err := f.enter("SetLogLevel"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	prev := f.logLevel
	if prev == "" {
		prev = "info"
	}
	f.logLevel = req.GetLevel()
	return &cpv1.SetLogLevelResponse{Previous: prev}, nil
}

type fakeDataplane struct {
	dpv1.UnimplementedDataplaneServiceServer
	status   *dpv1.Status
	sessions []*dpv1.Session

	mu       sync.Mutex
	logLevel string
	kicked   []string
}

func (f *fakeDataplane) GetStatus(context.Context, *dpv1.GetStatusRequest) (*dpv1.GetStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &dpv1.GetStatusResponse{Status: proto.Clone(f.status).(*dpv1.Status)}, nil
}

func (f *fakeDataplane) ListSessions(_ *dpv1.ListSessionsRequest, stream grpc.ServerStreamingServer[dpv1.ListSessionsResponse]) error {
	for _, s := range f.sessions {
		if err := stream.Send(&dpv1.ListSessionsResponse{Session: s}); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeDataplane) KickSession(_ context.Context, req *dpv1.KickSessionRequest) (*dpv1.KickSessionResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.sessions {
		if (req.GetAddress() != "" && s.GetAddress() == req.GetAddress()) || (req.GetSessionId() != "" && s.GetSessionId() == req.GetSessionId()) {
			f.kicked = append(f.kicked, s.GetSessionId())
			return &dpv1.KickSessionResponse{SessionId: s.GetSessionId(), Address: s.GetAddress()}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "no such session")
}

func (f *fakeDataplane) SetLogLevel(_ context.Context, req *dpv1.SetLogLevelRequest) (*dpv1.SetLogLevelResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	prev := f.logLevel
	if prev == "" {
		prev = "info"
	}
	f.logLevel = req.GetLevel()
	return &dpv1.SetLogLevelResponse{Previous: prev}, nil
}

func newController() *fakeController {
	return &fakeController{
		version: "v1.2.3-test",
		id:      "ctl-a",
		leader:  true,
		clients: []*cpv1.Client{
			// Out of order on purpose: the CLI sorts numerically (.10 after .2).
			{Address: "13.8.0.10", ClientIpv6: "fd00:47::10", ClientPort: 40000, DataplaneId: "dp2", SessionId: "s-10",
				ConnectedAt: timestamppb.New(t0), LastHeard: timestamppb.New(t1),
				Rates: &cpv1.Rates{BytesFromClient: 2048, PacketsFromClient: 4, BytesToClient: 1536000, PacketsToClient: 1000.5}},
			{Address: "13.8.0.2", ClientIpv6: "fd00:46::2", ClientPort: 51234, DataplaneId: "dp1", SessionId: "s-2",
				ConnectedAt: timestamppb.New(t0), LastHeard: timestamppb.New(t1),
				Counters: &cpv1.Counters{BytesFromClient: 3 << 20, PacketsFromClient: 2500, BytesToClient: 1234, PacketsToClient: 7},
				Sticky:   true},
		},
		pool: &cpv1.Pool{Prefix: "13.8.0.0/24", Gateway: "13.8.0.1", RangeFirst: "13.8.0.2", RangeLast: "13.8.0.128",
			Size: 127, Leased: 2, Free: 124, Reserved: 1, Route: "0.0.0.0", Dns: []string{"202.38.120.242", "8.8.8.8", "202.106.0.20"},
			FreeRemembered: 30},
		reservations: map[string]string{"fd00:46::99": "13.8.0.99"},
		dataplanes: []*cpv1.Dataplane{
			{DataplaneId: "dp2", InstanceId: "i-2", Version: "v1.2.3-test", ClientListen: "[2001:db8::2]:5678",
				ApiAddress: "unix:///run/fourover6/dp2.sock", State: cpv1.Dataplane_STATE_DOWN, Sessions: 0, Leases: 1,
				RegisteredAt: timestamppb.New(t0), LastHeartbeat: timestamppb.New(t0)},
			{DataplaneId: "dp1", InstanceId: "i-1", Version: "v1.2.3-test", ClientListen: "[2001:db8::1]:5678",
				ApiAddress: "unix:///run/fourover6/dataplane.sock", State: cpv1.Dataplane_STATE_UP, Sessions: 3, Leases: 2,
				RegisteredAt: timestamppb.New(t0), LastHeartbeat: timestamppb.New(t1)},
		},
	}
}

func newDataplane(id string) *fakeDataplane {
	return &fakeDataplane{
		status: &dpv1.Status{
			DataplaneId: id, Version: "v1.2.3-test", ClientListen: "[::]:5678", Tun: "4o6", Mtu: 1500,
			Gateway: "13.8.0.1", Pool: "13.8.0.0/24", Controller: "unix:///run/fourover6/controller.sock",
			ControllerConnected: true, StartedAt: timestamppb.New(t0), Sessions: 3, LeasedSessions: 2,
			AcceptedTotal: 10, ClosedTotal: 7,
			Counters:            &dpv1.Counters{BytesFromClient: 100, PacketsFromClient: 2, BytesToClient: 5 << 30, PacketsToClient: 4},
			Drops:               map[string]uint64{"spoofed_source": 5, "queue_full": 1},
			KeepaliveIntervalMs: 20_000, KeepaliveTimeoutMs: 60_000,
			InstanceId: "i-1", Goroutines: 42, OpenFds: 17, Refused: map[string]uint64{"max_clients": 2},
			Limits: &dpv1.Limits{MaxClients: 1000, MaxConnsPerIp: 4, MaxConnsPerPrefix: 16, PrefixLength: 64, AcceptRate: 50, AcceptBurst: 100},
		},
		sessions: []*dpv1.Session{
			{SessionId: "s-9", State: dpv1.SessionState_SESSION_STATE_ACCEPTED, ClientIpv6: "fd00:46::9", ClientPort: 1000,
				ConnectedAt: timestamppb.New(t0), LastHeard: timestamppb.New(t0)},
			{SessionId: "s-2", State: dpv1.SessionState_SESSION_STATE_LEASED, Address: "13.8.0.2", ClientIpv6: "fd00:46::2",
				ClientPort: 51234, ConnectedAt: timestamppb.New(t0), LastHeard: timestamppb.New(t1),
				Counters: &dpv1.Counters{BytesFromClient: 11, PacketsFromClient: 1, BytesToClient: 22, PacketsToClient: 2}, SendQueue: 3},
			{SessionId: "s-3", State: dpv1.SessionState_SESSION_STATE_CLOSING, Address: "13.8.0.3", ClientIpv6: "fd00:46::3", ClientPort: 2000},
		},
	}
}

// sockPath is a path for a unix socket in a fresh temporary directory.
func sockPath(t *testing.T, name string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if len(path) > 100 { // sun_path limit
		dir, err := os.MkdirTemp("", "ctl")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		path = filepath.Join(dir, name)
	}
	return path
}

// serve starts a gRPC server with the given services on a unix socket in a
// fresh temporary directory and returns its address ("unix:///...").
func serve(t *testing.T, ctrl cpv1.ControllerServiceServer, dp dpv1.DataplaneServiceServer) string {
	t.Helper()
	path := sockPath(t, "d.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	if ctrl != nil {
		cpv1.RegisterControllerServiceServer(s, ctrl)
	}
	if dp != nil {
		dpv1.RegisterDataplaneServiceServer(s, dp)
	}
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return "unix://" + path
}

// missingAddr is a unix socket address where nothing listens.
func missingAddr(t *testing.T) string {
	return "unix://" + sockPath(t, "missing.sock")
}

// ---- running the CLI ----

type result struct {
	stdout, stderr string
	code           int
}

func ctl(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb, func(k string) string { return env[k] })
	return result{out.String(), errb.String(), code}
}

func (r result) expect(t *testing.T, code int) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	return r
}

// syncBuffer is a bytes.Buffer safe to read while the CLI writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func keysOf(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sorted(s ...string) []string { sort.Strings(s); return s }

var clientKeys = sorted("ipv4", "ipv6", "port", "dataplane", "session", "connected_since", "last_heard",
	"bytes_from_client", "packets_from_client", "bytes_to_client", "packets_to_client", "sticky",
	"bytes_from_client_per_second", "packets_from_client_per_second", "bytes_to_client_per_second", "packets_to_client_per_second")
