package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/ctlclient"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	"github.com/fourover6/fourover6/controlplane/store/etcdtest"
	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/ctlink"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	"github.com/fourover6/fourover6/test/netnstest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// startHost runs a binary in the test's own network namespace (the
// controllers here only need loopback etcd and unix sockets).
func (e *env) startHost(bin string, args ...string) *proc {
	e.t.Helper()
	return e.launch(bin, exec.Command(filepath.Join(binDir, bin), args...))
}

func controllerStatus(sock string) (*cpv1.ControllerStatus, error) {
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := cpv1.NewControllerServiceClient(cc).GetStatus(ctx, &cpv1.GetStatusRequest{})
	return r.GetStatus(), err
}

// TestMultiController: two controllers on one etcd, active/passive. Data
// plane sessions lease through ctlink.Dial with both addresses (what the
// data plane uses) while the leader is killed with -9: the standby takes
// over, allocations resume, and no address is ever handed out twice.
func TestMultiController(t *testing.T) {
	t.Parallel()
	netnstest.RequireRoot(t) // the binaries are built by TestMain as root
	e := &env{t: t, dir: t.TempDir()}
	t.Cleanup(e.stopAll)
	etcd := etcdtest.Start(t)
	// Every allocation comes from one client address: no per-client limit.
	c1, socks := e.startControllerPair(etcd, "/e2e", "--log-level", "debug")
	if st, _ := controllerStatus(socks[1]); st.GetStore() != "etcd://"+etcd.Endpoint[len("http://"):]+"/e2e" {
		t.Fatalf("status store %q", st.GetStore())
	}

	// The standby refuses mutations and names the leader.
	cc, err := grpc.NewClient("unix://"+socks[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = cpv1.NewLeaseServiceClient(cc).AllocateAddress(t.Context(), &cpv1.AllocateAddressRequest{
		DataplaneId: "x", SessionId: "y", ClientIpv6: "fd00::1"})
	if id, ok := ctlclient.IsNotLeader(err); !ok || id != "c1" {
		t.Fatalf("standby answered %v", err)
	}

	link, err := ctlink.Dial([]endpoint.Endpoint{{Network: "unix", Address: socks[0]}, {Network: "unix", Address: socks[1]}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	if _, err := link.Register(t.Context(), dataplane.Registration{DataplaneID: "dpA", InstanceID: "i1"}); err != nil {
		t.Fatal(err)
	}

	// Sessions lease the way the data plane does: retry while the
	// controller is unavailable.
	var (
		mu     sync.Mutex
		acked  = map[string]netip.Addr{}
		stop   = make(chan struct{})
		wg     sync.WaitGroup
		seq    int
		failed int
	)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				seq++
				n := seq
				mu.Unlock()
				sess := fmt.Sprintf("s%d", n)
				client := netip.AddrPortFrom(netip.MustParseAddr("fd00:46::2"), uint16(1000+n%60000))
				deadline := time.Now().Add(15 * time.Second)
				for {
					ctx, cancel := context.WithDeadline(context.Background(), deadline)
					l, err := link.Allocate(ctx, dataplane.AllocateRequest{DataplaneID: "dpA", SessionID: sess, Client: client})
					cancel()
					if err == nil {
						mu.Lock()
						acked[sess] = l.Addr
						mu.Unlock()
						break
					}
					if !errors.Is(err, dataplane.ErrControllerUnavailable) || time.Now().After(deadline) {
						mu.Lock()
						failed++
						mu.Unlock()
						t.Errorf("allocation %s failed: %v", sess, err)
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	e.waitFor("allocations through c1", func() bool { return count() >= 60 })
	if err := c1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-c1.done
	atKill := count()
	e.waitFor("c2 takes over", func() bool { st, err := controllerStatus(socks[1]); return err == nil && st.GetLeader() })
	e.waitFor("allocations resume", func() bool { return count() >= atKill+60 })
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}

	// No address twice among acknowledged leases.
	byAddr := map[netip.Addr]string{}
	for s, a := range acked {
		if other, dup := byAddr[a]; dup {
			t.Fatalf("%s handed to %s and %s", a, other, s)
		}
		byAddr[a] = s
	}
	// The new leader lists every one of them, and etcd holds exactly them.
	var rows []ctlClient
	e.controllerJSON(&rows, "unix://"+socks[0]+",unix://"+socks[1], "clients", "list")
	if len(rows) != len(acked) {
		t.Fatalf("leader lists %d clients, %d acknowledged", len(rows), len(acked))
	}
	for _, r := range rows {
		if byAddr[r.IPv4Addr()] != r.Session {
			t.Fatalf("row %+v does not match the acknowledged lease of %s", r, byAddr[r.IPv4Addr()])
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(t.Context(), "/e2e/leases/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || int(resp.Count) != len(acked) {
		t.Fatalf("etcd holds %d lease keys (%v), want %d", resp.Count, err, len(acked))
	}
	if link.Leader() != "unix://"+socks[1] {
		t.Fatalf("link follows %q", link.Leader())
	}
	t.Logf("%d allocations acknowledged, %d before the kill", len(acked), atKill)
}

// TestWatchFollowsLeader: clients watch given both controllers' addresses
// keeps running when the leader is killed with -9, and prints the clients
// the new leader leases, never "not the leader".
func TestWatchFollowsLeader(t *testing.T) {
	t.Parallel()
	netnstest.RequireRoot(t)
	e := &env{t: t, dir: t.TempDir()}
	t.Cleanup(e.stopAll)
	etcd := etcdtest.Start(t)
	c1, socks := e.startControllerPair(etcd, "/watch")

	link, err := ctlink.Dial([]endpoint.Endpoint{{Network: "unix", Address: socks[0]}, {Network: "unix", Address: socks[1]}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	if _, err := link.Register(t.Context(), dataplane.Registration{DataplaneID: "dpA", InstanceID: "i1"}); err != nil {
		t.Fatal(err)
	}
	allocate := func(sess string, port uint16) string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			l, err := link.Allocate(ctx, dataplane.AllocateRequest{DataplaneID: "dpA", SessionID: sess,
				Client: netip.AddrPortFrom(netip.MustParseAddr("fd00:46::2"), port)})
			cancel()
			if err == nil {
				return l.Addr.String()
			}
			if !errors.Is(err, dataplane.ErrControllerUnavailable) || time.Now().After(deadline) {
				t.Fatalf("allocate %s: %v", sess, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	first := allocate("s1", 1001)

	watch := exec.Command(filepath.Join(binDir, "4over6ctl"), "--controller", "unix://"+socks[0]+",unix://"+socks[1], "clients", "watch", "-o", "json")
	stdout, _ := watch.StdoutPipe()
	var stderr syncBuffer
	watch.Stderr = &stderr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	defer watch.Process.Kill()
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func(want string) {
		t.Helper()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("watch ended while waiting for %s; stderr:\n%s", want, stderr.String())
				}
				if strings.Contains(l, want) {
					return
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("no line with %s; stderr:\n%s", want, stderr.String())
			}
		}
	}
	next(`"ipv4":"` + first + `"`)
	next(`"type":"synced"`)

	if err := c1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-c1.done
	second := allocate("s2", 1002) // through c2, once it leads
	next(`"ipv4":"` + second + `"`)
	// stderr is copied by another goroutine: it may lag behind stdout.
	e.waitFor("the resumed note", func() bool { return strings.Contains(stderr.String(), "watch: resumed at unix://"+socks[1]) })
	if s := stderr.String(); strings.Contains(s, "not the leader") {
		t.Errorf("watch stderr:\n%s", s)
	}
}

// startControllerPair starts controllers c1 and c2 sharing etcd under
// prefix, with no per-client lease limits, and returns once c1 leads and c2
// stands by naming it: c1's process and the two sockets.
func (e *env) startControllerPair(etcd *etcdtest.Server, prefix string, extra ...string) (*proc, []string) {
	e.t.Helper()
	storeURL := "etcd://" + etcd.Endpoint[len("http://"):] + prefix
	socks := []string{filepath.Join(e.dir, "c1.sock"), filepath.Join(e.dir, "c2.sock")}
	args := func(id, sock string) []string {
		return append([]string{"--controller-id", id, "--listen", "unix://" + sock, "--store", storeURL,
			"--election-ttl", "2s", "--dns", "192.0.2.53", "--max-leases-per-ip", "0", "--max-leases-per-prefix", "0"}, extra...)
	}
	c1 := e.startHost("4over6-controller", args("c1", socks[0])...)
	e.waitFor("c1 leads", func() bool { st, err := controllerStatus(socks[0]); return err == nil && st.GetLeader() })
	e.startHost("4over6-controller", args("c2", socks[1])...)
	e.waitFor("c2 stands by", func() bool {
		st, err := controllerStatus(socks[1])
		return err == nil && !st.GetLeader() && st.GetLeaderId() == "c1"
	})
	return c1, socks
}
