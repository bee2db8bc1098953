package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

const applyExample = `# fourover6 provisioning
pool:
  range: 13.8.0.2-13.8.0.200
dns: [1.1.1.1, 8.8.8.8]        # the controller pads to three
reservations:
  - client: fd00:46::2
    ipv4: 13.8.0.50
  - client: fd00:47::1/64      # stored as fd00:47::/64
    ipv4: 13.8.0.51
  - client: fd00:46::99
    ipv4: 13.8.0.150           # inside the new range only
prune: true
`

func applyController() *fakeController {
	ctrl := newController()
	ctrl.reservations["fd00:48::1"] = "13.8.0.60" // not in the file: pruned
	return ctrl
}

func TestApplyTwice(t *testing.T) {
	t.Parallel()
	ctrl := applyController()
	addr := serve(t, ctrl, nil)
	file := writeFile(t, "fourover6.yaml", applyExample)

	r := ctl(t, nil, "--controller", addr, "apply", "-f", file).expect(t, 0)
	want := `reservation fd00:48::1 -> 13.8.0.60: deleted
pool range: 13.8.0.2-13.8.0.128 -> 13.8.0.2-13.8.0.200
reservation fd00:46::2 -> 13.8.0.50: created
reservation fd00:47::/64 -> 13.8.0.51: created
reservation fd00:46::99 -> 13.8.0.150: updated (was 13.8.0.99)
dns: 202.38.120.242,8.8.8.8,202.106.0.20 -> 1.1.1.1,8.8.8.8
`
	if r.stdout != want {
		t.Errorf("first apply:\n%s\nwant:\n%s", r.stdout, want)
	}
	ctrl.mu.Lock()
	wantRes := map[string]string{"fd00:46::2": "13.8.0.50", "fd00:47::/64": "13.8.0.51", "fd00:46::99": "13.8.0.150"}
	if !reflect.DeepEqual(ctrl.reservations, wantRes) || ctrl.pool.RangeLast != "13.8.0.200" ||
		!reflect.DeepEqual(ctrl.dns, []string{"1.1.1.1", "8.8.8.8", "9.9.9.9"}) {
		t.Errorf("state after apply: %v %s %v", ctrl.reservations, ctrl.pool.RangeLast, ctrl.dns)
	}
	ctrl.mu.Unlock()
	writes := ctrl.writeCount()

	// The second time: nothing to do, in every format.
	r = ctl(t, nil, "--controller", addr, "apply", "-f", file).expect(t, 0)
	if r.stdout != "no changes\n" {
		t.Errorf("second apply: %q", r.stdout)
	}
	r = ctl(t, nil, "--controller", addr, "apply", "-f", file, "-o", "json").expect(t, 0)
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || !reflect.DeepEqual(keysOf(raw), sorted("file", "dry_run", "changes")) {
		t.Fatalf("json %q", r.stdout)
	}
	if ch, ok := raw["changes"].([]any); !ok || len(ch) != 0 || raw["file"] != file || raw["dry_run"] != false {
		t.Errorf("second apply json: %v", raw)
	}
	r = ctl(t, nil, "--controller", addr, "apply", "-f", file, "-o", "yaml").expect(t, 0)
	var yr ApplyResult
	if err := yaml.Unmarshal([]byte(r.stdout), &yr); err != nil || len(yr.Changes) != 0 {
		t.Errorf("second apply yaml %+v %v", yr, err)
	}
	if ctrl.writeCount() != writes {
		t.Errorf("the second apply changed something: %d writes, then %d", writes, ctrl.writeCount())
	}
}

