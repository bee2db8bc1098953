package api_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/api"
	"github.com/fourover6/fourover6/dataplane/bgp"
	"github.com/fourover6/fourover6/dataplane/dataplanetest"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

// failAfter turns a hang into a failure; no assertion depends on timing.
const failAfter = 10 * time.Second

type env struct {
	*dataplanetest.Harness
	api dpv1.DataplaneServiceClient
}

// start runs a real data plane (in-memory TUN and controller) and serves
// its API on a unix socket.
func start(t *testing.T) *env {
	t.Helper()
	return startBGP(t, nil)
}

// startBGP is start with a BGP speaker (nil: none).
func startBGP(t *testing.T, src api.BGPSource) *env {
	t.Helper()
	h := dataplanetest.Start(t, dataplanetest.NewMemTUN(1), func(c *dataplane.Config) {
		c.ID, c.Version, c.ControllerAddr = "dp-api", "v-test", "unix:///run/test/controller.sock"
		c.KeepaliveInterval, c.KeepaliveTimeout = 7*time.Second, 21*time.Second
	})
	sock := filepath.Join(t.TempDir(), "dataplane.sock")
	apiLn, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv := api.New(h.DP, nil, nil)
	if src != nil {
		srv.SetBGP(src)
	}
	srv.Register(gs)
	go gs.Serve(apiLn)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &env{Harness: h, api: dpv1.NewDataplaneServiceClient(cc)}
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(e.T.Context(), failAfter)
	e.T.Cleanup(cancel)
	return ctx
}

func (e *env) status() *dpv1.Status {
	e.T.Helper()
	resp, err := e.api.GetStatus(e.ctx(), &dpv1.GetStatusRequest{})
	if err != nil {
		e.T.Fatalf("GetStatus: %v", err)
	}
	return resp.GetStatus()
}

func (e *env) sessions() []*dpv1.Session {
	e.T.Helper()
	stream, err := e.api.ListSessions(e.ctx(), &dpv1.ListSessionsRequest{})
	if err != nil {
		e.T.Fatalf("ListSessions: %v", err)
	}
	var out []*dpv1.Session
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			e.T.Fatalf("ListSessions: %v", err)
		}
		out = append(out, r.GetSession())
	}
}

func port(c *dataplanetest.Client) uint32 {
	return uint32(netip.MustParseAddrPort(c.Conn.LocalAddr().String()).Port())
}

