package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fourover6/fourover6/test/bird"
	"github.com/fourover6/fourover6/test/topo"
)

// TestBGPHandoff: a data plane announcing its client over BGP to a real
// BIRD (graceful restart on at the router) is handed over (SIGUSR2) to a
// new process. The old speaker leaves without withdrawing and without a
// NOTIFICATION, the new one comes up restarting with the client announced
// before its start: the client's /32 never leaves BIRD's table (polled all
// along; stale for a moment is fine), an IPv4 host behind the router keeps
// reaching the client, and the route is fresh again from the new process.
// A hand-off that fails first leaves the speaker's session untouched.
func TestBGPHandoff(t *testing.T) {
	t.Parallel()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	var router *bird.Router
	var host *topo.NS
	h := newHandoffEnvWith(t, envOptions{noReturnRoute: true, dataplaneArgs: []string{
		"--bgp-asn", fmt.Sprint(dpASN), "--bgp-peer", fmt.Sprintf("%s@%d", internetV4, routerASN),
		"--bgp-graceful-restart", "30s", "--bgp-connect-retry", "1s",
	}, beforeDataplane: func(e *env) {
		r := e.inet
		must(r.Sysctl("net.ipv4.ip_forward", "1"))
		must(e.srv.Exec("ip", "route", "add", "192.0.2.0/24", "via", internetV4))
		var err error
		host, err = topo.NewNS(topo.UniqueName("h"))
		must(err)
		t.Cleanup(host.Delete)
		must(topo.Veth(host, "v4r", r, "v4h"))
		must(host.AddAddr("v4r", hostV4+"/24"))
		must(r.AddAddr("v4h", routerHost+"/24"))
		must(host.Exec("ip", "route", "add", "default", "via", routerHost))
		router = bird.Start(t, r, bird.Config{
			RouterID: netip.MustParseAddr(routerHost), ASN: routerASN,
			Peers: []bird.Peer{{Name: "dp1", Local: netip.MustParseAddr(internetV4), Neighbor: netip.MustParseAddr(serverV4),
				ASN: dpASN, HoldTime: 9, GracefulRestart: true, Debug: true}},
			Extra: "protocol kernel { ipv4 { export all; }; }\n",
		})
	}})
	e := h.env
	must(router.WaitEstablished("dp1", 20*time.Second))

	c := e.dialLab()
	addr := c.lease().Addr
	c.answerPings(addr)
	p32 := netip.PrefixFrom(addr, 32)
	if _, err := bird.Wait(announceWithin, func() error {
		rs, err := router.Routes()
		if err != nil {
			return err
		}
		if got := bird.Lookup(rs, p32); len(got) != 1 || got[0].Protocol != "dp1" {
			return fmt.Errorf("routes for %s:\n%s", p32, bird.FormatRoutes(got))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if out, err := host.Output("ping", "-c", "1", "-W", "5", addr.String()); err != nil {
		t.Fatalf("the host cannot reach the client before the hand-off: %v\n%s", err, out)
	}

	// Poll BIRD's table throughout: the /32 must never be missing.
	var (
		mu      sync.Mutex
		polls   int
		absent  []string
		flagsAt = map[string]int{}
	)
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			out, err := router.Control("show", "route", "for", addr.String(), "all")
			rs, rerr := router.Routes()
			mu.Lock()
			polls++
			if rerr != nil {
				absent = append(absent, "birdc: "+rerr.Error())
			} else if got := bird.Lookup(rs, p32); len(got) == 0 {
				absent = append(absent, fmt.Sprintf("%s no route (%v):\n%s", time.Now().Format("15:04:05.000"), err, out))
			} else {
				flagsAt[got[0].Protocol+" "+got[0].Preflags]++
			}
			mu.Unlock()
		}
	}()
	ping := e.startPingFrom(host.Name, addr.String())
	time.Sleep(300 * time.Millisecond)

	// A hand-off that fails (the new binary dies at start) leaves the
	// speaker as it was: the session stays up, nothing flaps.
	good, err := os.ReadFile(h.bin)
	must(err)
	must(os.WriteFile(h.bin+".new", []byte("#!/bin/sh\necho 'this build fails at start' >&2\nexit 1\n"), 0o755))
	must(os.Rename(h.bin+".new", h.bin))
	dpLog := e.procs[1]
	syscall.Kill(h.first, syscall.SIGUSR2)
	h.waitFor("the hand-off to fail", func() bool { return countLines(e.logOf(dpLog), "hand-off failed") == 1 })
	must(os.WriteFile(h.bin+".new", good, 0o755))
	must(os.Rename(h.bin+".new", h.bin))
	var st struct {
		BGP struct {
			Sessions []struct {
				State string `json:"state"`
				Flaps int    `json:"flaps"`
			} `json:"sessions"`
		} `json:"bgp"`
	}
	e.ctlJSON(&st, "dataplane", "status")
	if s := st.BGP.Sessions; len(s) != 1 || s[0].State != "established" || s[0].Flaps != 0 {
		t.Errorf("BGP after the failed hand-off: %+v, want the session established, no flap", s)
	}
	if p, err := router.Protocol("dp1"); err != nil || !p.Established() {
		t.Errorf("BIRD's session after the failed hand-off: %+v %v", p, err)
	}

	old := h.pid()
	newPID := h.handOff()

	// The new process's session comes up and its routes replace the stale
	// ones (its End-of-RIB).
	must(router.WaitEstablished("dp1", 20*time.Second))
	if _, err := bird.Wait(10*time.Second, func() error {
		st := h.status()
		if st.PID != newPID {
			return fmt.Errorf("status from pid %d, want %d", st.PID, newPID)
		}
		rs, err := router.Routes()
		if err != nil {
			return err
		}
		if got := bird.Lookup(rs, p32); len(got) != 1 || got[0].Protocol != "dp1" || strings.Contains(got[0].Preflags, "s") {
			return fmt.Errorf("routes for %s:\n%s", p32, bird.FormatRoutes(got))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	<-polled
	sent, received := ping.stop(t)
	mu.Lock()
	t.Logf("hand-off %d -> %d: BIRD polled %d times, route seen as %v; ping %d sent, %d received", old, newPID, polls, flagsAt, sent, received)
	if len(absent) > 0 {
		t.Errorf("%s/32 missing from BIRD %d times during the hand-off; first:\n%s", addr, len(absent), absent[0])
	}
	mu.Unlock()
	if sent < 20 || sent-received > 2 {
		t.Errorf("ping from the host: %d sent, %d received: more than 2 lost across the hand-off", sent, received)
	}
	if out, err := host.Output("ping", "-c", "1", "-W", "5", addr.String()); err != nil {
		t.Errorf("the host cannot reach the client after the hand-off: %v\n%s", err, out)
	}

	// The old speaker left without withdrawing; the new one started
	// restarting, with the client announced.
	var log string
	for _, p := range e.procs {
		if p.name == "4over6-dataplane" {
			log += e.logOf(p)
		}
	}
	for _, want := range []string{"BGP speaker handed off", "restarting=true"} {
		if !strings.Contains(log, want) {
			t.Errorf("data plane log lacks %q", want)
		}
	}
	if strings.Contains(log, "BGP speaker stopped") {
		t.Errorf("a data plane withdrew its routes (BGP speaker stopped) during the hand-off")
	}
	if blog := router.Log(); strings.Contains(blog, "removed") && strings.Contains(blog, addr.String()) {
		for _, l := range strings.Split(blog, "\n") {
			if strings.Contains(l, "removed") && strings.Contains(l, addr.String()) {
				t.Errorf("BIRD removed the client's route: %s", l)
			}
		}
	}
}
