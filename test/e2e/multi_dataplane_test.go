package e2e

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	"github.com/fourover6/fourover6/test/topo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Second data plane's side of the IPv6 network.
const (
	server2V6 = "fd00:47::1"
	client2V6 = "fd00:47::2"
)

// addDataplane starts another data plane, in its own namespace joined to
// the client namespace by its own IPv6-only veth, behind the env's
// controller (whose unix socket is reachable from any namespace).
func (e *env) addDataplane(id, serverV6, clientV6 string, args ...string) (*topo.NS, *proc) {
	e.t.Helper()
	ns, err := topo.NewNS(topo.UniqueName("d"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(ns.Delete)
	must := func(err error) {
		e.t.Helper()
		if err != nil {
			e.t.Fatal(err)
		}
	}
	must(topo.Veth(ns, "v6c", e.cli, "v6"+id))
	must(ns.AddAddr("v6c", serverV6+"/64"))
	must(e.cli.AddAddr("v6"+id, clientV6+"/64"))
	p := e.start(ns, "4over6-dataplane", append([]string{"--id", id, "--controller", "unix://" + e.ctlSock,
		"--api", "unix://" + filepath.Join(e.dir, id+".sock")}, args...)...)
	return ns, p
}

// dialLabTo is dialLab to another data plane.
func (e *env) dialLabTo(addr string) *labClient {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.cli.Dial(ctx, "tcp6", addr)
	if err != nil {
		e.t.Fatalf("dial %s from the client namespace: %v", addr, err)
	}
	e.t.Cleanup(func() { c.Close() })
	return &labClient{t: e.t, conn: c, dec: wire.NewDecoder(c, 0)}
}

// echo sends one ICMP echo to the gateway through the tunnel and waits for
// the reply.
func (c *labClient) echo(me netip.Addr, seq uint16) error {
	msg := wire.AppendMsg(nil, wire.TypeNetRequest, packet.BuildICMPEcho(me, gw, 0x4d44, seq, []byte("multi"), false))
	if _, err := c.conn.Write(msg); err != nil {
		return err
	}
	for {
		m, err := c.next(10 * time.Second)
		if err != nil {
			return err
		}
		if m.Type == wire.TypeNetResponse && len(m.Data) >= 28 && m.Data[20] == 0 &&
			packet.Dst(m.Data) == me && binary.BigEndian.Uint16(m.Data[26:28]) == seq {
			return nil
		}
	}
}

// controllerAPI is a gRPC client of the env's controller.
func (e *env) controllerAPI() cpv1.ControllerServiceClient {
	e.t.Helper()
	cc, err := grpc.NewClient("unix://"+e.ctlSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cc.Close() })
	return cpv1.NewControllerServiceClient(cc)
}

func (e *env) dataplaneStates(api cpv1.ControllerServiceClient) map[string]cpv1.Dataplane_State {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := api.ListDataplanes(ctx, &cpv1.ListDataplanesRequest{})
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]cpv1.Dataplane_State{}
	for {
		m, err := s.Recv()
		if err != nil {
			break
		}
		out[m.GetDataplane().GetDataplaneId()] = m.GetDataplane().GetState()
	}
	return out
}

// TestMultiDataplane: two data planes in their own namespaces behind one
// controller, 100 clients each: 200 distinct addresses, the client table
// shows both data planes, traffic flows through both; when one data plane
// dies, its leases are released after the grace period.
func TestMultiDataplane(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{
		controllerArgs: []string{"--heartbeat-interval", "200ms", "--dataplane-timeout", "1s", "--grace-period", "1s"},
	})
	_, dp2 := e.addDataplane("dp2", server2V6, client2V6)
	api := e.controllerAPI()
	e.waitFor("dp2 registered", func() bool { return e.dataplaneStates(api)["dp2"] == cpv1.Dataplane_STATE_UP })
	// Its API socket appears once its client listener is open.
	e.waitFor("dp2 listening", func() bool {
		_, err := os.Stat(filepath.Join(e.dir, "dp2.sock"))
		return err == nil
	})

	const perDP = 100
	type client struct {
		c    *labClient
		dp   string
		addr netip.Addr
	}
	clients := make([]*client, 0, 2*perDP)
	for i := range 2 * perDP {
		if i%2 == 0 {
			clients = append(clients, &client{c: e.dialLab(), dp: "dp1"})
		} else {
			clients = append(clients, &client{c: e.dialLabTo(net.JoinHostPort(server2V6, "5678")), dp: "dp2"})
		}
	}
	var wg sync.WaitGroup
	for _, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := cl.c.conn.Write(wire.AddrRequest[:]); err != nil {
				t.Error(err)
				return
			}
			m, err := cl.c.next(20 * time.Second)
			if err != nil || m.Type != wire.TypeAddrResponse {
				t.Errorf("%s client: %v %v", cl.dp, m.Type, err)
				return
			}
			r, err := wire.ParseAddrResponse(m.Data)
			if err != nil {
				t.Error(err)
				return
			}
			cl.addr = r.Addr
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	seen := map[netip.Addr]string{}
	for _, cl := range clients {
		if other, dup := seen[cl.addr]; dup {
			t.Fatalf("%s given to clients of %s and %s", cl.addr, other, cl.dp)
		}
		seen[cl.addr] = cl.dp
	}

	// Traffic through both data planes: every client's echo comes back.
	for i, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := cl.c.echo(cl.addr, uint16(i)); err != nil {
				t.Errorf("echo through %s for %s: %v", cl.dp, cl.addr, err)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	// The client table: 200 rows, each on the data plane that serves it.
	rows := e.controllerClients()
	if len(rows) != 2*perDP {
		t.Fatalf("clients list has %d rows, want %d", len(rows), 2*perDP)
	}
	per := map[string]int{}
	for _, r := range rows {
		if seen[r.IPv4Addr()] != r.Dataplane {
			t.Fatalf("row %+v: the client of %s is on %s", r, r.IPv4, seen[r.IPv4Addr()])
		}
		per[r.Dataplane]++
	}
	if per["dp1"] != perDP || per["dp2"] != perDP {
		t.Fatalf("clients per data plane: %v", per)
	}

	// dp2 dies without a word (its releases never come): DOWN after the
	// data plane timeout, its leases released after the grace period.
	if err := dp2.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-dp2.done
	e.waitFor("dp2 DOWN", func() bool { return e.dataplaneStates(api)["dp2"] == cpv1.Dataplane_STATE_DOWN })
	e.waitFor("dp2's leases released", func() bool {
		rows := e.controllerClients()
		for _, r := range rows {
			if r.Dataplane != "dp1" {
				return false
			}
		}
		return len(rows) == perDP
	})
	if p := e.controllerPool(); p.Leased != perDP {
		t.Fatalf("pool shows %d leased, want %d", p.Leased, perDP)
	}
	// dp1 is untouched and its clients still work; new clients get the
	// freed addresses in time.
	if st := e.dataplaneStates(api)["dp1"]; st != cpv1.Dataplane_STATE_UP {
		t.Fatalf("dp1 is %v", st)
	}
	if err := clients[0].c.echo(clients[0].addr, 9999); err != nil {
		t.Fatalf("dp1 client after dp2 died: %v", err)
	}
}
