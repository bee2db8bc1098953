package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// On clients list and watch, the data plane id filter is --dataplane-id;
// --dataplane is the data plane's address there too. An id given to
// --dataplane (its old meaning there) still filters, with a deprecation
// note on stderr.
func TestDataplaneFilterVersusAddress(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	caddr := serve(t, ctrl, nil)
	daddr := serve(t, nil, newDataplane("dpX"))
	// The environment's data plane address is irrelevant to clients list.
	env := map[string]string{"FOUROVER6_DATAPLANE": "garbage"}

	for _, c := range []struct {
		args       []string
		deprecated bool
	}{
		{[]string{"--controller", caddr, "clients", "list", "--dataplane", "dp2", "-o", "json"}, true},
		{[]string{"--controller", caddr, "--dataplane", "dp2", "clients", "list", "-o", "json"}, true},
		{[]string{"--controller", caddr, "clients", "list", "--dataplane=dp2", "--dataplane-id", "dp2", "-o", "json"}, true},
		{[]string{"--controller", caddr, "clients", "ls", "--dataplane-id", "dp2", "-o", "json"}, false},
		{[]string{"--controller", caddr, "--dataplane", daddr, "clients", "ls", "--dataplane-id", "dp2", "-o", "json"}, false},
	} {
		args := c.args
		r := ctl(t, env, args...).expect(t, 0)
		var cs []Client
		if err := json.Unmarshal([]byte(r.stdout), &cs); err != nil || len(cs) != 1 || cs[0].Dataplane != "dp2" {
			t.Errorf("%v: %v %+v", args, err, cs)
		}
		ctrl.mu.Lock()
		if ctrl.lastFilter != "dp2" {
			t.Errorf("%v: filter sent %q", args, ctrl.lastFilter)
		}
		ctrl.mu.Unlock()
		if got := strings.Contains(r.stderr, "deprecated: use --dataplane-id dp2"); got != c.deprecated {
			t.Errorf("%v: deprecation note %v, want %v: %q", args, got, c.deprecated, r.stderr)
		}
	}

	// Two different ids: exit 2, nothing asked.
	before := ctrl.count("ListClients")
	if r := ctl(t, nil, "--controller", caddr, "clients", "list", "--dataplane", "dp1", "--dataplane-id", "dp2").expect(t, 2); !strings.Contains(r.stderr, "--dataplane") {
		t.Errorf("disagreeing filters: %q", r.stderr)
	}
	if ctrl.count("ListClients") != before {
		t.Errorf("a bad filter reached the controller")
	}
	// An address is the global data plane address, written before or after
	// the command by scripts that set both daemons up front: no filter.
	for _, args := range [][]string{
		{"--dataplane", daddr, "clients", "list", "-o", "json"},
		{"clients", "list", "--dataplane", "[::1]:5679", "-o", "json"},
		{"clients", "list", "--dataplane", "unix:///run/fourover6/dataplane.sock", "-o", "json"},
	} {
		r := ctl(t, nil, append([]string{"--controller", caddr}, args...)...).expect(t, 0)
		var cs []Client
		if err := json.Unmarshal([]byte(r.stdout), &cs); err != nil || len(cs) != 2 {
			t.Errorf("%v: %v %+v", args, err, cs)
		}
		ctrl.mu.Lock()
		if ctrl.lastFilter != "" {
			t.Errorf("%v: filter sent %q", args, ctrl.lastFilter)
		}
		ctrl.mu.Unlock()
	}

	// The global --dataplane is still the address of the data plane commands.
	for _, args := range [][]string{
		{"--dataplane", daddr, "dataplane", "status", "-o", "json"},
		{"dataplane", "status", "--dataplane", daddr, "-o", "json"},
	} {
		r := ctl(t, nil, args...).expect(t, 0)
		var s Status
		if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || s.Dataplane != "dpX" {
			t.Errorf("%v: %v %+v", args, err, s)
		}
	}
	ctl(t, nil, "--dataplane", daddr, "sessions", "list").expect(t, 0)
	r := ctl(t, nil, "--controller", caddr, "--dataplane", daddr, "status", "-o", "json").expect(t, 0)
	var ss SystemStatus
	if err := json.Unmarshal([]byte(r.stdout), &ss); err != nil || ss.Dataplane == nil || ss.Dataplane.Dataplane != "dpX" {
		t.Errorf("status with --dataplane ADDR: %v %+v", err, ss)
	}
}

