package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fourover6/fourover6/dataplane/wire"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// leased is a lab client that got its 101.
type leased struct {
	c    *labClient
	addr netip.Addr
	from netip.AddrPort // its own end of the connection
}

func (e *env) leaseOne(c *labClient) *leased {
	e.t.Helper()
	r := c.lease()
	return &leased{c: c, addr: r.Addr, from: netip.MustParseAddrPort(c.conn.LocalAddr().String())}
}

// checkTable compares every client's 101 with the controller's client
// table: one row per client, with that client's IPv6 address and port,
// and no address twice.
func (e *env) checkTable(cls []*leased) {
	e.t.Helper()
	byAddr := map[netip.Addr]*leased{}
	for _, c := range cls {
		if o, dup := byAddr[c.addr]; dup {
			e.t.Fatalf("%s given to %s and %s", c.addr, o.from, c.from)
		}
		byAddr[c.addr] = c
	}
	rows := e.clients()
	if len(rows) != len(cls) {
		e.t.Fatalf("clients list has %d rows, %d clients hold a 101", len(rows), len(cls))
	}
	for _, r := range rows {
		c := byAddr[r.IPv4Addr()]
		if c == nil {
			e.t.Fatalf("row %+v: no client holds that address", r)
		}
		if r.IPv6 != c.from.Addr().String() || r.Port != int(c.from.Port()) {
			e.t.Fatalf("row %+v: the address is %s's", r, c.from)
		}
	}
}

// TestControllerStall: a controller stopped (SIGSTOP) for longer than
// --dataplane-timeout + --grace-period, then resumed while new clients
// connect, disconnects no established client and gives no address twice:
// its own stall is not counted against the data plane. The pool is small,
// so the new clients would get the established ones' addresses if their
// leases were released: 30 of 35 addresses are held, 15 clients come (and
// the data plane's next report, which would take the leases back, is up
// to a second away).
func TestControllerStall(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{
		controllerArgs: []string{"--heartbeat-interval", "200ms", "--dataplane-timeout", "1s", "--grace-period", "1s",
			"--pool-range", "13.8.0.2-13.8.0.36"},
		dataplaneArgs: []string{"--report-interval", "1s"},
	})
	ctl := e.procs[0]
	const n, m, size = 30, 15, 35
	var old []*leased
	for range n {
		old = append(old, e.leaseOne(e.dialLab()))
	}
	time.Sleep(1500 * time.Millisecond) // complete reports list them all
	e.checkTable(old)

	if err := ctl.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			ctl.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	time.Sleep(4 * time.Second) // timeout + grace is 2s
	// New clients connect and ask for an address while it resumes: a few
	// before, the others one by one after (until after its first
	// reconcile tick, and before the data plane's next report).
	fresh := make([]*labClient, m)
	for i := range fresh {
		fresh[i] = e.dialLab()
	}
	for _, c := range fresh[:5] {
		c.write(wire.AddrRequest[:])
	}
	if err := ctl.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	for _, c := range fresh[5:] {
		time.Sleep(20 * time.Millisecond)
		c.write(wire.AddrRequest[:])
	}
	all := append([]*leased(nil), old...)
	for _, c := range fresh {
		msg, err := c.next(20 * time.Second)
		if err != nil {
			continue // refused: the pool is full
		}
		if msg.Type != wire.TypeAddrResponse {
			t.Fatalf("new client after the stall got %v", msg.Type)
		}
		r, err := wire.ParseAddrResponse(msg.Data)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, &leased{c: c, addr: r.Addr, from: netip.MustParseAddrPort(c.conn.LocalAddr().String())})
	}
	if got := len(all) - n; got != size-n {
		t.Errorf("%d new clients got an address; %d were free", got, size-n)
	}
	time.Sleep(3 * time.Second) // timeouts and grace periods go by, reports come in
	for i, c := range old {
		if err := c.c.echo(c.addr, uint16(i)); err != nil {
			t.Fatalf("established client %s after the stall: %v", c.addr, err)
		}
	}
	e.checkTable(all)
	var dps []struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	e.ctlJSON(&dps, "dataplanes", "list")
	if len(dps) != 1 || dps[0].State != "up" {
		t.Fatalf("data planes after the stall: %+v", dps)
	}
	if b, _ := os.ReadFile(ctl.log); !strings.Contains(string(b), "the controller did not run for a while") {
		t.Fatal("the controller did not log its stall")
	}
}

