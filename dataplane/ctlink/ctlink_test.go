package ctlink_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/server"
	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/ctlink"
	"github.com/fourover6/fourover6/dataplane/session"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

var testDNS = [3]netip.Addr{
	netip.MustParseAddr("202.38.120.242"),
	netip.MustParseAddr("8.8.8.8"),
	netip.MustParseAddr("202.106.0.20"),
}

// ctl is a real controller served over gRPC on a unix socket, and a Link to
// it.
type ctl struct {
	c    *controller.Controller // the controller itself, to set up state fast
	link *ctlink.Link
	ops  cpv1.ControllerServiceClient // the operators' view, to check what the link sent
	sock string
	stop func() // stops the gRPC server; idempotent
}

// startController serves the real controller (controlplane/controller behind
// controlplane/server) on a unix socket in a temporary directory and dials it
// the way the data plane does.
func startController(t *testing.T, prefix, rng string) *ctl {
	t.Helper()
	r, err := pool.ParseRange(rng)
	if err != nil {
		t.Fatal(err)
	}
	c, err := controller.New(controller.Config{
		Pool:    pool.Config{Prefix: netip.MustParsePrefix(prefix), Range: r},
		DNS:     testDNS,
		Version: "ctl-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "controller.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(server.Options(nil)...)
	server.Register(gs, c)
	served := make(chan struct{})
	go func() {
		defer close(served)
		gs.Serve(ln)
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			gs.Stop()
			<-served
		}
	}
	t.Cleanup(stop)
	cc := dial(t, sock)
	return &ctl{c: c, link: ctlink.New(cc), ops: cpv1.NewControllerServiceClient(cc), sock: sock, stop: stop}
}

func dial(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// short bounds a call that waits for a connection that will not come.
func short(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	t.Cleanup(cancel)
	return c
}

func releases(dp string, rs ...dataplane.ReleaseRequest) dataplane.ReleaseBatch {
	return dataplane.ReleaseBatch{DataplaneID: dp, Releases: rs}
}

// ctx bounds every call so that a hang fails the test instead of stalling it.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

var client1 = netip.MustParseAddrPort("[2001:db8::2]:40001")

func alloc(dp, sess string) dataplane.AllocateRequest {
	return dataplane.AllocateRequest{DataplaneID: dp, SessionID: sess, Client: client1}
}

func TestRegister(t *testing.T) {
	c := startController(t, "13.8.0.0/24", "")
	info, err := c.link.Register(ctx(t), dataplane.Registration{DataplaneID: "dp1", Version: "v9", ClientListen: "[::]:5678"})
	if err != nil {
		t.Fatal(err)
	}
	if info.Gateway != netip.MustParseAddr("13.8.0.1") {
		t.Errorf("gateway = %s, want 13.8.0.1", info.Gateway)
	}
	if info.Pool != netip.MustParsePrefix("13.8.0.0/24") {
		t.Errorf("pool = %s, want 13.8.0.0/24", info.Pool)
	}
	// An empty id is the caller's mistake: neither exhaustion nor an
	// unreachable controller, and the controller's words are kept.
	_, err = c.link.Register(ctx(t), dataplane.Registration{})
	if err == nil || errors.Is(err, dataplane.ErrControllerUnavailable) || errors.Is(err, dataplane.ErrPoolExhausted) {
		t.Fatalf("register with empty id: err = %v, want a plain error", err)
	}
	if !strings.Contains(err.Error(), "dataplane id is empty") || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Errorf("register with empty id: err = %q, want the controller's message and code", err)
	}
}

func TestAllocate(t *testing.T) {
	c := startController(t, "13.8.0.0/24", "")
	resp, err := c.link.Allocate(ctx(t), alloc("dp1", "s1"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Addr != netip.MustParseAddr("13.8.0.2") {
		t.Errorf("address = %s, want 13.8.0.2 (the first client address)", resp.Addr)
	}
	if resp.Route != netip.IPv4Unspecified() {
		t.Errorf("route = %s, want 0.0.0.0", resp.Route)
	}
	if resp.DNS != testDNS {
		t.Errorf("DNS = %v, want %v", resp.DNS, testDNS)
	}

	// Idempotent per session: a retry (say, after a lost reply) gets the
	// same lease and does not use up another address.
	again, err := c.link.Allocate(ctx(t), alloc("dp1", "s1"))
	if err != nil {
		t.Fatal(err)
	}
	if again != resp {
		t.Errorf("repeated allocate = %v, want %v", again, resp)
	}
	other, err := c.link.Allocate(ctx(t), alloc("dp1", "s2"))
	if err != nil {
		t.Fatal(err)
	}
	if other.Addr != netip.MustParseAddr("13.8.0.3") {
		t.Errorf("second session got %s, want 13.8.0.3", other.Addr)
	}

	// The link carried the client's address and port to the client table.
	got, err := c.ops.GetClient(ctx(t), &cpv1.GetClientRequest{Address: "13.8.0.2"})
	if err != nil {
		t.Fatal(err)
	}
	cl := got.GetClient()
	if cl.GetClientIpv6() != client1.Addr().String() || cl.GetClientPort() != uint32(client1.Port()) ||
		cl.GetDataplaneId() != "dp1" || cl.GetSessionId() != "s1" {
		t.Errorf("client table row = %v, want %s dp1/s1", cl, client1)
	}
	pi, err := c.ops.GetPool(ctx(t), &cpv1.GetPoolRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if pi.GetPool().GetLeased() != 2 {
		t.Errorf("pool has %d leases, want 2", pi.GetPool().GetLeased())
	}
}

func TestAllocateRejectsIPv4Client(t *testing.T) {
	c := startController(t, "13.8.0.0/24", "")
	_, err := c.link.Allocate(ctx(t), dataplane.AllocateRequest{
		DataplaneID: "dp1", SessionID: "s1", Client: netip.MustParseAddrPort("192.0.2.1:4000"),
	})
	if err == nil {
		t.Fatal("allocate for an IPv4 client succeeded; the controller wants IPv6 clients")
	}
	if errors.Is(err, dataplane.ErrControllerUnavailable) || errors.Is(err, dataplane.ErrPoolExhausted) {
		t.Errorf("err = %v: an invalid argument is neither exhaustion nor unavailability", err)
	}
}

func TestPoolExhausted(t *testing.T) {
	c := startController(t, "13.8.0.0/24", "13.8.0.2-13.8.0.3")
	for _, s := range []string{"s1", "s2"} {
		if _, err := c.link.Allocate(ctx(t), alloc("dp1", s)); err != nil {
			t.Fatalf("allocate %s: %v", s, err)
		}
	}
	_, err := c.link.Allocate(ctx(t), alloc("dp1", "s3"))
	if !errors.Is(err, dataplane.ErrPoolExhausted) {
		t.Fatalf("third allocate from a pool of 2: err = %v, want ErrPoolExhausted", err)
	}
	if errors.Is(err, dataplane.ErrControllerUnavailable) {
		t.Errorf("err = %v also matches ErrControllerUnavailable", err)
	}
	if !strings.Contains(err.Error(), "2 of 2") {
		t.Errorf("err = %q: the controller's message (2 of 2 leased) is lost", err)
	}
	// Holders keep their leases: a retry of s1 still works.
	if r, err := c.link.Allocate(ctx(t), alloc("dp1", "s1")); err != nil || r.Addr != netip.MustParseAddr("13.8.0.2") {
		t.Fatalf("repeat for s1 on a full pool = %v, %v; want 13.8.0.2", r.Addr, err)
	}
}

func TestReleaseThenAllocate(t *testing.T) {
	c := startController(t, "13.8.0.0/24", "13.8.0.2-13.8.0.3")
	a1, err := c.link.Allocate(ctx(t), alloc("dp1", "s1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.link.Allocate(ctx(t), alloc("dp1", "s2")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.link.Allocate(ctx(t), alloc("dp1", "s3")); !errors.Is(err, dataplane.ErrPoolExhausted) {
		t.Fatalf("allocate on a full pool: %v", err)
	}
	if n, err := c.link.ReleaseBatch(ctx(t), releases("dp1", dataplane.ReleaseRequest{SessionID: "s1", Addr: a1.Addr, Reason: "test"})); err != nil || n != 1 {
		t.Fatalf("release: %d freed, %v", n, err)
	}
	if _, err := c.ops.GetClient(ctx(t), &cpv1.GetClientRequest{Address: a1.Addr.String()}); status.Code(err) != codes.NotFound {
		t.Errorf("released %s is still in the client table (err %v)", a1.Addr, err)
	}
	// A duplicate (or stale) release is harmless.
	if n, err := c.link.ReleaseBatch(ctx(t), releases("dp1", dataplane.ReleaseRequest{SessionID: "s1", Addr: a1.Addr, Reason: "again"})); err != nil || n != 0 {
		t.Fatalf("duplicate release: %d freed, %v", n, err)
	}
	a3, err := c.link.Allocate(ctx(t), alloc("dp1", "s3"))
	if err != nil {
		t.Fatalf("allocate after release: %v", err)
	}
	if a3.Addr != a1.Addr {
		t.Errorf("after release got %s, want the freed %s", a3.Addr, a1.Addr)
	}
}

func TestReport(t *testing.T) {
	c := startController(t, "13.8.0.0/24", "")
	a, err := c.link.Allocate(ctx(t), alloc("dp1", "s1"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	reps := []dataplane.SessionReport{
		{SessionID: "s1", Addr: a.Addr, Client: client1, ConnectedAt: now.Add(-time.Minute), LastHeard: now,
			Traffic: session.Traffic{BytesFromClient: 100, PacketsFromClient: 2, BytesToClient: 300, PacketsToClient: 4}},
		{SessionID: "ghost", Addr: netip.MustParseAddr("13.8.0.77"), Client: client1, ConnectedAt: now, LastHeard: now},
		// Holds a lease, but not the address the data plane believes.
		{SessionID: "s1-wrong", Addr: a.Addr, Client: client1, ConnectedAt: now, LastHeard: now},
	}
	if _, err := c.link.Allocate(ctx(t), alloc("dp1", "s1-wrong")); err != nil {
		t.Fatal(err)
	}
	r, err := c.link.Report(ctx(t), dataplane.Report{DataplaneID: "dp1", Sessions: reps})
	if err != nil {
		t.Fatal(err)
	}
	unknown := r.Unknown
	slices.Sort(unknown)
	if want := []string{"ghost", "s1-wrong"}; !slices.Equal(unknown, want) {
		t.Errorf("unknown = %q, want %q", unknown, want)
	}
	got, err := c.ops.GetClient(ctx(t), &cpv1.GetClientRequest{Address: a.Addr.String()})
	if err != nil {
		t.Fatal(err)
	}
	cl := got.GetClient()
	cn := cl.GetCounters()
	if cn.GetBytesFromClient() != 100 || cn.GetPacketsFromClient() != 2 || cn.GetBytesToClient() != 300 || cn.GetPacketsToClient() != 4 {
		t.Errorf("counters in the client table = %v, want 100/2/300/4", cn)
	}
	if !cl.GetLastHeard().AsTime().Equal(now) || !cl.GetConnectedAt().AsTime().Equal(now.Add(-time.Minute)) {
		t.Errorf("times in the client table: connected %v heard %v, want %v and %v",
			cl.GetConnectedAt().AsTime(), cl.GetLastHeard().AsTime(), now.Add(-time.Minute), now)
	}

	// A report from a data plane without leases names every session.
	r, err = c.link.Report(ctx(t), dataplane.Report{DataplaneID: "dp2", Sessions: reps[:1]})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Unknown, []string{"s1"}) || r.UnknownCount != 1 {
		t.Errorf("report from another data plane: unknown = %q (%d), want [s1]", r.Unknown, r.UnknownCount)
	}
	// An empty report is fine and names nothing.
	if r, err := c.link.Report(ctx(t), dataplane.Report{DataplaneID: "dp1", Sessions: nil}); err != nil || len(r.Unknown) != 0 {
		t.Errorf("empty report = %q, %v", r.Unknown, err)
	}
}

func TestControllerUnavailable(t *testing.T) {
	t.Run("missing socket", func(t *testing.T) {
		link := ctlink.New(dial(t, filepath.Join(t.TempDir(), "nobody-here.sock")))
		_, err := link.Register(short(t), dataplane.Registration{DataplaneID: "dp1"})
		if !errors.Is(err, dataplane.ErrControllerUnavailable) {
			t.Fatalf("register with no controller: err = %v, want ErrControllerUnavailable", err)
		}
		if errors.Is(err, dataplane.ErrPoolExhausted) {
			t.Errorf("err = %v also matches ErrPoolExhausted", err)
		}
		_, err = link.Allocate(short(t), alloc("dp1", "s1"))
		if !errors.Is(err, dataplane.ErrControllerUnavailable) || !errors.Is(err, dataplane.ErrNotSent) {
			t.Errorf("allocate with no controller: err = %v, want ErrControllerUnavailable, not sent", err)
		}
	})
	t.Run("dialled, missing socket", func(t *testing.T) {
		missing := endpoint.Endpoint{Network: "unix", Address: filepath.Join(t.TempDir(), "nobody-here.sock")}
		link, err := ctlink.Dial([]endpoint.Endpoint{missing}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer link.Close()
		_, err = link.Allocate(short(t), alloc("dp1", "s1"))
		// The data plane acts on the kind; an operator reads why.
		if !errors.Is(err, dataplane.ErrControllerUnavailable) || !strings.Contains(err.Error(), missing.String()+": no such file or directory") {
			t.Errorf("allocate with no controller: err = %v", err)
		}
	})
	t.Run("stopped server", func(t *testing.T) {
		c := startController(t, "13.8.0.0/24", "")
		a, err := c.link.Allocate(ctx(t), alloc("dp1", "s1"))
		if err != nil {
			t.Fatal(err)
		}
		c.stop()
		// Not necessarily "not sent": the call may have gone out on the
		// connection the server was closing.
		_, err = c.link.Allocate(short(t), alloc("dp1", "s2"))
		if !errors.Is(err, dataplane.ErrControllerUnavailable) {
			t.Errorf("allocate after stop: err = %v, want ErrControllerUnavailable", err)
		}
		_, err = c.link.ReleaseBatch(short(t), releases("dp1", dataplane.ReleaseRequest{SessionID: "s1", Addr: a.Addr}))
		if !errors.Is(err, dataplane.ErrControllerUnavailable) {
			t.Errorf("release after stop: err = %v, want ErrControllerUnavailable", err)
		}
		_, err = c.link.Report(ctx(t), dataplane.Report{DataplaneID: "dp1", Sessions: []dataplane.SessionReport{{SessionID: "s1", Addr: a.Addr, Client: client1}}})
		if !errors.Is(err, dataplane.ErrControllerUnavailable) {
			t.Errorf("report after stop: err = %v, want ErrControllerUnavailable", err)
		}
	})
}

// fakeLease answers LeaseService calls with whatever the test sets, to see
// how the link treats responses and codes the real controller never sends.
type fakeLease struct {
	cpv1.UnimplementedLeaseServiceServer
	reg   *cpv1.RegisterDataplaneResponse
	lease *cpv1.Lease
	err   error
}

func (f *fakeLease) RegisterDataplane(context.Context, *cpv1.RegisterDataplaneRequest) (*cpv1.RegisterDataplaneResponse, error) {
	return f.reg, f.err
}

func (f *fakeLease) AllocateAddress(context.Context, *cpv1.AllocateAddressRequest) (*cpv1.AllocateAddressResponse, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &cpv1.AllocateAddressResponse{Lease: f.lease}, nil
}

func (f *fakeLease) ReleaseAddresses(context.Context, *cpv1.ReleaseAddressesRequest) (*cpv1.ReleaseAddressesResponse, error) {
	return &cpv1.ReleaseAddressesResponse{}, f.err
}

func startFake(t *testing.T, f *fakeLease) *ctlink.Link {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	cpv1.RegisterLeaseServiceServer(gs, f)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return ctlink.New(dial(t, sock))
}

func TestErrorMapping(t *testing.T) {
	cases := []struct {
		code               codes.Code
		exhausted, unavail bool
	}{
		{codes.ResourceExhausted, true, false},
		{codes.Unavailable, false, true},
		{codes.DeadlineExceeded, false, true},
		{codes.Aborted, false, true},
		{codes.InvalidArgument, false, false},
		{codes.Internal, false, false},
		{codes.PermissionDenied, false, false},
	}
	for _, c := range cases {
		t.Run(c.code.String(), func(t *testing.T) {
			link := startFake(t, &fakeLease{err: status.Error(c.code, "the controller's words")})
			_, err := link.Allocate(ctx(t), alloc("dp1", "s1"))
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, dataplane.ErrPoolExhausted) != c.exhausted || errors.Is(err, dataplane.ErrControllerUnavailable) != c.unavail {
				t.Errorf("%s: err = %v: exhausted=%v unavailable=%v, want %v %v", c.code, err,
					errors.Is(err, dataplane.ErrPoolExhausted), errors.Is(err, dataplane.ErrControllerUnavailable), c.exhausted, c.unavail)
			}
			if !strings.Contains(err.Error(), "the controller's words") || !strings.HasPrefix(err.Error(), "allocate: ") {
				t.Errorf("err = %q: want the operation and the controller's message", err)
			}
			_, rerr := link.ReleaseBatch(ctx(t), releases("dp1", dataplane.ReleaseRequest{SessionID: "s1", Addr: netip.MustParseAddr("13.8.0.2")}))
			if errors.Is(rerr, dataplane.ErrControllerUnavailable) != c.unavail {
				t.Errorf("release: err = %v, unavailable want %v", rerr, c.unavail)
			}
		})
	}
	t.Run("Unimplemented", func(t *testing.T) {
		link := startFake(t, &fakeLease{})
		_, err := link.Report(ctx(t), dataplane.Report{DataplaneID: "dp1", Sessions: nil})
		if err == nil || errors.Is(err, dataplane.ErrControllerUnavailable) || errors.Is(err, dataplane.ErrPoolExhausted) {
			t.Errorf("report to a server without it: err = %v, want a plain error", err)
		}
	})
}

// TestBadResponses: the link refuses what a data plane cannot use, instead
// of configuring a TUN or sending a 101 with garbage.
func TestBadResponses(t *testing.T) {
	okDNS := []string{"1.1.1.1", "8.8.8.8", "9.9.9.9"}
	regs := []*cpv1.RegisterDataplaneResponse{
		{Gateway: "nonsense", Pool: "13.8.0.0/24"},
		{Gateway: "2001:db8::1", Pool: "13.8.0.0/24"},
		{Gateway: "13.8.0.1", Pool: "13.8.0.0"},
		{Gateway: "13.8.0.1", Pool: "13.9.0.0/24"}, // gateway outside the pool
		{Gateway: "13.8.0.1", Pool: "2001:db8::/64"},
		{},
	}
	for _, r := range regs {
		link := startFake(t, &fakeLease{reg: r})
		if info, err := link.Register(ctx(t), dataplane.Registration{DataplaneID: "dp1"}); err == nil {
			t.Errorf("register response %v accepted as %+v", r, info)
		}
	}
	leases := []*cpv1.Lease{
		{Address: "13.8.0.2", Route: "0.0.0.0", Dns: okDNS[:2]},
		{Address: "13.8.0.2", Route: "0.0.0.0", Dns: append(okDNS, "4.4.4.4")},
		{Address: "2001:db8::2", Route: "0.0.0.0", Dns: okDNS},
		{Address: "13.8.0.2", Route: "", Dns: okDNS},
		{Address: "13.8.0.2", Route: "0.0.0.0", Dns: []string{"1.1.1.1", "dns.example", "9.9.9.9"}},
		nil,
	}
	for _, l := range leases {
		link := startFake(t, &fakeLease{lease: l})
		if r, err := link.Allocate(ctx(t), alloc("dp1", "s1")); err == nil {
			t.Errorf("lease %v accepted as %v", l, r)
		}
	}
	link := startFake(t, &fakeLease{lease: &cpv1.Lease{Address: "13.8.0.9", Route: "10.0.0.0", Dns: okDNS}})
	r, err := link.Allocate(ctx(t), alloc("dp1", "s1"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Addr != netip.MustParseAddr("13.8.0.9") || r.Route != netip.MustParseAddr("10.0.0.0") || r.DNS[2] != netip.MustParseAddr("9.9.9.9") {
		t.Errorf("good lease parsed as %v", r)
	}
}

// TestReportOf100000Sessions: a complete report of 100,000 leased sessions
// (about 10 MB: more than twice gRPC's 4 MiB message limit) goes to a real
// controller over real gRPC in chunks; the controller knows every session,
// takes their counters, and keeps every lease (nothing is reconciled away).
func TestReportOf100000Sessions(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 100,000 leases")
	}
	const n = 100_000
	c := startController(t, "10.0.0.0/15", "")
	reg := dataplane.Registration{DataplaneID: "dp1", InstanceID: "i1", ClientListen: "[::]:5678"}
	if _, err := c.link.Register(ctx(t), reg); err != nil {
		t.Fatal(err)
	}
	reps := make([]dataplane.SessionReport, n)
	now := time.Now().Truncate(time.Second)
	var wg sync.WaitGroup
	const workers = 64
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				id := "s" + strconv.Itoa(i)
				client := netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}), 40000)
				// Straight to the controller: 100,000 gRPC calls take
				// minutes under the race detector, and the link's
				// allocations are tested above.
				l, err := c.c.Allocate(ctx(t), "dp1", id, client.Addr(), client.Port())
				if err != nil {
					errs <- err
					return
				}
				reps[i] = dataplane.SessionReport{SessionID: id, Addr: l.Addr, Client: client, ConnectedAt: now, LastHeard: now,
					Traffic: session.Traffic{BytesFromClient: uint64(i), PacketsFromClient: 1, BytesToClient: 2 * uint64(i), PacketsToClient: 2}}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	start := time.Now()
	r, err := c.link.Report(ctx(t), dataplane.Report{DataplaneID: "dp1", InstanceID: "i1", Complete: true, Sessions: reps})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report of %d sessions in chunks of %d: %v", n, ctlink.ReportChunk, time.Since(start))
	if r.UnknownCount != 0 || len(r.Unknown) != 0 {
		t.Fatalf("controller knows no lease for %d sessions (%q...)", r.UnknownCount, r.Unknown[:min(len(r.Unknown), 5)])
	}
	pi, err := c.ops.GetPool(ctx(t), &cpv1.GetPoolRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := pi.GetPool().GetLeased(); got != n {
		t.Fatalf("pool has %d leases after the report, want %d", got, n)
	}
	// The last chunk's sessions were applied too.
	for _, i := range []int{0, ctlink.ReportChunk, n - 1} {
		row, err := c.ops.GetClient(ctx(t), &cpv1.GetClientRequest{Address: reps[i].Addr.String()})
		if err != nil {
			t.Fatal(err)
		}
		if cl := row.GetClient(); cl.GetSessionId() != reps[i].SessionID || cl.GetCounters().GetBytesToClient() != 2*uint64(i) {
			t.Errorf("row of session %d = %v", i, cl)
		}
	}
	// Sessions the controller does not know are counted, and named.
	ghosts := []dataplane.SessionReport{{SessionID: "ghost-1", Client: client1, ConnectedAt: now, LastHeard: now},
		{SessionID: "ghost-2", Client: client1, ConnectedAt: now, LastHeard: now}}
	r, err = c.link.Report(ctx(t), dataplane.Report{DataplaneID: "dp1", InstanceID: "i1", Sessions: ghosts})
	if err != nil {
		t.Fatal(err)
	}
	if r.UnknownCount != 2 || len(r.Unknown) != 2 {
		t.Errorf("unknown %q (%d), want both ghosts", r.Unknown, r.UnknownCount)
	}
}

// TestIDInUse: a second instance of a live data plane id is refused with
// the live one's whereabouts, and the live one is told on its command
// stream.
func TestIDInUse(t *testing.T) {
	c := startController(t, "13.8.0.0/24", "")
	live := dataplane.Registration{DataplaneID: "dp1", InstanceID: "live", ClientListen: "[fd00:46::1]:5678", APIAddress: "unix:///run/a.sock"}
	if _, err := c.link.Register(ctx(t), live); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	told := make(chan dataplane.Directive, 4)
	go c.link.WatchDirectives(wctx, "dp1", "live", func(d dataplane.Directive) { told <- d })
	time.Sleep(100 * time.Millisecond) // the stream is open: the instance is live
	second := dataplane.Registration{DataplaneID: "dp1", InstanceID: "second", ClientListen: "[fd00:47::1]:5678", APIAddress: "unix:///run/b.sock"}
	_, err := c.link.Register(ctx(t), second)
	var inUse *dataplane.IDInUseError
	if !errors.As(err, &inUse) || !errors.Is(err, dataplane.ErrIDInUse) {
		t.Fatalf("second instance: err = %v, want an *IDInUseError", err)
	}
	if inUse.Live.InstanceID != "live" || inUse.Live.ClientListen != live.ClientListen || inUse.Live.APIAddress != live.APIAddress {
		t.Errorf("live instance = %+v", inUse.Live)
	}
	if msg := inUse.Error(); !strings.Contains(msg, "--id dp1") || !strings.Contains(msg, "[fd00:46::1]:5678") || !strings.Contains(msg, "give this one a different --id") {
		t.Errorf("message %q does not say what to do", msg)
	}
	select {
	case d := <-told:
		if d.IDConflict == nil || d.IDConflict.InstanceID != "second" || d.IDConflict.ClientListen != second.ClientListen {
			t.Errorf("directive %+v, want the refused instance", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the live instance was not told")
	}
	// The refused instance is not registered: its allocations are refused.
	_, err = c.link.Allocate(ctx(t), dataplane.AllocateRequest{DataplaneID: "dp1", InstanceID: "second", SessionID: "s1", Client: client1})
	if !errors.Is(err, dataplane.ErrNotRegistered) {
		t.Errorf("allocate from the refused instance: err = %v, want ErrNotRegistered", err)
	}
	// Stop: the live instance's leases go at once.
	if _, err := c.link.Allocate(ctx(t), dataplane.AllocateRequest{DataplaneID: "dp1", InstanceID: "live", SessionID: "s1", Client: client1}); err != nil {
		t.Fatal(err)
	}
	n, err := c.link.Stop(ctx(t), dataplane.StopRequest{DataplaneID: "dp1", InstanceID: "live", Reason: "test"})
	if err != nil || n != 1 {
		t.Fatalf("stop: %d released, %v", n, err)
	}
}

// TestMapErrCanceled: a call our own context ended is "unavailable" to the
// retry logic and recognisably ours (context.Canceled), so a shutdown is
// not reported as the controller going away.
func TestMapErrCanceled(t *testing.T) {
	for name, err := range map[string]error{
		"context": context.Canceled,
		"grpc":    status.Error(codes.Canceled, "context canceled"),
	} {
		got := ctlink.MapErr("release", err)
		if !errors.Is(got, dataplane.ErrControllerUnavailable) || !errors.Is(got, context.Canceled) {
			t.Errorf("%s: mapErr = %v: want ErrControllerUnavailable and context.Canceled", name, got)
		}
	}
	if got := ctlink.MapErr("release", status.Error(codes.Unavailable, "down")); errors.Is(got, context.Canceled) {
		t.Errorf("Unavailable mapped to %v, which claims our context ended", got)
	}
}
