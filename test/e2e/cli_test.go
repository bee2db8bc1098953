package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/wire"
	"go.yaml.in/yaml/v3"
)

// TestCLIAgainstRealDaemons runs every 4over6ctl command against a real
// controller and data plane, parses each output format back, and checks
// the exit codes.
func TestCLIAgainstRealDaemons(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--report-interval", "200ms"}})
	c := e.dialLab()
	me := c.lease().Addr.String()

	// Every read command, in every format.
	for _, args := range [][]string{
		{"clients", "list"}, {"clients", "get", me}, {"pool", "show"}, {"status"},
		{"dataplane", "status"}, {"sessions", "list"}, {"dataplanes", "list"},
		{"reservations", "list"}, {"dns", "show"}, {"version"},
	} {
		for _, format := range []string{"table", "json", "yaml"} {
			out, errOut, code := e.ctl(append(args, "-o", format)...)
			if code != 0 {
				t.Errorf("%v -o %s: exit %d: %s", args, format, code, errOut)
				continue
			}
			var v any
			switch format {
			case "json":
				if err := json.Unmarshal([]byte(out), &v); err != nil {
					t.Errorf("%v -o json: %v\n%s", args, err, out)
				}
			case "yaml":
				if err := yaml.Unmarshal([]byte(out), &v); err != nil || v == nil {
					t.Errorf("%v -o yaml: %v\n%s", args, err, out)
				}
			default:
				if strings.TrimSpace(out) == "" {
					t.Errorf("%v: empty table", args)
				}
			}
		}
	}
	var got ctlClient
	e.ctlJSON(&got, "clients", "get", me)
	if got.IPv4 != me || got.IPv6 != clientV6 || got.Dataplane != "dp1" {
		t.Fatalf("clients get: %+v", got)
	}
	var byV6 ctlClient
	e.ctlJSON(&byV6, "clients", "get", clientV6) // the address an operator knows
	if byV6 != got {
		t.Fatalf("clients get %s: %+v, want %+v", clientV6, byV6, got)
	}
	var y []map[string]any
	out, _, _ := e.ctl("clients", "list", "-o", "yaml")
	if err := yaml.Unmarshal([]byte(out), &y); err != nil || len(y) != 1 || y[0]["ipv6"] != clientV6 {
		t.Fatalf("clients list -o yaml: %v %v", err, y)
	}

	// Exit codes: not found, bad arguments, unreachable.
	if _, _, code := e.ctl("clients", "get", "13.8.0.200"); code != 4 {
		t.Errorf("clients get of a free address: exit %d, want 4", code)
	}
	if _, errOut, code := e.ctl("clients", "list", "--no-such-flag"); code != 2 || !strings.Contains(errOut, "no-such-flag") {
		t.Errorf("bad flag: exit %d, %q", code, errOut)
	}
	if _, _, code := e.ctl("clients", "get", "not-an-address"); code != 2 {
		t.Errorf("bad address: exit %d, want 2", code)
	}
	missing := "unix://" + filepath.Join(t.TempDir(), "nobody.sock")
	cmd := exec.Command(filepath.Join(binDir, "4over6ctl"), "--controller", missing, "pool", "show")
	b, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(string(b), missing) || strings.Count(strings.TrimSpace(string(b)), "\n") != 0 {
		t.Errorf("unreachable controller: %v, %q (want exit 3 and one line naming %s)", err, b, missing)
	}

	// Provisioning: apply twice, the second time changes nothing.
	file := filepath.Join(t.TempDir(), "fourover6.yaml")
	os.WriteFile(file, []byte("pool:\n  range: 13.8.0.2-13.8.0.200\ndns: [192.0.2.1, 192.0.2.2, 192.0.2.3]\nreservations:\n  - client: fd00:46::99\n    ipv4: 13.8.0.150\n"), 0o644)
	if out, errOut, code := e.ctl("apply", "-f", file, "--dry-run"); code != 0 || !strings.Contains(out, "dry run") {
		t.Fatalf("apply --dry-run: %d %s %s", code, out, errOut)
	}
	var dnsShown struct{ Servers []string }
	e.ctlJSON(&dnsShown, "dns", "show")
	if dnsShown.Servers[0] != "192.0.2.53" {
		t.Fatalf("--dry-run changed the DNS servers: %v", dnsShown.Servers)
	}
	if out, errOut, code := e.ctl("apply", "-f", file); code != 0 || strings.Contains(out, "no changes") {
		t.Fatalf("first apply: %d %s %s", code, out, errOut)
	}
	if out, errOut, code := e.ctl("apply", "-f", file); code != 0 || !strings.Contains(out, "no changes") {
		t.Fatalf("second apply changed something: %d %s %s", code, out, errOut)
	}
	e.ctlJSON(&dnsShown, "dns", "show")
	if strings.Join(dnsShown.Servers, ",") != "192.0.2.1,192.0.2.2,192.0.2.3" {
		t.Fatalf("dns after apply: %v", dnsShown.Servers)
	}
	var rs []struct{ Client, IPv4 string }
	e.ctlJSON(&rs, "reservations", "list")
	if len(rs) != 1 || rs[0].IPv4 != "13.8.0.150" {
		t.Fatalf("reservations after apply: %+v", rs)
	}
	// A new client gets the new DNS servers in its 101.
	c2 := e.dialLab()
	r2 := c2.lease()
	if r2.DNS[0].String() != "192.0.2.1" {
		t.Fatalf("101 after dns set: %+v", r2)
	}
	// Now that IPv6 address is connected twice: both are named.
	if _, errOut, code := e.ctl("clients", "get", clientV6); code != 1 || !strings.Contains(errOut, clientV6+" is connected 2 times") ||
		!strings.Contains(errOut, me+" (port") || !strings.Contains(errOut, r2.Addr.String()+" (port") {
		t.Fatalf("clients get %s connected twice: exit %d: %s", clientV6, code, errOut)
	}

	// Drain and undrain.
	if _, errOut, code := e.ctl("dataplane", "drain", "dp1"); code != 0 {
		t.Fatalf("drain: %s", errOut)
	}
	e.waitFor("data plane draining", func() bool {
		var st struct{ Draining bool }
		e.ctlJSON(&st, "dataplane", "status")
		return st.Draining
	})
	if _, _, code := e.ctl("dataplane", "undrain", "dp1"); code != 0 {
		t.Fatal("undrain failed")
	}
	if _, _, code := e.ctl("dataplane", "drain", "no-such-dp"); code != 4 {
		t.Errorf("drain of an unknown data plane: exit %d, want 4", code)
	}
	if _, _, code := e.ctl("log-level", "debug"); code != 0 {
		t.Error("controller log-level failed")
	}
	if _, _, code := e.ctl("dataplane", "log-level", "debug"); code != 0 {
		t.Error("data plane log-level failed")
	}
}

