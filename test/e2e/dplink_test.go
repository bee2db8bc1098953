package e2e

// The data plane's side of the controller link and the lifecycle: exit
// codes, an id in use, recovery after a controller outage, releases across
// a controller restart, the 100 merging and the 104 schedule on the wire,
// fair share of the accept rate, and the stop.

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
	"github.com/fourover6/fourover6/test/topo"
)

// exitCode waits for p to exit and returns its exit code.
func (e *env) exitCode(p *proc, within time.Duration) int {
	e.t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // stopAll reads it again
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			e.t.Fatalf("%s: %v", p.name, err)
		}
		return 0
	case <-time.After(within):
		e.t.Fatalf("%s still running after %v", p.name, within)
		return -1
	}
}

func logOf(t *testing.T, p *proc) string {
	t.Helper()
	b, err := os.ReadFile(p.log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type ctlDataplane struct {
	ID       string `json:"id"`
	Instance string `json:"instance_id"`
	State    string `json:"state"`
}

func (e *env) dataplanes() []ctlDataplane {
	e.t.Helper()
	var dps []ctlDataplane
	e.controllerJSON(&dps, "unix://"+e.ctlSock, "dataplanes", "list")
	return dps
}

// dialLabFrom is dialLab from a given source address of the client
// namespace.
func (e *env) dialLabFrom(src string) (*labClient, error) {
	var c net.Conn
	err := e.cli.Do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		var err error
		c, err = d.Dial("tcp6", serverAddr)
		return err
	})
	if err != nil {
		return nil, err
	}
	e.t.Cleanup(func() { c.Close() })
	return &labClient{t: e.t, conn: c, dec: wire.NewDecoder(c, 0)}, nil
}

// tryLease sends a 100 on a new connection and waits up to within for the
// 101, reporting whether it came.
func (e *env) tryLease(within time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	c, err := e.cli.Dial(ctx, "tcp6", serverAddr)
	if err != nil {
		return false
	}
	defer c.Close()
	if _, err := c.Write(wire.AddrRequest[:]); err != nil {
		return false
	}
	c.SetReadDeadline(time.Now().Add(within))
	m, err := wire.NewDecoder(c, 0).Next()
	return err == nil && m.Type == wire.TypeAddrResponse
}

// TestDuplicateIDExitsTwo: a second data plane with the --id of a live one
// exits 2 (a configuration error: not restarted) with a message saying how
// to fix it, the live one logs the conflict at ERROR naming the refused
// one, and the live one's client, pinging through it all along, loses no
// echo.
func TestDuplicateIDExitsTwo(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	ping := e.startPinger(50 * time.Millisecond)
	e.waitFor("the data plane up", func() bool {
		dps := e.dataplanes()
		return len(dps) == 1 && dps[0].State == "up"
	})
	live := e.dataplanes()[0]
	_, dup := e.addDataplane("dp1", server2V6, client2V6)
	if code := e.exitCode(dup, 30*time.Second); code != 2 {
		t.Fatalf("the second data plane with --id dp1 exited %d, want 2:\n%s", code, logOf(t, dup))
	}
	out := logOf(t, dup)
	for _, want := range []string{"another data plane with --id dp1 is running", "give this one a different --id", live.Instance, "level=error"} {
		if !strings.Contains(out, want) {
			t.Errorf("the refused data plane's output does not say %q:\n%s", want, out)
		}
	}
	e.waitFor("the live data plane to log the conflict", func() bool {
		l := logOf(t, e.procs[1])
		return strings.Contains(l, "level=error") && strings.Contains(l, "DATA PLANE ID IN USE") && strings.Contains(l, filepath.Join(e.dir, "dp1.sock"))
	})
	time.Sleep(500 * time.Millisecond) // echoes after the attempt too
	ping.finish(t)
	if dps := e.dataplanes(); len(dps) != 1 || dps[0].Instance != live.Instance || dps[0].State != "up" {
		t.Fatalf("data planes after the conflict: %+v, before %+v", dps, live)
	}
}

