package ctlclient_test

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/ctlclient"
	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/server"
	"github.com/fourover6/fourover6/controlplane/store"
	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// serve runs a controller on st at a unix socket.
func serve(t *testing.T, id string, st store.Store, standby bool) (*controller.Controller, string) {
	t.Helper()
	c, err := controller.New(controller.Config{
		Pool: pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/24")}, ID: id, Store: st, Standby: standby,
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), id+".sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	server.Register(s, c)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return c, "unix://" + sock
}

func TestFollowsTheLeader(t *testing.T) {
	st := store.NewMemory() // shared, as etcd would be
	c1, a1 := serve(t, "c1", st, false)
	c2, a2 := serve(t, "c2", st, true)
	c2.SetLeader("c1")

	conn, err := ctlclient.Dial([]string{a2, a1}) // the standby first
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	lease := pb.NewLeaseServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alloc := func(session string) (*pb.AllocateAddressResponse, error) {
		return lease.AllocateAddress(ctx, &pb.AllocateAddressRequest{DataplaneId: "dp", SessionId: session, ClientIpv6: "fd00::1"})
	}
	r, err := alloc("s1")
	if err != nil || r.GetLease().GetAddress() != "13.8.0.2" {
		t.Fatalf("allocate = %v %v", r, err)
	}
	if conn.Leader() != a1 {
		t.Fatalf("leader %q, want %q", conn.Leader(), a1)
	}

	// Failover: c1 steps down, c2 takes over the same store.
	c1.Deactivate("c2")
	if err := c2.Activate(ctx); err != nil {
		t.Fatal(err)
	}
	r, err = alloc("s1") // idempotent across the failover
	if err != nil || r.GetLease().GetAddress() != "13.8.0.2" {
		t.Fatalf("allocate after failover = %v %v", r, err)
	}
	if conn.Leader() != a2 {
		t.Fatalf("leader %q, want %q", conn.Leader(), a2)
	}

	// Nobody leads: UNAVAILABLE, naming what each said.
	c2.Deactivate("")
	sctx, scancel := context.WithTimeout(ctx, time.Second)
	defer scancel()
	_, err = lease.AllocateAddress(sctx, &pb.AllocateAddressRequest{DataplaneId: "dp", SessionId: "s2", ClientIpv6: "fd00::1"})
	if status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("no leader: %v", err)
	}
	// A standby's answer is recognizable.
	_, err = pb.NewControllerServiceClient(mustConn(t, a1)).GetPool(ctx, &pb.GetPoolRequest{})
	if id, ok := ctlclient.IsNotLeader(err); !ok || id != "c2" {
		t.Fatalf("IsNotLeader(%v) = %q %v", err, id, ok)
	}
}

func mustConn(t *testing.T, addr string) *ctlclient.Conn {
	c, err := ctlclient.Dial([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestParseEndpoints(t *testing.T) {
	got, err := ctlclient.ParseEndpoints(" unix:///a.sock, 10.0.0.2:7000 ,")
	if err != nil || len(got) != 2 || got[0] != "unix:///a.sock" || got[1] != "10.0.0.2:7000" {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{"", ",", "ftp://x", "host"} {
		if _, err := ctlclient.ParseEndpoints(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if tg, _ := ctlclient.Target("[::1]:7000"); tg != "passthrough:///[::1]:7000" {
		t.Fatalf("target %q", tg)
	}
}