func TestClientsListV6Prefix(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	addr := serve(t, ctrl, nil)
	r := ctl(t, nil, "--controller", addr, "clients", "list", "--v6-prefix", "fd00:46::77/64", "-o", "yaml").expect(t, 0)
	var cs []Client
	if err := yaml.Unmarshal([]byte(r.stdout), &cs); err != nil || len(cs) != 1 || cs[0].IPv4 != "13.8.0.2" {
		t.Errorf("prefix filter: %v %+v", err, cs)
	}
	ctrl.mu.Lock()
	if ctrl.lastPrefix != "fd00:46::/64" {
		t.Errorf("prefix sent %q, want fd00:46::/64 (host bits cleared)", ctrl.lastPrefix)
	}
	ctrl.mu.Unlock()
	ctl(t, nil, "--controller", addr, "clients", "list", "--v6-prefix", "fd00:47::10").expect(t, 0)
	ctrl.mu.Lock()
	if ctrl.lastPrefix != "fd00:47::10/128" {
		t.Errorf("an address is a /128, sent %q", ctrl.lastPrefix)
	}
	ctrl.mu.Unlock()
	for _, bad := range []string{"13.8.0.0/24", "banana", "fd00::/129", ""} {
		r := ctl(t, nil, "--controller", addr, "clients", "list", "--v6-prefix", bad).expect(t, 2)
		if !strings.Contains(r.stderr, "--v6-prefix") {
			t.Errorf("%q: %q", bad, r.stderr)
		}
	}
}

func TestClientsKick(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	addr := serve(t, ctrl, nil)

	r := ctl(t, nil, "--controller", addr, "clients", "kick", "13.8.0.2", "--reason", "abuse", "-o", "json").expect(t, 0)
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || !reflect.DeepEqual(keysOf(raw), sorted("ipv4", "dataplane", "session")) {
		t.Fatalf("kick json %q: %v", r.stdout, err)
	}
	var k Kick
	_ = json.Unmarshal([]byte(r.stdout), &k)
	if k != (Kick{IPv4: "13.8.0.2", Dataplane: "dp1", Session: "s-2"}) {
		t.Errorf("kick %+v", k)
	}
	ctrl.mu.Lock()
	if ctrl.lastReason != "abuse" {
		t.Errorf("reason sent %q", ctrl.lastReason)
	}
	ctrl.mu.Unlock()

	// Kicked: gone. Again: not found (4), in every format.
	r = ctl(t, nil, "--controller", addr, "clients", "kick", "13.8.0.2").expect(t, 4)
	if r.stderr != "4over6ctl: no client holds 13.8.0.2\n" || r.stdout != "" {
		t.Errorf("kick again: %q %q", r.stdout, r.stderr)
	}
	r = ctl(t, nil, "--controller", addr, "clients", "kick", "13.8.0.2", "-o", "yaml").expect(t, 4)
	var e errorOutput
	if err := yaml.Unmarshal([]byte(r.stderr), &e); err != nil || e.Code != 4 {
		t.Errorf("yaml error %q: %v", r.stderr, err)
	}

	r = ctl(t, nil, "--controller", addr, "clients", "kick", "13.8.0.10", "-o", "yaml").expect(t, 0)
	if err := yaml.Unmarshal([]byte(r.stdout), &k); err != nil || k.Session != "s-10" || k.Dataplane != "dp2" {
		t.Errorf("yaml kick %+v %v", k, err)
	}
	ctrl.clients = append(ctrl.clients, &cpv1.Client{Address: "13.8.0.7", DataplaneId: "dp1", SessionId: "s-7"})
	r = ctl(t, nil, "--controller", addr, "clients", "kick", "13.8.0.7").expect(t, 0)
	if !strings.Contains(r.stdout, "data plane dp1 closed session s-7") {
		t.Errorf("kick table %q", r.stdout)
	}
	for _, bad := range [][]string{{}, {"fd00::1"}, {"13.8.0.2", "13.8.0.3"}} {
		ctl(t, nil, append([]string{"--controller", addr, "clients", "kick"}, bad...)...).expect(t, 2)
	}
}