// TestKickAndWatch: clients watch prints the current set, then the connect
// and disconnect events; clients kick closes a client and releases its
// address.
func TestKickAndWatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	first := e.dialLab()
	firstAddr := first.lease().Addr.String()

	watch := exec.Command(filepath.Join(binDir, "4over6ctl"), "--controller", "unix://"+e.ctlSock, "clients", "watch", "-o", "json")
	stdout, _ := watch.StdoutPipe()
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	defer watch.Process.Kill()
	events := jsonLines(stdout)
	next := func(want string) map[string]any {
		t.Helper()
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("watch ended while waiting for %q", want)
				}
				if ev["type"] == want {
					return ev
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("no %q event", want)
			}
		}
	}
	ipv4 := func(ev map[string]any) string {
		c, _ := ev["client"].(map[string]any)
		s, _ := c["ipv4"].(string)
		return s
	}
	if ev := next("existing"); ipv4(ev) != firstAddr {
		t.Fatalf("existing event for %q, want %s", ipv4(ev), firstAddr)
	}
	next("synced")

	second := e.dialLab()
	secondAddr := second.lease().Addr.String()
	if ev := next("connected"); ipv4(ev) != secondAddr {
		t.Fatalf("connected event for %q, want %s", ipv4(ev), secondAddr)
	}

	var kicked struct{ IPv4, Dataplane, Session string }
	e.ctlJSON(&kicked, "clients", "kick", firstAddr)
	if kicked.IPv4 != firstAddr || kicked.Dataplane != "dp1" {
		t.Fatalf("kick output %+v", kicked)
	}
	// The data plane closes that client's connection...
	first.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	for {
		if _, err := first.dec.Next(); err != nil {
			break
		}
	}
	// ...the watch sees it go, and its address is free again.
	if ev := next("disconnected"); ipv4(ev) != firstAddr {
		t.Fatalf("disconnected event for %q, want %s", ipv4(ev), firstAddr)
	}
	e.waitFor("kicked address released", func() bool {
		_, _, code := e.ctl("clients", "get", firstAddr)
		return code == 4
	})
	if _, _, code := e.ctl("clients", "kick", firstAddr); code != 4 {
		t.Errorf("kick of a free address: exit %d, want 4", code)
	}
	// The other client is untouched.
	second.write(wire.Keepalive[:])
	if _, _, code := e.ctl("clients", "get", secondAddr); code != 0 {
		t.Error("the other client was disturbed")
	}
}

