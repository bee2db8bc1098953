package authz_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/controlplane/authz"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
	"github.com/fourover6/fourover6/test/pki"
)

// fakeController answers the calls the tests make; everything else is
// Unimplemented, which tells an allowed call from a refused one.
type fakeController struct {
	cpv1.UnimplementedControllerServiceServer
}

func (fakeController) SetDNS(_ context.Context, r *cpv1.SetDNSRequest) (*cpv1.SetDNSResponse, error) {
	return &cpv1.SetDNSResponse{Servers: r.GetServers(), Changed: true}, nil
}

func (fakeController) SetLogLevel(_ context.Context, r *cpv1.SetLogLevelRequest) (*cpv1.SetLogLevelResponse, error) {
	if r.GetLevel() == "bogus" {
		return nil, status.Error(codes.InvalidArgument, "bogus is not a level")
	}
	return &cpv1.SetLogLevelResponse{Previous: "info"}, nil
}

func (fakeController) GetStatus(context.Context, *cpv1.GetStatusRequest) (*cpv1.GetStatusResponse, error) {
	return &cpv1.GetStatusResponse{Status: &cpv1.ControllerStatus{Leader: true}}, nil
}

func (fakeController) Backup(_ *cpv1.BackupRequest, s grpc.ServerStreamingServer[cpv1.BackupResponse]) error {
	return s.Send(&cpv1.BackupResponse{})
}

type fakeLease struct {
	cpv1.UnimplementedLeaseServiceServer
}

type fakeDataplane struct {
	dpv1.UnimplementedDataplaneServiceServer
}

func (fakeDataplane) SetDraining(_ context.Context, r *dpv1.SetDrainingRequest) (*dpv1.SetDrainingResponse, error) {
	return &dpv1.SetDrainingResponse{Draining: r.GetDraining()}, nil
}

// syncBuffer collects log lines written from the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines decodes the JSON log lines with msg.
func (s *syncBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// server is a guarded gRPC server with the services of one daemon, as
// the daemons register them.
type server struct {
	addr  string
	guard *authz.Guard
	logs  *syncBuffer
}

type daemon int

const (
	controllerDaemon daemon = iota
	dataplaneDaemon
)

func startServer(t *testing.T, ln net.Listener, creds grpc.ServerOption, d daemon) *server {
	t.Helper()
	return startServerAt(t, ln, creds, d, slog.LevelInfo)
}

// startServerAt is startServer with the logger at level.
func startServerAt(t *testing.T, ln net.Listener, creds grpc.ServerOption, d daemon, level slog.Level) *server {
	t.Helper()
	s := &server{addr: ln.Addr().String(), logs: &syncBuffer{}}
	log := slog.New(slog.NewJSONHandler(s.logs, &slog.HandlerOptions{Level: level}))
	var gs *grpc.Server
	if d == controllerDaemon {
		s.guard = authz.New(log, &cpv1.ControllerService_ServiceDesc, &cpv1.LeaseService_ServiceDesc, &healthpb.Health_ServiceDesc)
		gs = grpc.NewServer(append([]grpc.ServerOption{creds}, s.guard.ServerOptions()...)...)
		cpv1.RegisterControllerServiceServer(gs, fakeController{})
		cpv1.RegisterLeaseServiceServer(gs, fakeLease{})
	} else {
		s.guard = authz.New(log, &dpv1.DataplaneService_ServiceDesc, &healthpb.Health_ServiceDesc)
		gs = grpc.NewServer(append([]grpc.ServerOption{creds}, s.guard.ServerOptions()...)...)
		dpv1.RegisterDataplaneServiceServer(gs, fakeDataplane{})
	}
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return s
}

// call is one call of each class, to one of the daemons.
type call struct {
	name   string
	class  string
	daemon daemon
	do     func(ctx context.Context, cc *grpc.ClientConn) error
}

var calls = []call{
	{"LeaseService/Heartbeat", "lease", controllerDaemon, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := cpv1.NewLeaseServiceClient(cc).Heartbeat(ctx, &cpv1.HeartbeatRequest{DataplaneId: "dp1"})
		return err
	}},
	{"ControllerService/GetStatus", "status", controllerDaemon, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := cpv1.NewControllerServiceClient(cc).GetStatus(ctx, &cpv1.GetStatusRequest{})
		return err
	}},
	{"Health/Check", "status", dataplaneDaemon, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}},
	{"ControllerService/ListClients", "read", controllerDaemon, func(ctx context.Context, cc *grpc.ClientConn) error {
		s, err := cpv1.NewControllerServiceClient(cc).ListClients(ctx, &cpv1.ListClientsRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}},
	{"DataplaneService/GetStatus", "read", dataplaneDaemon, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := dpv1.NewDataplaneServiceClient(cc).GetStatus(ctx, &dpv1.GetStatusRequest{})
		return err
	}},
	{"ControllerService/SetDNS", "change", controllerDaemon, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := cpv1.NewControllerServiceClient(cc).SetDNS(ctx, &cpv1.SetDNSRequest{Servers: []string{"192.0.2.53"}})
		return err
	}},
	{"DataplaneService/SetDraining", "change", dataplaneDaemon, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := dpv1.NewDataplaneServiceClient(cc).SetDraining(ctx, &dpv1.SetDrainingRequest{Draining: false})
		return err
	}},
}

