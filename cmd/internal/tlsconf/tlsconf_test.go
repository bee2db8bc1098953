package tlsconf

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fourover6/fourover6/cmd/internal/endpoint"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// writeCA makes a CA and one leaf signed by it (usable as server and
// client), and a leaf signed by another CA; it returns the file paths.
func writePKI(t *testing.T) (good, rogue Files) {
	t.Helper()
	dir := t.TempDir()
	mk := func(name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: isCA, BasicConstraintsValid: true,
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
			DNSNames:    []string{"localhost"},
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		kb, _ := x509.MarshalECPrivateKey(key)
		os.WriteFile(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
		os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
		return c, key
	}
	ca, caKey := mk("ca", nil, nil, true)
	mk("leaf", ca, caKey, false)
	other, otherKey := mk("otherca", nil, nil, true)
	mk("rogue", other, otherKey, false)
	p := func(n string) string { return filepath.Join(dir, n) }
	return Files{Cert: p("leaf.crt"), Key: p("leaf.key"), CA: p("ca.crt")},
		Files{Cert: p("rogue.crt"), Key: p("rogue.key"), CA: p("ca.crt")}
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
