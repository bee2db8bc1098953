package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// healthyController is a controller check finds nothing wrong with.
func healthyController() *fakeController {
	c := newController()
	for _, d := range c.dataplanes {
		d.State = cpv1.Dataplane_STATE_UP
	}
	return c
}

func TestCheckHealthy(t *testing.T) {
	t.Parallel()
	addr := serve(t, healthyController(), nil)
	r := ctl(t, nil, "--controller", addr, "check").expect(t, 0)
	if !strings.HasPrefix(r.stdout, "OK: controller ctl-a leads, store ok, 2 of 2 data planes up, pool 2.4% full (124 free)") || r.stderr != "" {
		t.Errorf("healthy check: stdout %q stderr %q", r.stdout, r.stderr)
	}
	r = ctl(t, nil, "--controller", addr, "check", "-o", "json").expect(t, 0)
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || !reflect.DeepEqual(keysOf(raw), sorted("ok", "summary", "controller", "problems")) {
		t.Fatalf("check -o json: %v %v", err, raw)
	}
	var c Check
	_ = json.Unmarshal([]byte(r.stdout), &c)
	if !c.OK || len(c.Problems) != 0 || c.Problems == nil || c.Controller != addr {
		t.Errorf("healthy check JSON: %+v", c)
	}
	// A draining data plane is healthy.
	ctrl := healthyController()
	ctrl.dataplanes[0].State = cpv1.Dataplane_STATE_DRAINING
	ctl(t, nil, "--controller", serve(t, ctrl, nil), "check").expect(t, 0)
}

// Each problem is one line and the exit code is 6, whatever the problems.
func TestCheckProblems(t *testing.T) {
	t.Parallel()
	ctrl := newController() // dp2 is down
	ctrl.dataplanes = append(ctrl.dataplanes, &cpv1.Dataplane{DataplaneId: "dp3", State: cpv1.Dataplane_STATE_STOPPED})
	ctrl.storeError = "the last store write (lease at 2025-03-01T10:00:00Z) failed: disk full"
	ctrl.pool.Free, ctrl.pool.Leased = 10, 117
	addr := serve(t, ctrl, nil)
	r := ctl(t, nil, "--controller", addr, "check").expect(t, exitCheckFailed)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	want := []string{
		"PROBLEM store: store bbolt:/var/lib/fourover6/controller.db is failing: the last store write (lease at 2025-03-01T10:00:00Z) failed: disk full",
		"PROBLEM dataplane: data plane dp2 is down",
		"PROBLEM dataplane: data plane dp3 is stopped",
		"PROBLEM pool: pool 13.8.0.0/24 is 92.1% full: 117 of 127 addresses leased or reserved, 10 free (--pool-warn 90%)",
	}
	if len(lines) != len(want) {
		t.Fatalf("want %d lines, got:\n%s", len(want), r.stdout)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d: %q, want %q...", i, lines[i], w)
		}
	}
	if r.stderr != "" {
		t.Errorf("check wrote to stderr: %q", r.stderr)
	}
	// A higher threshold (or 0) clears the pool problem only.
	for _, warn := range []string{"95%", "95", "0"} {
		r = ctl(t, nil, "--controller", addr, "check", "--pool-warn", warn, "-o", "json").expect(t, exitCheckFailed)
		var c Check
		if err := json.Unmarshal([]byte(r.stdout), &c); err != nil || c.OK || len(c.Problems) != 3 || c.Summary != "3 problems" {
			t.Errorf("--pool-warn %s: %v %+v", warn, err, c)
		}
		for _, p := range c.Problems {
			if p.Check == "pool" {
				t.Errorf("--pool-warn %s: %+v", warn, p)
			}
		}
	}
	r = ctl(t, nil, "--controller", addr, "check", "-o", "json").expect(t, exitCheckFailed)
	var c Check
	_ = json.Unmarshal([]byte(r.stdout), &c)
	got := []string{}
	for _, p := range c.Problems {
		got = append(got, p.Check+"/"+p.Subject)
	}
	if !reflect.DeepEqual(got, []string{"store/bbolt:/var/lib/fourover6/controller.db", "dataplane/dp2", "dataplane/dp3", "pool/13.8.0.0/24"}) {
		t.Errorf("problems %v", got)
	}
	for _, bad := range []string{"101", "-1", "ninety", "90%%"} {
		ctl(t, nil, "--controller", addr, "check", "--pool-warn", bad).expect(t, exitUsage)
	}

	// No data plane at all.
	empty := healthyController()
	empty.dataplanes = nil
	r = ctl(t, nil, "--controller", serve(t, empty, nil), "check").expect(t, exitCheckFailed)
	if strings.TrimSpace(r.stdout) != "PROBLEM dataplane: no data plane is registered: clients have nowhere to connect" {
		t.Errorf("no data planes: %q", r.stdout)
	}
}

