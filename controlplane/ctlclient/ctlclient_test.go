package ctlclient_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/ctlclient"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/server"
	"github.com/fourover6/fourover6/controlplane/store"
	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// ctl is a real controller served on a unix socket, counting the
// GetStatus calls it gets.
type ctl struct {
	*controller.Controller
	ep       endpoint.Endpoint
	statuses atomic.Int32
}

// serve runs a controller on st (shared, as etcd would be) at a unix socket.
func serve(t *testing.T, id string, st store.Store, standby bool) *ctl {
	t.Helper()
	c, err := controller.New(controller.Config{
		Pool: pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/24")}, ID: id, Store: st, Standby: standby,
	})
	if err != nil {
		t.Fatal(err)
	}
	x := &ctl{Controller: c, ep: sockEndpoint(t, id)}
	l, err := x.ep.Listen()
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if info.FullMethod == pb.ControllerService_GetStatus_FullMethodName {
			x.statuses.Add(1)
		}
		return h(ctx, req)
	}))
	server.Register(s, c)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return x
}

// sockEndpoint is a unix socket address in a fresh directory (short
// enough for sun_path).
func sockEndpoint(t *testing.T, name string) endpoint.Endpoint {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctlc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return endpoint.Endpoint{Network: "unix", Address: filepath.Join(dir, name+".sock")}
}

// refusedTCP is a loopback TCP address where nothing listens.
func refusedTCP(t *testing.T) endpoint.Endpoint {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return endpoint.Endpoint{Network: "tcp", Address: addr}
}

