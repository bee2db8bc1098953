package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestReservations(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	addr := serve(t, ctrl, nil)
	c := func(args ...string) result {
		t.Helper()
		return ctl(t, nil, append([]string{"--controller", addr}, args...)...)
	}

	r := c("reservations", "set", "fd00:46::2", "13.8.0.50", "-o", "json").expect(t, 0)
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || !reflect.DeepEqual(keysOf(raw), sorted("client", "ipv4", "changed")) {
		t.Fatalf("set json %q: %v", r.stdout, err)
	}
	var set ReservationSet
	_ = json.Unmarshal([]byte(r.stdout), &set)
	if set != (ReservationSet{Reservation{"fd00:46::2", "13.8.0.50"}, true}) {
		t.Errorf("set %+v", set)
	}
	// The same again: unchanged. A prefix is stored without host bits.
	r = c("reservations", "set", "fd00:46:0::2", "13.8.0.50", "-o", "yaml").expect(t, 0)
	if err := yaml.Unmarshal([]byte(r.stdout), &set); err != nil || set.Changed || set.Client != "fd00:46::2" {
		t.Errorf("set again %+v %v", set, err)
	}
	r = c("reservation", "set", "fd00:47::1234/64", "13.8.0.51").expect(t, 0)
	if r.stdout != "reservation fd00:47::/64 -> 13.8.0.51: set\n" {
		t.Errorf("set table %q", r.stdout)
	}

	r = c("reservations", "list", "-o", "json").expect(t, 0)
	var rs []Reservation
	if err := json.Unmarshal([]byte(r.stdout), &rs); err != nil {
		t.Fatal(err)
	}
	want := []Reservation{{"fd00:46::2", "13.8.0.50"}, {"fd00:47::/64", "13.8.0.51"}, {"fd00:46::99", "13.8.0.99"}}
	if !reflect.DeepEqual(rs, want) {
		t.Errorf("list %+v\nwant %+v", rs, want)
	}
	r = c("reservations", "ls", "-o", "yaml").expect(t, 0)
	var ys []Reservation
	if err := yaml.Unmarshal([]byte(r.stdout), &ys); err != nil || !reflect.DeepEqual(ys, want) {
		t.Errorf("yaml list %+v %v", ys, err)
	}
	r = c("reservations", "list").expect(t, 0)
	if !strings.Contains(r.stdout, "CLIENT") || !strings.Contains(r.stdout, "fd00:47::/64  13.8.0.51") {
		t.Errorf("list table:\n%s", r.stdout)
	}

	r = c("reservations", "delete", "fd00:47::/64", "-o", "json").expect(t, 0)
	var del ReservationDelete
	if err := json.Unmarshal([]byte(r.stdout), &del); err != nil || del != (ReservationDelete{"fd00:47::/64", true}) {
		t.Errorf("delete %q %v", r.stdout, err)
	}
	r = c("reservations", "rm", "fd00:47::/64").expect(t, 4)
	if r.stderr != "4over6ctl: no reservation for fd00:47::/64\n" {
		t.Errorf("delete again: %q", r.stderr)
	}
	c("reservations", "delete", "fd00:46::99").expect(t, 0)
	r = c("reservations", "list", "-o", "json").expect(t, 0)
	if err := json.Unmarshal([]byte(r.stdout), &rs); err != nil || len(rs) != 1 {
		t.Errorf("after deletes: %s", r.stdout)
	}

	// The controller refuses an address outside the range: its message, exit 2 (INVALID_ARGUMENT).
	r = c("reservations", "set", "fd00::9", "13.8.0.200").expect(t, 2)
	if !strings.Contains(r.stderr, "outside the client range") {
		t.Errorf("refused: %q", r.stderr)
	}
	// Taken by another client: exit 1.
	c("reservations", "set", "fd00::9", "13.8.0.50").expect(t, 1)

	before := ctrl.writeCount()
	for _, bad := range [][]string{
		{"set", "13.8.0.2", "13.8.0.50"},      // CLIENT not IPv6
		{"set", "fd00::1", "fd00::2"},         // ADDR not IPv4
		{"set", "fe80::1%eth0", "13.8.0.50"},  // zone
		{"set", "::ffff:1.2.3.4", "13.8.0.5"}, // IPv4-mapped
		{"set", "fd00::1"},
		{"delete"},
		{"delete", "banana"},
		{"list", "x"},
	} {
		r := c(append([]string{"reservations"}, bad...)...).expect(t, 2)
		if r.stdout != "" {
			t.Errorf("%v printed %q", bad, r.stdout)
		}
	}
	if ctrl.writeCount() != before {
		t.Errorf("bad arguments changed something")
	}
}