// TestWatchSurvivesControllerRestart: clients watch keeps running through a
// restart of the controller and goes on printing events from the new one.
func TestWatchSurvivesControllerRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	first := e.dialLab()
	firstAddr := first.lease().Addr.String()

	watch := exec.Command(filepath.Join(binDir, "4over6ctl"), "--controller", "unix://"+e.ctlSock, "clients", "watch", "-o", "json")
	stdout, _ := watch.StdoutPipe()
	var stderr syncBuffer
	watch.Stderr = &stderr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- watch.Wait() }()
	defer watch.Process.Kill()
	events := jsonLines(stdout)
	ipv4 := func(ev map[string]any) string {
		c, _ := ev["client"].(map[string]any)
		s, _ := c["ipv4"].(string)
		return s
	}
	next := func(want, addr string) {
		t.Helper()
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("watch ended while waiting for %q %s; stderr:\n%s", want, addr, stderr.String())
				}
				if ev["type"] == want && (addr == "" || ipv4(ev) == addr) {
					return
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("no %q event for %s; stderr:\n%s", want, addr, stderr.String())
			}
		}
	}
	next("existing", firstAddr)
	next("synced", "")

	if err := e.stop(e.procs[0]); err != nil {
		t.Fatal(err)
	}
	e.start(e.srv, "4over6-controller", e.controllerArgs()...)
	second := e.dialLab()
	secondAddr := second.lease().Addr.String()
	next("connected", secondAddr)
	select {
	case err := <-exited:
		t.Fatalf("watch exited: %v; stderr:\n%s", err, stderr.String())
	default:
	}
	// stderr is copied by another goroutine: it may lag behind stdout.
	e.waitFor("the resumed note", func() bool { return strings.Contains(stderr.String(), "watch: resumed at unix://"+e.ctlSock) })
	if s := stderr.String(); !strings.Contains(s, "reconnecting") || strings.Contains(s, "not the leader") {
		t.Errorf("watch stderr:\n%s", s)
	}
}

// jsonLines decodes the JSON objects r holds one a line (a watch's
// events), until r ends; then the channel closes.
func jsonLines(r io.Reader) <-chan map[string]any {
	events := make(chan map[string]any, 64)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			var ev map[string]any
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				events <- ev
			}
		}
		close(events)
	}()
	return events
}

// syncBuffer is a bytes.Buffer safe to read while a process writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
