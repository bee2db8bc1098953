package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/wire"
)

// stickyClients is how many clients TestStickyAddresses runs, each from
// its own IPv6 address of the client namespace.
const stickyClients = 12

// TestStickyAddresses: a client that reconnects gets the IPv4 address it
// had: after a plain disconnect, after other clients churned through
// fewer addresses than are free, after its data plane was killed with -9
// and started again with the same --id (the new instance takes over, the
// old one's leases are released, and their addresses wait for their
// clients), and after a controller restart (the memory is in the state
// file). Newcomers meanwhile never get a remembered address.
func TestStickyAddresses(t *testing.T) {
	t.Parallel()
	metrics := filepath.Join(t.TempDir(), "metrics.sock")
	e := newEnv(t, envOptions{controllerArgs: []string{"--metrics", "unix://" + metrics}})
	srcs := make([]string, stickyClients)
	for i := range srcs {
		srcs[i] = fmt.Sprintf("fd00:46::1:%x", i+1)
		if err := e.cli.AddAddr("v6s", srcs[i]+"/64"); err != nil {
			t.Fatal(err)
		}
	}
	had := map[string]netip.Addr{}
	conns := map[string]*leased{}
	connectAll := func(phase string) {
		t.Helper()
		for _, src := range srcs {
			c := e.leaseOne(e.dialFrom(src))
			if want, ok := had[src]; ok && c.addr != want {
				t.Fatalf("%s: client %s came back to %s, had %s", phase, src, c.addr, want)
			}
			had[src], conns[src] = c.addr, c
		}
	}
	disconnectAll := func() {
		t.Helper()
		for _, c := range conns {
			c.c.conn.Close()
		}
		clear(conns)
		e.waitFor("every lease released", func() bool { return len(e.clients()) == 0 })
	}
	remembered := func() int {
		t.Helper()
		var p struct {
			Free             int `json:"free"`
			FreeRemembered   int `json:"free_remembered"`
			FreeUnremembered int `json:"free_unremembered"`
		}
		e.ctlJSON(&p, "pool", "show")
		if p.FreeRemembered+p.FreeUnremembered != p.Free {
			t.Fatalf("pool show: %+v", p)
		}
		return p.FreeRemembered
	}
	mine := func(a netip.Addr) bool {
		for _, h := range had {
			if h == a {
				return true
			}
		}
		return false
	}

	connectAll("first connect")
	var row struct {
		IPv4   string `json:"ipv4"`
		Sticky bool   `json:"sticky"`
	}
	e.ctlJSON(&row, "clients", "get", had[srcs[0]].String())
	if row.Sticky {
		t.Fatalf("a first lease is marked sticky: %+v", row)
	}
	disconnectAll()
	if n := remembered(); n != stickyClients {
		t.Fatalf("%d free addresses remembered after %d clients left", n, stickyClients)
	}
	connectAll("reconnect")
	e.ctlJSON(&row, "clients", "get", had[srcs[0]].String())
	if !row.Sticky {
		t.Fatalf("a returning client's lease is not marked sticky: %+v", row)
	}

	// Churn: 40 newcomers from one address hold addresses at once, then
	// leave; none gets a remembered address (about 200 never used are free).
	disconnectAll()
	var churn []*leased
	for range 40 {
		c := e.leaseOne(e.dialFrom(clientV6))
		if mine(c.addr) {
			t.Fatalf("newcomer got %s, a remembered address", c.addr)
		}
		churn = append(churn, c)
	}
	for _, c := range churn {
		c.c.conn.Close()
	}
	e.waitFor("the newcomers' leases released", func() bool { return len(e.clients()) == 0 })
	connectAll("reconnect after churn")

	// The data plane dies (kill -9) with every client connected, and is
	// started again with the same --id: it takes over at once (the old
	// instance's command stream ended), which releases the old leases.
	dp := e.procs[1]
	if err := dp.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-dp.done
	for _, c := range conns {
		c.c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			m, err := c.c.dec.Next()
			if err != nil {
				break // the connection died with its data plane
			}
			if m.Type != wire.TypeKeepalive {
				t.Fatalf("a client of the killed data plane got %v", m.Type)
			}
		}
		c.c.conn.Close()
	}
	clear(conns)
	e.start(e.srv, "4over6-dataplane", "--id", "dp1", "--controller", "unix://"+e.ctlSock, "--api", "unix://"+e.dpSock)
	e.waitFor("the restarted data plane's API", func() bool {
		_, _, code := e.ctl("dataplane", "status")
		return code == 0
	})
	connectAll("reconnect after a data-plane kill -9")
	e.checkTable(func() []*leased {
		var out []*leased
		for _, c := range conns {
			out = append(out, c)
		}
		return out
	}())
	disconnectAll()

	// The controller restarts; the memory is in its state file.
	if err := e.stop(e.procs[0]); err != nil {
		t.Fatal(err)
	}
	os.Remove(e.ctlSock)
	e.start(e.srv, "4over6-controller", append(e.controllerArgs(), "--metrics", "unix://"+metrics)...)
	e.waitFor("controller socket", func() bool { _, err := os.Stat(e.ctlSock); return err == nil })
	if n := remembered(); n < stickyClients {
		t.Fatalf("%d free addresses remembered after a controller restart", n)
	}
	e.waitFor("the data plane back at the controller", func() bool {
		var dps []struct {
			State string `json:"state"`
		}
		e.ctlJSON(&dps, "dataplanes", "list")
		return len(dps) == 1 && dps[0].State == "up"
	})
	connectAll("reconnect after a controller restart")

	// Since the controller's restart every lease went to a returning
	// client, none to a new address.
	m := scrape(t, metrics)
	if s, n := m[`fourover6_controller_allocation_choices_total{choice="sticky"}`], m[`fourover6_controller_allocation_choices_total{choice="new"}`]; s != stickyClients || n != 0 {
		t.Fatalf("allocation choices since the restart: sticky %v, new %v", s, n)
	}
}