func dial(t *testing.T, eps ...endpoint.Endpoint) *ctlclient.Conn {
	t.Helper()
	c, err := ctlclient.Dial(eps, ctlclient.WithProbeTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func allocate(ctx context.Context, conn grpc.ClientConnInterface, session string) (*pb.AllocateAddressResponse, error) {
	return pb.NewLeaseServiceClient(conn).AllocateAddress(ctx, &pb.AllocateAddressRequest{
		DataplaneId: "dp", SessionId: session, ClientIpv6: "fd00::1"})
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// The standby is listed first: the probe finds the leader, a failover
// moves the Conn to the new one, and the allocation, repeated across it,
// keeps its address.
func TestFollowsTheLeader(t *testing.T) {
	t.Parallel()
	st := store.NewMemory()
	c1 := serve(t, "c1", st, false)
	c2 := serve(t, "c2", st, true)
	c2.SetLeader("c1")
	conn := dial(t, c2.ep, c1.ep)
	ctx := timeout(t, 30*time.Second)

	r, err := allocate(ctx, conn, "s1")
	if err != nil || r.GetLease().GetAddress() != "13.8.0.2" {
		t.Fatalf("allocate = %v %v", r, err)
	}
	if conn.Leader() != c1.ep.String() {
		t.Fatalf("leader %q, want %q", conn.Leader(), c1.ep)
	}
	if cur, _ := conn.Current(); cur != c1.ep {
		t.Fatalf("current %v", cur)
	}

	c1.Deactivate("c2")
	if err := c2.Activate(ctx); err != nil {
		t.Fatal(err)
	}
	r, err = allocate(ctx, conn, "s1")
	if err != nil || r.GetLease().GetAddress() != "13.8.0.2" {
		t.Fatalf("allocate after failover = %v %v", r, err)
	}
	if conn.Leader() != c2.ep.String() {
		t.Fatalf("leader %q, want %q", conn.Leader(), c2.ep)
	}
	if rows := listClients(ctx, t, conn); len(rows) != 1 || rows[0].GetSessionId() != "s1" {
		t.Fatalf("clients %v", rows)
	}
}

// listClients reads a whole ListClients stream.
func listClients(ctx context.Context, t *testing.T, conn grpc.ClientConnInterface) []*pb.Client {
	t.Helper()
	s, err := pb.NewControllerServiceClient(conn).ListClients(ctx, &pb.ListClientsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var out []*pb.Client
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m.GetClient())
	}
}

// A standby at the only address: its NOT_LEADER comes back as it was sent.
func TestStandbyAlone(t *testing.T) {
	t.Parallel()
	st := store.NewMemory()
	c2 := serve(t, "c2", st, true)
	c2.SetLeader("c1")
	conn := dial(t, c2.ep)
	_, err := allocate(timeout(t, 5*time.Second), conn, "s1")
	if id, ok := ctlclient.IsNotLeader(err); !ok || id != "c1" {
		t.Fatalf("IsNotLeader(%v) = %q %v", err, id, ok)
	}
	var e *ctlclient.Error
	if errors.As(err, &e) {
		t.Fatalf("a standby's answer became %v", e)
	}
	s, err := pb.NewControllerServiceClient(conn).ListClients(timeout(t, 5*time.Second), &pb.ListClientsRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	if _, ok := ctlclient.IsNotLeader(err); !ok {
		t.Fatalf("stream on a standby: %v", err)
	}
	if c2.statuses.Load() != 0 {
		t.Fatal("one address was probed")
	}
	// A standby serves its own status.
	resp, err := pb.NewControllerServiceClient(conn).GetStatus(timeout(t, 5*time.Second), &pb.GetStatusRequest{})
	if err != nil || resp.GetStatus().GetLeader() || resp.GetStatus().GetLeaderId() != "c1" {
		t.Fatalf("status %v %v", resp, err)
	}
}

// Nothing listens: the error says why, as an errno, at once.
func TestDeadAddress(t *testing.T) {
	t.Parallel()
	missing, refused := sockEndpoint(t, "missing"), refusedTCP(t)
	for _, c := range []struct {
		ep    endpoint.Endpoint
		errno syscall.Errno
	}{{missing, syscall.ENOENT}, {refused, syscall.ECONNREFUSED}} {
		conn := dial(t, c.ep)
		start := time.Now()
		_, err := allocate(timeout(t, 30*time.Second), conn, "s1")
		var e *ctlclient.Error
		if !errors.As(err, &e) || len(e.Endpoints) != 1 || e.Answered() || e.Endpoints[0].Endpoint != c.ep {
			t.Fatalf("%v: %v, want an *Error for it alone", c.ep, err)
		}
		if !errors.Is(err, c.errno) || status.Code(err) != codes.Unavailable {
			t.Errorf("%v: %v is not %v / UNAVAILABLE", c.ep, err, c.errno)
		}
		if want := c.ep.String() + ": " + c.errno.Error(); err.Error() != want {
			t.Errorf("message %q, want %q", err, want)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%v: took %v to fail", c.ep, d)
		}
		// Streams too.
		s, err := pb.NewControllerServiceClient(conn).ListClients(timeout(t, 30*time.Second), &pb.ListClientsRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		if !errors.Is(err, c.errno) {
			t.Errorf("%v: stream: %v", c.ep, err)
		}
	}

	// Dead addresses beside the leader are passed over.
	st := store.NewMemory()
	c1 := serve(t, "c1", st, false)
	conn := dial(t, missing, refused, c1.ep)
	if _, err := allocate(timeout(t, 30*time.Second), conn, "s1"); err != nil || conn.Leader() != c1.ep.String() {
		t.Fatalf("allocate beside dead addresses: %v, leader %q", err, conn.Leader())
	}

	// All dead: fail at once, each address explained in order.
	conn = dial(t, missing, refused)
	start := time.Now()
	_, err := allocate(timeout(t, 30*time.Second), conn, "s1")
	var e *ctlclient.Error
	if !errors.As(err, &e) || e.Answered() || len(e.Endpoints) != 2 || !errors.Is(e.Endpoints[0], syscall.ENOENT) || !errors.Is(e.Endpoints[1], syscall.ECONNREFUSED) {
		t.Fatalf("all dead: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("all dead: took %v", d)
	}
}

// Something accepts connections but never speaks gRPC: no connection
// within the probe timeout, and the call's deadline for one address.
func TestSilentListener(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	silent := endpoint.Endpoint{Network: "tcp", Address: l.Addr().String()}

	conn := dial(t, silent)
	_, err = allocate(timeout(t, 300*time.Millisecond), conn, "s1")
	var e *ctlclient.Error
	if !errors.As(err, &e) || e.Answered() || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("one silent address: %v", err)
	}
	if r := e.Endpoints[0].Reason(); r != "no connection before the deadline" {
		t.Errorf("reason %q", r)
	}

	conn2, err := ctlclient.Dial([]endpoint.Endpoint{silent, sockEndpoint(t, "none")}, ctlclient.WithProbeTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	_, err = allocate(timeout(t, 10*time.Second), conn2, "s1")
	if !errors.As(err, &e) || e.Answered() || e.Endpoints[0].Reason() != "no connection within 200ms" {
		t.Fatalf("silent and missing: %v", err)
	}
}

// No controller leads: a call waits for one within its deadline and goes
// to it once elected; until then a standby still serves its status.
func TestWaitsForAnElection(t *testing.T) {
	t.Parallel()
	st := store.NewMemory()
	c1 := serve(t, "c1", st, true)
	c2 := serve(t, "c2", st, true)
	missing := sockEndpoint(t, "missing")
	conn := dial(t, c1.ep, missing, c2.ep)

	// Nobody is elected in time: UNAVAILABLE, every address explained.
	_, err := allocate(timeout(t, 700*time.Millisecond), conn, "s1")
	var e *ctlclient.Error
	if !errors.As(err, &e) || !e.Answered() || len(e.Endpoints) != 3 || status.Code(err) != codes.Unavailable {
		t.Fatalf("no leader: %v", err)
	}
	var nl *ctlclient.NotLeaderError
	if !errors.As(e.Endpoints[0], &nl) || !errors.Is(e.Endpoints[1], syscall.ENOENT) || !errors.As(e.Endpoints[2], &nl) {
		t.Fatalf("no leader, per address: %v", err)
	}
	if !strings.Contains(err.Error(), c1.ep.String()+": not the leader (no leader elected)") {
		t.Errorf("message %q", err)
	}
	resp, err := pb.NewControllerServiceClient(conn).GetStatus(timeout(t, 5*time.Second), &pb.GetStatusRequest{})
	if err != nil || resp.GetStatus().GetControllerId() != "c1" {
		t.Fatalf("status while none leads: %v %v (want the first standby's)", resp, err)
	}

	// c2 is elected while the call waits.
	go func() {
		time.Sleep(500 * time.Millisecond)
		c1.SetLeader("c2")
		c2.Activate(context.Background())
	}()
	start := time.Now()
	r, err := allocate(timeout(t, 10*time.Second), conn, "s1")
	if err != nil || r.GetLease().GetAddress() == "" || conn.Leader() != c2.ep.String() {
		t.Fatalf("allocate across the election: %v %v, leader %q", r, err, conn.Leader())
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("answered after %v, before the election", d)
	}
}

// Calls that find no leader known share one probe.
func TestConcurrentCallsShareAProbe(t *testing.T) {
	t.Parallel()
	st := store.NewMemory()
	c1 := serve(t, "c1", st, false)
	c2 := serve(t, "c2", st, true)
	conn := dial(t, c2.ep, c1.ep)
	ctx := timeout(t, 30*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := allocate(ctx, conn, "s"+string(rune('a'+i%26))+string(rune('a'+i/26)))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	n := c1.statuses.Load()
	if n > 5 {
		t.Errorf("%d probes for 50 concurrent calls", n)
	}
	t.Logf("50 concurrent calls, %d GetStatus at the leader", n)
}

func watch(ctx context.Context, t *testing.T, conn grpc.ClientConnInterface) pb.ControllerService_WatchClientsClient {
	t.Helper()
	s, err := pb.NewControllerServiceClient(conn).WatchClients(ctx, &pb.WatchClientsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// untilSynced reads a watch's current set.
func untilSynced(t *testing.T, s pb.ControllerService_WatchClientsClient) int {
	t.Helper()
	n := 0
	for {
		m, err := s.Recv()
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		if m.GetEvent().GetType() == pb.ClientEvent_TYPE_SYNCED {
			return n
		}
		n++
	}
}

// A watch opened on a leader that has just stepped down fails on its first
// receive: it is replayed on the new leader, the caller sees nothing of it.
// Once events have arrived, a leader change ends the watch with NOT_LEADER
// and the next one goes to the new leader.
func TestStreamFollowsTheLeader(t *testing.T) {
	t.Parallel()
	st := store.NewMemory()
	c1 := serve(t, "c1", st, false)
	c2 := serve(t, "c2", st, true)
	conn := dial(t, c1.ep, c2.ep)
	ctx := timeout(t, 30*time.Second)
	if _, err := allocate(ctx, conn, "s1"); err != nil || conn.Leader() != c1.ep.String() {
		t.Fatalf("allocate: %v, leader %q", err, conn.Leader())
	}

	// The Conn still believes in c1.
	c1.Deactivate("c2")
	if err := c2.Activate(ctx); err != nil {
		t.Fatal(err)
	}
	s := watch(ctx, t, conn)
	if n := untilSynced(t, s); n != 1 {
		t.Fatalf("replayed watch: %d clients, want 1", n)
	}
	if conn.Leader() != c2.ep.String() {
		t.Fatalf("watch on %q, want %q", conn.Leader(), c2.ep)
	}

	// Mid-stream: c2 steps down, c1 leads again.
	c2.Deactivate("c1")
	if err := c1.Activate(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := s.Recv()
	if id, ok := ctlclient.IsNotLeader(err); !ok || errors.Is(err, io.EOF) {
		t.Fatalf("mid-stream leader change: %v (leader %q)", err, id)
	}
	s = watch(ctx, t, conn)
	if n := untilSynced(t, s); n != 1 || conn.Leader() != c1.ep.String() {
		t.Fatalf("watch again: %d clients on %q", n, conn.Leader())
	}
}

func TestDialRejects(t *testing.T) {
	if _, err := ctlclient.Dial(nil); err == nil {
		t.Fatal("Dial of no endpoints succeeded")
	}
}

// cutBackup sends two chunks of a backup, then the server goes away.
type cutBackup struct {
	pb.UnimplementedControllerServiceServer
	stop func()
}

func (b *cutBackup) Backup(_ *pb.BackupRequest, stream grpc.ServerStreamingServer[pb.BackupResponse]) error {
	for range 2 {
		if err := stream.Send(&pb.BackupResponse{Data: []byte("chunk")}); err != nil {
			return err
		}
	}
	time.Sleep(50 * time.Millisecond) // the chunks reach the client first
	go b.stop()
	<-stream.Context().Done()
	return stream.Context().Err()
}

// TestStreamCutAfterMessages: a stream that delivered messages was answered
// by the daemon, whatever ends it afterwards (even its connection going
// down): the caller gets the stream's own error, never "cannot reach".
func TestStreamCutAfterMessages(t *testing.T) {
	ep := sockEndpoint(t, "cut")
	l, err := ep.Listen()
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterControllerServiceServer(s, &cutBackup{stop: s.Stop})
	go s.Serve(l)
	t.Cleanup(s.Stop)

	stream, err := pb.NewControllerServiceClient(dial(t, ep)).Backup(timeout(t, 5*time.Second), &pb.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for {
		if _, err = stream.Recv(); err != nil {
			break
		}
		got++
	}
	if got != 2 {
		t.Fatalf("%d chunks before the cut, want 2", got)
	}
	var none *ctlclient.Error
	if errors.As(err, &none) || status.Code(err) != codes.Unavailable {
		t.Fatalf("cut stream: %T %v, want the stream's UNAVAILABLE", err, err)
	}
}