// TestFailedStartLeavesNoEntry: a data plane whose --listen port is taken
// exits 2 before it registers: the controller never hears of it.
func TestFailedStartLeavesNoEntry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	// dp1 holds [::]:5678 in the server namespace.
	bad := e.start(e.srv, "4over6-dataplane", "--id", "dp-bad", "--controller", "unix://"+e.ctlSock,
		"--api", "unix://"+e.dir+"/bad.sock", "--tun", "4o6bad")
	if code := e.exitCode(bad, 20*time.Second); code != 2 {
		t.Fatalf("a data plane whose port is in use exited %d, want 2:\n%s", code, logOf(t, bad))
	}
	if out := logOf(t, bad); !strings.Contains(out, "--listen [::]:5678") || !strings.Contains(out, "address already in use") {
		t.Errorf("the error does not name the port in use:\n%s", out)
	}
	for _, d := range e.dataplanes() {
		if d.ID == "dp-bad" {
			t.Fatalf("the failed start left %+v at the controller", d)
		}
	}
}

// outage kills the controller (or, with stall, stops it with
// SIGSTOP) for down, then brings it back on the same state and returns
// when it is back: its socket is there again, or SIGCONT was sent.
func (e *env) outage(down time.Duration, stall bool) time.Time {
	e.t.Helper()
	ctl := e.controllerProc()
	if stall {
		ctl.cmd.Process.Signal(syscall.SIGSTOP)
		time.Sleep(down)
		ctl.cmd.Process.Signal(syscall.SIGCONT)
		return time.Now()
	}
	if err := ctl.cmd.Process.Kill(); err != nil {
		e.t.Fatal(err)
	}
	<-ctl.done
	ctl.done <- nil
	time.Sleep(down)
	os.Remove(e.ctlSock)
	e.start(e.srv, "4over6-controller", e.controllerArgs()...)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(e.ctlSock); err == nil {
			return time.Now()
		}
		if time.Now().After(deadline) {
			e.t.Fatal("the controller did not come back")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestControllerOutageRecovery: the controller is killed and, 30 s later,
// started again on the same state. New clients are served within 2 s of
// its return (the data plane's reconnect backoff is capped at about a
// second, and its calls wait for the connection instead of failing while
// gRPC reconnects), and an established client's echoes go on throughout.
func TestControllerOutageRecovery(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{controllerArgs: []string{"--grace-period", "5m"}})
	ping := e.startPinger(200 * time.Millisecond)
	if !e.tryLease(10 * time.Second) {
		t.Fatal("no lease before the outage")
	}
	// New clients keep arriving through the outage, one every 100 ms.
	var (
		mu     sync.Mutex
		served []time.Time
		stop   = make(chan struct{})
		wg     sync.WaitGroup
	)
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			wg.Go(func() {
				if e.tryLease(6 * time.Second) {
					mu.Lock()
					served = append(served, time.Now())
					mu.Unlock()
				}
			})
		}
	})
	back := e.outage(30*time.Second, false)
	var first time.Time
	e.waitFor("a new client served after the controller is back", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range served {
			if s.After(back) {
				first = s
				return true
			}
		}
		return false
	})
	close(stop)
	wg.Wait()
	took := first.Sub(back)
	t.Logf("after a 30 s outage, the first new client was served %v after the controller was back", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("new clients were served %v after the controller came back, want within 2 s", took)
	}
	ping.finish(t)
}

