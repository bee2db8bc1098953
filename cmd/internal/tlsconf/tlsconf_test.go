package tlsconf

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/authz"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	"github.com/fourover6/fourover6/test/pki"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// writePKI makes a CA and a leaf it signs (usable as server and client),
// and a leaf from another CA that trusts the first CA's server.
func writePKI(t *testing.T) (good, rogue Files) {
	t.Helper()
	ca, err := pki.NewCA(t.TempDir(), "ca")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("leaf", net.ParseIP("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA(t.TempDir(), "otherca")
	if err != nil {
		t.Fatal(err)
	}
	r, err := other.Issue("rogue")
	if err != nil {
		t.Fatal(err)
	}
	return Files(leaf), Files{Cert: r.Cert, Key: r.Key, CA: ca.CA()}
}

func TestRequireFor(t *testing.T) {
	var none Files
	for _, a := range []string{"unix:///run/x.sock", "127.0.0.1:1", "[::1]:1", "localhost:1"} {
		ep, _ := endpoint.Parse(a)
		if err := none.RequireFor("--listen", ep); err != nil {
			t.Errorf("%s needs no TLS: %v", a, err)
		}
	}
	for _, a := range []string{"0.0.0.0:1", "[::]:1", "192.0.2.1:1"} {
		ep, _ := endpoint.Parse(a)
		err := none.RequireFor("--api", ep)
		if err == nil || !strings.Contains(err.Error(), "--api") || !strings.Contains(err.Error(), "--tls-cert") {
			t.Errorf("%s without TLS: %v", a, err)
		}
	}
	if err := (Files{Cert: "x"}).Validate(); err == nil {
		t.Error("a lone --tls-cert accepted")
	}
}

// Dialing plaintext off loopback is refused with a message that names the
// address and the fix; loopback, unix sockets and TLS are fine.
func TestRequireForDial(t *testing.T) {
	var none Files
	fix := "--tls-cert, --tls-key and --tls-ca"
	for _, a := range []string{"unix:///run/x.sock", "127.0.0.1:7000", "[::1]:7000", "localhost:7000"} {
		ep, _ := endpoint.Parse(a)
		if err := none.RequireForDial("--controller "+a, ep, fix); err != nil {
			t.Errorf("%s needs no TLS: %v", a, err)
		}
	}
	for _, a := range []string{"[fd00:46::2]:7000", "192.0.2.1:7000", "ctl.example.net:7000", "[::]:7000"} {
		ep, _ := endpoint.Parse(a)
		err := none.RequireForDial("--controller "+a, ep, fix)
		if err == nil || !strings.Contains(err.Error(), "--controller "+a) || !strings.Contains(err.Error(), "TLS") || !strings.Contains(err.Error(), fix) {
			t.Errorf("%s without TLS: %v", a, err)
		}
		if err := (Files{Cert: "c", Key: "k", CA: "ca"}).RequireForDial("--controller", ep, fix); err != nil {
			t.Errorf("%s with TLS: %v", a, err)
		}
	}
}

// Without TLS files the server learns its peers' credentials (the unix
// socket rule of controlplane/authz), rather than knowing nothing of them.
func TestPlaintextServerKnowsItsPeers(t *testing.T) {
	opt, err := Files{}.ServerOption()
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan authz.Peer, 1)
	gs := grpc.NewServer(opt, grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		got <- authz.PeerFrom(ctx)
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(ln)
	defer gs.Stop()
	dopt, _ := Files{}.DialOption()
	cc, err := grpc.NewClient("unix://"+sock, dopt)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if p := <-got; p.Via != authz.ViaUnix || p.UID != os.Geteuid() || p.PID != os.Getpid() {
		t.Fatalf("peer %+v", p)
	}
}

func TestMutualTLS(t *testing.T) {
	good, rogue := writePKI(t)
	sopt, err := good.ServerOption()
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(sopt)
	healthpb.RegisterHealthServer(gs, health.NewServer())
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go gs.Serve(ln)
	defer gs.Stop()

	check := func(f Files) error {
		dopt, err := f.DialOption()
		if err != nil {
			return err
		}
		cc, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), dopt)
		if err != nil {
			return err
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := check(good); err != nil {
		t.Fatalf("client with a certificate from the CA: %v", err)
	}
	if err := check(rogue); err == nil {
		t.Fatal("client with a certificate from another CA got in")
	}
	if err := check(Files{}); err == nil {
		t.Fatal("plaintext client got in")
	}
	if _, err := (Files{Cert: good.Cert, Key: good.Key, CA: "/nonexistent"}).ServerOption(); err == nil || !strings.Contains(err.Error(), "--tls-ca") {
		t.Fatalf("missing CA: %v", err)
	}
}
