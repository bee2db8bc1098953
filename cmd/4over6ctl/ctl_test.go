package main

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

// ---- tests ----

func TestClientsList(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	addr := serve(t, ctrl, nil)

	r := ctl(t, nil, "--controller", addr, "clients", "list", "-o", "json").expect(t, 0)
	var raw []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatalf("json: %v\n%s", err, r.stdout)
	}
	if len(raw) != 2 {
		t.Fatalf("%d clients, want 2", len(raw))
	}
	if got := keysOf(raw[0]); !reflect.DeepEqual(got, clientKeys) {
		t.Errorf("client keys %v\nwant %v", got, clientKeys)
	}
	var cs []Client
	if err := json.Unmarshal([]byte(r.stdout), &cs); err != nil {
		t.Fatal(err)
	}
	want := Client{IPv4: "13.8.0.2", IPv6: "fd00:46::2", Port: 51234, Dataplane: "dp1", Session: "s-2",
		ConnectedSince: "2025-03-01T10:00:00Z", LastHeard: "2025-03-01T10:05:07Z",
		Counters: Counters{BytesFromClient: 3 << 20, PacketsFromClient: 2500, BytesToClient: 1234, PacketsToClient: 7},
		Sticky:   true}
	if cs[0] != want {
		t.Errorf("first client (sorted numerically)\n got %+v\nwant %+v", cs[0], want)
	}
	if cs[1].IPv4 != "13.8.0.10" {
		t.Errorf("second client %q, want 13.8.0.10", cs[1].IPv4)
	}
	wantRates := Rates{BytesFromClientPerSecond: 2048, PacketsFromClientPerSecond: 4, BytesToClientPerSecond: 1536000, PacketsToClientPerSecond: 1000.5}
	if cs[1].Rates != wantRates {
		t.Errorf("rates of 13.8.0.10 = %+v, want %+v", cs[1].Rates, wantRates)
	}

	r = ctl(t, nil, "--controller", addr, "clients", "list", "-o", "yaml").expect(t, 0)
	var ys []Client
	if err := yaml.Unmarshal([]byte(r.stdout), &ys); err != nil {
		t.Fatalf("yaml: %v\n%s", err, r.stdout)
	}
	if len(ys) != 2 || ys[0] != want {
		t.Errorf("yaml gave %+v", ys)
	}
	var yraw []map[string]any
	if err := yaml.Unmarshal([]byte(r.stdout), &yraw); err != nil || !reflect.DeepEqual(keysOf(yraw[0]), clientKeys) {
		t.Errorf("yaml keys %v (%v)", keysOf(yraw[0]), err)
	}

	r = ctl(t, nil, "--controller", addr, "clients", "list").expect(t, 0)
	for _, s := range []string{"IPV4", "13.8.0.2", "fd00:46::2", "51234", "dp1", "13.8.0.10", "3.0 MiB (2500 pkts)", "ago"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("table lacks %q:\n%s", s, r.stdout)
		}
	}
	if strings.Index(r.stdout, "13.8.0.2 ") > strings.Index(r.stdout, "13.8.0.10") {
		t.Errorf("table not sorted by address:\n%s", r.stdout)
	}

	// The filter reaches the controller.
	r = ctl(t, nil, "--controller", addr, "clients", "list", "--dataplane-id", "dp2", "-o", "json").expect(t, 0)
	if err := json.Unmarshal([]byte(r.stdout), &cs); err != nil || len(cs) != 1 || cs[0].Dataplane != "dp2" {
		t.Errorf("filtered list: %v %+v", err, cs)
	}
	ctrl.mu.Lock()
	if ctrl.lastFilter != "dp2" {
		t.Errorf("filter sent %q", ctrl.lastFilter)
	}
	ctrl.mu.Unlock()
}

func TestClientsListEmpty(t *testing.T) {
	t.Parallel()
	addr := serve(t, &fakeController{}, nil)
	r := ctl(t, nil, "--controller", addr, "clients", "list", "-o", "json").expect(t, 0)
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("empty list printed %q, want []", r.stdout)
	}
	r = ctl(t, nil, "--controller", addr, "clients", "list", "-o", "yaml").expect(t, 0)
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("empty yaml list printed %q, want []", r.stdout)
	}
	r = ctl(t, nil, "--controller", addr, "clients", "list").expect(t, 0)
	if !strings.Contains(r.stdout, "No clients") {
		t.Errorf("empty table: %q", r.stdout)
	}
}