// matrix is who may call which class.
var matrix = map[authz.Role]map[string]bool{
	authz.RoleDataplane: {"lease": true, "status": true},
	authz.RoleViewer:    {"status": true, "read": true},
	authz.RoleOperator:  {"lease": true, "status": true, "read": true, "change": true},
	authz.RoleNone:      {},
}

// checkCalls makes every call on its daemon's connection and checks it
// against the matrix for role: refused with PERMISSION_DENIED, or let
// through (then it gets the fake's answer: OK or UNIMPLEMENTED).
func checkCalls(t *testing.T, who string, role authz.Role, ccs [2]*grpc.ClientConn) {
	t.Helper()
	for _, c := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.do(ctx, ccs[c.daemon])
		cancel()
		code := status.Code(err)
		if matrix[role][c.class] {
			if code == codes.PermissionDenied || (code != codes.OK && code != codes.Unimplemented && code != codes.NotFound) {
				t.Errorf("%s (%s) calling %s (%s): %v, want it let through", who, role, c.name, c.class, err)
			}
			continue
		}
		if code != codes.PermissionDenied {
			t.Errorf("%s (%s) calling %s (%s): %v, want PERMISSION_DENIED", who, role, c.name, c.class, err)
			continue
		}
		msg := status.Convert(err).Message()
		want := "the " + role.String() + " role"
		if role == authz.RoleNone {
			want = "no role"
		}
		if !strings.Contains(msg, c.name+" needs ") || !strings.Contains(msg, want) {
			t.Errorf("%s calling %s: denial %q does not name the method, the role needed and %q", who, c.name, msg, want)
		}
	}
}

func tlsDial(t *testing.T, addr string, f pki.Files) *grpc.ClientConn {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := os.ReadFile(f.CA)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13,
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestRoleMatrixOverMutualTLS: each role's certificate against each class
// of call, on a real TLS socket; denials name both roles; Change calls are
// audited with who, what and the result, allowed or not, and counted.
func TestRoleMatrixOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.Issue("server", net.ParseIP("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	kp, _ := tls.LoadX509KeyPair(srvCert.Cert, srvCert.Key)
	pem, _ := os.ReadFile(ca.CA())
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	var servers [2]*server
	for _, d := range []daemon{controllerDaemon, dataplaneDaemon} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		servers[d] = startServer(t, ln, grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{kp}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13,
		})), d)
	}
	dial := func(f pki.Files) [2]*grpc.ClientConn {
		return [2]*grpc.ClientConn{tlsDial(t, servers[0].addr, f), tlsDial(t, servers[1].addr, f)}
	}

	for _, r := range authz.Roles {
		f, err := ca.IssueRole(r, "who-"+r.String())
		if err != nil {
			t.Fatal(err)
		}
		checkCalls(t, "who-"+r.String(), r, dial(f))
	}
	odd := map[string][]string{
		"no-role":  nil,
		"unknown":  {"fourover6://role/admin"},
		"two":      {"fourover6://role/viewer", "fourover6://role/operator"},
		"look-alk": {"https://role/operator"},
	}
	for name, uris := range odd {
		var us []*url.URL
		for _, s := range uris {
			u, _ := url.Parse(s)
			us = append(us, u)
		}
		f, err := ca.IssueLeaf(name, pki.Leaf{URIs: us})
		if err != nil {
			t.Fatal(err)
		}
		checkCalls(t, name, authz.RoleNone, dial(f))
	}

	// The audit: a line per Change call, allowed (operator) or refused.
	audits := append(servers[0].logs.lines(t, "audit"), servers[1].logs.lines(t, "audit")...)
	var okDNS, deniedDNS, undrain int
	for _, a := range audits {
		who, _ := a["who"].(map[string]any)
		req, _ := a["request"].(map[string]any)
		if a["level"] != "INFO" || who == nil || who["via"] != "tls" || !strings.HasPrefix(who["subject"].(string), "CN=") {
			t.Errorf("audit line without who: %v", a)
		}
		switch {
		case a["method"] == "SetDNS" && a["service"] == "fourover6.controlplane.v1.ControllerService":
			if servers, _ := req["servers"].([]any); len(servers) != 1 || servers[0] != "192.0.2.53" {
				t.Errorf("audit of SetDNS without its servers: %v", a)
			}
			switch a["result"] {
			case "ok":
				okDNS++
				if who["role"] != "operator" || who["subject"] != "CN=who-operator" {
					t.Errorf("SetDNS ok by %v", who)
				}
			case "permission_denied":
				deniedDNS++
				if !strings.Contains(a["error"].(string), "needs the operator role") {
					t.Errorf("denied audit line: %v", a)
				}
			default:
				t.Errorf("SetDNS result %v", a["result"])
			}
		case a["method"] == "SetDraining":
			if d, ok := req["draining"].(bool); !ok || d {
				t.Errorf("an undrain is logged without draining=false: %v", a)
			}
			undrain++
		default:
			t.Errorf("unexpected audit line %v", a)
		}
	}
	// 3 roles + 4 odd certificates make SetDNS and SetDraining once each.
	if okDNS != 1 || deniedDNS != 6 || undrain != 7 {
		t.Errorf("audit lines: SetDNS ok %d, denied %d; SetDraining %d", okDNS, deniedDNS, undrain)
	}
	// Refused reads are logged too (WARN), but are not audit lines.
	if refused := servers[0].logs.lines(t, "call refused"); len(refused) == 0 {
		t.Error("refused reads are not logged")
	}
	for d, want := range []map[string]uint64{
		{"SetDNS ok": 1, "SetDNS permission_denied": 6, "KickClient ok": 0, "Backup ok": 0, "SetLogLevel ok": 0, "RemoveDataplane ok": 0},
		{"SetDraining ok": 1, "SetDraining permission_denied": 6, "KickSession ok": 0, "SetLogLevel ok": 0},
	} {
		counts := map[string]uint64{}
		for _, c := range servers[d].guard.AuditCounts() {
			counts[c.Method+" "+c.Result] = c.N
		}
		for k, n := range want {
			if got, ok := counts[k]; !ok || got != n {
				t.Errorf("daemon %d: audit count %q = %d (present %v), want %d", d, k, got, ok, n)
			}
		}
		for k := range counts {
			for _, notAudited := range []string{"AllocateAddress", "Heartbeat", "GetStatus", "ListClients", "ListSessions", "Check"} {
				if strings.HasPrefix(k, notAudited+" ") {
					t.Errorf("daemon %d counts %s as audited", d, k)
				}
			}
		}
	}
}