// TestReleasesAcrossControllerRestart: 500 clients leave while the
// controller is down; their releases wait in the data plane's queue and
// reach the restarted controller (on the same state) in batches: 2 s after
// it is back no lease is held.
func TestReleasesAcrossControllerRestart(t *testing.T) {
	t.Parallel()
	const n = 500
	ctlArgs := []string{"--pool", "13.8.0.0/22", "--grace-period", "5m", "--max-leases-per-ip", "0", "--max-leases-per-prefix", "0"}
	e := newEnv(t, envOptions{
		controllerArgs: ctlArgs,
		dataplaneArgs:  []string{"--max-conns-per-ip", "0", "--max-conns-per-prefix", "0", "--accept-rate-per-prefix", "0"},
	})
	conns := make([]*labClient, n)
	var wg sync.WaitGroup
	for i := range conns {
		conns[i] = e.dialLab()
		wg.Go(func() { conns[i].lease() })
	}
	wg.Wait()
	if p := e.controllerPool(); p.Leased != n {
		t.Fatalf("%d leased, want %d", p.Leased, n)
	}
	ctl := e.controllerProc()
	if err := ctl.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-ctl.done
	ctl.done <- nil
	for _, c := range conns {
		c.conn.Close()
	}
	e.waitFor("the data plane to see every client go", func() bool { return e.dpStatus().Sessions == 0 })
	time.Sleep(time.Second) // releases retried against nobody
	os.Remove(e.ctlSock)
	e.start(e.srv, "4over6-controller", append(e.controllerArgs(), ctlArgs...)...)
	e.waitFor("the controller back", func() bool { _, err := os.Stat(e.ctlSock); return err == nil })
	back := time.Now()
	var leased int
	for {
		leased = e.controllerPool().Leased
		if leased == 0 || time.Since(back) > 2*time.Second {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(back)
	if leased != 0 {
		t.Fatalf("%d leases still held %v after the controller came back, want none", leased, took.Round(time.Millisecond))
	}
	if cs := e.controllerClients(); len(cs) != 0 {
		t.Fatalf("clients list still has %d rows", len(cs))
	}
	t.Logf("all %d releases made while the controller was down reached it within %v of its return", n, took.Round(time.Millisecond))
}

// TestRepeated100DuringStall: a client repeats its 100 while the first waits
// on a stalled controller (SIGSTOP for 4 s): it gets exactly one 101, and
// the lease works.
func TestRepeated100DuringStall(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--allocate-timeout", "10s"}})
	if !e.tryLease(10 * time.Second) { // the controller link is up
		t.Fatal("no lease before the stall")
	}
	c := e.dialLab()
	ctl := e.controllerProc()
	ctl.cmd.Process.Signal(syscall.SIGSTOP)
	c.write(wire.AddrRequest[:])
	time.Sleep(time.Second)
	c.write(wire.AddrRequest[:])
	c.write(wire.Keepalive[:])
	time.Sleep(3 * time.Second)
	ctl.cmd.Process.Signal(syscall.SIGCONT)
	m, err := c.next(15 * time.Second)
	if err != nil || m.Type != wire.TypeAddrResponse {
		t.Fatalf("first message %v, %v; want the 101", m.Type, err)
	}
	r, err := wire.ParseAddrResponse(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	// No second 101 follows: everything up to the answer to an echo sent
	// now (the old reader sent the second 101 right after the first).
	time.Sleep(500 * time.Millisecond)
	c.write(wire.AppendMsg(nil, wire.TypeNetRequest, packet.BuildICMPEcho(r.Addr, gw, 0x4d44, 7, []byte("once"), false)))
	for {
		m, err := c.next(10 * time.Second)
		if err != nil {
			t.Fatalf("waiting for the echo reply: %v", err)
		}
		if m.Type == wire.TypeAddrResponse {
			t.Fatal("a second 101 for the 100 repeated while the first was pending")
		}
		if m.Type == wire.TypeNetResponse && len(m.Data) >= 28 && m.Data[20] == 0 && binary.BigEndian.Uint16(m.Data[26:28]) == 7 {
			break
		}
	}
	// A 100 after the 101 gets it again (a repeat).
	c.write(wire.AddrRequest[:])
	if again := c.nextOf(wire.TypeAddrResponse); string(again.Data) != string(m.Data) {
		t.Fatalf("repeat 101 %q, want %q", again.Data, m.Data)
	}
}

// TestKeepaliveOnSchedule: the server's 104s go out every
// --keepalive-interval exactly (each at leased_at + k × interval), not at
// the first sweep after they are due: the gaps between one client's 104s
// are the interval within a few milliseconds of scheduling noise.
func TestKeepaliveOnSchedule(t *testing.T) {
	t.Parallel()
	const interval = 300 * time.Millisecond
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--keepalive-interval", interval.String(), "--keepalive-timeout", "1m"}})
	c := e.dialLab()
	c.lease()
	var at []time.Time
	for len(at) < 21 {
		m, err := c.next(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Type == wire.TypeKeepalive {
			at = append(at, time.Now())
		}
	}
	// Each 104 against the nearest point of the schedule: a busy machine
	// delays one now and then (by more than an interval, the late one is
	// sent and the one it ran into skipped); a drifting schedule spreads
	// them over the interval, and its median shows it.
	// The schedule's origin is not visible here (the first 104 seen may
	// itself be late), so each 104's signed offset from at[0] + j × interval
	// is taken relative to the offsets' median: on a fixed schedule they
	// all sit together, wherever the origin is.
	var gaps, signed []time.Duration
	skipped := 0
	for k := 1; k < len(at); k++ {
		gaps = append(gaps, at[k].Sub(at[k-1]))
		since := at[k].Sub(at[0])
		j := (since + interval/2) / interval
		skipped += int(j) - k
		signed = append(signed, since-j*interval)
	}
	centre := slices.Clone(signed)
	slices.Sort(centre)
	origin := centre[len(centre)/2]
	var offs []time.Duration
	for _, o := range signed {
		offs = append(offs, (o - origin).Abs())
	}
	slices.Sort(offs)
	median, worst := offs[len(offs)/2], offs[len(offs)-1]
	t.Logf("20 gaps between 104s at a %v interval: %v; offset from the schedule (origin %v from the first 104 seen): median %v, worst %v; %d skipped",
		interval, gaps, origin, median, worst, skipped)
	// (A periodic sweep of interval/4 that counts each 104 from the sweep
	// that sent it drifts about interval/8 per 104: over 20 of them the
	// offsets spread over the whole interval, a median near interval/4.)
	if median > interval/10 {
		t.Errorf("104s off their schedule: median %v", median)
	}
}

// TestPrefixFloodFairShare: one client prefix floods the data plane with
// connections; the accept rate is kept per prefix as well as overall, so
// another prefix's clients are still served, and the refusals are counted.
func TestPrefixFloodFairShare(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--accept-rate", "100", "--accept-burst", "100",
		"--accept-rate-per-prefix", "20", "--accept-burst-per-prefix", "20", "--max-conns-per-ip", "0", "--max-conns-per-prefix", "0"}})
	const other = "fd00:46:9::2" // another /64
	if err := e.cli.AddAddr("v6s", other+"/64"); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.AddAddr("v6c", "fd00:46:9::1/64"); err != nil {
		t.Fatal(err)
	}
	waitDAD(t, e.cli)
	var (
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		flooded atomic.Int64
	)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				c, err := e.cli.Dial(ctx, "tcp6", serverAddr)
				cancel()
				if err == nil {
					flooded.Add(1)
					c.Close()
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	e.waitFor("the flood to exceed its prefix's rate", func() bool { return e.dpStatus().Refused["accept_rate_per_prefix"] > 100 })
	served := 0
	for i := range 10 {
		c, err := e.dialLabFrom(other)
		if err != nil {
			t.Fatalf("client %d from the other prefix: %v", i, err)
		}
		c.write(wire.AddrRequest[:])
		if m, err := c.next(5 * time.Second); err == nil && m.Type == wire.TypeAddrResponse {
			served++
		}
		time.Sleep(50 * time.Millisecond)
	}
	st := e.dpStatus()
	t.Logf("flood: %d connections made; refused %v; the other prefix: %d of 10 served", flooded.Load(), st.Refused, served)
	if served != 10 {
		t.Fatalf("only %d of 10 clients of another prefix served during the flood", served)
	}
}

// waitDAD waits until ns's IPv6 addresses are usable (duplicate address
// detection done).
func waitDAD(t *testing.T, ns *topo.NS) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := ns.Output("ip", "-6", "addr", "show", "tentative")
		if strings.TrimSpace(out) == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("addresses still tentative: %s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStoppedWithinTwoSeconds: on SIGTERM the data plane closes its
// sessions and says so with one StopDataplane call: `4over6ctl dataplanes
// list` shows it stopped within 2 s, with its clients' leases released.
func TestStoppedWithinTwoSeconds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{controllerArgs: []string{"--grace-period", "5m"}})
	for range 10 {
		e.dialLab().lease()
	}
	if p := e.controllerPool(); p.Leased != 10 {
		t.Fatalf("%d leased, want 10", p.Leased)
	}
	dp := e.procs[1]
	start := time.Now()
	dp.cmd.Process.Signal(syscall.SIGTERM)
	var took time.Duration
	for {
		dps := e.dataplanes()
		if len(dps) == 1 && dps[0].State == "stopped" {
			took = time.Since(start)
			break
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("data planes %+v 2 s after SIGTERM, want dp1 stopped\n%s", dps, logOf(t, dp))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := e.exitCode(dp, 10*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
	if p := e.controllerPool(); p.Leased != 0 {
		t.Fatalf("%d leases held after the stop, want none", p.Leased)
	}
	if out := logOf(t, dp); !strings.Contains(out, "stopped at the controller") || !strings.Contains(out, "leases_released=10") {
		t.Errorf("the data plane did not log its stop:\n%s", out)
	}
	t.Logf("shown stopped %v after SIGTERM", took.Round(time.Millisecond))
}
