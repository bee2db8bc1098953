package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestSystemStatus(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	caddr, daddr := serve(t, ctrl, nil), serve(t, nil, newDataplane("dp1"))

	r := ctl(t, nil, "--controller", caddr, "--dataplane", daddr, "status", "-o", "json").expect(t, 0)
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	if got := keysOf(raw); !reflect.DeepEqual(got, sorted("controller", "pool", "dataplanes", "dataplane", "errors")) {
		t.Errorf("status keys %v", got)
	}
	if got := keysOf(raw["controller"].(map[string]any)); !reflect.DeepEqual(got,
		sorted("address", "id", "version", "store", "leader", "leader_id", "started_at", "store_error")) {
		t.Errorf("controller keys %v", got)
	}
	if e, ok := raw["errors"].([]any); !ok || len(e) != 0 {
		t.Errorf("errors %v, want []", raw["errors"])
	}
	var s SystemStatus
	_ = json.Unmarshal([]byte(r.stdout), &s)
	wantCtl := ControllerStatus{Address: caddr, ID: "ctl-a", Version: "v1.2.3-test", Store: "bbolt:/var/lib/fourover6/controller.db",
		Leader: true, LeaderID: "ctl-a", StartedAt: "2025-03-01T10:00:00Z"}
	if s.Controller == nil || *s.Controller != wantCtl {
		t.Errorf("controller %+v", s.Controller)
	}
	if s.Pool == nil || s.Pool.Leased != 2 || s.Pool.Prefix != "13.8.0.0/24" {
		t.Errorf("pool %+v", s.Pool)
	}
	if len(s.Dataplanes) != 2 || s.Dataplanes[0].ID != "dp1" {
		t.Errorf("dataplanes %+v", s.Dataplanes)
	}
	if s.Dataplane == nil || s.Dataplane.Dataplane != "dp1" || s.Dataplane.MTU != 1500 {
		t.Errorf("local data plane %+v", s.Dataplane)
	}
	r = ctl(t, nil, "--controller", caddr, "--dataplane", daddr, "status", "-o", "yaml").expect(t, 0)
	var ys SystemStatus
	if err := yaml.Unmarshal([]byte(r.stdout), &ys); err != nil || !reflect.DeepEqual(ys, s) {
		t.Errorf("yaml status %+v %v", ys, err)
	}
	r = ctl(t, nil, "--controller", caddr, "--dataplane", daddr, "status").expect(t, 0)
	for _, want := range []string{"ctl-a (leader), version v1.2.3-test", "bbolt:", "2 leased, 1 reserved (0 in use), 124 free of 127",
		"LAST HEARTBEAT", "dp2", "DOWN", "Local data plane:", "3 open, 2 leased", "spoofed_source 5"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status table lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "Problems") || strings.Contains(r.stdout, "FAILING") {
		t.Errorf("problems reported when all is well:\n%s", r.stdout)
	}
	// A failing store shows on the Store line.
	failing := newController()
	failing.storeError = "disk full"
	r = ctl(t, nil, "--controller", serve(t, failing, nil), "--dataplane", daddr, "status").expect(t, 0)
	if !strings.Contains(r.stdout, "bbolt:/var/lib/fourover6/controller.db (FAILING: disk full)") {
		t.Errorf("status with a failing store:\n%s", r.stdout)
	}
}

