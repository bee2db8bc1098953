package e2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
	"github.com/fourover6/fourover6/test/bird"
	"github.com/fourover6/fourover6/test/topo"
)

// The routed lab: the env's "IPv4 internet" namespace is the access
// router (BIRD, AS 65001, 198.51.100.2 toward dp1); dp2 reaches it over
// its own link; an IPv4 host sits behind the router. No NAT anywhere: the
// host reaches the clients' pool addresses only through the routes the
// data planes announce.
const (
	routerASN  = 65001
	dpASN      = 65000
	router2V4  = "203.0.113.1" // the router on dp2's link
	dp2V4      = "203.0.113.2"
	routerHost = "192.0.2.1" // the router on the host's link
	hostV4     = "192.0.2.10"
	// announceWithin is how soon a lease or a release reaches the router.
	announceWithin = 2 * time.Second
	// bgpHold is the hold time BIRD proposes (the smaller side's wins):
	// a dead data plane is noticed within it.
	bgpHold = 3 * time.Second
)

type routedLab struct {
	e      *env
	router *bird.Router
	host   *topo.NS
	dp2    *proc
	dp2Ctl string // dp2's API socket
	dp1Met string // dp1's metrics socket
}

func newRoutedLab(t *testing.T) *routedLab {
	l := &routedLab{dp1Met: filepath.Join(t.TempDir(), "dp1-metrics.sock")}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	var dp2 *topo.NS
	// The router and the host are up before dp1 starts, as in a
	// deployment: dp1 runs with exactly the operator's flags of the
	// acceptance setup, in the env's server namespace (198.51.100.1 on
	// the router's link).
	e := newEnv(t, envOptions{noReturnRoute: true, dataplaneArgs: []string{
		"--bgp-asn", fmt.Sprint(dpASN), "--bgp-peer", fmt.Sprintf("%s@%d", internetV4, routerASN),
		"--metrics", "unix://" + l.dp1Met,
	}, beforeDataplane: func(e *env) {
		router := e.inet
		must(router.Sysctl("net.ipv4.ip_forward", "1"))
		must(e.srv.Exec("ip", "route", "add", "192.0.2.0/24", "via", internetV4))

		// dp2's namespace: IPv6 toward the clients, IPv4 toward the router.
		var err error
		dp2, err = topo.NewNS(topo.UniqueName("d"))
		must(err)
		t.Cleanup(dp2.Delete)
		must(topo.Veth(dp2, "v6c", e.cli, "v6dp2"))
		must(dp2.AddAddr("v6c", server2V6+"/64"))
		must(e.cli.AddAddr("v6dp2", client2V6+"/64"))
		// A client of dp1 may move to dp2 with its own IPv6 address.
		must(dp2.Exec("ip", "-6", "route", "add", "fd00:46::/64", "via", client2V6))
		must(topo.Veth(dp2, "v4r", router, "v4d2"))
		must(dp2.AddAddr("v4r", dp2V4+"/24"))
		must(router.AddAddr("v4d2", router2V4+"/24"))
		must(dp2.Exec("ip", "route", "add", "192.0.2.0/24", "via", router2V4))
		must(dp2.Sysctl("net.ipv4.ip_forward", "1"))

		host, err := topo.NewNS(topo.UniqueName("h"))
		must(err)
		t.Cleanup(host.Delete)
		l.host = host
		must(topo.Veth(host, "v4r", router, "v4h"))
		must(host.AddAddr("v4r", hostV4+"/24"))
		must(router.AddAddr("v4h", routerHost+"/24"))
		must(host.Exec("ip", "route", "add", "default", "via", routerHost))

		hold := int(bgpHold / time.Second)
		l.router = bird.Start(t, router, bird.Config{
			RouterID: netip.MustParseAddr(routerHost), ASN: routerASN,
			Peers: []bird.Peer{
				{Name: "dp1", Local: netip.MustParseAddr(internetV4), Neighbor: netip.MustParseAddr(serverV4), ASN: dpASN, HoldTime: hold},
				{Name: "dp2", Local: netip.MustParseAddr(router2V4), Neighbor: netip.MustParseAddr(dp2V4), ASN: dpASN, HoldTime: hold},
			},
			// The router forwards along what it learnt.
			Extra: "protocol kernel { ipv4 { export all; }; }\n",
		})
	}})
	l.e = e
	// dp2 announces the pool as well as its clients, with its router id
	// set rather than taken from the host.
	l.dp2Ctl = filepath.Join(e.dir, "dp2.sock")
	l.dp2 = e.start(dp2, "4over6-dataplane", "--id", "dp2", "--controller", "unix://"+e.ctlSock, "--api", "unix://"+l.dp2Ctl,
		"--bgp-asn", fmt.Sprint(dpASN), "--bgp-router-id", dp2V4, "--bgp-peer", fmt.Sprintf("%s@%d", router2V4, routerASN),
		"--bgp-aggregate")
	start := time.Now()
	for _, name := range []string{"dp1", "dp2"} {
		must(l.router.WaitEstablished(name, 20*time.Second))
	}
	t.Logf("both BGP sessions established %v after dp2 started", time.Since(start).Round(time.Millisecond))
	e.waitFor("dp2's API", func() bool { _, err := os.Stat(l.dp2Ctl); return err == nil })
	return l
}