// A failing Change call is audited with its code, a server-streaming one
// with its request, whatever the log level.
func TestAuditResultsAndStreams(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", dir+"/api.sock")
	if err != nil {
		t.Fatal(err)
	}
	// At level error: the audit lines are written all the same.
	s := startServerAt(t, ln, grpc.Creds(authz.LocalCredentials()), controllerDaemon, slog.LevelError)
	cc, err := grpc.NewClient("unix://"+dir+"/api.sock", grpc.WithTransportCredentials(authz.LocalCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()
	ctl := cpv1.NewControllerServiceClient(cc)
	if _, err := ctl.SetLogLevel(ctx, &cpv1.SetLogLevelRequest{Level: "bogus"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("SetLogLevel bogus: %v", err)
	}
	st, err := ctl.Backup(ctx, &cpv1.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := st.Recv(); err != nil {
			break
		}
	}
	if _, err := cpv1.NewLeaseServiceClient(cc).AllocateAddress(ctx, &cpv1.AllocateAddressRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("AllocateAddress: %v", err)
	}
	var sawLevel, sawBackup bool
	for _, a := range s.logs.lines(t, "audit") {
		who := a["who"].(map[string]any)
		if who["via"] != "unix" || who["role"] != "operator" || who["uid"] != float64(os.Geteuid()) || who["pid"] != float64(os.Getpid()) {
			t.Errorf("who of a unix peer: %v", who)
		}
		switch a["method"] {
		case "SetLogLevel":
			sawLevel = a["result"] == "invalid_argument" && a["error"] == "bogus is not a level" &&
				a["request"].(map[string]any)["level"] == "bogus"
		case "Backup":
			sawBackup = a["result"] == "ok"
		default:
			t.Errorf("unexpected audit line %v", a)
		}
	}
	if !sawLevel || !sawBackup {
		t.Errorf("audit lines (SetLogLevel %v, Backup %v):\n%s", sawLevel, sawBackup, s.logs.b.String())
	}
}

func TestResult(t *testing.T) {
	for c, want := range map[codes.Code]string{codes.OK: "ok", codes.PermissionDenied: "permission_denied",
		codes.NotFound: "not_found", codes.Unavailable: "unavailable", codes.FailedPrecondition: "failed_precondition"} {
		if got := authz.Result(c); got != want {
			t.Errorf("Result(%v) = %q, want %q", c, got, want)
		}
	}
}