// dialFrom is dialLab from a given source address of the client namespace.
func (e *env) dialFrom(src string) *labClient {
	e.t.Helper()
	var c net.Conn
	err := e.cli.Do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
		var err error
		c, err = d.Dial("tcp6", serverAddr)
		return err
	})
	if err != nil {
		e.t.Fatalf("dial %s from %s: %v", serverAddr, src, err)
	}
	e.t.Cleanup(func() { c.Close() })
	return &labClient{t: e.t, conn: c, dec: wire.NewDecoder(c, 0)}
}

// refused checks that the controller gave c no address: the data plane
// closes the connection without a 101.
func refused(t *testing.T, c *labClient) {
	t.Helper()
	c.write(wire.AddrRequest[:])
	m, err := c.next(10 * time.Second)
	if err == nil {
		t.Fatalf("a client over its lease limit got a %v", m.Type)
	}
}

// TestLeaseLimits: the controller's fair share, counted across the data
// plane's clients by IPv6 address and /64: three leases per address, five
// per prefix; a reservation is exempt; a release makes room.
func TestLeaseLimits(t *testing.T) {
	t.Parallel()
	metrics := filepath.Join(t.TempDir(), "metrics.sock")
	e := newEnv(t, envOptions{
		controllerArgs: []string{"--max-leases-per-ip", "3", "--max-leases-per-prefix", "5", "--metrics", "unix://" + metrics},
	})
	const (
		a1 = clientV6       // fd00:46::2
		a2 = "fd00:46::3"   // the same /64
		b1 = "fd00:46:1::2" // another /64
	)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(e.cli.AddAddr("v6s", a2+"/64"))
	must(e.cli.AddAddr("v6s", b1+"/64"))
	must(e.srv.AddAddr("v6c", "fd00:46:1::1/64"))

	var held []*leased
	take := func(src string, k int) {
		t.Helper()
		for range k {
			held = append(held, e.leaseOne(e.dialFrom(src)))
		}
	}
	take(a1, 3)
	refused(t, e.dialFrom(a1)) // the address's limit
	take(a2, 2)
	refused(t, e.dialFrom(a2)) // the /64's limit
	take(b1, 3)                // another /64 counts apart
	refused(t, e.dialFrom(b1))
	e.checkTable(held)

	// A reserved client gets its address whatever it holds.
	if _, errOut, code := e.ctl("reservations", "set", a1, "13.8.0.200"); code != 0 {
		t.Fatalf("reservations set: %s", errOut)
	}
	r := e.leaseOne(e.dialFrom(a1))
	if r.addr != netip.MustParseAddr("13.8.0.200") {
		t.Fatalf("reserved client at its limit got %s", r.addr)
	}
	held = append(held, r)
	// The reserved lease counts too: the /64 is full again.
	refused(t, e.dialFrom(a2))
	// A client leaving makes room for another from its address.
	gone := held[5] // one of b1's
	gone.c.conn.Close()
	held = append(held[:5], held[6:]...)
	e.waitFor("the lease of the client that left released", func() bool { return len(e.clients()) == len(held) })
	take(b1, 1)
	e.checkTable(held)

	m := scrape(t, metrics)
	if m[`fourover6_controller_lease_limit_refusals_total{limit="ip"}`] != 2 || m[`fourover6_controller_lease_limit_refusals_total{limit="prefix"}`] != 2 ||
		m[`fourover6_controller_allocation_failures_total{reason="limit"}`] != 4 {
		t.Fatalf("limit metrics: ip %v, prefix %v, failures %v", m[`fourover6_controller_lease_limit_refusals_total{limit="ip"}`],
			m[`fourover6_controller_lease_limit_refusals_total{limit="prefix"}`], m[`fourover6_controller_allocation_failures_total{reason="limit"}`])
	}
}