// routesFor returns BIRD's routes for p.
func (l *routedLab) routesFor(t *testing.T, p netip.Prefix) []bird.Route {
	t.Helper()
	rs, err := l.router.Routes()
	if err != nil {
		t.Fatal(err)
	}
	return bird.Lookup(rs, p)
}

// waitRoute waits until BIRD's only route for p is from protocol proto
// via next hop via (proto "": no route at all), and returns how long that
// took.
func (l *routedLab) waitRoute(t *testing.T, p netip.Prefix, proto, via string, within time.Duration) time.Duration {
	t.Helper()
	took, err := bird.Wait(within, func() error {
		rs, err := l.router.Routes()
		if err != nil {
			return err
		}
		got := bird.Lookup(rs, p)
		switch {
		case proto == "" && len(got) == 0:
			return nil
		case proto != "" && len(got) == 1 && got[0].Protocol == proto && got[0].Via.String() == via:
			return nil
		}
		return fmt.Errorf("routes for %s:\n%s", p, bird.FormatRoutes(got))
	})
	if err != nil {
		want := "none"
		if proto != "" {
			want = "from " + proto + " via " + via
		}
		t.Fatalf("after %v, want %s: %v", took.Round(time.Millisecond), want, err)
	}
	return took
}

// dialFromTo connects from src (an address of the client namespace) to a
// data plane's client listener.
func (e *env) dialFromTo(src, addr string) *labClient {
	e.t.Helper()
	var c net.Conn
	err := e.cli.Do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
		var err error
		c, err = d.Dial("tcp6", addr)
		return err
	})
	if err != nil {
		e.t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	e.t.Cleanup(func() { c.Close() })
	return &labClient{t: e.t, conn: c, dec: wire.NewDecoder(c, 0)}
}

// answerPings answers every ICMP echo request the client gets (a 103)
// with the reply (a 102), as a client's kernel would, until its
// connection closes.
func (c *labClient) answerPings(me netip.Addr) {
	go func() {
		c.conn.SetReadDeadline(time.Time{})
		for {
			m, err := c.dec.Next()
			if err != nil {
				return
			}
			d := m.Data
			if m.Type != wire.TypeNetResponse || len(d) < 20 || d[9] != 1 || packet.Dst(d) != me {
				continue
			}
			ihl := int(d[0]&0xf) * 4
			if len(d) < ihl+8 || d[ihl] != 8 {
				continue
			}
			icmp := d[ihl:]
			reply := packet.BuildICMPEcho(me, packet.Src(d), binary.BigEndian.Uint16(icmp[4:]), binary.BigEndian.Uint16(icmp[6:]), icmp[8:], true)
			if _, err := c.conn.Write(wire.AppendMsg(nil, wire.TypeNetRequest, reply)); err != nil {
				return
			}
		}
	}()
}

func (l *routedLab) ping(t *testing.T, a netip.Addr) {
	t.Helper()
	if out, err := l.host.Output("ping", "-c", "1", "-W", "5", a.String()); err != nil {
		t.Fatalf("the IPv4 host cannot reach client %s through the router: %v\n%s", a, err, out)
	}
}