func TestClientsGet(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	addr := serve(t, ctrl, nil)

	r := ctl(t, nil, "--controller", addr, "clients", "get", "13.8.0.2", "-o", "json").expect(t, 0)
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatalf("json: %v\n%s", err, r.stdout)
	}
	if !reflect.DeepEqual(keysOf(raw), clientKeys) || raw["ipv6"] != "fd00:46::2" || raw["port"] != 51234.0 || raw["sticky"] != true {
		t.Errorf("clients get: %v", raw)
	}
	r = ctl(t, nil, "--controller", addr, "clients", "get", "13.8.0.2", "-o", "yaml").expect(t, 0)
	var c Client
	if err := yaml.Unmarshal([]byte(r.stdout), &c); err != nil || c.Session != "s-2" || c.BytesToClient != 1234 {
		t.Errorf("yaml: %v %+v", err, c)
	}
	r = ctl(t, nil, "--controller", addr, "clients", "get", "13.8.0.2").expect(t, 0)
	if !strings.Contains(r.stdout, "fd00:46::2 port 51234") || !strings.Contains(r.stdout, "2025-03-01 10:00:00 UTC") ||
		!strings.Contains(r.stdout, "returning client") {
		t.Errorf("table:\n%s", r.stdout)
	}

	// Not found: exit 4, in every format.
	r = ctl(t, nil, "--controller", addr, "clients", "get", "13.8.0.99").expect(t, 4)
	if !strings.Contains(r.stderr, "13.8.0.99") || r.stdout != "" {
		t.Errorf("not found: stdout %q stderr %q", r.stdout, r.stderr)
	}
	r = ctl(t, nil, "--controller", addr, "-o", "json", "clients", "get", "13.8.0.99").expect(t, 4)
	var e errorOutput
	if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Code != 4 || !strings.Contains(e.Error, "13.8.0.99") {
		t.Errorf("json error %q: %v", r.stderr, err)
	}

	// The client's IPv6 address: the same object.
	r = ctl(t, nil, "--controller", addr, "clients", "get", "fd00:46::2", "-o", "json").expect(t, 0)
	var byV6 Client
	if err := json.Unmarshal([]byte(r.stdout), &byV6); err != nil || byV6.IPv4 != "13.8.0.2" || byV6.Session != "s-2" {
		t.Errorf("clients get IPV6: %v %+v", err, byV6)
	}
	ctrl.mu.Lock()
	if ctrl.lastPrefix != "fd00:46::2/128" {
		t.Errorf("clients get IPV6 asked for prefix %q", ctrl.lastPrefix)
	}
	ctrl.mu.Unlock()
	r = ctl(t, nil, "--controller", addr, "clients", "get", "fd00:46::77").expect(t, 4)
	if !strings.Contains(r.stderr, "no client is connected from fd00:46::77") {
		t.Errorf("IPv6 not found: %q", r.stderr)
	}
	// Connected twice from one IPv6 address: an error naming both, exit 1.
	ctrl.mu.Lock()
	ctrl.clients = append(ctrl.clients, &cpv1.Client{Address: "13.8.0.7", ClientIpv6: "fd00:46::2", ClientPort: 51235, DataplaneId: "dp2", SessionId: "s-7"})
	ctrl.mu.Unlock()
	r = ctl(t, nil, "--controller", addr, "clients", "get", "fd00:46::2").expect(t, 1)
	for _, want := range []string{"fd00:46::2 is connected 2 times", "13.8.0.2 (port 51234, data plane dp1, session s-2)", "13.8.0.7 (port 51235, data plane dp2, session s-7)", "clients list --v6-prefix fd00:46::2"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("IPv6 held twice: stderr lacks %q: %q", want, r.stderr)
		}
	}
	if r.stdout != "" {
		t.Errorf("IPv6 held twice printed %q", r.stdout)
	}

	// Bad ADDR: exit 2 without asking the controller.
	ctrl.mu.Lock()
	before := ctrl.getCalls
	ctrl.mu.Unlock()
	for _, bad := range [][]string{{"fe80::1%eth0"}, {"::ffff:13.8.0.2"}, {"fd00::/64"}, {"13.8.0"}, {"banana"}, {}, {"13.8.0.2", "13.8.0.3"}} {
		r = ctl(t, nil, append([]string{"--controller", addr, "clients", "get"}, bad...)...).expect(t, 2)
		if !strings.Contains(r.stderr, "clients get") && !strings.Contains(r.stderr, "invalid ADDR") {
			t.Errorf("%v: stderr %q", bad, r.stderr)
		}
	}
	ctrl.mu.Lock()
	if ctrl.getCalls != before {
		t.Errorf("invalid ADDR reached the controller")
	}
	ctrl.mu.Unlock()
}

