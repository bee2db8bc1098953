package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/controlplane/authz"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
	"github.com/fourover6/fourover6/test/pki"
	"github.com/fourover6/fourover6/test/topo"
)

// exitCode is the exit code of a finished command (-1: it did not run).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// TestPlaintextOffHostDialRefused: the data plane and 4over6ctl refuse to
// talk plaintext to a controller or data plane off this host, from flags and
// from the environment, without making a connection.
func TestPlaintextOffHostDialRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	// Something listens at the off-host address, in the client's
	// namespace, and counts who connects.
	addr := net.JoinHostPort(clientV6, "7000")
	ln, err := e.cli.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()

	run := func(env []string, bin string, args ...string) (string, int) {
		cmd := e.cli.Command(t.Context(), filepath.Join(binDir, bin), args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), exitCode(err)
	}
	for _, c := range []struct {
		env  []string
		bin  string
		args []string
		code int
	}{
		{nil, "4over6-dataplane", []string{"--controller", "[" + clientV6 + "]:7000", "--api", "unix://" + filepath.Join(e.dir, "x.sock")}, 2},
		{nil, "4over6-dataplane", []string{"--controller", "unix://" + e.ctlSock + "," + addr, "--api", "unix://" + filepath.Join(e.dir, "x.sock")}, 2},
		{nil, "4over6ctl", []string{"--controller", addr, "pool", "show"}, 2},
		{nil, "4over6ctl", []string{"--dataplane", addr, "dataplane", "status"}, 2},
		{[]string{"FOUROVER6_CONTROLLER=" + addr}, "4over6ctl", []string{"dns", "set", "192.0.2.1"}, 2},
		{[]string{"FOUROVER6_DATAPLANE=" + addr}, "4over6ctl", []string{"sessions", "list"}, 2},
	} {
		out, code := run(c.env, c.bin, c.args...)
		if code != c.code || !strings.Contains(out, "TLS") || !strings.Contains(out, "--tls-cert") || !strings.Contains(out, addr) {
			t.Errorf("%v %s %v: exit %d, want %d and a message naming %s and TLS:\n%s", c.env, c.bin, c.args, code, c.code, addr, out)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("%d connections were made to %s", n, addr)
	}
	// The listener was reachable all along: one dial gets counted.
	c, err := e.cli.Dial(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	e.waitFor("the control connection", func() bool { return accepted.Load() == 1 })
}

// tlsWorld is a controller and a data plane on TCP with mutual TLS: the
// controller at ctlAddr in the server namespace, the data plane in a
// namespace of its own (another host), its API at dpAPI.
type tlsWorld struct {
	*env
	ca             *pki.CA
	dpNS           *topo.NS
	ctlAddr, dpAPI string
	ctl, dp        *proc
}

const dpHostV6 = "fd00:47::2"

func newTLSWorld(t *testing.T) *tlsWorld {
	t.Helper()
	e := newEnv(t, envOptions{})
	w := &tlsWorld{env: e, ctlAddr: net.JoinHostPort(serverV6, "7101"), dpAPI: net.JoinHostPort(dpHostV6, "7102")}
	var err error
	if w.ca, err = pki.NewCA(t.TempDir(), "ca"); err != nil {
		t.Fatal(err)
	}
	if w.dpNS, err = topo.NewNS(topo.UniqueName("h")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.dpNS.Delete)
	for _, err := range []error{
		topo.Veth(e.srv, "v6h", w.dpNS, "v6s"),
		e.srv.AddAddr("v6h", "fd00:47::1/64"),
		w.dpNS.AddAddr("v6s", dpHostV6+"/64"),
		w.dpNS.Exec("ip", "-6", "route", "add", "fd00:46::/64", "via", "fd00:47::1"),
		e.srv.Sysctl("net.ipv6.conf.all.forwarding", "1"),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	srvCert, err := w.ca.Issue("controller", net.ParseIP(serverV6))
	if err != nil {
		t.Fatal(err)
	}
	dpCert, err := w.ca.IssueRole(authz.RoleDataplane, "dp-tls", net.ParseIP(dpHostV6))
	if err != nil {
		t.Fatal(err)
	}
	w.ctl = e.start(e.srv, "4over6-controller", append([]string{"--listen", w.ctlAddr, "--state", filepath.Join(e.dir, "tls.db"),
		"--controller-id", "tls", "--log-format", "json"}, tlsArgs(srvCert)...)...)
	w.dp = e.start(w.dpNS, "4over6-dataplane", append([]string{"--id", "dp-tls", "--controller", w.ctlAddr, "--api", w.dpAPI,
		"--tun", "4o6t", "--log-format", "json"}, tlsArgs(dpCert)...)...)
	op := w.issue(t, authz.RoleOperator, "matrix-operator")
	e.waitFor("the TLS data plane registered and serving its API", func() bool {
		out, _, code := w.ctlAs(op, "dataplanes", "list", "-o", "json")
		if code != 0 || !strings.Contains(out, "dp-tls") {
			return false
		}
		_, _, code = w.ctlAs(op, "--dataplane", w.dpAPI, "dataplane", "status")
		return code == 0
	})
	return w
}

func tlsArgs(f pki.Files) []string {
	return []string{"--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA}
}

func (w *tlsWorld) issue(t *testing.T, r authz.Role, name string) pki.Files {
	t.Helper()
	f, err := w.ca.IssueRole(r, name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// ctlAs runs 4over6ctl in the server namespace against the TLS daemons.
func (w *tlsWorld) ctlAs(f pki.Files, args ...string) (stdout, stderr string, code int) {
	full := append(append([]string{"--controller", w.ctlAddr, "--dataplane", w.dpAPI, "--timeout", "5s"}, tlsArgs(f)...), args...)
	cmd := w.srv.Command(context.Background(), filepath.Join(binDir, "4over6ctl"), full...)
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	code = exitCode(cmd.Run())
	return o.String(), er.String(), code
}

// grpcConn dials addr from the server namespace over mutual TLS with f.
func (w *tlsWorld) grpcConn(t *testing.T, addr string, f pki.Files) *grpc.ClientConn {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := os.ReadFile(f.CA)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS13})),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return w.srv.Dial(ctx, "tcp", a) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestRoleMatrix: each role (dataplane, operator, viewer, none) against
// each class of call (lease service, read, write; status) on both real
// daemons, over mutual TLS on real TCP sockets between namespaces.
func TestRoleMatrix(t *testing.T) {
	t.Parallel()
	w := newTLSWorld(t)
	type call struct {
		name, class string
		daemon      int // 0 controller, 1 data plane
		do          func(ctx context.Context, cc *grpc.ClientConn) error
	}
	calls := []call{
		{"LeaseService/Heartbeat", "lease", 0, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := cpv1.NewLeaseServiceClient(cc).Heartbeat(ctx, &cpv1.HeartbeatRequest{DataplaneId: "matrix", InstanceId: "x"})
			return err
		}},
		{"ControllerService/GetStatus", "status", 0, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := cpv1.NewControllerServiceClient(cc).GetStatus(ctx, &cpv1.GetStatusRequest{})
			return err
		}},
		{"ControllerService/GetPool", "read", 0, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := cpv1.NewControllerServiceClient(cc).GetPool(ctx, &cpv1.GetPoolRequest{})
			return err
		}},
		{"ControllerService/ListDataplanes", "read", 0, func(ctx context.Context, cc *grpc.ClientConn) error {
			s, err := cpv1.NewControllerServiceClient(cc).ListDataplanes(ctx, &cpv1.ListDataplanesRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		}},
		{"ControllerService/SetLogLevel", "write", 0, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := cpv1.NewControllerServiceClient(cc).SetLogLevel(ctx, &cpv1.SetLogLevelRequest{Level: "info"})
			return err
		}},
		{"Health/Check", "status", 1, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}},
		{"DataplaneService/GetStatus", "read", 1, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := dpv1.NewDataplaneServiceClient(cc).GetStatus(ctx, &dpv1.GetStatusRequest{})
			return err
		}},
		{"DataplaneService/SetLogLevel", "write", 1, func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := dpv1.NewDataplaneServiceClient(cc).SetLogLevel(ctx, &dpv1.SetLogLevelRequest{Level: "info"})
			return err
		}},
	}
	allowed := map[string]map[string]bool{
		"dataplane": {"lease": true, "status": true},
		"viewer":    {"status": true, "read": true},
		"operator":  {"lease": true, "status": true, "read": true, "write": true},
		"none":      {},
	}
	certs := map[string]pki.Files{
		"dataplane": w.issue(t, authz.RoleDataplane, "m-dataplane"),
		"viewer":    w.issue(t, authz.RoleViewer, "m-viewer"),
		"operator":  w.issue(t, authz.RoleOperator, "m-operator"),
	}
	none, err := w.ca.Issue("m-none")
	if err != nil {
		t.Fatal(err)
	}
	certs["none"] = none
	for role, f := range certs {
		ccs := [2]*grpc.ClientConn{w.grpcConn(t, w.ctlAddr, f), w.grpcConn(t, w.dpAPI, f)}
		for _, c := range calls {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			err := c.do(ctx, ccs[c.daemon])
			cancel()
			code := status.Code(err)
			switch {
			case allowed[role][c.class] && code == codes.PermissionDenied:
				t.Errorf("%s calling %s (%s): refused: %v", role, c.name, c.class, err)
			case allowed[role][c.class] && (code == codes.Unavailable || code == codes.Unimplemented):
				t.Errorf("%s calling %s (%s): %v", role, c.name, c.class, err)
			case !allowed[role][c.class] && code != codes.PermissionDenied:
				t.Errorf("%s calling %s (%s): %v, want PERMISSION_DENIED", role, c.name, c.class, err)
			case code == codes.PermissionDenied && !strings.Contains(status.Convert(err).Message(), `certificate "CN=m-`+role+`"`):
				t.Errorf("%s calling %s: the denial does not name the caller: %v", role, c.name, err)
			}
		}
	}

	// A data plane holding a viewer's certificate cannot register: a
	// configuration error (exit 2, not restarted).
	viewer := certs["viewer"]
	out, err := w.dpNS.Command(t.Context(), filepath.Join(binDir, "4over6-dataplane"), append([]string{"--id", "dp-viewer",
		"--controller", w.ctlAddr, "--api", "unix://" + filepath.Join(w.dir, "viewer-dp.sock"), "--tun", "4o6v",
		"--listen", "[::]:5679"}, tlsArgs(viewer)...)...).CombinedOutput() // its own port: the listener opens before it registers
	if exitCode(err) != 2 || !strings.Contains(string(out), "RegisterDataplane needs the dataplane or operator role") {
		t.Errorf("a data plane with a viewer's certificate: %v\n%s", err, out)
	}
	// Through the CLI, a refusal is exit 5 and names both roles.
	_, errOut, code := w.ctlAs(viewer, "dns", "set", "192.0.2.1")
	if code != 5 || !strings.Contains(errOut, "permission denied") || !strings.Contains(errOut, "needs the operator role") || !strings.Contains(errOut, "has the viewer role") {
		t.Errorf("viewer's dns set: exit %d: %s", code, errOut)
	}
	if _, errOut, code := w.ctlAs(viewer, "status"); code != 0 {
		t.Errorf("viewer's status: exit %d: %s", code, errOut)
	}
}

