package server

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
	"github.com/fourover6/fourover6/controlplane/store/etcdtest"
	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

func TestMain(m *testing.M) {
	code := m.Run()
	etcdtest.StopShared()
	os.Exit(code)
}

// serveStore serves a controller on st over a real unix socket, with a
// pool big enough for any b.N (a /12: a million addresses).
func serveStore(b *testing.B, st store.Store) pb.LeaseServiceClient {
	b.Helper()
	c, err := controller.New(controller.Config{
		Pool:  pool.Config{Prefix: netip.MustParsePrefix("10.0.0.0/12")},
		Store: st,
	})
	if err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(b.TempDir(), "c.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	s := grpc.NewServer(Options(nil)...)
	Register(s, c)
	go s.Serve(l)
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close(); s.Stop(); st.Close() })
	return pb.NewLeaseServiceClient(cc)
}

// benchAllocate measures fresh allocations per second through gRPC, each
// committed to the store before it is answered, from many concurrent
// sessions (as many data plane sessions send their 100 at once).
func benchAllocate(b *testing.B, st store.Store) {
	lease := serveStore(b, st)
	var seq atomic.Int64
	b.SetParallelism(32) // 32 × GOMAXPROCS callers
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pbt *testing.PB) {
		for pbt.Next() {
			n := seq.Add(1)
			_, err := lease.AllocateAddress(context.Background(), &pb.AllocateAddressRequest{
				DataplaneId: "dp1", SessionId: fmt.Sprint("s", n), ClientIpv6: "fd00:46::2", ClientPort: uint32(n % 65536),
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "allocs/s")
}

func BenchmarkAllocateGRPC(b *testing.B) {
	b.Run("bbolt", func(b *testing.B) {
		st, err := store.OpenBolt(filepath.Join(b.TempDir(), "state.db"))
		if err != nil {
			b.Fatal(err)
		}
		benchAllocate(b, st)
	})
	b.Run("etcd", func(b *testing.B) {
		ep, prefix := etcdtest.Shared(b)
		st, err := store.OpenEtcd(context.Background(), store.EtcdConfig{Endpoints: []string{ep}, Prefix: prefix})
		if err != nil {
			b.Fatal(err)
		}
		benchAllocate(b, st)
	})
	b.Run("memory", func(b *testing.B) { benchAllocate(b, store.NewMemory()) })
}