func TestStatusAndSessions(t *testing.T) {
	e := start(t)

	st := e.status()
	if st.GetDataplaneId() != "dp-api" || st.GetVersion() != "v-test" || st.GetClientListen() != e.Addr ||
		st.GetTun() != "mem0" || st.GetMtu() != 1500 || st.GetGateway() != "13.8.0.1" || st.GetPool() != "13.8.0.0/24" ||
		st.GetController() != "unix:///run/test/controller.sock" || !st.GetControllerConnected() {
		t.Errorf("status of an idle data plane = %v", st)
	}
	if st.GetSessions() != 0 || st.GetLeasedSessions() != 0 || st.GetAcceptedTotal() != 0 || st.GetClosedTotal() != 0 {
		t.Errorf("idle data plane counts sessions: %v", st)
	}
	if st.GetKeepaliveIntervalMs() != 7000 || st.GetKeepaliveTimeoutMs() != 21000 {
		t.Errorf("keepalive interval/timeout = %d/%d ms, want 7000/21000", st.GetKeepaliveIntervalMs(), st.GetKeepaliveTimeoutMs())
	}
	if st.GetStartedAt() == nil || st.GetStartedAt().AsTime().IsZero() {
		t.Errorf("started_at = %v", st.GetStartedAt())
	}
	if len(e.sessions()) != 0 {
		t.Errorf("sessions listed on an idle data plane")
	}

	// One client: a 102 before its lease (dropped), then the 5 bytes of a
	// 100, then a 102 that reaches the TUN (so the session is surely
	// leased and routed), then a 103 from the TUN.
	c := e.Dial()
	early := packet.BuildICMPEcho(netip.MustParseAddr("13.8.0.2"), dataplanetest.Pool.Gateway, 1, 0, nil, false)
	c.Write(wire.AppendMsg(nil, wire.TypeNetRequest, early))
	c.Write([]byte{5, 0, 0, 0, 100})
	m := c.Next()
	if m.Type != wire.TypeAddrResponse {
		t.Fatalf("first message %v, want 101", m.Type)
	}
	lease, err := wire.ParseAddrResponse(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if lease.Addr != netip.MustParseAddr("13.8.0.2") {
		t.Fatalf("leased %s, want 13.8.0.2", lease.Addr)
	}
	up := packet.BuildICMPEcho(lease.Addr, dataplanetest.Pool.Gateway, 1, 1, []byte("up"), false)
	c.Write(wire.AppendMsg(nil, wire.TypeNetRequest, up))
	select {
	case <-e.TUN.Written:
	case <-time.After(failAfter):
		t.Fatal("102 never reached the TUN")
	}
	down := packet.BuildICMPEcho(dataplanetest.Pool.Gateway, lease.Addr, 1, 1, []byte("down, longer"), true)
	e.TUN.Inject(down)
	if m := c.Next(); m.Type != wire.TypeNetResponse || string(m.Data) != string(down) {
		t.Fatalf("got %v %x, want the 103 %x", m.Type, m.Data, down)
	}
	// The reader counts a 102 once the TUN write returned, the writer a 103
	// once its socket write returned: both may lag what the test saw.
	dataplanetest.Eventually(e.T, "the 102 and the 103 to be counted", func() bool {
		ss := e.sessions()
		return len(ss) == 1 && ss[0].GetCounters().GetPacketsToClient() == 1 && ss[0].GetCounters().GetPacketsFromClient() == 1
	})

	st = e.status()
	if st.GetSessions() != 1 || st.GetLeasedSessions() != 1 || st.GetAcceptedTotal() != 1 || st.GetClosedTotal() != 0 {
		t.Errorf("sessions/leased/accepted/closed = %d/%d/%d/%d, want 1/1/1/0",
			st.GetSessions(), st.GetLeasedSessions(), st.GetAcceptedTotal(), st.GetClosedTotal())
	}
	if got := st.GetDrops()["data_before_lease"]; got != 1 || len(st.GetDrops()) != 1 {
		t.Errorf("drops = %v, want data_before_lease:1", st.GetDrops())
	}
	wantCounters := func(what string, got *dpv1.Counters) {
		t.Helper()
		if got.GetPacketsFromClient() != 1 || got.GetBytesFromClient() != uint64(len(up)) ||
			got.GetPacketsToClient() != 1 || got.GetBytesToClient() != uint64(len(down)) {
			t.Errorf("%s counters = %v, want 1 packet/%d bytes from and 1/%d to the client", what, got, len(up), len(down))
		}
	}
	wantCounters("status", st.GetCounters())

	ss := e.sessions()
	if len(ss) != 1 {
		t.Fatalf("%d sessions listed, want 1", len(ss))
	}
	s := ss[0]
	if s.GetDataplaneId() != "dp-api" || s.GetSessionId() == "" || s.GetState() != dpv1.SessionState_SESSION_STATE_LEASED ||
		s.GetAddress() != "13.8.0.2" || s.GetClientIpv6() != e.ClientIP || s.GetClientPort() != port(c) {
		t.Errorf("session = %v, want dp-api, leased, 13.8.0.2, client [%s]:%d", s, e.ClientIP, port(c))
	}
	if s.GetConnectedAt() == nil || s.GetLastHeard() == nil || s.GetLastHeard().AsTime().Before(s.GetConnectedAt().AsTime()) {
		t.Errorf("connected_at %v, last_heard %v", s.GetConnectedAt(), s.GetLastHeard())
	}
	wantCounters("session", s.GetCounters())

	// A second client that has not asked for an address yet.
	c2 := e.Dial()
	dataplanetest.Eventually(e.T, "the second session", func() bool { return len(e.sessions()) == 2 })
	ss = e.sessions()
	if ss[0].GetSessionId() != s.GetSessionId() {
		t.Errorf("sessions not listed in connection order: %v", ss)
	}
	if s2 := ss[1]; s2.GetState() != dpv1.SessionState_SESSION_STATE_ACCEPTED || s2.GetAddress() != "" ||
		s2.GetClientPort() != port(c2) || s2.GetSessionId() == s.GetSessionId() {
		t.Errorf("unleased session = %v, want accepted, no address, port %d", s2, port(c2))
	}
	if st := e.status(); st.GetSessions() != 2 || st.GetLeasedSessions() != 1 || st.GetAcceptedTotal() != 2 {
		t.Errorf("with an unleased client: sessions/leased/accepted = %d/%d/%d, want 2/1/2",
			st.GetSessions(), st.GetLeasedSessions(), st.GetAcceptedTotal())
	}

	// The first client leaves: its address is released, its traffic stays
	// in the totals.
	c.Conn.Close()
	select {
	case r := <-e.Ctl.Released:
		a := r.Addr
		if a != lease.Addr {
			t.Errorf("released %s, want %s", a, lease.Addr)
		}
	case <-time.After(failAfter):
		t.Fatal("address never released")
	}
	dataplanetest.Eventually(e.T, "the first session to go", func() bool { return e.status().GetClosedTotal() == 1 })
	st = e.status()
	if st.GetSessions() != 1 || st.GetLeasedSessions() != 0 {
		t.Errorf("after a disconnect: sessions/leased = %d/%d, want 1/0", st.GetSessions(), st.GetLeasedSessions())
	}
	wantCounters("status after the disconnect", st.GetCounters())
	if ss := e.sessions(); len(ss) != 1 || ss[0].GetClientPort() != port(c2) {
		t.Errorf("sessions after the disconnect = %v, want only the second client", ss)
	}
}

type fakeBGP struct {
	st  bgp.Status
	cfg bgp.Config
}

func (f fakeBGP) Status() bgp.Status { return f.st }
func (f fakeBGP) Config() bgp.Config { return f.cfg }

// The status carries the BGP speaker when there is one, and nothing
// (not an empty speaker) when BGP is off.
func TestStatusBGP(t *testing.T) {
	if b := start(t).status().GetBgp(); b != nil {
		t.Fatalf("bgp without a speaker: %v", b)
	}
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	src := fakeBGP{cfg: bgp.Config{HoldTime: 9 * time.Second}, st: bgp.Status{
		ASN: 65000, RouterID: netip.MustParseAddr("198.51.100.1"), RestartTime: 30 * time.Second, Announced: 2,
		Aggregate: netip.MustParsePrefix("13.8.0.0/24"), Peers: []bgp.PeerStatus{
			{Peer: bgp.Peer{Addr: netip.MustParseAddr("198.51.100.2"), ASN: 65001}, State: "established", Since: since,
				Uptime: time.Minute, LocalAddress: netip.MustParseAddr("198.51.100.1"), PrefixesSent: 3, GracefulRestart: true},
			{Peer: bgp.Peer{Addr: netip.MustParseAddr("2001:db8::2"), Port: 1179, ASN: 65002}, State: "idle", LastError: "hold timer expired"},
		}}}
	b := startBGP(t, src).status().GetBgp()
	if b.GetAsn() != 65000 || b.GetRouterId() != "198.51.100.1" || b.GetNextHop() != "" || b.GetHoldTimeMs() != 9000 ||
		b.GetGracefulRestartMs() != 30000 || b.GetAnnounced() != 2 || b.GetAggregate() != "13.8.0.0/24" || len(b.GetSessions()) != 2 {
		t.Fatalf("bgp %v", b)
	}
	p := b.GetSessions()[0]
	if p.GetPeerAddress() != "198.51.100.2" || p.GetPeerPort() != 179 || p.GetPeerAsn() != 65001 || p.GetState() != "established" ||
		!p.GetEstablishedAt().AsTime().Equal(since) || p.GetUptimeMs() != 60000 || p.GetLocalAddress() != "198.51.100.1" ||
		p.GetRouterId() != "" || p.GetPrefixesSent() != 3 || !p.GetGracefulRestart() {
		t.Fatalf("session %v", p)
	}
	p = b.GetSessions()[1]
	if p.GetPeerPort() != 1179 || p.GetEstablishedAt() != nil || p.GetLastError() != "hold timer expired" {
		t.Fatalf("session %v", p)
	}
}
