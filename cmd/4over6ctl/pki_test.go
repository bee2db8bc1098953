package main

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/fourover6/fourover6/cmd/internal/tlsconf"
	"github.com/fourover6/fourover6/controlplane/authz"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestPKI: init makes a CA, issue signs role certificates with it; keys
// are 0600, nothing is overwritten, mistakes are usage errors.
func TestPKI(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pki")
	r := ctl(t, nil, "pki", "init", dir, "-o", "json").expect(t, 0)
	var ca PKICA
	if err := json.Unmarshal([]byte(r.stdout), &ca); err != nil {
		t.Fatalf("%v: %s", err, r.stdout)
	}
	caCert := readCert(t, ca.Cert)
	if !caCert.IsCA || caCert.Subject.CommonName != "fourover6 CA" || ca.Key != filepath.Join(dir, "ca-key.pem") {
		t.Fatalf("CA %+v", ca)
	}
	if m := mode(t, ca.Key); m != 0o600 {
		t.Errorf("CA key mode %o", m)
	}
	if m := mode(t, dir); m != 0o700 {
		t.Errorf("CA dir mode %o", m)
	}
	if r := ctl(t, nil, "pki", "init", dir).expect(t, 1); !strings.Contains(r.stderr, "exists") {
		t.Errorf("second init: %q", r.stderr)
	}

	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	out := filepath.Join(t.TempDir(), "out")
	for _, c := range []struct {
		args []string
		role authz.Role
		uses []x509.ExtKeyUsage
		ips  []string
		dns  []string
	}{
		{[]string{"controller", "ctl1", "--ip", "2001:db8::10,127.0.0.1", "--dns", "ctl1.example.net"}, authz.RoleNone,
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []string{"2001:db8::10", "127.0.0.1"}, []string{"ctl1.example.net"}},
		{[]string{"dataplane", "dp1", "--ip", "2001:db8::21"}, authz.RoleDataplane,
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, []string{"2001:db8::21"}, nil},
		{[]string{"operator", "alice"}, authz.RoleOperator, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil},
		{[]string{"viewer", "grafana", "--days", "30"}, authz.RoleViewer, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil},
	} {
		args := append([]string{"pki", "issue", "--ca", dir, "--out", out, "-o", "json"}, c.args...)
		r := ctl(t, nil, args...).expect(t, 0)
		var got PKICert
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
			t.Fatalf("%v: %s", err, r.stdout)
		}
		cert := readCert(t, got.Cert)
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: c.uses}); err != nil {
			t.Errorf("%v: does not verify: %v", c.args, err)
		}
		if authz.RoleOf(cert) != c.role || cert.Subject.CommonName != c.args[1] {
			t.Errorf("%v: role %s, CN %q", c.args, authz.RoleOf(cert), cert.Subject.CommonName)
		}
		if !slices.Equal(cert.ExtKeyUsage, c.uses) {
			t.Errorf("%v: key usages %v", c.args, cert.ExtKeyUsage)
		}
		var ips []string
		for _, ip := range cert.IPAddresses {
			ips = append(ips, ip.String())
		}
		if !slices.Equal(ips, c.ips) || !slices.Equal(cert.DNSNames, c.dns) || !slices.Equal(got.IPs, c.ips) {
			t.Errorf("%v: names %v %v (printed %v)", c.args, ips, cert.DNSNames, got.IPs)
		}
		if c.role != authz.RoleNone && (len(got.URIs) != 1 || got.URIs[0] != "fourover6://role/"+c.role.String()) {
			t.Errorf("%v: printed URIs %v", c.args, got.URIs)
		}
		if m := mode(t, got.Key); m != 0o600 {
			t.Errorf("%v: key mode %o", c.args, m)
		}
		if got.CA != ca.Cert || got.Key != filepath.Join(out, c.args[1]+"-key.pem") {
			t.Errorf("%v: paths %+v", c.args, got)
		}
		if c.args[1] == "grafana" && cert.NotAfter.After(time.Now().Add(31*24*time.Hour)) {
			t.Errorf("--days 30: valid until %v", cert.NotAfter)
		}
	}
	// The table form, and the default --out (the CA's directory).
	r = ctl(t, nil, "pki", "issue", "viewer", "bob", "--ca", dir).expect(t, 0)
	if !strings.Contains(r.stdout, "fourover6://role/viewer") || !strings.Contains(r.stdout, filepath.Join(dir, "bob.pem")) {
		t.Errorf("table: %s", r.stdout)
	}
	if r := ctl(t, nil, "pki", "issue", "viewer", "bob", "--ca", dir).expect(t, 1); !strings.Contains(r.stderr, "exists") {
		t.Errorf("second issue: %q", r.stderr)
	}
	if r := ctl(t, nil, "pki", "issue", "viewer", "carol", "--ca", t.TempDir()).expect(t, 1); !strings.Contains(r.stderr, "pki init") {
		t.Errorf("no CA: %q", r.stderr)
	}
	for _, args := range [][]string{
		{"admin", "x"},                      // no such role
		{"none", "x"},                       // not a role one can issue
		{"viewer", "../x"},                  // a path, not a name
		{"viewer", "x", "--ip", "10.0.0.1"}, // names are for servers
		{"controller", "x"},                 // a server without names
		{"controller", "x", "--ip", "nope"},
		{"controller", "x", "--dns", "bad name"},
		{"viewer", "x", "--days", "0"},
		{"viewer"},
	} {
		r := ctl(t, nil, append([]string{"pki", "issue", "--ca", dir}, args...)...).expect(t, 2)
		if r.stderr == "" {
			t.Errorf("%v: no message", args)
		}
	}
	ctl(t, nil, "pki", "init").expect(t, 2)
	ctl(t, nil, "pki", "bogus").expect(t, 2)
}