func TestApplyJSONAndDryRun(t *testing.T) {
	t.Parallel()
	ctrl := applyController()
	addr := serve(t, ctrl, nil)
	file := writeFile(t, "fourover6.yaml", applyExample)

	r := ctl(t, nil, "--controller", addr, "apply", "-f", file, "--dry-run").expect(t, 0)
	if !strings.Contains(r.stdout, "reservation fd00:46::2 -> 13.8.0.50: created (dry run)\n") ||
		!strings.Contains(r.stdout, "dns: 202.38.120.242,8.8.8.8,202.106.0.20 -> 1.1.1.1,8.8.8.8 (dry run)\n") ||
		!strings.HasSuffix(r.stdout, "dry run: 6 changes planned, nothing changed\n") {
		t.Errorf("dry run:\n%s", r.stdout)
	}
	r = ctl(t, nil, "--controller", addr, "apply", "-f", file, "--dry-run", "-o", "json").expect(t, 0)
	var res ApplyResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || !res.DryRun || len(res.Changes) != 6 {
		t.Fatalf("dry run json %q %v", r.stdout, err)
	}
	var raw map[string]any
	_ = json.Unmarshal([]byte(r.stdout), &raw)
	if got := keysOf(raw["changes"].([]any)[0].(map[string]any)); !reflect.DeepEqual(got, sorted("kind", "key", "action", "from", "to")) {
		t.Errorf("change keys %v", got)
	}
	if ctrl.writeCount() != 0 {
		t.Fatalf("dry run changed something (%d writes)", ctrl.writeCount())
	}

	r = ctl(t, nil, "--controller", addr, "apply", "-f", file, "-o", "json").expect(t, 0)
	res = ApplyResult{}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.DryRun {
		t.Fatal(err)
	}
	want := []Change{
		{Kind: "reservation", Key: "fd00:48::1", Action: "delete", From: "13.8.0.60"},
		{Kind: "pool", Key: "range", Action: "update", From: "13.8.0.2-13.8.0.128", To: "13.8.0.2-13.8.0.200"},
		{Kind: "reservation", Key: "fd00:46::2", Action: "create", To: "13.8.0.50"},
		{Kind: "reservation", Key: "fd00:47::/64", Action: "create", To: "13.8.0.51"},
		{Kind: "reservation", Key: "fd00:46::99", Action: "update", From: "13.8.0.99", To: "13.8.0.150"},
		{Kind: "dns", Key: "servers", Action: "update", From: "202.38.120.242,8.8.8.8,202.106.0.20", To: "1.1.1.1,8.8.8.8"},
	}
	if !reflect.DeepEqual(res.Changes, want) {
		t.Errorf("changes\n%+v\nwant\n%+v", res.Changes, want)
	}
	if ctrl.writeCount() != 6 {
		t.Errorf("%d writes, want 6", ctrl.writeCount())
	}
}

// Without prune, reservations not in the file stay; "all" is compared as the
// range it stands for, so it too is applied once.
func TestApplyPartialAndAll(t *testing.T) {
	t.Parallel()
	ctrl := applyController()
	addr := serve(t, ctrl, nil)
	file := writeFile(t, "f.yaml", "pool: {range: all}\nreservations:\n  - {client: 'fd00:46::2', ipv4: 13.8.0.240}\n")
	r := ctl(t, nil, "--controller", addr, "apply", "-f", file).expect(t, 0)
	if r.stdout != "pool range: 13.8.0.2-13.8.0.128 -> 13.8.0.2-13.8.0.254 (all)\nreservation fd00:46::2 -> 13.8.0.240: created\n" {
		t.Errorf("apply:\n%s", r.stdout)
	}
	ctrl.mu.Lock()
	if len(ctrl.reservations) != 3 {
		t.Errorf("reservations without prune: %v", ctrl.reservations)
	}
	ctrl.mu.Unlock()
	if r := ctl(t, nil, "--controller", addr, "apply", "-f", file).expect(t, 0); r.stdout != "no changes\n" {
		t.Errorf("second apply: %q", r.stdout)
	}
	// DNS as one string; fewer than three compared as given.
	file = writeFile(t, "d.yaml", "dns: \"1.1.1.1, 8.8.4.4\"\n")
	if r := ctl(t, nil, "--controller", addr, "apply", "-f", file).expect(t, 0); r.stdout != "dns: 202.38.120.242,8.8.8.8,202.106.0.20 -> 1.1.1.1,8.8.4.4\n" {
		t.Errorf("dns string: %q", r.stdout)
	}
	if r := ctl(t, nil, "--controller", addr, "apply", "-f", file).expect(t, 0); r.stdout != "no changes\n" {
		t.Errorf("dns string again: %q", r.stdout)
	}
	// An empty list with prune deletes them all.
	file = writeFile(t, "g.yaml", "reservations: []\nprune: true\n")
	r = ctl(t, nil, "--controller", addr, "apply", "-f", file).expect(t, 0)
	if strings.Count(r.stdout, ": deleted\n") != 3 {
		t.Errorf("prune all:\n%s", r.stdout)
	}
}

// A change the controller refuses stops the apply; what was done is said.
func TestApplyRefused(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	addr := serve(t, ctrl, nil)
	file := writeFile(t, "f.yaml", "reservations:\n  - {client: 'fd00::1', ipv4: 13.8.0.20}\n  - {client: 'fd00::2', ipv4: 13.8.0.230}\ndns: [1.1.1.1]\n")
	r := ctl(t, nil, "--controller", addr, "apply", "-f", file).expect(t, 2) // INVALID_ARGUMENT
	if r.stdout != "reservation fd00::1 -> 13.8.0.20: created\n" ||
		!strings.Contains(r.stderr, "reservation fd00::2 -> 13.8.0.230: created: controller at") ||
		!strings.Contains(r.stderr, "outside the client range (1 of 3 changes made before this one)") {
		t.Errorf("refused:\nstdout %q\nstderr %q", r.stdout, r.stderr)
	}
}