func TestCheckController(t *testing.T) {
	t.Parallel()
	// Unreachable: one line, exit 6 (not 3: check's answer is "unhealthy").
	missing := missingAddr(t)
	r := ctl(t, nil, "--controller", missing, "check").expect(t, exitCheckFailed)
	if !strings.HasPrefix(r.stdout, "PROBLEM controller: cannot reach controller at "+missing) || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("unreachable: %q", r.stdout)
	}
	r = ctl(t, nil, "--controller", missing, "check", "-o", "json").expect(t, exitCheckFailed)
	var c Check
	if err := json.Unmarshal([]byte(r.stdout), &c); err != nil || c.OK || len(c.Problems) != 1 || c.Problems[0].Check != "controller" || c.Controller != "" {
		t.Errorf("unreachable JSON: %v %+v", err, c)
	}
	// A standby that knows no leader, and one that does.
	standby := healthyController()
	standby.leader, standby.notLeader = false, true
	r = ctl(t, nil, "--controller", serve(t, standby, nil), "check").expect(t, exitCheckFailed)
	if !strings.Contains(r.stdout, "PROBLEM leader: controller ctl-a at ") || !strings.Contains(r.stdout, "the leader is ctl-c") {
		t.Errorf("standby: %q", r.stdout)
	}
	// Several addresses, the leader among them: healthy.
	ctl(t, nil, "--controller", serve(t, standby, nil)+","+serve(t, healthyController(), nil), "check").expect(t, 0)
}

// export prints what apply takes: applied back, nothing changes.
func TestExportRoundTrip(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	ctrl.reservations["fd00:47::/64"] = "13.8.0.51"
	addr := serve(t, ctrl, nil)
	r := ctl(t, nil, "--controller", addr, "export").expect(t, 0)
	for _, want := range []string{"# fourover6 settings exported from the controller at " + addr, "range: 13.8.0.2-13.8.0.128",
		"- 202.38.120.242", "client: fd00:47::/64", "ipv4: 13.8.0.51", "prune: true"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("export lacks %q:\n%s", want, r.stdout)
		}
	}
	file := filepath.Join(t.TempDir(), "exported.yaml")
	if err := os.WriteFile(file, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	writes := ctrl.writeCount()
	r = ctl(t, nil, "--controller", addr, "apply", "-f", file, "--dry-run").expect(t, 0)
	if strings.TrimSpace(r.stdout) != "no changes" {
		t.Errorf("apply of the export: %q", r.stdout)
	}
	ctl(t, nil, "--controller", addr, "apply", "-f", file).expect(t, 0)
	if ctrl.writeCount() != writes {
		t.Errorf("applying the export changed something")
	}
	// JSON is YAML: the JSON export applies too.
	r = ctl(t, nil, "--controller", addr, "export", "-o", "json").expect(t, 0)
	var ex map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &ex); err != nil || !reflect.DeepEqual(keysOf(ex), sorted("pool", "dns", "reservations", "prune")) {
		t.Fatalf("export -o json: %v %v", err, ex)
	}
	if err := os.WriteFile(file, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	r = ctl(t, nil, "--controller", addr, "apply", "-f", file, "--dry-run", "-o", "json").expect(t, 0)
	var res ApplyResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || len(res.Changes) != 0 {
		t.Errorf("apply of the JSON export: %v %+v", err, res)
	}
	// Applied elsewhere, it makes that controller match: a reservation
	// the other lacks is created, one it has extra is pruned.
	other := newController()
	other.reservations = map[string]string{"fd00:48::1": "13.8.0.60"}
	r = ctl(t, nil, "--controller", serve(t, other, nil), "apply", "-f", file, "--dry-run").expect(t, 0)
	for _, want := range []string{"reservation fd00:48::1 -> 13.8.0.60: deleted", "reservation fd00:47::/64 -> 13.8.0.51: created", "reservation fd00:46::99 -> 13.8.0.99: created"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("apply elsewhere lacks %q:\n%s", want, r.stdout)
		}
	}
}

