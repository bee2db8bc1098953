// Package tlsconf builds the mutual-TLS credentials of the control APIs. A
// gRPC API on a non-loopback TCP address is an open door to the address
// pool, so the daemons refuse to serve one without TLS and client
// certificates; unix sockets (mode 0660) and loopback need none. Likewise
// the data plane and 4over6ctl refuse to talk plaintext to an address off
// loopback: whoever answered there would decide every client's address,
// route and DNS.
//
// Who a caller is, and so what it may do, is controlplane/authz's: its
// certificate's role under TLS, its process credentials without.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/fourover6/fourover6/controlplane/authz"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Files are the --tls-cert, --tls-key and --tls-ca flags.
type Files struct {
	Cert, Key, CA string
}

// Set reports whether any TLS file was given.
func (f Files) Set() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// Validate checks that the files are given together.
func (f Files) Validate() error {
	if !f.Set() {
		return nil
	}
	if f.Cert == "" || f.Key == "" || f.CA == "" {
		return errors.New("--tls-cert, --tls-key and --tls-ca go together: give all three")
	}
	return nil
}

// RequireFor returns an error when ep is a TCP address off loopback and no
// TLS files were given; flag names the flag that set ep.
func (f Files) RequireFor(flag string, ep endpoint.Endpoint) error {
	if ep.IsLoopback() || f.Set() {
		return nil
	}
	return fmt.Errorf("%s %s is reachable from the network: refusing to serve it without mutual TLS; give --tls-cert, --tls-key and --tls-ca (or use a unix socket or a loopback address)", flag, ep)
}

// RequireForDial returns an error when ep is a TCP address off loopback
// and no TLS files were given: the other end of a plaintext connection is
// whoever answers. what names where ep came from ("--controller",
// "controller address [fd00::1]:7000 (from $FOUROVER6_CONTROLLER)"); fix
// names the flags (or variables) that give the files.
func (f Files) RequireForDial(what string, ep endpoint.Endpoint, fix string) error {
	if ep.IsLoopback() || f.Set() {
		return nil
	}
	return fmt.Errorf("%s is off this host: refusing to talk to it without mutual TLS, as anyone on the path could answer in its place; give %s (see 4over6ctl pki), or use a unix socket or a loopback address", what, fix)
}

func (f Files) load() (tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("--tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return tls.Certificate{}, nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", f.CA)
	}
	return cert, pool, nil
}

// ServerOption returns the gRPC server's transport credentials: mutual
// TLS when files are set (client certificates signed by the CA are
// required; their role SAN says what the caller may do), else plaintext
// that learns the peer's process credentials (authz.LocalCredentials; the
// caller has checked RequireFor).
func (f Files) ServerOption() (grpc.ServerOption, error) {
	if !f.Set() {
		return grpc.Creds(authz.LocalCredentials()), nil
	}
	cert, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	return grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	})), nil
}

// DialOption returns the transport credentials for dialing: mutual TLS
// when files are set, plaintext otherwise.
func (f Files) DialOption() (grpc.DialOption, error) {
	if !f.Set() {
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	cert, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS13,
	})), nil
}