func TestApplyMalformed(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	addr := serve(t, ctrl, nil)
	for _, c := range []struct{ content, want string }{
		{"dns: [1.1.1.1]\nbogus: 1\n", `line 2: unknown key "bogus" in the file (known keys: pool, dns, reservations, prune)`},
		{"pool:\n  first: 13.8.0.2\n", `line 2: unknown key "first" in pool (known keys: range)`},
		{"pool: 13.8.0.2-13.8.0.9\n", "line 1: pool: want a mapping with the keys range"},
		{"pool: {range: 13.8.0.9-13.8.0.2}\n", "pool.range: invalid range"},
		{"dns: [1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4]\n", "dns: want one to three DNS servers, got 4"},
		{"dns: [1.1.1.1, fd00::53]\n", `dns: invalid DNS server "fd00::53"`},
		{"dns:\n", "dns: want a list of one to three IPv4 addresses"},
		{"reservations:\n  - client: fd00::1\n    ipv4: 13.8.0.5\n    note: x\n", `line 4: unknown key "note" in a reservation (known keys: client, ipv4)`},
		{"reservations:\n  - client: 13.8.0.1\n    ipv4: 13.8.0.5\n", `line 2: client: invalid CLIENT "13.8.0.1"`},
		{"reservations:\n  - client: fd00::1\n    ipv4: fd00::2\n", `line 3: ipv4: invalid ADDR "fd00::2"`},
		{"reservations:\n  - client: fd00::1\n", "a reservation needs both client and ipv4"},
		{"reservations:\n  - {client: 'fd00::1', ipv4: 13.8.0.5}\n  - {client: 'fd00:0::1', ipv4: 13.8.0.6}\n", "line 3: reservation for fd00::1 given twice (also on line 2)"},
		{"reservations:\n  - {client: 'fd00::1', ipv4: 13.8.0.5}\n  - {client: 'fd00::2', ipv4: 13.8.0.5}\n", "13.8.0.5 reserved twice"},
		{"reservations: {client: 'fd00::1'}\n", "reservations: want a list"},
		{"reservations:\nprune: true\n", "reservations: want a list"},
		{"prune: true\n", "prune: true needs a reservations list"},
		{"prune: yes\nreservations: []\n", "prune: want true or false"},
		{"dns: [1.1.1.1]\ndns: [2.2.2.2]\n", `key "dns" given twice`},
		{"- dns\n", "the file: want a mapping"},
		{"dns: [1.1.1.1\n", "did not find expected"},
		{"", "the file is empty"},
		{"# only a comment\n", "the file is empty"},
		{"dns: [1.1.1.1]\n---\ndns: [2.2.2.2]\n", "more than one YAML document"},
	} {
		file := writeFile(t, "bad.yaml", c.content)
		r := ctl(t, nil, "--controller", addr, "apply", "-f", file).expect(t, 2)
		if !strings.HasPrefix(r.stderr, "4over6ctl: "+file+": ") || !strings.Contains(r.stderr, c.want) || r.stdout != "" {
			t.Errorf("%q:\nstderr %q\nwant   %q", c.content, r.stderr, c.want)
		}
	}
	r := ctl(t, nil, "--controller", addr, "apply", "-f", filepath.Join(t.TempDir(), "none.yaml"), "-o", "json").expect(t, 2)
	var e errorOutput
	if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Code != 2 || !strings.Contains(e.Error, "cannot read") {
		t.Errorf("missing file: %q", r.stderr)
	}
	if r := ctl(t, nil, "--controller", addr, "apply").expect(t, 2); !strings.Contains(r.stderr, "needs -f FILE") {
		t.Errorf("no -f: %q", r.stderr)
	}
	ctl(t, nil, "--controller", addr, "apply", "-f", "x.yaml", "extra").expect(t, 2)
	ctrl.mu.Lock()
	if len(ctrl.calls) != 0 {
		t.Errorf("a malformed file reached the controller: %v", ctrl.calls)
	}
	ctrl.mu.Unlock()
	// A malformed file is reported even when the controller is down.
	file := writeFile(t, "bad.yaml", "bogus: 1\n")
	ctl(t, nil, "--controller", missingAddr(t), "apply", "-f", file).expect(t, 2)
}
