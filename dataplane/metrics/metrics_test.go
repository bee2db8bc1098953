package metrics_test

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/dataplanetest"
	dpmetrics "github.com/fourover6/fourover6/dataplane/metrics"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/session"
	"github.com/fourover6/fourover6/dataplane/wire"
)

type env = dataplanetest.Harness

func start(t *testing.T) *env {
	return dataplanetest.Start(t, dataplanetest.NewMemTUN(1), func(c *dataplane.Config) {
		c.ID, c.InstanceID, c.Version = "dp-metrics", "inst-1", "v1.2.3"
	})
}

var eventually = dataplanetest.Eventually

var gw = netip.MustParseAddr("13.8.0.1")

func TestCollectorCountsTraffic(t *testing.T) {
	e := start(t)
	col := dpmetrics.New(e.DP)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(col)

	// Before any client: every drop and refusal reason is there, at 0.
	if n := testutil.CollectAndCount(col, "fourover6_dataplane_drops_total"); n != int(session.NumDrops) {
		t.Errorf("drop series = %d, want %d (session.NumDrops)", n, session.NumDrops)
	}
	if n := testutil.CollectAndCount(col, "fourover6_dataplane_connections_refused_total"); n != len(dpmetrics.RefusalReasons) {
		t.Errorf("refusal series = %d, want %d", n, len(dpmetrics.RefusalReasons))
	}

	c := e.Dial()
	addr := c.Lease().Addr

	// Three 102s of known size reach the TUN.
	var fromBytes int
	for i := range 3 {
		p := packet.BuildICMPEcho(addr, gw, 1, uint16(i), []byte(strings.Repeat("x", 10*i)), false)
		fromBytes += len(p)
		c.Write(wire.AppendMsg(nil, wire.TypeNetRequest, p))
		e.FromTUN()
	}
	// Two 103s to the client: the route is in since a 102 reached the TUN.
	var toBytes int
	for i := range 2 {
		p := packet.BuildICMPEcho(gw, addr, 1, uint16(i), []byte(strings.Repeat("y", 100+i)), true)
		toBytes += len(p)
		e.TUN.Inject(p)
		c.NextOf(wire.TypeNetResponse)
	}
	// Drops: a spoofed source, a packet for nobody, a 101 from the client.
	c.Write(wire.AppendMsg(nil, wire.TypeNetRequest, packet.BuildICMPEcho(netip.MustParseAddr("13.8.0.99"), gw, 1, 1, nil, false)))
	e.TUN.Inject(packet.BuildICMPEcho(gw, netip.MustParseAddr("13.8.0.200"), 1, 1, nil, true))
	c.Write(wire.AppendMsg(nil, wire.TypeAddrResponse, []byte("x")))

	eventually(t, "counters", func() bool {
		st := e.DP.Status()
		return st.Traffic.PacketsToClient == 2 && len(st.Drops) == 3
	})

	want := `
# HELP fourover6_dataplane_bytes_total IPv4 bytes carried (without the 5-byte header): from_client is 102 traffic, to_client is 103.
# TYPE fourover6_dataplane_bytes_total counter
fourover6_dataplane_bytes_total{direction="from_client"} ` + strconv.Itoa(fromBytes) + `
fourover6_dataplane_bytes_total{direction="to_client"} ` + strconv.Itoa(toBytes) + `
# HELP fourover6_dataplane_packets_total IPv4 packets carried: from_client is 102 traffic, to_client is 103.
# TYPE fourover6_dataplane_packets_total counter
fourover6_dataplane_packets_total{direction="from_client"} 3
fourover6_dataplane_packets_total{direction="to_client"} 2
# HELP fourover6_dataplane_sessions Open client connections (leased or not yet).
# TYPE fourover6_dataplane_sessions gauge
fourover6_dataplane_sessions 1
# HELP fourover6_dataplane_sessions_leased Open client connections holding an address.
# TYPE fourover6_dataplane_sessions_leased gauge
fourover6_dataplane_sessions_leased 1
# HELP fourover6_dataplane_sessions_accepted_total Client connections accepted (refused ones are not counted).
# TYPE fourover6_dataplane_sessions_accepted_total counter
fourover6_dataplane_sessions_accepted_total 1
# HELP fourover6_dataplane_sessions_closed_total Client connections closed, for any reason.
# TYPE fourover6_dataplane_sessions_closed_total counter
fourover6_dataplane_sessions_closed_total 0
# HELP fourover6_dataplane_info Data plane identity: always 1, labeled with its id, version and instance_id (random per process start).
# TYPE fourover6_dataplane_info gauge
fourover6_dataplane_info{id="dp-metrics",instance_id="inst-1",version="v1.2.3"} 1
# HELP fourover6_dataplane_controller_reachable 1 while the controller answers, 0 while it is unreachable.
# TYPE fourover6_dataplane_controller_reachable gauge
fourover6_dataplane_controller_reachable 1
# HELP fourover6_dataplane_draining 1 while the data plane refuses new clients, else 0.
# TYPE fourover6_dataplane_draining gauge
fourover6_dataplane_draining 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"fourover6_dataplane_bytes_total", "fourover6_dataplane_packets_total",
		"fourover6_dataplane_sessions", "fourover6_dataplane_sessions_leased",
		"fourover6_dataplane_sessions_accepted_total", "fourover6_dataplane_sessions_closed_total",
		"fourover6_dataplane_info", "fourover6_dataplane_controller_reachable", "fourover6_dataplane_draining",
	); err != nil {
		t.Error(err)
	}

	drops := map[string]float64{}
	for _, r := range []string{"spoofed_source", "no_route", "unexpected_type", "frame_error", "send_queue_full"} {
		drops[r] = value(t, reg, "fourover6_dataplane_drops_total", "reason", r)
	}
	wantDrops := map[string]float64{"spoofed_source": 1, "no_route": 1, "unexpected_type": 1, "frame_error": 0, "send_queue_full": 0}
	for r, v := range wantDrops {
		if drops[r] != v {
			t.Errorf("drops_total{reason=%q} = %v, want %v", r, drops[r], v)
		}
	}

	// The client leaves: counters stay (closed sessions are included).
	c.Conn.Close()
	eventually(t, "close", func() bool { return e.DP.Status().Closed == 1 })
	if got := value(t, reg, "fourover6_dataplane_bytes_total", "direction", "from_client"); got != float64(fromBytes) {
		t.Errorf("bytes from client after close = %v, want %d", got, fromBytes)
	}
	if got := value(t, reg, "fourover6_dataplane_sessions", "", ""); got != 0 {
		t.Errorf("sessions after close = %v", got)
	}

	// Draining: the next connection is refused and counted.
	e.DP.SetDraining(true)
	c2 := e.Dial()
	c2.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c2.Conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("a draining data plane answered a new client")
	}
	eventually(t, "refused", func() bool { return e.DP.Refused()["draining"] == 1 })
	if got := value(t, reg, "fourover6_dataplane_connections_refused_total", "reason", "draining"); got != 1 {
		t.Errorf("refused{draining} = %v", got)
	}
	if got := value(t, reg, "fourover6_dataplane_connections_refused_total", "reason", "max_clients"); got != 0 {
		t.Errorf("refused{max_clients} = %v", got)
	}
	if got := value(t, reg, "fourover6_dataplane_draining", "", ""); got != 1 {
		t.Errorf("draining = %v", got)
	}
	// The data plane counts keepalive timeouts: none here.
	if got := value(t, reg, "fourover6_dataplane_keepalive_timeouts_total", "", ""); got != 0 {
		t.Errorf("keepalive_timeouts_total = %v", got)
	}
	if probs, err := testutil.GatherAndLint(reg); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}
}

func TestCollectorControllerUnreachable(t *testing.T) {
	e := start(t)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(dpmetrics.New(e.DP))
	e.Ctl.SetDown(true)
	c := e.Dial()
	c.Write(wire.AddrRequest[:]) // the allocation fails: the controller is marked unreachable
	eventually(t, "unreachable", func() bool { return !e.DP.Status().ControllerConnected })
	if got := value(t, reg, "fourover6_dataplane_controller_reachable", "", ""); got != 0 {
		t.Errorf("controller_reachable = %v, want 0", got)
	}
}

// withTimeouts adds the keepalive counter the data plane core is to grow.
type withTimeouts struct {
	dpmetrics.Source
	n uint64
}

func (w withTimeouts) KeepaliveTimeouts() uint64 { return w.n }

func TestCollectorKeepaliveTimeouts(t *testing.T) {
	e := start(t)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(dpmetrics.New(withTimeouts{Source: e.DP, n: 4}))
	want := `
# HELP fourover6_dataplane_keepalive_timeouts_total Clients disconnected because they were silent longer than the keepalive timeout.
# TYPE fourover6_dataplane_keepalive_timeouts_total counter
fourover6_dataplane_keepalive_timeouts_total 4
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "fourover6_dataplane_keepalive_timeouts_total"); err != nil {
		t.Error(err)
	}
}

// value returns the value of the series of name whose label has value
// (label "" for a series without labels).
func value(t *testing.T, g prometheus.Gatherer, name, label, val string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				match = match || (l.GetName() == label && l.GetValue() == val)
			}
			if !match {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no series %s{%s=%q}", name, label, val)
	return 0
}