func TestDNS(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	addr := serve(t, ctrl, nil)
	c := func(args ...string) result {
		t.Helper()
		return ctl(t, nil, append([]string{"--controller", addr}, args...)...)
	}
	r := c("dns", "show", "-o", "json").expect(t, 0)
	var d DNS
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || !reflect.DeepEqual(d.Servers, []string{"202.38.120.242", "8.8.8.8", "202.106.0.20"}) {
		t.Errorf("show %q %v", r.stdout, err)
	}
	r = c("dns", "show").expect(t, 0)
	if r.stdout != "DNS:  202.38.120.242, 8.8.8.8, 202.106.0.20\n" {
		t.Errorf("show table %q", r.stdout)
	}

	r = c("dns", "set", "1.1.1.1,8.8.8.8,9.9.9.9").expect(t, 0)
	if r.stdout != "dns: 202.38.120.242,8.8.8.8,202.106.0.20 -> 1.1.1.1,8.8.8.8,9.9.9.9\n" {
		t.Errorf("set table %q", r.stdout)
	}
	r = c("dns", "set", "1.1.1.1", "8.8.8.8", "9.9.9.9", "-o", "json").expect(t, 0)
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || !reflect.DeepEqual(keysOf(raw), sorted("servers", "previous", "changed")) {
		t.Fatalf("set json %q", r.stdout)
	}
	var s DNSSet
	_ = json.Unmarshal([]byte(r.stdout), &s)
	if s.Changed || !reflect.DeepEqual(s.Servers, s.Previous) {
		t.Errorf("same servers again: %+v", s)
	}
	// Fewer than three: padded by the controller.
	r = c("dns", "set", "1.1.1.1, 8.8.4.4", "-o", "yaml").expect(t, 0)
	if err := yaml.Unmarshal([]byte(r.stdout), &s); err != nil || !s.Changed || len(s.Servers) != 3 || s.Servers[1] != "8.8.4.4" {
		t.Errorf("padded: %+v %v", s, err)
	}
	before := ctrl.writeCount()
	for _, bad := range [][]string{{}, {"1.1.1.1,2.2.2.2,3.3.3.3,4.4.4.4"}, {"1.1.1.1", "fd00::53"}, {"dns.google"}, {","}} {
		c(append([]string{"dns", "set"}, bad...)...).expect(t, 2)
	}
	if ctrl.writeCount() != before {
		t.Errorf("bad arguments changed something")
	}
	ctrl.fail = map[string]error{"SetDNS": status.Error(codes.Internal, "disk full")}
	r = c("dns", "set", "1.1.1.1").expect(t, 1)
	if !strings.Contains(r.stderr, "disk full") {
		t.Errorf("internal: %q", r.stderr)
	}
}

func TestPoolSetRange(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	addr := serve(t, ctrl, nil)
	c := func(args ...string) result {
		t.Helper()
		return ctl(t, nil, append([]string{"--controller", addr}, args...)...)
	}
	r := c("pool", "set-range", "13.8.0.2-13.8.0.200", "-o", "json").expect(t, 0)
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || !reflect.DeepEqual(keysOf(raw), sorted("changed", "previous_range", "pool")) {
		t.Fatalf("set-range json %q", r.stdout)
	}
	var out PoolRangeChange
	_ = json.Unmarshal([]byte(r.stdout), &out)
	if !out.Changed || out.PreviousRange != "13.8.0.2-13.8.0.128" || out.Pool.RangeLast != "13.8.0.200" || out.Pool.Size != 199 {
		t.Errorf("set-range %+v", out)
	}
	r = c("pool", "set-range", "13.8.0.2-13.8.0.200").expect(t, 0)
	if !strings.HasPrefix(r.stdout, "pool range: 13.8.0.2-13.8.0.200 (unchanged)\n") {
		t.Errorf("unchanged: %q", r.stdout)
	}
	r = c("pool", "set-range", "all", "-o", "yaml").expect(t, 0)
	if err := yaml.Unmarshal([]byte(r.stdout), &out); err != nil || out.Pool.RangeLast != "13.8.0.254" || out.PreviousRange != "13.8.0.2-13.8.0.200" {
		t.Errorf("all: %+v %v", out, err)
	}
	// Refused by the controller (a reservation would fall outside): exit 1.
	r = c("pool", "set-range", "13.8.0.2-13.8.0.50").expect(t, 1)
	if !strings.Contains(r.stderr, "13.8.0.99") {
		t.Errorf("refused: %q", r.stderr)
	}
	for _, bad := range []string{"13.8.0.9-13.8.0.2", "13.8.0.2", "a-b", "13.8.0.2-fd00::1", ""} {
		c("pool", "set-range", bad).expect(t, 2)
	}
	c("pool", "set-range").expect(t, 2)
}