// TestBGPRoutedDataplanes: two data planes announce their clients' /32s
// to a real BIRD; an IPv4 host behind the router reaches a client on
// each; routes come within 2 s of the 101 and go within 2 s of the client
// leaving; a client that moves to the other data plane keeps its address
// and its route moves; a killed data plane's routes go within the hold
// time; a stopped one withdraws its routes.
func TestBGPRoutedDataplanes(t *testing.T) {
	t.Parallel()
	l := newRoutedLab(t)
	e := l.e
	var ps struct {
		Prefix string `json:"prefix"`
	}
	e.ctlJSON(&ps, "pool", "show")
	pool := netip.MustParsePrefix(ps.Prefix)
	srcA, srcB := "fd00:46::1:a", "fd00:46::1:b"
	for _, s := range []string{srcA, srcB} {
		if err := e.cli.AddAddr("v6s", s+"/64"); err != nil {
			t.Fatal(err)
		}
	}
	dp2Addr := net.JoinHostPort(server2V6, "5678")

	// dp2 announces the pool; dp1 does not.
	l.waitRoute(t, pool, "dp2", dp2V4, 10*time.Second)

	a := e.dialFromTo(srcA, serverAddr)
	addrA := a.lease().Addr
	took := l.waitRoute(t, netip.PrefixFrom(addrA, 32), "dp1", serverV4, announceWithin)
	t.Logf("%s/32 via dp1 at the router %v after the 101", addrA, took.Round(time.Millisecond))
	b := e.dialFromTo(srcB, dp2Addr)
	addrB := b.lease().Addr
	took = l.waitRoute(t, netip.PrefixFrom(addrB, 32), "dp2", dp2V4, announceWithin)
	t.Logf("%s/32 via dp2 at the router %v after the 101", addrB, took.Round(time.Millisecond))
	if r := l.routesFor(t, netip.PrefixFrom(addrA, 32))[0]; r.ASPath != fmt.Sprint(dpASN) || !slices.Equal(r.NextHop, []netip.Addr{netip.MustParseAddr(serverV4)}) {
		t.Fatalf("route %s: AS path %q, next hop %v: want %d, %s (our address on the router's link)", r.Prefix, r.ASPath, r.NextHop, dpASN, serverV4)
	}

	if out, err := l.router.Control("show", "route"); err == nil {
		t.Logf("birdc show route:\n%s", out)
	}

	// The IPv4 host reaches a client on each data plane, no NAT.
	a.answerPings(addrA)
	b.answerPings(addrB)
	l.ping(t, addrA)
	l.ping(t, addrB)

	// Visible on the data plane: status (JSON and table) and metrics.
	var st struct {
		BGP struct {
			Enabled   bool   `json:"enabled"`
			ASN       uint32 `json:"asn"`
			Announced int    `json:"announced"`
			Aggregate string `json:"aggregate"`
			Sessions  []struct {
				Peer         string `json:"peer"`
				PeerASN      uint32 `json:"peer_asn"`
				State        string `json:"state"`
				Since        string `json:"established_since"`
				PrefixesSent int    `json:"prefixes_sent"`
				LocalAddress string `json:"local_address"`
			} `json:"sessions"`
		} `json:"bgp"`
	}
	e.ctlJSON(&st, "dataplane", "status")
	if g := st.BGP; !g.Enabled || g.ASN != dpASN || g.Announced != 1 || g.Aggregate != "" || len(g.Sessions) != 1 ||
		g.Sessions[0].Peer != internetV4 || g.Sessions[0].PeerASN != routerASN || g.Sessions[0].State != "established" ||
		g.Sessions[0].PrefixesSent != 1 || g.Sessions[0].LocalAddress != serverV4 || g.Sessions[0].Since == "" {
		t.Fatalf("dp1 status bgp: %+v", g)
	}
	e.ctlJSON(&st, "--dataplane", "unix://"+l.dp2Ctl, "dataplane", "status")
	if g := st.BGP; g.Announced != 1 || g.Aggregate != pool.String() || len(g.Sessions) != 1 || g.Sessions[0].PrefixesSent != 2 {
		t.Fatalf("dp2 status bgp: %+v", g)
	}
	out, _, code := e.ctl("dataplane", "status")
	if want := fmt.Sprintf("%s AS %d: established", internetV4, routerASN); code != 0 || !strings.Contains(out, want) {
		t.Fatalf("dataplane status lacks %q:\n%s", want, out)
	}
	m := scrape(t, l.dp1Met)
	peer := fmt.Sprintf(`{peer="%s",peer_asn="%d"}`, internetV4, routerASN)
	if m["fourover6_dataplane_bgp_session_up"+peer] != 1 || m["fourover6_dataplane_bgp_prefixes_sent"+peer] != 1 ||
		m["fourover6_dataplane_bgp_session_uptime_seconds"+peer] < 0 || m["fourover6_dataplane_bgp_routes_announced"] != 1 {
		t.Fatalf("dp1 BGP metrics: up %v, sent %v, uptime %v, announced %v", m["fourover6_dataplane_bgp_session_up"+peer],
			m["fourover6_dataplane_bgp_prefixes_sent"+peer], m["fourover6_dataplane_bgp_session_uptime_seconds"+peer],
			m["fourover6_dataplane_bgp_routes_announced"])
	}
	// The BGP series are in the README's table (only with --bgp-asn, so
	// the general check cannot see them).
	documented, _ := readmeMetrics(t)
	for n := range families(t, l.dp1Met) {
		if strings.HasPrefix(n, "fourover6_dataplane_bgp_") && !slices.Contains(documented, n) {
			t.Errorf("%s is exported but missing from README.md's metrics table", n)
		}
	}

	// A moves: kicked from dp1, it reconnects to dp2 from the same IPv6
	// address, gets its address back, and its route follows.
	if _, errOut, code := e.ctl("clients", "kick", addrA.String()); code != 0 {
		t.Fatalf("clients kick %s: exit %d: %s", addrA, code, errOut)
	}
	took = l.waitRoute(t, netip.PrefixFrom(addrA, 32), "", "", announceWithin)
	t.Logf("%s/32 gone from the router %v after the kick", addrA, took.Round(time.Millisecond))
	e.waitFor("the kicked client's lease released", func() bool {
		return !slices.ContainsFunc(e.clients(), func(c ctlClient) bool { return c.IPv4 == addrA.String() })
	})
	a2 := e.dialFromTo(srcA, dp2Addr)
	if got := a2.lease().Addr; got != addrA {
		t.Fatalf("client %s moved to dp2 got %s, had %s", srcA, got, addrA)
	}
	took = l.waitRoute(t, netip.PrefixFrom(addrA, 32), "dp2", dp2V4, announceWithin)
	t.Logf("%s/32 moved to dp2 %v after its 101 there", addrA, took.Round(time.Millisecond))
	a2.answerPings(addrA)
	l.ping(t, addrA)

	// B leaves: its route goes.
	b.conn.Close()
	took = l.waitRoute(t, netip.PrefixFrom(addrB, 32), "", "", announceWithin)
	t.Logf("%s/32 gone from the router %v after the client left", addrB, took.Round(time.Millisecond))

	// A client of dp1 for the end.
	c := e.dialFromTo(srcB, serverAddr)
	addrC := c.lease().Addr
	l.waitRoute(t, netip.PrefixFrom(addrC, 32), "dp1", serverV4, announceWithin)

	// dp2 dies without a word: its routes (A's, the pool) go within the
	// hold time; dp1's stay.
	killed := time.Now()
	if err := l.dp2.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-l.dp2.done
	l.waitRoute(t, netip.PrefixFrom(addrA, 32), "", "", bgpHold+time.Second)
	l.waitRoute(t, pool, "", "", time.Second)
	t.Logf("killed dp2's routes gone %v after the kill (hold time %v)", time.Since(killed).Round(time.Millisecond), bgpHold)
	if rs := l.routesFor(t, netip.PrefixFrom(addrC, 32)); len(rs) != 1 || rs[0].Protocol != "dp1" {
		t.Fatalf("dp1's client route after dp2 died: %s", bird.FormatRoutes(rs))
	}

	// dp1 stops (SIGTERM): it withdraws its routes and closes the session.
	if err := e.stop(e.procs[1]); err != nil {
		t.Fatal(err)
	}
	l.waitRoute(t, netip.PrefixFrom(addrC, 32), "", "", time.Second)
	if _, err := bird.Wait(time.Second, func() error {
		if p, err := l.router.Protocol("dp1"); err != nil || p.Established() {
			return fmt.Errorf("the stopped data plane's session: %+v %v", p, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(e.procs[1].log); !strings.Contains(string(b), "BGP speaker stopped") {
		t.Errorf("dp1 did not log its BGP stop:\n%s", b)
	}
}