// TestPermissionDenied: certificates from pki are accepted by the daemons'
// TLS (tlsconf) and their roles by the guard; a refused call is exit 5
// with the daemon's message.
func TestPermissionDenied(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctl(t, nil, "pki", "init", dir).expect(t, 0)
	ctl(t, nil, "pki", "issue", "--ca", dir, "controller", "ctl", "--ip", "127.0.0.1").expect(t, 0)
	ctl(t, nil, "pki", "issue", "--ca", dir, "viewer", "v").expect(t, 0)
	ctl(t, nil, "pki", "issue", "--ca", dir, "operator", "op").expect(t, 0)
	ctl(t, nil, "pki", "issue", "--ca", dir, "dataplane", "dp").expect(t, 0)
	files := func(name string) tlsconf.Files {
		return tlsconf.Files{Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+"-key.pem"), CA: filepath.Join(dir, "ca.pem")}
	}
	opt, err := files("ctl").ServerOption()
	if err != nil {
		t.Fatal(err)
	}
	guard := authz.New(slog.New(slog.DiscardHandler), &cpv1.ControllerService_ServiceDesc, &healthpb.Health_ServiceDesc)
	gs := grpc.NewServer(append([]grpc.ServerOption{opt}, guard.ServerOptions()...)...)
	cpv1.RegisterControllerServiceServer(gs, newController())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)

	as := func(name string, args ...string) result {
		f := files(name)
		return ctl(t, map[string]string{"FOUROVER6_TLS_CERT": f.Cert, "FOUROVER6_TLS_KEY": f.Key, "FOUROVER6_TLS_CA": f.CA},
			append([]string{"--controller", ln.Addr().String()}, args...)...)
	}
	as("v", "pool", "show").expect(t, 0)
	as("op", "dns", "set", "192.0.2.1").expect(t, 0)
	r := as("v", "dns", "set", "192.0.2.1").expect(t, exitDenied)
	want := "4over6ctl: controller at " + ln.Addr().String() + ": permission denied: ControllerService/SetDNS needs the operator role; " +
		`the caller (certificate "CN=v") has the viewer role` + "\n"
	if r.stderr != want {
		t.Errorf("viewer's dns set:\n got %q\nwant %q", r.stderr, want)
	}
	r = as("dp", "clients", "list", "-o", "json").expect(t, exitDenied)
	var e errorOutput
	if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Code != 5 || !strings.Contains(e.Error, "has the dataplane role") {
		t.Errorf("data plane's clients list: %q", r.stderr)
	}
	// The controller's own certificate is no client's.
	if r := as("ctl", "pool", "show"); r.code == 0 {
		t.Errorf("the controller's server certificate was accepted as a client: %+v", r)
	}
}

// TestPlaintextOffHostRefused: an address off this host without TLS is a
// usage error naming the address, where it came from and the fix; nothing
// is dialed.
func TestPlaintextOffHostRefused(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{nil, []string{"--controller", "[fd00:46::2]:7000", "pool", "show"}, "controller address [fd00:46::2]:7000 (from --controller)"},
		{nil, []string{"--controller", "unix:///x.sock,192.0.2.1:7000", "pool", "show"}, "controller address 192.0.2.1:7000 (from --controller)"},
		{map[string]string{"FOUROVER6_CONTROLLER": "ctl.example.net:7000"}, []string{"dns", "set", "192.0.2.1"}, "(from $FOUROVER6_CONTROLLER)"},
		{nil, []string{"--dataplane", "[2001:db8::1]:7001", "dataplane", "status"}, "dataplane address [2001:db8::1]:7001 (from --dataplane)"},
		{map[string]string{"FOUROVER6_DATAPLANE": "192.0.2.7:7001"}, []string{"sessions", "list"}, "(from $FOUROVER6_DATAPLANE)"},
	} {
		r := ctl(t, c.env, c.args...).expect(t, exitUsage)
		for _, w := range []string{c.want, "TLS", "--tls-cert", "$FOUROVER6_TLS_CERT"} {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("%v: %q lacks %q", c.args, r.stderr, w)
			}
		}
	}
	// A filter, not an address: clients list does not dial --dataplane.
	ctl(t, nil, "--controller", serve(t, newController(), nil), "clients", "list", "--dataplane", "192.0.2.7:7001").expect(t, 0)
}