func TestDataplanesListAndDrain(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	addr := serve(t, ctrl, nil)
	c := func(args ...string) result {
		t.Helper()
		return ctl(t, nil, append([]string{"--controller", addr}, args...)...)
	}
	dpKeys := sorted("id", "instance_id", "version", "client_listen", "api_address", "state", "sessions", "leases",
		"registered_at", "last_heartbeat")
	r := c("dataplanes", "list", "-o", "json").expect(t, 0)
	var raw []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || len(raw) != 2 || !reflect.DeepEqual(keysOf(raw[0]), dpKeys) {
		t.Fatalf("dataplanes json %q: %v", r.stdout, err)
	}
	var dps []Dataplane
	_ = json.Unmarshal([]byte(r.stdout), &dps)
	want := Dataplane{ID: "dp1", InstanceID: "i-1", Version: "v1.2.3-test", ClientListen: "[2001:db8::1]:5678",
		APIAddress: "unix:///run/fourover6/dataplane.sock", State: "up", Sessions: 3, Leases: 2,
		RegisteredAt: "2025-03-01T10:00:00Z", LastHeartbeat: "2025-03-01T10:05:07Z"}
	if dps[0] != want || dps[1].ID != "dp2" || dps[1].State != "down" {
		t.Errorf("dataplanes (sorted by id) %+v", dps)
	}
	r = c("dataplane", "list", "-o", "yaml").expect(t, 0)
	var ydps []Dataplane
	if err := yaml.Unmarshal([]byte(r.stdout), &ydps); err != nil || !reflect.DeepEqual(ydps, dps) {
		t.Errorf("yaml dataplanes %+v %v", ydps, err)
	}
	r = c("dp", "ls").expect(t, 0)
	for _, s := range []string{"LAST HEARTBEAT", "dp1", "UP", "DOWN", "[2001:db8::1]:5678", "ago"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("table lacks %q:\n%s", s, r.stdout)
		}
	}

	r = c("dataplane", "drain", "dp1", "-o", "json").expect(t, 0)
	var d Dataplane
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || d.ID != "dp1" || d.State != "draining" {
		t.Errorf("drain %q %v", r.stdout, err)
	}
	r = c("dataplane", "drain", "dp1").expect(t, 0)
	if !strings.Contains(r.stdout, "dp1: draining, accepting no new clients; 3 sessions stay") {
		t.Errorf("drain table %q", r.stdout)
	}
	r = c("dataplane", "drain", "dp1", "--undo", "-o", "yaml").expect(t, 0)
	if err := yaml.Unmarshal([]byte(r.stdout), &d); err != nil || d.State != "up" {
		t.Errorf("undo %q %v", r.stdout, err)
	}
	c("dataplane", "drain", "dp1").expect(t, 0)
	r = c("dataplane", "undrain", "dp1").expect(t, 0)
	if !strings.Contains(r.stdout, "dp1: up, accepting new clients") {
		t.Errorf("undrain %q", r.stdout)
	}
	r = c("dataplane", "drain", "dp9", "-o", "json").expect(t, 4)
	var e errorOutput
	if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Code != 4 || !strings.Contains(e.Error, `"dp9"`) {
		t.Errorf("unknown id: %q", r.stderr)
	}
	c("dataplane", "drain").expect(t, 2)
	c("dataplane", "undrain", "a", "b").expect(t, 2)

	// remove: refused for an up data plane (exit 1, the controller's
	// reason), done for a down one and, with --force, for an up one.
	r = c("dataplane", "remove", "dp1").expect(t, 1)
	if !strings.Contains(r.stderr, "data plane dp1 is up") || !strings.Contains(r.stderr, "--force") {
		t.Errorf("remove of an up data plane: %q", r.stderr)
	}
	r = c("dataplane", "remove", "dp1", "-o", "json").expect(t, 1)
	if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Code != 1 || !strings.Contains(e.Error, "controller at "+addr+": refused: data plane dp1 is up") {
		t.Errorf("remove error as JSON: %q", r.stderr)
	}
	r = c("dataplane", "remove", "dp2", "-o", "json").expect(t, 0)
	var rm map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rm); err != nil || !reflect.DeepEqual(keysOf(rm), sorted("id", "released", "forced", "dataplane")) {
		t.Fatalf("remove json %q: %v", r.stdout, err)
	}
	var removed DataplaneRemove
	_ = json.Unmarshal([]byte(r.stdout), &removed)
	if removed.ID != "dp2" || removed.Forced || removed.Dataplane.State != "down" || removed.Released != 1 {
		t.Errorf("remove %+v", removed)
	}
	c("dataplane", "remove", "dp2").expect(t, 4)
	r = c("dp", "rm", "dp1", "--force").expect(t, 0)
	if !strings.Contains(r.stdout, "Removed data plane dp1 (it was up); released 2 leases.") {
		t.Errorf("forced remove table %q", r.stdout)
	}
	r = c("dataplanes", "list", "-o", "json").expect(t, 0)
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("after removing both: %q", r.stdout)
	}
	c("dataplane", "remove").expect(t, 2)

	r = ctl(t, nil, "--controller", serve(t, &fakeController{}, nil), "dataplanes", "list", "-o", "json").expect(t, 0)
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("no data planes: %q", r.stdout)
	}
}

