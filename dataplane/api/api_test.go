package api_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/api"
	"github.com/fourover6/fourover6/dataplane/dataplanetest"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

// failAfter turns a hang into a failure; no assertion depends on timing.
const failAfter = 10 * time.Second

type env struct {
	t        *testing.T
	api      dpv1.DataplaneServiceClient
	tun      *dataplanetest.MemTUN
	ctl      *dataplanetest.MemController
	listen   string // the data plane's client listener
	clientIP string // the address clients connect from, as the API shows it
}

// start runs a real data plane (in-memory TUN and controller) and serves
// its API on a unix socket.
func start(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, tun: dataplanetest.NewMemTUN(1, 0), ctl: dataplanetest.NewMemController(253)}
	ln, err := net.Listen("tcp", "[::1]:0")
	e.clientIP = "::1"
	if err != nil { // no IPv6 loopback here
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		e.clientIP = "127.0.0.1"
	}
	e.listen = ln.Addr().String()
	dp, err := dataplane.New(dataplane.Config{
		ID: "dp-api", Version: "v-test", Listener: ln, TUN: e.tun, Pool: dataplanetest.Pool,
		Controller: e.ctl, ControllerAddr: "unix:///run/test/controller.sock",
		Logger:            slog.New(slog.DiscardHandler),
		KeepaliveInterval: 7 * time.Second, KeepaliveTimeout: 21 * time.Second,
		ReportInterval: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		if err := dp.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-ran })

	sock := filepath.Join(t.TempDir(), "dataplane.sock")
	apiLn, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	api.New(dp, nil, nil).Register(gs)
	go gs.Serve(apiLn)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	e.api = dpv1.NewDataplaneServiceClient(cc)
	return e
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(e.t.Context(), failAfter)
	e.t.Cleanup(cancel)
	return ctx
}

func (e *env) status() *dpv1.Status {
	e.t.Helper()
	resp, err := e.api.GetStatus(e.ctx(), &dpv1.GetStatusRequest{})
	if err != nil {
		e.t.Fatalf("GetStatus: %v", err)
	}
	return resp.GetStatus()
}

func (e *env) sessions() []*dpv1.Session {
	e.t.Helper()
	stream, err := e.api.ListSessions(e.ctx(), &dpv1.ListSessionsRequest{})
	if err != nil {
		e.t.Fatalf("ListSessions: %v", err)
	}
	var out []*dpv1.Session
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			e.t.Fatalf("ListSessions: %v", err)
		}
		out = append(out, r.GetSession())
	}
}

// eventually polls cond; the deadline only turns a hang into a failure.
func (e *env) eventually(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(failAfter)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type client struct {
	t    *testing.T
	conn net.Conn
	dec  *wire.Decoder
}

func (e *env) dial() *client {
	e.t.Helper()
	c, err := net.Dial("tcp", e.listen)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return &client{t: e.t, conn: c, dec: wire.NewDecoder(c, 0)}
}

func (c *client) write(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// next returns the next message that is not a keepalive.
func (c *client) next() wire.Msg {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(failAfter))
	for {
		m, err := c.dec.Next()
		if err != nil {
			c.t.Fatalf("client read: %v", err)
		}
		if m.Type != wire.TypeKeepalive {
			return m
		}
	}
}

func (c *client) port() uint32 {
	return uint32(netip.MustParseAddrPort(c.conn.LocalAddr().String()).Port())
}

func TestStatusAndSessions(t *testing.T) {
	e := start(t)

	st := e.status()
	if st.GetDataplaneId() != "dp-api" || st.GetVersion() != "v-test" || st.GetClientListen() != e.listen ||
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
	c := e.dial()
	early := packet.BuildICMPEcho(netip.MustParseAddr("13.8.0.2"), dataplanetest.Pool.Gateway, 1, 0, nil, false)
	c.write(wire.AppendMsg(nil, wire.TypeNetRequest, early))
	c.write([]byte{5, 0, 0, 0, 100})
	m := c.next()
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
	c.write(wire.AppendMsg(nil, wire.TypeNetRequest, up))
	select {
	case <-e.tun.Written:
	case <-time.After(failAfter):
		t.Fatal("102 never reached the TUN")
	}
	down := packet.BuildICMPEcho(dataplanetest.Pool.Gateway, lease.Addr, 1, 1, []byte("down, longer"), true)
	e.tun.Inject(down)
	if m := c.next(); m.Type != wire.TypeNetResponse || string(m.Data) != string(down) {
		t.Fatalf("got %v %x, want the 103 %x", m.Type, m.Data, down)
	}
	// The reader counts a 102 once the TUN write returned, the writer a 103
	// once its socket write returned: both may lag what the test saw.
	e.eventually("the 102 and the 103 to be counted", func() bool {
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
		s.GetAddress() != "13.8.0.2" || s.GetClientIpv6() != e.clientIP || s.GetClientPort() != c.port() {
		t.Errorf("session = %v, want dp-api, leased, 13.8.0.2, client [%s]:%d", s, e.clientIP, c.port())
	}
	if s.GetConnectedAt() == nil || s.GetLastHeard() == nil || s.GetLastHeard().AsTime().Before(s.GetConnectedAt().AsTime()) {
		t.Errorf("connected_at %v, last_heard %v", s.GetConnectedAt(), s.GetLastHeard())
	}
	wantCounters("session", s.GetCounters())

	// A second client that has not asked for an address yet.
	c2 := e.dial()
	e.eventually("the second session", func() bool { return len(e.sessions()) == 2 })
	ss = e.sessions()
	if ss[0].GetSessionId() != s.GetSessionId() {
		t.Errorf("sessions not listed in connection order: %v", ss)
	}
	if s2 := ss[1]; s2.GetState() != dpv1.SessionState_SESSION_STATE_ACCEPTED || s2.GetAddress() != "" ||
		s2.GetClientPort() != c2.port() || s2.GetSessionId() == s.GetSessionId() {
		t.Errorf("unleased session = %v, want accepted, no address, port %d", s2, c2.port())
	}
	if st := e.status(); st.GetSessions() != 2 || st.GetLeasedSessions() != 1 || st.GetAcceptedTotal() != 2 {
		t.Errorf("with an unleased client: sessions/leased/accepted = %d/%d/%d, want 2/1/2",
			st.GetSessions(), st.GetLeasedSessions(), st.GetAcceptedTotal())
	}

	// The first client leaves: its address is released, its traffic stays
	// in the totals.
	c.conn.Close()
	select {
	case r := <-e.ctl.Released:
		a := r.Addr
		if a != lease.Addr {
			t.Errorf("released %s, want %s", a, lease.Addr)
		}
	case <-time.After(failAfter):
		t.Fatal("address never released")
	}
	e.eventually("the first session to go", func() bool { return e.status().GetClosedTotal() == 1 })
	st = e.status()
	if st.GetSessions() != 1 || st.GetLeasedSessions() != 0 {
		t.Errorf("after a disconnect: sessions/leased = %d/%d, want 1/0", st.GetSessions(), st.GetLeasedSessions())
	}
	wantCounters("status after the disconnect", st.GetCounters())
	if ss := e.sessions(); len(ss) != 1 || ss[0].GetClientPort() != c2.port() {
		t.Errorf("sessions after the disconnect = %v, want only the second client", ss)
	}
}