// asUser runs 4over6ctl against the env's unix sockets with other
// credentials.
func (e *env) ctlAsUser(cred *syscall.Credential, args ...string) (string, int) {
	full := append([]string{"--controller", "unix://" + e.ctlSock, "--dataplane", "unix://" + e.dpSock}, args...)
	cmd := exec.Command(filepath.Join(binDir, "4over6ctl"), full...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.CombinedOutput()
	return string(out), exitCode(err)
}

// TestUnixSocketRoles: on the daemons' unix sockets, root is an operator,
// a member of the socket's group too, and anyone else who gets to connect
// is a viewer; the real 4over6ctl, run as nobody, says so with exit 5.
func TestUnixSocketRoles(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{controllerArgs: []string{"--log-format", "json"}})
	// The daemons set their sockets' mode once listening: change it after
	// both answer.
	e.dpStatus()
	e.pool()
	// Let others reach the sockets and run the binary.
	for _, d := range []string{binDir, filepath.Dir(e.dir), e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const group = 4646
	for _, s := range []string{e.ctlSock, e.dpSock} {
		if err := os.Chown(s, 0, group); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(s, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	member := &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{group}}
	for _, c := range []struct {
		who  string
		cred *syscall.Credential
		args []string
		code int
	}{
		{"root", nil, []string{"dns", "set", "192.0.2.1"}, 0},
		{"root", nil, []string{"dataplane", "log-level", "info"}, 0},
		{"nobody", nobody, []string{"pool", "show"}, 0},
		{"nobody", nobody, []string{"dataplane", "status"}, 0},
		{"nobody", nobody, []string{"status"}, 0},
		{"nobody", nobody, []string{"dns", "set", "192.0.2.2"}, 5},
		{"nobody", nobody, []string{"dataplane", "log-level", "debug"}, 5},
		{"nobody", nobody, []string{"dataplane", "drain", "dp1"}, 5},
		{"member", member, []string{"dns", "set", "192.0.2.3"}, 0},
		{"member", member, []string{"dataplane", "log-level", "info"}, 0},
	} {
		var out string
		var code int
		if c.cred == nil {
			o, er, cd := e.ctl(c.args...)
			out, code = o+er, cd
		} else {
			out, code = e.ctlAsUser(c.cred, c.args...)
		}
		if code != c.code {
			t.Errorf("%s: %v: exit %d, want %d: %s", c.who, c.args, code, c.code, out)
		}
		if c.code == 5 && (!strings.Contains(out, "uid 65534, gid 65534") || !strings.Contains(out, "has the viewer role") ||
			!strings.Contains(out, "group 4646")) {
			t.Errorf("%s: %v: the denial does not explain itself: %s", c.who, c.args, out)
		}
	}
	var dns DNSOut
	e.ctlJSON(&dns, "dns", "show")
	if len(dns.Servers) == 0 || dns.Servers[0] != "192.0.2.3" {
		t.Errorf("DNS after the member's change: %v (nobody's must not have landed)", dns.Servers)
	}
}

// DNSOut is dns show's output.
type DNSOut struct {
	Servers []string `json:"servers"`
}

// auditLines reads a daemon's JSON log and returns its audit lines.
func auditLines(t *testing.T, p *proc) []map[string]any {
	t.Helper()
	f, err := os.Open(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == "audit" {
			out = append(out, m)
		}
	}
	return out
}

// field reads a dotted path ("request.reservation.client") of a log line.
func field(m map[string]any, path string) any {
	var v any = m
	for _, k := range strings.Split(path, ".") {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

// TestAuditEveryChange walks every state-changing 4over6ctl command through
// the real daemons and finds its audit line: who (the unix peer's uid, gid
// and pid, and its role), what (the method and the request's fields), and
// the result.
func TestAuditEveryChange(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{
		controllerArgs: []string{"--log-format", "json"},
		dataplaneArgs:  []string{"--log-format", "json", "--report-interval", "200ms"},
	})
	ctlProc, dpProc := e.procs[0], e.procs[1]
	first, second := e.dialLab(), e.dialLab()
	a1, a2 := first.lease().Addr.String(), second.lease().Addr.String()
	e.waitFor("both clients in the client table", func() bool { return len(e.clients()) == 2 })

	applyFile := filepath.Join(e.dir, "apply.yaml")
	if err := os.WriteFile(applyFile, []byte("pool:\n  range: 13.8.0.2-13.8.0.220\ndns: [192.0.2.61]\nreservations:\n  - client: fd00:46::77\n    ipv4: 13.8.0.77\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	type want struct {
		method string
		fields map[string]any // dotted path -> value
		result string
	}
	for _, c := range []struct {
		args   []string
		daemon *proc
		wants  []want
	}{
		// At warn the audit lines (INFO) are still written.
		{[]string{"log-level", "warn"}, ctlProc, []want{{"SetLogLevel", map[string]any{"request.level": "warn"}, "ok"}}},
		{[]string{"dataplane", "log-level", "warn"}, dpProc, []want{{"SetLogLevel", map[string]any{"request.level": "warn"}, "ok"}}},
		{[]string{"pool", "set-range", "13.8.0.2-13.8.0.200"}, ctlProc, []want{{"UpdatePool",
			map[string]any{"request.range_first": "13.8.0.2", "request.range_last": "13.8.0.200"}, "ok"}}},
		{[]string{"dns", "set", "192.0.2.51,192.0.2.52"}, ctlProc, []want{{"SetDNS",
			map[string]any{"request.servers": []any{"192.0.2.51", "192.0.2.52"}}, "ok"}}},
		{[]string{"reservations", "set", "fd00:46::99", "13.8.0.99"}, ctlProc, []want{{"SetReservation",
			map[string]any{"request.reservation.client": "fd00:46::99", "request.reservation.address": "13.8.0.99"}, "ok"}}},
		{[]string{"reservations", "delete", "fd00:46::99"}, ctlProc, []want{{"DeleteReservation",
			map[string]any{"request.client": "fd00:46::99"}, "ok"}}},
		{[]string{"dataplane", "drain", "dp1"}, ctlProc, []want{{"DrainDataplane",
			map[string]any{"request.dataplane_id": "dp1", "request.draining": true}, "ok"}}},
		{[]string{"dataplane", "undrain", "dp1"}, ctlProc, []want{{"DrainDataplane",
			map[string]any{"request.dataplane_id": "dp1", "request.draining": false}, "ok"}}},
		{[]string{"clients", "kick", a1, "--reason", "audit test"}, ctlProc, []want{{"KickClient",
			map[string]any{"request.address": a1, "request.reason": "audit test"}, "ok"}}},
		{[]string{"clients", "kick", "13.8.0.199"}, ctlProc, []want{{"KickClient",
			map[string]any{"request.address": "13.8.0.199"}, "not_found"}}},
		{[]string{"clients", "capture", a2, "--duration", "200ms", "-w", filepath.Join(e.dir, "audit.pcapng")}, dpProc, []want{{"CaptureClient",
			map[string]any{"request.address": a2, "request.duration_ms": "200"}, "ok"}}},
		{[]string{"sessions", "kick", a2}, dpProc, []want{{"KickSession", map[string]any{"request.address": a2}, "ok"}}},
		{[]string{"apply", "-f", applyFile}, ctlProc, []want{
			{"UpdatePool", map[string]any{"request.range_last": "13.8.0.220"}, "ok"},
			{"SetDNS", map[string]any{"request.servers": []any{"192.0.2.61"}}, "ok"},
			{"SetReservation", map[string]any{"request.reservation.client": "fd00:46::77"}, "ok"},
		}},
		{[]string{"log-level", "info"}, ctlProc, []want{{"SetLogLevel", map[string]any{"request.level": "info"}, "ok"}}},
		{[]string{"dataplane", "log-level", "info"}, dpProc, []want{{"SetLogLevel", map[string]any{"request.level": "info"}, "ok"}}},
	} {
		before := len(auditLines(t, c.daemon))
		if _, errOut, code := e.ctl(c.args...); code != 0 && c.wants[0].result == "ok" {
			t.Fatalf("%v: exit %d: %s", c.args, code, errOut)
		}
		var lines []map[string]any
		e.waitFor("the audit lines of "+strings.Join(c.args, " "), func() bool {
			lines = auditLines(t, c.daemon)[before:]
			return len(lines) >= len(c.wants)
		})
		if len(lines) != len(c.wants) {
			t.Errorf("%v: %d audit lines, want %d: %v", c.args, len(lines), len(c.wants), lines)
			continue
		}
		used := map[int]bool{}
		for _, w := range c.wants {
			var l map[string]any
			for i, cand := range lines {
				if !used[i] && cand["method"] == w.method {
					used[i], l = true, cand
					break
				}
			}
			if l == nil {
				t.Errorf("%v: no audit line for %s in %v", c.args, w.method, lines)
				continue
			}
			if l["level"] != "info" || l["result"] != w.result {
				t.Errorf("%v: audit line %v, want level INFO and result %s", c.args, l, w.result)
			}
			for path, v := range map[string]any{"who.role": "operator", "who.via": "unix", "who.uid": float64(0), "who.gid": float64(0)} {
				if got := field(l, path); got != v {
					t.Errorf("%v: %s = %v, want %v", c.args, path, got, v)
				}
			}
			if pid, _ := field(l, "who.pid").(float64); pid <= 0 {
				t.Errorf("%v: no pid in %v", c.args, l)
			}
			for path, v := range w.fields {
				got, _ := json.Marshal(field(l, path))
				exp, _ := json.Marshal(v)
				if !bytes.Equal(got, exp) {
					t.Errorf("%v: %s = %s, want %s (line %v)", c.args, path, got, exp, l)
				}
			}
		}
	}
	// Reads are not audited; neither are the data plane's lease calls (it
	// allocated, reported and heartbeated all along).
	for _, l := range append(auditLines(t, ctlProc), auditLines(t, dpProc)...) {
		switch l["method"] {
		case "AllocateAddress", "ReleaseAddress", "ReportSessions", "Heartbeat", "RegisterDataplane", "WatchCommands",
			"GetPool", "ListClients", "GetStatus", "GetDNS", "ListSessions":
			t.Errorf("audited: %v", l)
		}
	}
}