func TestPoolShow(t *testing.T) {
	t.Parallel()
	addr := serve(t, newController(), nil)
	r := ctl(t, nil, "--controller", addr, "pool", "show", "-o", "json").expect(t, 0)
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	want := sorted("prefix", "gateway", "range_first", "range_last", "size", "leased", "free", "reserved", "route", "dns",
		"free_remembered", "free_unremembered", "reserved_in_use")
	if !reflect.DeepEqual(keysOf(raw), want) {
		t.Errorf("pool keys %v", keysOf(raw))
	}
	var p Pool
	_ = json.Unmarshal([]byte(r.stdout), &p)
	wantPool := Pool{Prefix: "13.8.0.0/24", Gateway: "13.8.0.1", RangeFirst: "13.8.0.2", RangeLast: "13.8.0.128",
		Size: 127, Leased: 2, Free: 124, Reserved: 1, Route: "0.0.0.0", DNS: []string{"202.38.120.242", "8.8.8.8", "202.106.0.20"},
		FreeRemembered: 30, FreeUnremembered: 94}
	if !reflect.DeepEqual(p, wantPool) {
		t.Errorf("pool %+v", p)
	}
	r = ctl(t, nil, "--controller", addr, "pool", "show", "-o", "yaml").expect(t, 0)
	var yp Pool
	if err := yaml.Unmarshal([]byte(r.stdout), &yp); err != nil || !reflect.DeepEqual(yp, wantPool) {
		t.Errorf("yaml pool %+v %v", yp, err)
	}
	r = ctl(t, nil, "--controller", addr, "pool", "show").expect(t, 0)
	for _, s := range []string{"13.8.0.0/24", "13.8.0.2 - 13.8.0.128", "2 leased", "8.8.8.8", "30 remembered", "94 never used"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("pool table lacks %q:\n%s", s, r.stdout)
		}
	}
}

func TestDataplaneStatus(t *testing.T) {
	t.Parallel()
	addr := serve(t, nil, newDataplane("dp1"))
	r := ctl(t, nil, "--dataplane", addr, "dataplane", "status", "-o", "json").expect(t, 0)
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	want := sorted("dataplane", "version", "client_listen", "tun", "mtu", "gateway", "pool", "controller",
		"controller_connected", "started_at", "sessions", "leased_sessions", "accepted_total", "closed_total",
		"bytes_from_client", "packets_from_client", "bytes_to_client", "packets_to_client", "drops",
		"keepalive_interval", "keepalive_timeout",
		// added after the first release
		"draining", "instance_id", "goroutines", "open_fds", "refused", "limits",
		"bgp",
		// the serving process (a live hand-off changes it)
		"pid", "process_started_at", "handoffs_total")
	if !reflect.DeepEqual(keysOf(raw), want) {
		t.Errorf("status keys %v\nwant %v", keysOf(raw), want)
	}
	limitKeys := sorted("max_clients", "max_conns_per_ip", "max_conns_per_prefix", "prefix_length", "accept_rate", "accept_burst")
	if got := keysOf(raw["limits"].(map[string]any)); !reflect.DeepEqual(got, limitKeys) {
		t.Errorf("limits keys %v", got)
	}
	var s Status
	_ = json.Unmarshal([]byte(r.stdout), &s)
	if s.Dataplane != "dp1" || s.MTU != 1500 || !s.ControllerConnected || s.StartedAt != "2025-03-01T10:00:00Z" ||
		s.KeepaliveInterval != "20s" || s.KeepaliveTimeout != "1m0s" || s.Drops["spoofed_source"] != 5 ||
		s.BytesToClient != 5<<30 || s.LeasedSessions != 2 || s.ClientListen != "[::]:5678" ||
		s.Draining || s.InstanceID != "i-1" || s.Goroutines != 42 || s.OpenFDs != 17 || s.Refused["max_clients"] != 2 ||
		s.Limits != (Limits{MaxClients: 1000, MaxConnsPerIP: 4, MaxConnsPerPrefix: 16, PrefixLength: 64, AcceptRate: 50, AcceptBurst: 100}) {
		t.Errorf("status %+v", s)
	}
	bgpKeys := sorted("enabled", "asn", "router_id", "next_hop", "hold_time", "graceful_restart", "announced",
		"aggregate", "pending", "failed_total", "sessions")
	if got := keysOf(raw["bgp"].(map[string]any)); !reflect.DeepEqual(got, bgpKeys) {
		t.Errorf("bgp keys %v", got)
	}
	if !strings.Contains(r.stdout, `"sessions": []`) || raw["bgp"].(map[string]any)["enabled"] != false {
		t.Errorf("bgp off: %s", r.stdout)
	}
	r = ctl(t, nil, "--dataplane", addr, "dataplane", "status", "-o", "yaml").expect(t, 0)
	var ys Status
	if err := yaml.Unmarshal([]byte(r.stdout), &ys); err != nil || !reflect.DeepEqual(ys, s) {
		t.Errorf("yaml status %+v %v", ys, err)
	}
	r = ctl(t, nil, "--dataplane", addr, "dataplane", "status").expect(t, 0)
	for _, s := range []string{"dp1", "[::]:5678", "4o6", "MTU 1500", "(connected)", "5.0 GiB", "queue_full 1", "every 20s",
		"Draining:", "clients 1000", "per /64", "50/s (burst 100)", "max_clients 2", "42 goroutines"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("status table lacks %q:\n%s", s, r.stdout)
		}
	}

	if !regexp.MustCompile(`(?m)^BGP:\s+off$`).MatchString(r.stdout) {
		t.Errorf("status table lacks the BGP line:\n%s", r.stdout)
	}

	// No drops: {} rather than null.
	dp := newDataplane("dp2")
	dp.status.Drops, dp.status.Refused, dp.status.Draining = nil, nil, true
	addr2 := serve(t, nil, dp)
	r = ctl(t, nil, "--dataplane", addr2, "dp", "status", "-o", "json").expect(t, 0)
	if !strings.Contains(r.stdout, `"drops": {}`) || !strings.Contains(r.stdout, `"refused": {}`) || !strings.Contains(r.stdout, `"draining": true`) {
		t.Errorf("empty drops: %s", r.stdout)
	}
}