// TestDuplicateDataplaneID: a second data plane started with the --id of
// a live one is refused at registration: it exits with an error that names
// the live one, the controller logs both, and the live one's clients are
// untouched.
func TestDuplicateDataplaneID(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	c := e.leaseOne(e.dialLab())
	var before []struct {
		ID       string `json:"id"`
		Instance string `json:"instance_id"`
	}
	e.ctlJSON(&before, "dataplanes", "list")
	_, dup := e.addDataplane("dp1", server2V6, client2V6)
	select {
	case err := <-dup.done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Fatalf("the duplicate data plane exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the duplicate data plane is still running")
	}
	b, _ := os.ReadFile(dup.log)
	if !strings.Contains(string(b), "another data plane with --id dp1 is running: instance "+before[0].Instance) ||
		!strings.Contains(string(b), "give this one a different --id") {
		t.Fatalf("the duplicate's error does not name the live one:\n%s", b)
	}
	ctlLog, _ := os.ReadFile(e.procs[0].log)
	if !strings.Contains(string(ctlLog), "DATA PLANE ID IN USE") || !strings.Contains(string(ctlLog), "refused_listen") {
		t.Fatalf("the controller did not log the conflict:\n%s", ctlLog)
	}
	var after []struct {
		ID       string `json:"id"`
		Instance string `json:"instance_id"`
		State    string `json:"state"`
	}
	e.ctlJSON(&after, "dataplanes", "list")
	if len(after) != 1 || after[0].Instance != before[0].Instance || after[0].State != "up" {
		t.Fatalf("data planes after the conflict: %+v (before %+v)", after, before)
	}
	if err := c.c.echo(c.addr, 1); err != nil {
		t.Fatalf("the live data plane's client: %v", err)
	}
	e.checkTable([]*leased{c})
}