func TestSystemStatusPartial(t *testing.T) {
	t.Parallel()
	caddr, daddr := serve(t, newController(), nil), serve(t, nil, newDataplane("dp1"))
	missing := missingAddr(t)

	// Only the controller: exit 0, dataplane null, one error.
	r := ctl(t, nil, "--controller", caddr, "--dataplane", missing, "status", "-o", "json").expect(t, 0)
	if !strings.Contains(r.stdout, `"dataplane": null`) {
		t.Errorf("dataplane not null:\n%s", r.stdout)
	}
	var s SystemStatus
	_ = json.Unmarshal([]byte(r.stdout), &s)
	wantErr := StatusError{Daemon: "dataplane", Address: missing, Error: "cannot reach dataplane at " + missing + ": no such file or directory", Code: 3}
	if s.Controller == nil || s.Pool == nil || len(s.Errors) != 1 || s.Errors[0] != wantErr {
		t.Errorf("controller only: %+v", s)
	}
	r = ctl(t, nil, "--controller", caddr, "--dataplane", missing, "status").expect(t, 0)
	if !strings.Contains(r.stdout, "Local data plane:  none answered") || !strings.Contains(r.stdout, "Problems:\n  cannot reach dataplane at "+missing) {
		t.Errorf("table:\n%s", r.stdout)
	}

	// Only the data plane (the default controller socket or a missing one).
	r = ctl(t, nil, "--controller", missing, "--dataplane", daddr, "status", "-o", "yaml").expect(t, 0)
	s = SystemStatus{}
	if err := yaml.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatal(err)
	}
	if s.Controller != nil || s.Pool != nil || s.Dataplanes != nil || s.Dataplane == nil || len(s.Errors) != 1 ||
		s.Errors[0].Daemon != "controller" || s.Errors[0].Code != 3 {
		t.Errorf("data plane only: %+v", s)
	}
	r = ctl(t, nil, "--controller", missing, "--dataplane", daddr, "status").expect(t, 0)
	if !strings.Contains(r.stdout, "Controller:  unknown") || !strings.Contains(r.stdout, "cannot reach controller at "+missing) {
		t.Errorf("table:\n%s", r.stdout)
	}

	// A controller that answers but fails a part: exit 0, the part null.
	broken := newController()
	broken.fail = map[string]error{"ListDataplanes": status.Error(codes.Unimplemented, "not yet")}
	r = ctl(t, nil, "--controller", serve(t, broken, nil), "--dataplane", daddr, "status", "-o", "json").expect(t, 0)
	s = SystemStatus{}
	_ = json.Unmarshal([]byte(r.stdout), &s)
	if s.Controller == nil || s.Dataplanes != nil || len(s.Errors) != 1 || s.Errors[0].Code != 1 ||
		!strings.Contains(s.Errors[0].Error, "does not implement") || !strings.Contains(r.stdout, `"dataplanes": null`) {
		t.Errorf("partial controller: %+v\n%s", s, r.stdout)
	}

	// Nothing answers: exit 3, both named.
	r = ctl(t, nil, "--controller", missing, "--dataplane", missing, "status", "-o", "json").expect(t, 3)
	var e errorOutput
	if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Code != 3 || r.stdout != "" ||
		!strings.Contains(e.Error, "cannot reach controller at ") || !strings.Contains(e.Error, "cannot reach dataplane at ") {
		t.Errorf("nothing reachable: %q %q", r.stdout, r.stderr)
	}
}

// Several controller addresses: the first unreachable, the second a
// follower, the third the leader: the leader is used.
func TestSeveralControllers(t *testing.T) {
	t.Parallel()
	follower, leader := newController(), newController()
	follower.id, follower.leader, follower.notLeader, follower.version = "ctl-b", false, true, "B"
	leader.id, leader.version = "ctl-c", "C"
	missing, faddr, laddr := missingAddr(t), serve(t, follower, nil), serve(t, leader, nil)
	list := missing + "," + faddr + "," + laddr

	r := ctl(t, nil, "--controller", list, "pool", "show", "-o", "json").expect(t, 0)
	var p Pool
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil || p.Prefix != "13.8.0.0/24" {
		t.Errorf("pool %q", r.stdout)
	}
	// All are asked at once; the follower's answer may be cut short by the leader's.
	if follower.count("GetPool") != 0 || leader.count("GetPool") != 1 || follower.count("GetStatus") > 1 {
		t.Errorf("calls: follower GetPool %d GetStatus %d, leader GetPool %d",
			follower.count("GetPool"), follower.count("GetStatus"), leader.count("GetPool"))
	}
	// The environment may hold the list too (spaces allowed); version names the one used.
	r = ctl(t, map[string]string{"FOUROVER6_CONTROLLER": missing + ", " + faddr + " ," + laddr}, "version", "-o", "json").expect(t, 0)
	var v Version
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.Controller != "C" || v.ControllerAddress != laddr {
		t.Errorf("version %+v", v)
	}
	// Streams too.
	r = ctl(t, nil, "--controller", list, "clients", "list", "-o", "json").expect(t, 0)
	var cs []Client
	if err := json.Unmarshal([]byte(r.stdout), &cs); err != nil || len(cs) != 2 {
		t.Errorf("clients %q", r.stdout)
	}
	r = ctl(t, nil, "--controller", list, "status", "--dataplane", missing, "-o", "json").expect(t, 0)
	var s SystemStatus
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || s.Controller == nil || s.Controller.ID != "ctl-c" || s.Controller.Address != laddr {
		t.Errorf("status controller %+v", s.Controller)
	}
}