func TestLogLevel(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	dp := newDataplane("dp1")
	caddr, daddr := serve(t, ctrl, nil), serve(t, nil, dp)

	r := ctl(t, nil, "--controller", caddr, "log-level", "DEBUG", "-o", "json").expect(t, 0)
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || !reflect.DeepEqual(keysOf(raw), sorted("daemon", "address", "level", "previous")) {
		t.Fatalf("log-level json %q", r.stdout)
	}
	var l LogLevel
	_ = json.Unmarshal([]byte(r.stdout), &l)
	if l != (LogLevel{Daemon: "controller", Address: caddr, Level: "debug", Previous: "info"}) {
		t.Errorf("controller log level %+v", l)
	}
	r = ctl(t, nil, "--controller", caddr, "log-level", "warning").expect(t, 0)
	if r.stdout != "controller log level: debug -> warn\n" {
		t.Errorf("table %q", r.stdout)
	}

	r = ctl(t, nil, "--dataplane", daddr, "dataplane", "log-level", "error", "-o", "yaml").expect(t, 0)
	if err := yaml.Unmarshal([]byte(r.stdout), &l); err != nil || l != (LogLevel{Daemon: "dataplane", Address: daddr, Level: "error", Previous: "info"}) {
		t.Errorf("data plane log level %+v %v", l, err)
	}
	dp.mu.Lock()
	if dp.logLevel != "error" {
		t.Errorf("data plane level %q", dp.logLevel)
	}
	dp.mu.Unlock()
	for _, args := range [][]string{{"log-level", "loud"}, {"log-level"}, {"dataplane", "log-level", "trace"}, {"log-level", "info", "x"}} {
		r := ctl(t, nil, append([]string{"--controller", caddr, "--dataplane", daddr}, args...)...).expect(t, 2)
		if !strings.Contains(r.stderr, "LEVEL") {
			t.Errorf("%v: %q", args, r.stderr)
		}
	}
}

func TestSessionsKick(t *testing.T) {
	t.Parallel()
	dp := newDataplane("dp1")
	addr := serve(t, nil, dp)
	r := ctl(t, nil, "--dataplane", addr, "sessions", "kick", "13.8.0.2", "-o", "json").expect(t, 0)
	var k SessionKick
	if err := json.Unmarshal([]byte(r.stdout), &k); err != nil || k != (SessionKick{IPv4: "13.8.0.2", Session: "s-2"}) {
		t.Errorf("kick by address %q %v", r.stdout, err)
	}
	r = ctl(t, nil, "--dataplane", addr, "sessions", "kick", "s-9").expect(t, 0)
	if r.stdout != "Closed session s-9 (-).\n" {
		t.Errorf("kick by session %q", r.stdout)
	}
	ctl(t, nil, "--dataplane", addr, "sessions", "kick", "s-77").expect(t, 4)
	ctl(t, nil, "--dataplane", addr, "sessions", "kick", "fd00::1").expect(t, 2)
}