// TestDataplaneRemove: "dataplane remove" forgets a down or a stopped data
// plane (durably: not back after a controller restart) and releases its
// leases; an up one is refused unless --force, and then comes back as a new
// entry when it calls again, its client's lease recovered from its report.
func TestDataplaneRemove(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{
		controllerArgs: []string{"--heartbeat-interval", "200ms"},
		dataplaneArgs:  []string{"--report-interval", "300ms"},
	})
	api := e.controllerAPI()
	_, dp2 := e.addDataplane("dp2", server2V6, client2V6)
	e.waitFor("dp2 up", func() bool { return e.dataplaneStates(api)["dp2"] == cpv1.Dataplane_STATE_UP })
	e.waitFor("dp2's API (it listens for clients by then)", func() bool {
		_, err := os.Stat(filepath.Join(e.dir, "dp2.sock"))
		return err == nil
	})
	c1 := e.leaseOne(e.dialLab())
	e.leaseOne(e.dialLabTo(net.JoinHostPort(server2V6, "5678")))

	// dp2 dies without a word: down at once (its command stream ended).
	if err := dp2.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-dp2.done
	e.waitFor("dp2 DOWN", func() bool { return e.dataplaneStates(api)["dp2"] == cpv1.Dataplane_STATE_DOWN })

	// A stopped data plane, as the data plane's graceful stop will leave
	// it: registered, a lease, StopDataplane.
	cc, err := grpc.NewClient("unix://"+e.ctlSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	lease := cpv1.NewLeaseServiceClient(cc)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := lease.RegisterDataplane(ctx, &cpv1.RegisterDataplaneRequest{DataplaneId: "dp3", InstanceId: "x3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := lease.AllocateAddress(ctx, &cpv1.AllocateAddressRequest{DataplaneId: "dp3", InstanceId: "x3", SessionId: "s", ClientIpv6: "fd00:99::1"}); err != nil {
		t.Fatal(err)
	}
	if r, err := lease.StopDataplane(ctx, &cpv1.StopDataplaneRequest{DataplaneId: "dp3", InstanceId: "x3", Reason: "test"}); err != nil || r.Released != 1 {
		t.Fatalf("StopDataplane = %v %v", r, err)
	}
	type dpRow struct {
		ID     string `json:"id"`
		State  string `json:"state"`
		Leases int    `json:"leases"`
	}
	list := func() map[string]dpRow {
		var rows []dpRow
		e.ctlJSON(&rows, "dataplanes", "list")
		out := map[string]dpRow{}
		for _, r := range rows {
			out[r.ID] = r
		}
		return out
	}
	if d := list(); d["dp3"].State != "stopped" || d["dp3"].Leases != 0 || d["dp2"].State != "down" || d["dp2"].Leases != 1 {
		t.Fatalf("data planes %+v", d)
	}

	// Refused for the up dp1.
	_, errOut, code := e.ctl("dataplane", "remove", "dp1")
	if code != 1 || !strings.Contains(errOut, "data plane dp1 is up") || !strings.Contains(errOut, "--force") {
		t.Fatalf("remove of an up data plane: exit %d: %s", code, errOut)
	}
	type removed struct {
		ID        string `json:"id"`
		Released  int    `json:"released"`
		Forced    bool   `json:"forced"`
		Dataplane dpRow  `json:"dataplane"`
	}
	remove := func(args ...string) removed {
		t.Helper()
		out, errOut, code := e.ctl(append(append([]string{"dataplane", "remove"}, args...), "-o", "json")...)
		if code != 0 {
			t.Fatalf("dataplane remove %v: exit %d: %s", args, code, errOut)
		}
		var r removed
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := remove("dp2"); r.Released != 1 || r.Forced || r.Dataplane.State != "down" {
		t.Fatalf("remove dp2: %+v", r)
	}
	if r := remove("dp3"); r.Released != 0 || r.Dataplane.State != "stopped" {
		t.Fatalf("remove dp3: %+v", r)
	}
	if _, _, code := e.ctl("dataplane", "remove", "dp2"); code != 4 {
		t.Fatalf("remove of a removed data plane: exit %d", code)
	}
	if d := list(); len(d) != 1 || d["dp1"].State != "up" {
		t.Fatalf("data planes after removing dp2 and dp3: %+v", d)
	}
	e.checkTable([]*leased{c1})

	// The removal is durable: a restarted controller does not know them.
	ctl := e.procs[0]
	if err := e.stop(ctl); err != nil {
		t.Fatal(err)
	}
	e.start(e.srv, "4over6-controller", append(e.controllerArgs(), "--heartbeat-interval", "200ms")...)
	e.waitFor("the restarted controller", func() bool { _, _, code := e.ctl("dataplanes", "list"); return code == 0 })
	if d := list(); len(d) != 1 {
		t.Fatalf("data planes after a restart: %+v", d)
	}

	// --force on the up dp1: it calls again, is recorded anew, and its
	// next report recovers its client's lease (nobody took it).
	if r := remove("dp1", "--force"); r.Released != 1 || !r.Forced {
		t.Fatalf("forced remove of dp1: %+v", r)
	}
	e.waitFor("dp1 back, its client's lease recovered", func() bool {
		rows := e.clients()
		return list()["dp1"].State == "up" && len(rows) == 1 && rows[0].IPv4Addr() == c1.addr
	})
	if err := c1.c.echo(c1.addr, 7); err != nil {
		t.Fatalf("dp1's client after the forced remove: %v", err)
	}
	e.checkTable([]*leased{c1})
}