// The BGP speaker's sessions, in JSON and in the table.
func TestDataplaneStatusBGP(t *testing.T) {
	t.Parallel()
	dp := newDataplane("dp1")
	dp.status.Bgp = &dpv1.Bgp{Asn: 65000, RouterId: "198.51.100.1", HoldTimeMs: 90_000, GracefulRestartMs: 30_000,
		Announced: 2, Aggregate: "13.8.0.0/24", Sessions: []*dpv1.BgpSession{
			{PeerAddress: "198.51.100.2", PeerPort: 179, PeerAsn: 65001, State: "established", EstablishedAt: timestamppb.New(t0),
				UptimeMs: 3_725_000, LocalAddress: "198.51.100.1", RouterId: "198.51.100.2", PrefixesSent: 3, GracefulRestart: true},
			{PeerAddress: "2001:db8::2", PeerPort: 1179, PeerAsn: 65002, State: "active", Flaps: 1, LastError: "hold timer expired"},
		}}
	addr := serve(t, nil, dp)
	r := ctl(t, nil, "--dataplane", addr, "dataplane", "status", "-o", "json").expect(t, 0)
	var raw struct {
		BGP map[string]any `json:"bgp"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	sess := raw.BGP["sessions"].([]any)
	if len(sess) != 2 {
		t.Fatalf("bgp sessions: %s", r.stdout)
	}
	wantKeys := sorted("peer", "peer_port", "peer_asn", "state", "established_since", "uptime", "prefixes_sent",
		"prefixes_received", "local_address", "router_id", "flaps", "graceful_restart", "last_error")
	if got := keysOf(sess[0].(map[string]any)); !reflect.DeepEqual(got, wantKeys) {
		t.Errorf("bgp session keys %v\nwant %v", got, wantKeys)
	}
	var s Status
	_ = json.Unmarshal([]byte(r.stdout), &s)
	b := s.BGP
	if !b.Enabled || b.ASN != 65000 || b.HoldTime != "1m30s" || b.GracefulRestart != "30s" || b.Announced != 2 || b.Aggregate != "13.8.0.0/24" {
		t.Errorf("bgp %+v", b)
	}
	if p := b.Sessions[0]; p.Peer != "198.51.100.2" || p.PeerASN != 65001 || p.State != "established" || p.Uptime != "1h2m5s" ||
		p.EstablishedSince != "2025-03-01T10:00:00Z" || p.PrefixesSent != 3 || !p.GracefulRestart {
		t.Errorf("bgp session %+v", p)
	}
	if p := b.Sessions[1]; p.State != "active" || p.EstablishedSince != "" || p.Uptime != "0s" || p.LastError != "hold timer expired" || p.PeerPort != 1179 {
		t.Errorf("bgp session %+v", p)
	}
	r = ctl(t, nil, "--dataplane", addr, "dataplane", "status").expect(t, 0)
	for _, want := range []string{"AS 65000", "router id 198.51.100.1", "2 client routes and the pool 13.8.0.0/24 announced",
		"198.51.100.2 AS 65001: established for 1h2m", "3 prefixes sent", "[2001:db8::2]:1179 AS 65002: active (last down: hold timer expired)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status table lacks %q:\n%s", want, r.stdout)
		}
	}
	// The system's status has the gist.
	r = ctl(t, nil, "--controller", serve(t, newController(), nil), "--dataplane", addr, "status").expect(t, 0)
	if want := "1 of 2 sessions established, 2 client routes announced"; !strings.Contains(r.stdout, want) {
		t.Errorf("status lacks %q:\n%s", want, r.stdout)
	}
}

func TestSessionsList(t *testing.T) {
	t.Parallel()
	addr := serve(t, nil, newDataplane("dp1"))
	r := ctl(t, nil, "--dataplane", addr, "sessions", "list", "-o", "json").expect(t, 0)
	var raw []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	want := sorted("ipv4", "ipv6", "port", "session", "dataplane", "state", "connected_since", "last_heard",
		"bytes_from_client", "packets_from_client", "bytes_to_client", "packets_to_client", "send_queue")
	if len(raw) != 3 || !reflect.DeepEqual(keysOf(raw[0]), want) {
		t.Fatalf("sessions %v", raw)
	}
	var ss []Session
	_ = json.Unmarshal([]byte(r.stdout), &ss)
	wantFirst := Session{IPv4: "13.8.0.2", IPv6: "fd00:46::2", Port: 51234, Session: "s-2", State: "leased",
		ConnectedSince: "2025-03-01T10:00:00Z", LastHeard: "2025-03-01T10:05:07Z",
		Counters: Counters{BytesFromClient: 11, PacketsFromClient: 1, BytesToClient: 22, PacketsToClient: 2}, SendQueue: 3}
	if ss[0] != wantFirst || ss[1].State != "closing" || ss[2].State != "accepted" || ss[2].IPv4 != "" || ss[1].LastHeard != "" {
		t.Errorf("sessions %+v", ss)
	}
	r = ctl(t, nil, "--dataplane", addr, "sessions", "list", "-o", "yaml").expect(t, 0)
	var ys []Session
	if err := yaml.Unmarshal([]byte(r.stdout), &ys); err != nil || !reflect.DeepEqual(ys, ss) {
		t.Errorf("yaml sessions %+v %v", ys, err)
	}
	r = ctl(t, nil, "--dataplane", addr, "sessions", "list").expect(t, 0)
	for _, s := range []string{"STATE", "13.8.0.2", "fd00:46::9", "leased", "accepted", "closing"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("sessions table lacks %q:\n%s", s, r.stdout)
		}
	}
	r = ctl(t, nil, "--dataplane", serve(t, nil, &fakeDataplane{}), "sessions", "list", "-o", "json").expect(t, 0)
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("no sessions: %q", r.stdout)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	addr := serve(t, newController(), nil)
	r := ctl(t, nil, "--controller", addr, "version", "-o", "json").expect(t, 0)
	var v map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatal(err)
	}
	if v["client"] == "" || v["controller"] != "v1.2.3-test" || v["controller_address"] != addr {
		t.Errorf("version %v", v)
	}
	if _, ok := v["controller_error"]; ok {
		t.Errorf("controller_error present on success: %v", v)
	}
	build, _ := v["build"].(map[string]any)
	if !reflect.DeepEqual(keysOf(build), sorted("version", "commit", "go_version", "build_date", "platform")) ||
		!strings.HasPrefix(build["go_version"].(string), "go") || build["version"] != v["client"] {
		t.Errorf("version build %v", build)
	}
	r = ctl(t, nil, "--controller", addr, "version").expect(t, 0)
	for _, want := range []string{"Client:", "commit:", "built:", "go version:  go", "v1.2.3-test ("} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("version table lacks %q:\n%s", want, r.stdout)
		}
	}

	// The controller down is not an error for version.
	missing := "unix://" + filepath.Join(t.TempDir(), "none.sock")
	r = ctl(t, nil, "--controller", missing, "version", "-o", "yaml").expect(t, 0)
	var y Version
	if err := yaml.Unmarshal([]byte(r.stdout), &y); err != nil || y.Controller != "" || y.Client == "" ||
		!strings.Contains(y.ControllerError, "cannot reach controller at "+missing) {
		t.Errorf("version with controller down: %+v %v", y, err)
	}
	r = ctl(t, nil, "--controller", missing, "version").expect(t, 0)
	if !strings.Contains(r.stdout, "Client:") || !strings.Contains(r.stdout, "cannot reach") {
		t.Errorf("version table: %q", r.stdout)
	}
}

func freeTCPAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	missing := "unix://" + filepath.Join(t.TempDir(), "missing.sock")
	tcp := freeTCPAddr(t)

	cases := []struct {
		args   []string
		daemon string
		addr   string
		reason string
	}{
		{[]string{"--controller", missing, "clients", "list"}, "controller", missing, "no such file or directory"},
		{[]string{"--controller", missing, "clients", "get", "13.8.0.2"}, "controller", missing, "no such file or directory"},
		{[]string{"--controller", tcp, "pool", "show"}, "controller", tcp, "connection refused"},
		{[]string{"--dataplane", missing, "dataplane", "status"}, "dataplane", missing, "no such file or directory"},
		{[]string{"--dataplane", tcp, "sessions", "list"}, "dataplane", tcp, "connection refused"},
	}
	for _, c := range cases {
		start := time.Now()
		// A long timeout: failing must not wait for it.
		r := ctl(t, nil, append([]string{"--timeout", "30s"}, c.args...)...).expect(t, 3)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%v took %v", c.args, d)
		}
		want := "4over6ctl: cannot reach " + c.daemon + " at " + c.addr + ": " + c.reason + "\n"
		if r.stderr != want || r.stdout != "" {
			t.Errorf("%v:\nstderr %q\nwant   %q\nstdout %q", c.args, r.stderr, want, r.stdout)
		}

		r = ctl(t, nil, append([]string{"-o", "json"}, c.args...)...).expect(t, 3)
		var e errorOutput
		if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Code != 3 ||
			e.Error != strings.TrimSuffix(strings.TrimPrefix(want, "4over6ctl: "), "\n") {
			t.Errorf("json error %q: %v", r.stderr, err)
		}
		if strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("json error is not one line: %q", r.stderr)
		}

		r = ctl(t, nil, append([]string{"-o", "yaml"}, c.args...)...).expect(t, 3)
		var ye map[string]any
		if err := yaml.Unmarshal([]byte(r.stderr), &ye); err != nil || ye["code"] != 3 || !strings.Contains(ye["error"].(string), c.addr) {
			t.Errorf("yaml error %q: %v", r.stderr, err)
		}
	}
}

func TestDaemonErrors(t *testing.T) {
	t.Parallel()
	// Reachable but too slow: exit 1, not 3.
	slow := newController()
	slow.hang = true
	r := ctl(t, nil, "--controller", serve(t, slow, nil), "--timeout", "300ms", "pool", "show").expect(t, 1)
	if !strings.Contains(r.stderr, "did not answer within 300ms") {
		t.Errorf("slow: %q", r.stderr)
	}
	// A daemon error: exit 1 with its message.
	broken := newController()
	broken.pool = nil
	r = ctl(t, nil, "--controller", serve(t, broken, nil), "pool", "show").expect(t, 1)
	if !strings.Contains(r.stderr, "pool store is broken") {
		t.Errorf("internal: %q", r.stderr)
	}
	// The wrong daemon (a data plane where the controller should be).
	r = ctl(t, nil, "--controller", serve(t, nil, newDataplane("dp1")), "pool", "show").expect(t, 1)
	if !strings.Contains(r.stderr, "does not implement") {
		t.Errorf("unimplemented: %q", r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	addr := serve(t, newController(), newDataplane("dp1"))
	for _, args := range [][]string{
		{"--nope"},
		{"clients", "list", "--nope"},
		{"status", "--nope", "-o", "json"},
		{"-o", "xml", "pool", "show"},
		{"bogus"},
		{"clients", "bogus"},
		{"pool", "show", "extra"},
		{"--timeout", "-1s", "pool", "show"},
		{"--timeout", "soon", "pool", "show"},
		{"--controller", "no-port", "pool", "show"},
		{"--controller", "http://x:1", "clients", "list"},
		{"--dataplane", "unix://", "status"},
	} {
		r := ctl(t, nil, append([]string{"--controller", addr, "--dataplane", addr}, args...)...).expect(t, 2)
		if r.stdout != "" || r.stderr == "" {
			t.Errorf("%v: stdout %q stderr %q", args, r.stdout, r.stderr)
		}
	}
	r := ctl(t, nil, "clients", "list", "--nope").expect(t, 2)
	if !strings.Contains(r.stderr, "--nope") {
		t.Errorf("bad flag not named: %q", r.stderr)
	}
	// The error is in the format asked for, even when -o comes after the bad flag.
	r = ctl(t, nil, "clients", "list", "--nope", "-o", "json").expect(t, 2)
	var e errorOutput
	if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Code != 2 || !strings.Contains(e.Error, "--nope") {
		t.Errorf("json usage error %q: %v", r.stderr, err)
	}
	r = ctl(t, nil, "-o", "xml", "pool", "show").expect(t, 2)
	if !strings.Contains(r.stderr, `"xml"`) {
		t.Errorf("bad -o: %q", r.stderr)
	}
	r = ctl(t, nil, "clinets").expect(t, 2)
	if !strings.Contains(r.stderr, `did you mean "clients"`) {
		t.Errorf("no suggestion: %q", r.stderr)
	}
	r = ctl(t, map[string]string{"FOUROVER6_CONTROLLER": "nonsense"}, "pool", "show").expect(t, 2)
	if !strings.Contains(r.stderr, "$FOUROVER6_CONTROLLER") {
		t.Errorf("bad env address: %q", r.stderr)
	}
}

// Every command checks its own arguments: cobra's checks would return
// errors that are not usage errors (exit 1), and their text is not to be
// read.
func TestEveryCommandValidatesArgs(t *testing.T) {
	t.Parallel()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Args == nil {
			t.Errorf("%q has no Args validator", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newApp(io.Discard, io.Discard, nil).rootCommand())
}

func TestHelp(t *testing.T) {
	t.Parallel()
	r := ctl(t, nil, "--help").expect(t, 0)
	for _, s := range []string{"Exit codes", "3  daemon unreachable", "4  not found", "5  permission denied", "pki", "--controller", "FOUROVER6_DATAPLANE",
		"clients", "pool", "status", "sessions", "version", "reservations", "dns", "dataplane", "apply", "log-level",
		"several comma-separated", "6  check found", "check", "export"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("help lacks %q", s)
		}
	}
	ctl(t, nil).expect(t, 0)
	ctl(t, nil, "clients").expect(t, 0)
	ctl(t, nil, "clients", "get", "--help").expect(t, 0)
	for _, group := range []string{"clients", "pool", "reservations", "dns", "dataplane", "dataplanes", "sessions"} {
		ctl(t, nil, group).expect(t, 0)
		ctl(t, nil, group, "bogus").expect(t, 2)
	}
	// The main commands carry examples.
	for _, cmd := range [][]string{{"status"}, {"clients", "list"}, {"clients", "watch"}, {"clients", "kick"}, {"apply"},
		{"reservations", "set"}, {"dns", "set"}, {"dataplane", "drain"}, {"dataplane", "remove"}, {"pool", "set-range"}} {
		r := ctl(t, nil, append(cmd, "--help")...).expect(t, 0)
		if !strings.Contains(r.stdout, "Examples:") {
			t.Errorf("%v has no examples", cmd)
		}
	}
	if r := ctl(t, nil, "completion", "bash").expect(t, 0); !strings.Contains(r.stdout, "4over6ctl") {
		t.Error("no bash completion")
	}
}

// Addresses come from the flag, then the environment, then the default.
func TestAddressResolution(t *testing.T) {
	t.Parallel()
	ca, cb := newController(), newController()
	ca.version, cb.version = "A", "B"
	addrA, addrB := serve(t, ca, newDataplane("dpA")), serve(t, cb, newDataplane("dpB"))

	ctrlVersion := func(env map[string]string, args ...string) Version {
		t.Helper()
		r := ctl(t, env, append(args, "version", "-o", "json")...).expect(t, 0)
		var v Version
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	env := map[string]string{"FOUROVER6_CONTROLLER": addrB, "FOUROVER6_DATAPLANE": addrB}
	if v := ctrlVersion(env, "--controller", addrA); v.Controller != "A" {
		t.Errorf("flag did not win over env: %+v", v)
	}
	if v := ctrlVersion(env); v.Controller != "B" {
		t.Errorf("env not used: %+v", v)
	}
	for _, e := range []map[string]string{nil, {"FOUROVER6_CONTROLLER": ""}} {
		if v := ctrlVersion(e); v.ControllerAddress != "unix:///run/fourover6/controller.sock" {
			t.Errorf("default not used: %+v", v)
		}
	}

	dpID := func(env map[string]string, args ...string) string {
		t.Helper()
		r := ctl(t, env, append(args, "dataplane", "status", "-o", "json")...).expect(t, 0)
		var s Status
		if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
			t.Fatal(err)
		}
		return s.Dataplane
	}
	if id := dpID(env, "--dataplane", addrA); id != "dpA" {
		t.Errorf("flag did not win over env: %q", id)
	}
	if id := dpID(env); id != "dpB" {
		t.Errorf("env not used: %q", id)
	}
	if _, err := os.Stat("/run/fourover6/dataplane.sock"); os.IsNotExist(err) {
		r := ctl(t, nil, "dataplane", "status").expect(t, 3)
		if !strings.Contains(r.stderr, "at unix:///run/fourover6/dataplane.sock:") {
			t.Errorf("default dataplane not used: %q", r.stderr)
		}
	}
}

// A command dials only the daemon it needs: a broken address of the other
// one does not matter.
func TestLazyDial(t *testing.T) {
	t.Parallel()
	addr := serve(t, newController(), newDataplane("dp1"))
	ctl(t, nil, "--controller", addr, "--dataplane", "garbage", "clients", "list").expect(t, 0)
	ctl(t, map[string]string{"FOUROVER6_DATAPLANE": "garbage"}, "--controller", addr, "pool", "show").expect(t, 0)
	ctl(t, nil, "--dataplane", addr, "--controller", "garbage", "dataplane", "status").expect(t, 0)
	ctl(t, map[string]string{"FOUROVER6_CONTROLLER": "garbage"}, "--dataplane", addr, "sessions", "list").expect(t, 0)
}

func TestHelpers(t *testing.T) {
	t.Parallel()
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 3 << 20: "3.0 MiB", 5 << 30: "5.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for d, want := range map[time.Duration]string{-time.Second: "0s", 42 * time.Second: "42s", 312 * time.Second: "5m12s",
		3*time.Hour + 4*time.Minute: "3h4m", 51 * time.Hour: "2d3h"} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
	for args, want := range map[string]string{"": "table", "-o json": "json", "-ojson": "json", "-o=yaml": "yaml",
		"--output yaml": "yaml", "--output=json -o yaml": "yaml", "-- -o json": "table", "--nope --output": "table"} {
		if got := outputArg(strings.Fields(args), "table"); got != want {
			t.Errorf("outputArg(%q) = %q, want %q", args, got, want)
		}
	}
}

// A listener that accepts connections but never speaks gRPC: the connection
// never becomes ready, so running out of time means "unreachable" (3).
func TestConnectTimeout(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	r := ctl(t, nil, "--controller", l.Addr().String(), "--timeout", "300ms", "pool", "show").expect(t, 3)
	want := "4over6ctl: cannot reach controller at " + l.Addr().String() + ": "
	if !strings.HasPrefix(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("stderr %q, want prefix %q", r.stderr, want)
	}
}

func TestClientsSortByRateAndTop(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	addr := serve(t, ctrl, nil)

	r := ctl(t, nil, "--controller", addr, "clients", "list", "--sort", "rate", "-o", "json").expect(t, 0)
	var cs []Client
	if err := json.Unmarshal([]byte(r.stdout), &cs); err != nil || len(cs) != 2 {
		t.Fatalf("json: %v\n%s", err, r.stdout)
	}
	if cs[0].IPv4 != "13.8.0.10" || cs[1].IPv4 != "13.8.0.2" {
		t.Errorf("--sort rate: %s, %s; want the busy 13.8.0.10 first", cs[0].IPv4, cs[1].IPv4)
	}
	r = ctl(t, nil, "--controller", addr, "clients", "list", "--sort", "rate").expect(t, 0)
	for _, s := range []string{"FROM CLIENT/S", "TO CLIENT/S", "2.0 KiB/s (4.0 pkt/s)", "1.5 MiB/s (1000 pkt/s)", "0 B/s (0 pkt/s)"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("table lacks %q:\n%s", s, r.stdout)
		}
	}
	if strings.Index(r.stdout, "13.8.0.10") > strings.Index(r.stdout, "13.8.0.2 ") {
		t.Errorf("table not sorted by rate:\n%s", r.stdout)
	}
	ctl(t, nil, "--controller", addr, "clients", "list", "--sort", "speed").expect(t, 2)

	r = ctl(t, nil, "--controller", addr, "clients", "get", "13.8.0.10").expect(t, 0)
	if !strings.Contains(r.stdout, "Rate to client:") || !strings.Contains(r.stdout, "1.5 MiB/s") {
		t.Errorf("clients get lacks the rates:\n%s", r.stdout)
	}

	// top --once: one screen, no control sequences off a terminal.
	r = ctl(t, nil, "--controller", addr, "clients", "top", "--once").expect(t, 0)
	if strings.Contains(r.stdout, "\x1b") {
		t.Errorf("top off a terminal wrote control sequences: %q", r.stdout)
	}
	for _, s := range []string{"2 clients", "IPV4", "FROM CLIENT/S", "1.5 MiB/s"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("top --once lacks %q:\n%s", s, r.stdout)
		}
	}
	if i, j := strings.Index(r.stdout, "13.8.0.10"), strings.Index(r.stdout, "13.8.0.2 "); i < 0 || j < 0 || i > j {
		t.Errorf("top not sorted busiest first:\n%s", r.stdout)
	}
	r = ctl(t, nil, "--controller", addr, "clients", "top", "--once", "-n", "1").expect(t, 0)
	if strings.Contains(r.stdout, "13.8.0.2 ") || !strings.Contains(r.stdout, "and 1 more") {
		t.Errorf("top -n 1:\n%s", r.stdout)
	}
	r = ctl(t, nil, "--controller", addr, "clients", "top", "--once", "-o", "json").expect(t, 0)
	if err := json.Unmarshal([]byte(r.stdout), &cs); err != nil || len(cs) != 2 || cs[0].IPv4 != "13.8.0.10" {
		t.Errorf("top --once -o json: %v\n%s", err, r.stdout)
	}
	ctl(t, nil, "--controller", addr, "clients", "top", "--interval", "0s").expect(t, 2)
}