func watchController() *fakeController {
	ctrl := newController()
	ctrl.events = []*cpv1.ClientEvent{
		{Type: cpv1.ClientEvent_TYPE_CONNECTED, Time: timestamppb.New(t1),
			Client: &cpv1.Client{Address: "13.8.0.5", ClientIpv6: "fd00:46::5", ClientPort: 40001, DataplaneId: "dp1", SessionId: "s-5",
				ConnectedAt: timestamppb.New(t1)}},
		{Type: cpv1.ClientEvent_TYPE_DISCONNECTED, Time: timestamppb.New(t1), Reason: "keepalive timeout",
			Client: &cpv1.Client{Address: "13.8.0.2", ClientIpv6: "fd00:46::2", ClientPort: 51234, DataplaneId: "dp1", SessionId: "s-2"}},
	}
	return ctrl
}

func TestClientsWatchJSONLines(t *testing.T) {
	t.Parallel()
	ctrl := watchController()
	addr := serve(t, ctrl, nil)
	r := ctl(t, nil, "--controller", addr, "clients", "watch", "-o", "json").expect(t, 0)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	var types []string
	var evs []ClientEvent
	for _, l := range lines {
		var raw map[string]any
		if err := json.Unmarshal([]byte(l), &raw); err != nil {
			t.Fatalf("line %q is not JSON: %v", l, err)
		}
		if !reflect.DeepEqual(keysOf(raw), sorted("type", "time", "client", "reason")) {
			t.Errorf("event keys %v", keysOf(raw))
		}
		var ev ClientEvent
		_ = json.Unmarshal([]byte(l), &ev)
		evs = append(evs, ev)
		types = append(types, ev.Type)
	}
	if want := []string{"existing", "existing", "synced", "connected", "disconnected"}; !reflect.DeepEqual(types, want) {
		t.Fatalf("types %v, want %v", types, want)
	}
	if evs[2].Client != nil || !strings.Contains(lines[2], `"client":null`) {
		t.Errorf("synced carries a client: %q", lines[2])
	}
	if c := evs[3].Client; c == nil || c.IPv4 != "13.8.0.5" || c.Session != "s-5" || evs[3].Time != "2025-03-01T10:05:07Z" {
		t.Errorf("connected %+v", evs[3])
	}
	if evs[4].Reason != "keepalive timeout" || evs[4].Client.IPv4 != "13.8.0.2" {
		t.Errorf("disconnected %+v", evs[4])
	}

	// The filters reach the controller.
	r = ctl(t, nil, "--controller", addr, "clients", "watch", "--dataplane", "dp2", "--v6-prefix", "fd00:47::/64", "-o", "json").expect(t, 0)
	if n := strings.Count(r.stdout, `"type":"existing"`); n != 1 {
		t.Errorf("%d existing with the filter:\n%s", n, r.stdout)
	}
	ctrl.mu.Lock()
	if ctrl.lastFilter != "dp2" || ctrl.lastPrefix != "fd00:47::/64" {
		t.Errorf("filter sent %q %q", ctrl.lastFilter, ctrl.lastPrefix)
	}
	ctrl.mu.Unlock()
}

func TestClientsWatchYAMLAndTable(t *testing.T) {
	t.Parallel()
	addr := serve(t, watchController(), nil)
	r := ctl(t, nil, "--controller", addr, "clients", "watch", "-o", "yaml").expect(t, 0)
	if n := strings.Count(r.stdout, "\n---\n"); n != 4 {
		t.Errorf("%d separators between 5 documents:\n%s", n, r.stdout)
	}
	dec := yaml.NewDecoder(strings.NewReader(r.stdout))
	var types []string
	for {
		var ev ClientEvent
		err := dec.Decode(&ev)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("yaml: %v\n%s", err, r.stdout)
		}
		types = append(types, ev.Type)
		if ev.Type == "disconnected" && (ev.Client == nil || ev.Client.IPv6 != "fd00:46::2" || ev.Reason != "keepalive timeout") {
			t.Errorf("yaml disconnected %+v", ev)
		}
	}
	if want := []string{"existing", "existing", "synced", "connected", "disconnected"}; !reflect.DeepEqual(types, want) {
		t.Errorf("yaml types %v", types)
	}

	r = ctl(t, nil, "--controller", addr, "clients", "watch").expect(t, 0)
	out := r.stdout
	iHeader, iWatch := strings.Index(out, "IPV4"), strings.Index(out, "Watching")
	iConn, iDisc := strings.Index(out, "Z  CONNECTED "), strings.Index(out, "Z  DISCONNECTED ")
	if iHeader < 0 || iWatch < iHeader || iConn < iWatch || iDisc < iConn {
		t.Fatalf("table watch out of order:\n%s", out)
	}
	for _, s := range []string{"13.8.0.10", "2025-03-01T10:05:07Z  CONNECTED     13.8.0.5", "fd00:46::5 port 40001  dp1/s-5",
		"DISCONNECTED  13.8.0.2", "(keepalive timeout)"} {
		if !strings.Contains(out, s) {
			t.Errorf("table watch lacks %q:\n%s", s, out)
		}
	}
	if strings.Count(out, "\n") != 3+1+2 { // header + 2 clients, watching line, 2 events
		t.Errorf("one line per event expected:\n%s", out)
	}
}