// A controller that claims to lead but answers "not the leader" (leadership
// just moved): the request moves on to the leader, for unary calls and
// streams alike. The real leader answers the leadership question late, so
// the stale claim is the one believed first.
func TestControllerFailover(t *testing.T) {
	t.Parallel()
	stale, leader := newController(), newController()
	stale.leader, stale.notLeader, stale.stale, stale.version = false, true, true, "stale"
	leader.version, leader.statusDelay = "real", 300*time.Millisecond
	saddr, laddr := serve(t, stale, nil), serve(t, leader, nil)
	list := saddr + "," + laddr

	ctl(t, nil, "--controller", list, "dns", "set", "1.1.1.1,8.8.8.8,9.9.9.9").expect(t, 0)
	if stale.count("GetDNS") != 1 || leader.count("SetDNS") != 1 || leader.writeCount() != 1 {
		t.Errorf("calls: stale GetDNS %d, leader SetDNS %d writes %d", stale.count("GetDNS"), leader.count("SetDNS"), leader.writeCount())
	}
	stale.claim(true)
	r := ctl(t, nil, "--controller", list, "reservations", "list", "-o", "json").expect(t, 0)
	if stale.count("ListReservations") != 1 || leader.count("ListReservations") != 1 || !strings.Contains(r.stdout, "fd00:46::99") {
		t.Errorf("stream failover: %q", r.stdout)
	}

	// Only followers: exit 1 once the time is up, each address explained.
	missing := missingAddr(t)
	r = ctl(t, nil, "--controller", saddr+","+missing, "--timeout", "1s", "pool", "show").expect(t, 1)
	want := "4over6ctl: no usable controller (none is the leader): " + saddr + ": not the leader (leader is ctl-c); " +
		missing + ": no such file or directory\n"
	if r.stderr != want {
		t.Errorf("followers only:\n got %q\nwant %q", r.stderr, want)
	}
	// One address, a follower: its refusal with a hint.
	r = ctl(t, nil, "--controller", saddr, "pool", "show").expect(t, 1)
	if !strings.Contains(r.stderr, "is not the leader (the leader is ctl-c)") || !strings.Contains(r.stderr, "--controller a,b,c") {
		t.Errorf("single follower: %q", r.stderr)
	}
	// A follower that serves reads is used when no leader answers.
	reader := newController()
	reader.leader = false
	r = ctl(t, nil, "--controller", missing+","+serve(t, reader, nil), "pool", "show", "-o", "json").expect(t, 0)
	if reader.count("GetPool") != 1 {
		t.Errorf("reading follower not used")
	}
	// None reachable: exit 3, every address named.
	missing2 := missingAddr(t)
	r = ctl(t, nil, "--controller", missing+","+missing2, "clients", "list").expect(t, 3)
	want = "4over6ctl: cannot reach controller at any of 2 addresses: " + missing + ": no such file or directory; " +
		missing2 + ": no such file or directory\n"
	if r.stderr != want {
		t.Errorf("none reachable:\n got %q\nwant %q", r.stderr, want)
	}
	// A data plane takes one address.
	r = ctl(t, nil, "--dataplane", missing+","+missing2, "sessions", "list").expect(t, 2)
	if !strings.Contains(r.stderr, "2 addresses given") {
		t.Errorf("two data planes: %q", r.stderr)
	}
	ctl(t, nil, "--controller", saddr+",nonsense", "pool", "show").expect(t, 2)
	ctl(t, nil, "--controller", ",", "pool", "show").expect(t, 2)
}

// Every command that talks to a daemon reports it unreachable the same way.
func TestUnreachableAllCommands(t *testing.T) {
	t.Parallel()
	missing := missingAddr(t)
	file := writeFile(t, "apply.yaml", "dns: [1.1.1.1]\n")
	for _, c := range []struct {
		daemon string
		args   []string
	}{
		{"controller", []string{"clients", "kick", "13.8.0.2"}},
		{"controller", []string{"clients", "watch"}},
		{"controller", []string{"reservations", "list"}},
		{"controller", []string{"reservations", "set", "fd00::1", "13.8.0.5"}},
		{"controller", []string{"reservations", "delete", "fd00::1"}},
		{"controller", []string{"dns", "show"}},
		{"controller", []string{"dns", "set", "1.1.1.1"}},
		{"controller", []string{"pool", "set-range", "all"}},
		{"controller", []string{"dataplanes", "list"}},
		{"controller", []string{"dataplane", "drain", "dp1"}},
		{"controller", []string{"dataplane", "undrain", "dp1"}},
		{"controller", []string{"dataplane", "remove", "dp1"}},
		{"controller", []string{"log-level", "debug"}},
		{"controller", []string{"apply", "-f", file}},
		{"dataplane", []string{"dataplane", "log-level", "debug"}},
		{"dataplane", []string{"dataplane", "status"}},
		{"dataplane", []string{"sessions", "kick", "s-1"}},
	} {
		// Each command gets only its daemon's flag: on clients watch, --dataplane is a filter.
		args := append([]string{"--" + c.daemon, missing}, c.args...)
		r := ctl(t, nil, args...).expect(t, 3)
		want := "4over6ctl: cannot reach " + c.daemon + " at " + missing + ": no such file or directory\n"
		if r.stderr != want || r.stdout != "" {
			t.Errorf("%v:\nstderr %q\nwant   %q\nstdout %q", c.args, r.stderr, want, r.stdout)
		}
		r = ctl(t, nil, append(args, "-o", "json")...).expect(t, 3)
		var e errorOutput
		if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Code != 3 {
			t.Errorf("%v json: %q", c.args, r.stderr)
		}
	}
}
