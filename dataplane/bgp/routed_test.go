package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fourover6/fourover6/test/bird"
)

// announceWithin is how soon a change must reach the router.
const announceWithin = 2 * time.Second

// One speaker: an announced /32 reaches BIRD with our session address as
// next hop, our AS as path, the configured communities, and leaves on
// Withdraw; nothing listens in the speaker's namespace.
func TestAnnounceWithdraw(t *testing.T) {
	l := newLab(t, 1, nil)
	cfg := l.config(0)
	cfg.Communities = []Community{65000<<16 | 100, 65000<<16 | 200, NoExport}
	sp := startSpeaker(t, l.ns[0], "dp1", cfg)
	start := time.Now()
	if err := l.bird.WaitEstablished(l.proto(0), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	st := sp.waitEstablished(5 * time.Second)
	t.Logf("session established after %v", time.Since(start).Round(time.Millisecond))
	ps := st.Peers[0]
	if ps.LocalAddress != l.speakerAddr(0) || ps.RouterID != l.routerAddr(0) || ps.ASN != routerASN {
		t.Fatalf("session status %+v: want local address %s, router id %s, peer AS %d", ps, l.speakerAddr(0), l.routerAddr(0), routerASN)
	}
	if st.RouterID != l.speakerAddr(0) {
		t.Fatalf("router id %s: want the namespace's first global IPv4 address %s", st.RouterID, l.speakerAddr(0))
	}

	// No socket listens: not BGP (the port is off), not GoBGP's gRPC.
	out, err := l.ns[0].Output("ss", "-Htlnu")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "" {
		t.Fatalf("speaker namespace has listening sockets:\n%s", out)
	}

	a := netip.MustParseAddr("203.0.113.10")
	sp.do("announce %s", a)
	took := l.waitPrefixes(t, 0, announceWithin, host("203.0.113.10"))
	t.Logf("announce reached BIRD in %v", took.Round(time.Millisecond))
	rs := bird.Lookup(l.routes(t), host("203.0.113.10"))
	if len(rs) != 1 {
		t.Fatalf("routes for %s: %s", a, bird.FormatRoutes(rs))
	}
	r := rs[0]
	if r.Via != l.speakerAddr(0) || r.Interface != "s1" || !slices.Equal(r.NextHop, []netip.Addr{l.speakerAddr(0)}) {
		t.Fatalf("route %s via %s on %s, BGP next hop %v: want via %s on s1", r.Prefix, r.Via, r.Interface, r.NextHop, l.speakerAddr(0))
	}
	if r.ASPath != "65000" || r.Attrs["BGP.origin"] != "IGP" {
		t.Fatalf("route %s: AS path %q origin %q, want 65000 IGP", r.Prefix, r.ASPath, r.Attrs["BGP.origin"])
	}
	if want := []string{"65000:100", "65000:200", "65535:65281"}; !slices.Equal(r.Communities, want) {
		t.Fatalf("route %s communities %v, want %v", r.Prefix, r.Communities, want)
	}
	if st := sp.status(); st.Announced != 1 || st.Peers[0].PrefixesSent != 1 || st.Peers[0].Uptime <= 0 && st.Peers[0].Since.IsZero() {
		t.Fatalf("status after announce: %+v", st)
	}

	sp.do("withdraw %s", a)
	took = l.waitPrefixes(t, 0, announceWithin)
	t.Logf("withdraw reached BIRD in %v", took.Round(time.Millisecond))
	if st := sp.status(); st.Announced != 0 || st.Peers[0].PrefixesSent != 0 {
		t.Fatalf("status after withdraw: %+v", st)
	}
}

// Two speakers in two namespaces announce different /32s; BIRD has each
// only from its own speaker, via that speaker's address: the session's
// local address for one, the configured next hop for the other.
func TestTwoSpeakers(t *testing.T) {
	l := newLab(t, 2, nil)
	cfg1 := l.config(0)
	cfg2 := l.config(1)
	cfg2.NextHop = l.spareAddr(1)
	sp1 := startSpeaker(t, l.ns[0], "dp1", cfg1, netip.MustParseAddr("203.0.113.11"))
	sp2 := startSpeaker(t, l.ns[1], "dp2", cfg2, netip.MustParseAddr("203.0.113.12"), netip.MustParseAddr("203.0.113.13"))
	took := l.waitPrefixes(t, -1, 10*time.Second, host("203.0.113.11"), host("203.0.113.12"), host("203.0.113.13"))
	t.Logf("both speakers' routes at BIRD %v after start", took.Round(time.Millisecond))
	l.waitPrefixes(t, 0, 0, host("203.0.113.11"))
	l.waitPrefixes(t, 1, 0, host("203.0.113.12"), host("203.0.113.13"))

	routes := l.routes(t)
	check := func(a string, proto string, via netip.Addr, dev string) {
		t.Helper()
		rs := bird.Lookup(routes, host(a))
		if len(rs) != 1 || rs[0].Protocol != proto || rs[0].Via != via || rs[0].Interface != dev || !slices.Equal(rs[0].NextHop, []netip.Addr{via}) {
			t.Fatalf("%s: want one route from %s via %s on %s, have:\n%s", a, proto, via, dev, bird.FormatRoutes(rs))
		}
	}
	check("203.0.113.11", "dp1", l.speakerAddr(0), "s1")
	check("203.0.113.12", "dp2", l.spareAddr(1), "s2")
	check("203.0.113.13", "dp2", l.spareAddr(1), "s2")

	// A withdraw at one speaker leaves the other's routes alone.
	sp2.do("withdraw 203.0.113.12")
	l.waitPrefixes(t, -1, announceWithin, host("203.0.113.11"), host("203.0.113.13"))
	if st := sp1.status(); st.Announced != 1 {
		t.Fatalf("speaker 1: %+v", st)
	}
}

// The aggregate is announced when configured, replaced and withdrawn at
// run time, next to the /32s.
func TestAggregate(t *testing.T) {
	l := newLab(t, 1, nil)
	cfg := l.config(0)
	cfg.Aggregate = netip.MustParsePrefix("203.0.113.0/24")
	sp := startSpeaker(t, l.ns[0], "dp1", cfg, netip.MustParseAddr("203.0.113.20"))
	l.waitPrefixes(t, 0, 10*time.Second, netip.MustParsePrefix("203.0.113.0/24"), host("203.0.113.20"))
	rs := bird.Lookup(l.routes(t), netip.MustParsePrefix("203.0.113.0/24"))
	if len(rs) != 1 || rs[0].Via != l.speakerAddr(0) {
		t.Fatalf("aggregate: %s", bird.FormatRoutes(rs))
	}
	if st := sp.status(); st.Aggregate != cfg.Aggregate || st.Announced != 1 || st.Peers[0].PrefixesSent != 2 {
		t.Fatalf("status: %+v", st)
	}
	sp.do("aggregate 203.0.113.0/25")
	l.waitPrefixes(t, 0, announceWithin, netip.MustParsePrefix("203.0.113.0/25"), host("203.0.113.20"))
	sp.do("aggregate none")
	l.waitPrefixes(t, 0, announceWithin, host("203.0.113.20"))
}

// Stop withdraws every route, the aggregate included, with UPDATEs, then
// closes the session with a Cease (administrative shutdown), and the
// process can exit.
func TestStopWithdraws(t *testing.T) {
	l := newLab(t, 1, func(_ int, p *bird.Peer) { p.Debug = true })
	cfg := l.config(0)
	cfg.Aggregate = netip.MustParsePrefix("203.0.113.0/24")
	var addrs []netip.Addr
	want := []netip.Prefix{cfg.Aggregate}
	for i := range 50 {
		a := netip.AddrFrom4([4]byte{203, 0, 113, byte(100 + i)})
		addrs = append(addrs, a)
		want = append(want, netip.PrefixFrom(a, 32))
	}
	sp := startSpeaker(t, l.ns[0], "dp1", cfg, addrs...)
	l.waitPrefixes(t, 0, 10*time.Second, want...)
	start := time.Now()
	sp.do("stop")
	l.waitPrefixes(t, 0, announceWithin)
	t.Logf("stop: routes gone from BIRD %v after Stop was called", time.Since(start).Round(time.Millisecond))
	sp.exited()
	// Each route was withdrawn by an UPDATE before the NOTIFICATION came.
	log, _, ok := strings.Cut(l.bird.Log(), "dp1: Received: Administrative shutdown")
	if !ok {
		t.Fatalf("BIRD did not log a Cease (administrative shutdown) NOTIFICATION:\n%s", l.bird.Log())
	}
	removed := map[netip.Prefix]bool{}
	for _, line := range strings.Split(log, "\n") {
		if _, rest, ok := strings.Cut(line, "dp1.ipv4 > removed "); ok {
			f := strings.Fields(rest)
			if p, err := netip.ParsePrefix(f[len(f)-4]); err == nil {
				removed[p] = true
			}
		}
	}
	for _, p := range want {
		if !removed[p] {
			t.Errorf("%s was not withdrawn before the NOTIFICATION", p)
		}
	}
	if t.Failed() {
		t.Logf("BIRD log:\n%s", l.bird.Log())
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

// A speaker that dies without withdrawing loses its routes at the router:
// at once when its process is killed (the kernel closes the connection),
// within the hold time when it hangs (frozen, nothing on the wire).
func TestDeadSpeaker(t *testing.T) {
	l := newLab(t, 2, nil)
	killed := startSpeaker(t, l.ns[0], "dp1", l.config(0), netip.MustParseAddr("203.0.113.30"))
	frozen := startSpeaker(t, l.ns[1], "dp2", l.config(1), netip.MustParseAddr("203.0.113.31"))
	l.waitPrefixes(t, -1, 10*time.Second, host("203.0.113.30"), host("203.0.113.31"))

	// Well inside the hold time: the closed connection tells BIRD.
	start := time.Now()
	killed.kill()
	l.waitPrefixes(t, 0, time.Second)
	t.Logf("killed speaker: routes gone %v after SIGKILL", time.Since(start).Round(time.Millisecond))
	l.waitPrefixes(t, 1, 0, host("203.0.113.31"))

	frozen.signal(syscall.SIGSTOP)
	start = time.Now()
	l.waitPrefixes(t, 1, holdTime+time.Second)
	took := time.Since(start)
	t.Logf("frozen speaker: routes gone %v after SIGSTOP (hold time %v)", took.Round(time.Millisecond), holdTime)
	if !strings.Contains(l.bird.Log(), "Hold timer expired") {
		t.Fatalf("BIRD did not drop the frozen speaker on its hold timer:\n%s", l.bird.Log())
	}
	frozen.signal(syscall.SIGCONT)
}

// IPv6 sessions carry the IPv4 routes: with an IPv6 next hop (RFC 8950,
// the session's address) by default, with the configured IPv4 next hop
// when one is set.
func TestIPv6Peer(t *testing.T) {
	l := newLab(t, 2, func(i int, p *bird.Peer) {
		p.Local, p.Neighbor, p.ExtendedNextHop = l6(i, 2), l6(i, 1), true
	})
	cfg1 := l.config(0)
	cfg1.Peers = []Peer{{Addr: l.router6(0), ASN: routerASN}}
	cfg2 := l.config(1)
	cfg2.Peers = []Peer{{Addr: l.router6(1), ASN: routerASN}}
	cfg2.NextHop = l.spareAddr(1)
	startSpeaker(t, l.ns[0], "dp1", cfg1, netip.MustParseAddr("203.0.113.50"))
	startSpeaker(t, l.ns[1], "dp2", cfg2, netip.MustParseAddr("203.0.113.51"))
	l.waitPrefixes(t, -1, 10*time.Second, host("203.0.113.50"), host("203.0.113.51"))
	routes := l.routes(t)
	r1, r2 := bird.Lookup(routes, host("203.0.113.50")), bird.Lookup(routes, host("203.0.113.51"))
	if len(r1) != 1 || r1[0].Protocol != "dp1" || r1[0].Via != l.speaker6(0) || r1[0].Interface != "s1" {
		t.Fatalf("203.0.113.50: want via %s on s1:\n%s", l.speaker6(0), bird.FormatRoutes(r1))
	}
	if len(r2) != 1 || r2[0].Protocol != "dp2" || r2[0].Via != l.spareAddr(1) || r2[0].Interface != "s2" {
		t.Fatalf("203.0.113.51: want via %s on s2:\n%s", l.spareAddr(1), bird.FormatRoutes(r2))
	}
}

// l6 is the IPv6 address host (1 speaker, 2 router) of link i.
func l6(i, host int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("2001:db8:%d::%d", i+1, host))
}

// A hand-off keeps the routes: the predecessor leaves without a word, BIRD
// keeps its routes (stale) although the session is gone, the successor
// comes up restarting and, once it has sent its table and End-of-RIB, BIRD
// drops the one route it did not announce again — long before the restart
// time. The route both announce is never missing. A successor that then
// crashes keeps its routes for its restart time only.
func TestGracefulHandoff(t *testing.T) {
	l := newLab(t, 1, func(_ int, p *bird.Peer) { p.GracefulRestart = true })
	const restart = 10 * time.Second
	cfg := l.config(0)
	cfg.RestartTime = restart
	first := startSpeaker(t, l.ns[0], "dp1", cfg, netip.MustParseAddr("203.0.113.40"), netip.MustParseAddr("203.0.113.41"))
	l.waitPrefixes(t, 0, 10*time.Second, host("203.0.113.40"), host("203.0.113.41"))
	if st := first.waitEstablished(time.Second); !st.Peers[0].GracefulRestart {
		t.Fatalf("graceful restart not negotiated: %+v", st.Peers[0])
	}

	// Watch the route that stays, from before the hand-off to the end.
	gaps := make(chan time.Duration, 1)
	stopWatch := make(chan struct{})
	go func() {
		var missing time.Duration
		last := time.Now()
		for {
			select {
			case <-stopWatch:
				gaps <- missing
				return
			case <-time.After(20 * time.Millisecond):
			}
			rs, err := l.bird.Routes()
			now := time.Now()
			if err != nil || len(bird.Lookup(rs, host("203.0.113.40"))) == 0 {
				missing += now.Sub(last)
			}
			last = now
		}
	}()

	handoff := time.Now()
	first.do("handoff")
	first.exited()
	if _, err := bird.Wait(2*time.Second, func() error {
		p, err := l.bird.Protocol(l.proto(0))
		if err != nil {
			return err
		}
		if p.Established() {
			return errorString("session still up")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // a router without graceful restart drops them within milliseconds
	l.waitPrefixes(t, 0, 0, host("203.0.113.40"), host("203.0.113.41"))

	next := cfg
	next.Restarting = true
	next.RestartTime = 3 * time.Second
	succ := startSpeaker(t, l.ns[0], "dp1-successor", next, netip.MustParseAddr("203.0.113.40"), netip.MustParseAddr("203.0.113.42"))
	took := l.waitPrefixes(t, 0, restart-time.Since(handoff), host("203.0.113.40"), host("203.0.113.42"))
	t.Logf("hand-off: BIRD has the successor's table %v after the successor started, %v after the hand-off (restart time %v)",
		took.Round(time.Millisecond), time.Since(handoff).Round(time.Millisecond), restart)
	close(stopWatch)
	if gap := <-gaps; gap > 0 {
		t.Fatalf("203.0.113.40 was missing from BIRD for %v during the hand-off", gap)
	}
	if st := succ.status(); !st.Restarting || st.Announced != 2 || st.Peers[0].PrefixesSent != 2 {
		t.Fatalf("successor status: %+v", st)
	}

	// A crash of the successor: BIRD keeps its routes for its 3 s restart
	// time, then drops them.
	succ.kill()
	crash := time.Now()
	time.Sleep(500 * time.Millisecond)
	l.waitPrefixes(t, 0, 0, host("203.0.113.40"), host("203.0.113.42"))
	l.waitPrefixes(t, 0, next.RestartTime+2*time.Second)
	t.Logf("crash with graceful restart: routes dropped %v after the kill (restart time %v)", time.Since(crash).Round(time.Millisecond), next.RestartTime)
}

// With a listen port, a router that dials us gets its session: here our
// own dials go to a port where nothing listens, so the session BIRD
// establishes is the one we accepted.
func TestListenPort(t *testing.T) {
	l := newLab(t, 1, func(_ int, p *bird.Peer) { p.Active, p.Port = true, 1179 })
	cfg := l.config(0)
	cfg.ListenPort = 1179
	cfg.Peers[0].Port = 2179
	sp := startSpeaker(t, l.ns[0], "dp1", cfg, netip.MustParseAddr("203.0.113.60"))
	out, err := l.ns[0].Output("ss", "-Htln")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, ":1179") || strings.Count(strings.TrimSpace(out), "\n") > 1 {
		t.Fatalf("listening sockets: want :1179 (IPv4 and IPv6) only:\n%s", out)
	}
	l.waitPrefixes(t, 0, 10*time.Second, host("203.0.113.60"))
	if st := sp.status(); st.Peers[0].LocalAddress != l.speakerAddr(0) {
		t.Fatalf("%+v", st.Peers[0])
	}
}