// --timeout limits the wait for the first event, not the stream.
func TestClientsWatchNoTimeoutOnStream(t *testing.T) {
	t.Parallel()
	ctrl := watchController()
	ctrl.watchDelay = 600 * time.Millisecond
	addr := serve(t, ctrl, nil)
	r := ctl(t, nil, "--controller", addr, "--timeout", "200ms", "clients", "watch", "-o", "json").expect(t, 0)
	if !strings.Contains(r.stdout, `"type":"disconnected"`) {
		t.Errorf("stream cut short:\n%s", r.stdout)
	}
}

// Ctrl-C (the context ending) stops a watch with exit 0 after what it printed.
func TestClientsWatchInterrupt(t *testing.T) {
	t.Parallel()
	ctrl := newController() // events nil: the stream stays open
	addr := serve(t, ctrl, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb syncBuffer
	done := make(chan int)
	go func() {
		done <- runContext(ctx, []string{"--controller", addr, "clients", "watch", "-o", "json"}, &out, &errb, func(string) string { return "" })
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), `"synced"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no synced event: %q %q", out.String(), errb.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 || errb.String() != "" {
			t.Errorf("interrupted watch: exit %d, stderr %q", code, errb.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not stop")
	}
	if n := strings.Count(out.String(), "\n"); n != 3 {
		t.Errorf("%d lines, want 3:\n%s", n, out.String())
	}
}

func TestClientsWatchErrors(t *testing.T) {
	t.Parallel()
	missing := missingAddr(t)
	r := ctl(t, nil, "--controller", missing, "clients", "watch", "-o", "json").expect(t, 3)
	if r.stdout != "" || !strings.Contains(r.stderr, `"code":3`) || !strings.Contains(r.stderr, "cannot reach controller at "+missing) {
		t.Errorf("unreachable watch: %q %q", r.stdout, r.stderr)
	}
	// An older controller without WatchClients.
	r = ctl(t, nil, "--controller", serve(t, nil, newDataplane("dp1")), "clients", "watch").expect(t, 1)
	if !strings.Contains(r.stderr, "does not implement") || r.stdout != "" {
		t.Errorf("unimplemented watch: %q %q", r.stdout, r.stderr)
	}
	ctl(t, nil, "--controller", missing, "clients", "watch", "extra").expect(t, 2)

	// A listener that never speaks gRPC: --timeout bounds the wait for the
	// first event, so the watch does not hang (exit 3: never connected).
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
	start := time.Now()
	r = ctl(t, nil, "--controller", l.Addr().String(), "--timeout", "300ms", "clients", "watch").expect(t, 3)
	if !strings.Contains(r.stderr, "cannot reach controller at "+l.Addr().String()+": no connection within 300ms") {
		t.Errorf("silent listener: %q", r.stderr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

// watchUntil runs clients watch until its stdout holds want lines, then
// stops it (Ctrl-C) and returns its exit code and output.
func watchUntil(t *testing.T, want int, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- runContext(ctx, append(args, "clients", "watch", "-o", "json"), &out, &errb, func(string) string { return "" })
	}()
	deadline := time.After(20 * time.Second)
	for strings.Count(out.String(), "\n") < want {
		select {
		case code := <-done:
			return code, out.String(), errb.String()
		case <-deadline:
			t.Fatalf("watch printed only:\n%s\nstderr:\n%s", out.String(), errb.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	return <-done, out.String(), errb.String()
}

// A watch whose stream is lost (leadership moved, the controller went)
// reconnects and resumes: what changed meanwhile comes as events, the
// current set is not printed again, and nothing says "not the leader".
func TestClientsWatchReconnects(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	ctrl.events, ctrl.watchEnd = []*cpv1.ClientEvent{}, notLeaderError("ctl-c")
	ctrl.beforeWatch = func(call int) {
		switch call {
		case 2: // the controller answers, then fails, then comes back
			ctrl.watchEnd = status.Error(codes.Unavailable, "error reading from server: EOF")
		case 3:
			ctrl.fail = map[string]error{"WatchClients": status.Error(codes.Unavailable, "shutting down")}
		case 4:
			ctrl.fail = nil
			// Meanwhile 13.8.0.2 went and 13.8.0.7 came.
			ctrl.clients = []*cpv1.Client{ctrl.clients[0], {Address: "13.8.0.7", ClientIpv6: "fd00:46::7", ClientPort: 7,
				DataplaneId: "dp1", SessionId: "s-7", ConnectedAt: timestamppb.New(t1)}}
			ctrl.events = nil // the stream stays open
		}
	}
	addr := serve(t, ctrl, nil)
	code, out, errOut := watchUntil(t, 5, "--controller", addr)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev ClientEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		s := ev.Type
		if ev.Client != nil {
			s += " " + ev.Client.IPv4
		}
		if ev.Reason != "" {
			s += " (" + ev.Reason + ")"
		}
		got = append(got, s)
	}
	want := []string{"existing 13.8.0.10", "existing 13.8.0.2", "synced", "disconnected 13.8.0.2 (while the watch was reconnecting)", "connected 13.8.0.7"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("events:\n got %q\nwant %q", got, want)
	}
	for _, w := range []string{"watch: lost the stream from the controller at " + addr + ": it stopped leading (the leader is ctl-c); reconnecting for up to 5m0s",
		"watch: resumed at " + addr + " (0 changes meanwhile)", "watch: resumed at " + addr + " (2 changes meanwhile)"} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}
	if strings.Contains(errOut, "not the leader") || strings.Contains(errOut, "run the command again") {
		t.Errorf("misleading stderr:\n%s", errOut)
	}
}

// A watch that cannot get its stream back gives up after --reconnect-for,
// always with exit 3; one that never had a stream fails at once, as before.
func TestClientsWatchGivesUp(t *testing.T) {
	t.Parallel()
	ctrl := newController()
	ctrl.events, ctrl.watchEnd = []*cpv1.ClientEvent{}, status.Error(codes.Unavailable, "error reading from server: EOF")
	ctrl.beforeWatch = func(call int) {
		if call == 2 {
			ctrl.fail = map[string]error{"WatchClients": notLeaderError("")}
		}
	}
	addr := serve(t, ctrl, nil)
	start := time.Now()
	r := ctl(t, nil, "--controller", addr, "clients", "watch", "--reconnect-for", "700ms", "-o", "json").expect(t, exitUnreachable)
	if !strings.Contains(r.stderr, `gave up watching after 700ms without a stream from the controller: it stopped leading (no leader is elected right now)","code":3`) {
		t.Errorf("gave up: %q", r.stderr)
	}
	if strings.Count(r.stdout, "\n") != 3 || ctrl.count("WatchClients") < 3 {
		t.Errorf("stdout %q after %d calls", r.stdout, ctrl.count("WatchClients"))
	}
	if d := time.Since(start); d < 700*time.Millisecond {
		t.Errorf("gave up after %v", d)
	}
	ctl(t, nil, "--controller", addr, "clients", "watch", "--reconnect-for", "-1s").expect(t, exitUsage)
	// A permanent refusal after the stream was lost ends the watch with its
	// own code.
	denied := newController()
	denied.events, denied.watchEnd = []*cpv1.ClientEvent{}, status.Error(codes.Unavailable, "gone")
	denied.beforeWatch = func(call int) {
		if call == 2 {
			denied.fail = map[string]error{"WatchClients": status.Error(codes.PermissionDenied, "not you")}
		}
	}
	ctl(t, nil, "--controller", serve(t, denied, nil), "clients", "watch").expect(t, exitDenied)
}
