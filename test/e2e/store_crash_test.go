package e2e

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/wire"
)

// controllerProc is the first process newEnv started.
func (e *env) controllerProc() *proc {
	for _, p := range e.procs {
		if p.name == "4over6-controller" && p.cmd.ProcessState == nil {
			return p
		}
	}
	e.t.Fatal("no controller running")
	return nil
}

// TestStoreCrashRestart: clients lease under load while the controller is
// killed with -9 and restarted on the same state. Every acknowledged lease
// is still there, no address is held twice, an established client pinging
// every 200 ms through the tunnel loses no echo, and `4over6ctl clients
// list -o json` shows the same lease afterwards.
func TestStoreCrashRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{
		controllerArgs: []string{"--grace-period", "60s"},
		dataplaneArgs:  []string{"--report-interval", "300ms"},
	})
	ping := e.startPinger(200 * time.Millisecond)
	e.waitFor("pinger's lease listed", func() bool { return len(e.controllerClients()) == 1 })
	pingLease := e.controllerClients()[0]

	// Load: workers connect and lease one client after another; every 101
	// received is an acknowledged lease. Connections are kept open.
	type acked struct {
		c    *labClient
		addr netip.Addr
	}
	var (
		mu     sync.Mutex
		leases []acked
		failed atomic.Int64
		stop   = make(chan struct{})
		wg     sync.WaitGroup
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
				c := e.dialLab()
				if _, err := c.conn.Write(wire.AddrRequest[:]); err != nil {
					failed.Add(1)
					continue
				}
				m, err := c.next(15 * time.Second)
				if err != nil || m.Type != wire.TypeAddrResponse {
					// No controller within the data plane's allocate
					// timeout: the connection is closed. Not acknowledged.
					failed.Add(1)
					c.conn.Close()
					continue
				}
				r, err := wire.ParseAddrResponse(m.Data)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				leases = append(leases, acked{c, r.Addr})
				n := len(leases)
				mu.Unlock()
				if n >= 120 {
					return
				}
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(leases) }
	e.waitFor("leases under load", func() bool { return count() >= 30 })

	ctl := e.controllerProc()
	if err := ctl.cmd.Process.Kill(); err != nil { // kill -9
		t.Fatal(err)
	}
	<-ctl.done
	atKill := count()
	time.Sleep(1500 * time.Millisecond) // allocations pile up, unanswered; pings go on
	e.start(e.srv, "4over6-controller", e.controllerArgs()...)
	e.waitFor("allocations resume", func() bool { return count() >= atKill+20 })
	close(stop)
	wg.Wait()
	// The pinger keeps going across the whole outage and a while after.
	sentAtRestart := ping.sent.Load()
	e.waitFor("echoes after the restart", func() bool { return ping.sent.Load() >= sentAtRestart+10 })

	// Every acknowledged lease, distinct, listed with its address.
	mu.Lock()
	defer mu.Unlock()
	want := map[netip.Addr]bool{pingLease.IPv4Addr(): true}
	for _, l := range leases {
		if want[l.addr] {
			t.Fatalf("%s acknowledged to two clients", l.addr)
		}
		want[l.addr] = true
	}
	var cs []ctlClient
	e.waitFor("the client table lists every acknowledged lease", func() bool {
		cs = e.controllerClients()
		return len(cs) == len(want)
	})
	seen := map[string]bool{}
	for _, c := range cs {
		if seen[c.IPv4] {
			t.Fatalf("%s listed twice", c.IPv4)
		}
		seen[c.IPv4] = true
		if !want[netip.MustParseAddr(c.IPv4)] {
			t.Fatalf("listed lease %s was never acknowledged", c.IPv4)
		}
		if c.Dataplane != "dp1" {
			t.Fatalf("lease %+v", c)
		}
	}
	var after ctlClient
	for _, c := range cs {
		if c.IPv4 == pingLease.IPv4 {
			after = c
		}
	}
	if after.IPv6 != pingLease.IPv6 || after.Port != pingLease.Port {
		t.Fatalf("the pinger's lease changed across the crash: %+v, before %+v", after, pingLease)
	}
	// The store on disk and the data plane agree: nothing unclaimed.
	if p := e.controllerPool(); p.Leased != len(want) {
		t.Fatalf("pool shows %d leased, want %d", p.Leased, len(want))
	}
	ping.finish(t)
	t.Logf("%d leases acknowledged (%d before the kill), %d connections refused while the controller was down; state in %s",
		len(leases), atKill, failed.Load(), filepath.Join(e.dir, "controller.db"))
}

// controllerJSON runs a 4over6ctl command against the controller only
// (all its addresses) with -o json and decodes the output.
func (e *env) controllerJSON(v any, controllers string, args ...string) {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "4over6ctl"), append([]string{"--controller", controllers}, append(args, "-o", "json")...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("4over6ctl %v: %v: %s", args, err, errb.String())
	}
	if err := json.Unmarshal(out.Bytes(), v); err != nil {
		e.t.Fatalf("4over6ctl %v: output is not JSON: %v\n%s", args, err, out.String())
	}
}

func (e *env) controllerClients() []ctlClient {
	var cs []ctlClient
	e.controllerJSON(&cs, "unix://"+e.ctlSock, "clients", "list")
	return cs
}

func (e *env) controllerPool() ctlPool {
	var p ctlPool
	e.controllerJSON(&p, "unix://"+e.ctlSock, "pool", "show")
	return p
}

// IPv4Addr parses the row's address.
func (c ctlClient) IPv4Addr() netip.Addr {
	a, _ := netip.ParseAddr(c.IPv4)
	return a
}