// reservations list says which reservation is in use, by which client, and
// its output applies as it is.
func TestReservationsInUse(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	ctrl.reservations["fd00:46::2"] = "13.8.0.2" // held by the client s-2
	addr := serve(t, ctrl, nil)
	r := ctl(t, nil, "--controller", addr, "reservations", "list", "-o", "json").expect(t, 0)
	var raw []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || len(raw) != 2 || !reflect.DeepEqual(keysOf(raw[0]), sorted("client", "ipv4", "in_use", "holder")) {
		t.Fatalf("reservations list: %v %v", err, raw)
	}
	var rs []ReservationStatus
	_ = json.Unmarshal([]byte(r.stdout), &rs)
	if !rs[0].InUse || rs[0].IPv4 != "13.8.0.2" || rs[0].Holder == nil || *rs[0].Holder != (ReservationHolder{IPv6: "fd00:46::2", Port: 51234, Dataplane: "dp1", Session: "s-2"}) {
		t.Errorf("in use: %+v %+v", rs[0], rs[0].Holder)
	}
	if rs[1].InUse || rs[1].Holder != nil || raw[1]["holder"] != nil {
		t.Errorf("idle: %+v", rs[1])
	}
	r = ctl(t, nil, "--controller", addr, "reservations", "list").expect(t, 0)
	for _, want := range []string{"IN USE BY", "fd00:46::2 port 51234 on dp1", "- (idle)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("table lacks %q:\n%s", want, r.stdout)
		}
	}
	// The YAML list, under reservations:, is an apply file.
	r = ctl(t, nil, "--controller", addr, "reservations", "list", "-o", "yaml").expect(t, 0)
	file := filepath.Join(t.TempDir(), "r.yaml")
	body := "reservations:\n" + indent(r.stdout, "  ")
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	r = ctl(t, nil, "--controller", addr, "apply", "-f", file, "--dry-run").expect(t, 0)
	if strings.TrimSpace(r.stdout) != "no changes" {
		t.Errorf("apply of reservations list -o yaml:\n%s\n%s", body, r.stdout)
	}
	// pool show counts it as reserved (in use) and as leased.
	r = ctl(t, nil, "--controller", addr, "pool", "show").expect(t, 0)
	if !strings.Contains(r.stdout, "2 reserved (1 in use)") {
		t.Errorf("pool show:\n%s", r.stdout)
	}
}

func indent(s, by string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = by + l
		}
	}
	return strings.Join(lines, "")
}

// FuzzPercentFlag: --pool-warn never panics and keeps only 0 to 100.
func FuzzPercentFlag(f *testing.F) {
	for _, s := range []string{"90%", "90", "92.5", "0", "100%", "101", "-1", "NaN", "1e2", " 50 % ", "%", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p := percentFlag{v: defaultPoolWarn}
		if err := p.Set(s); err != nil {
			if p.v != defaultPoolWarn {
				t.Fatalf("%q: refused but changed to %v", s, p.v)
			}
			return
		}
		if !(p.v >= 0 && p.v <= 100) {
			t.Fatalf("%q accepted as %v", s, p.v)
		}
	})
}

// FuzzParseClientAddr: clients get's ADDR is an IPv4 or a plain IPv6
// address, or a usage error; never a panic.
func FuzzParseClientAddr(f *testing.F) {
	for _, s := range []string{"13.8.0.2", "fd00:46::2", "::ffff:13.8.0.2", "fe80::1%eth0", "fd00::/64", "banana", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseClientAddr(s)
		if err != nil {
			if asCLIError(err).code != exitUsage {
				t.Fatalf("%q: %v is not a usage error", s, err)
			}
			return
		}
		if !a.Is4() && (!a.Is6() || a.Is4In6() || a.Zone() != "") {
			t.Fatalf("%q accepted as %v", s, a)
		}
	})
}
