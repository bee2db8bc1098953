// Package pki makes throwaway certificate authorities and certificates for
// tests of the mutual-TLS control APIs. It is written apart from
// 4over6ctl pki on purpose: the daemons must accept any certificate that
// carries the documented role SAN (authz.RoleURI), not just the ones the
// CLI makes.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/fourover6/fourover6/controlplane/authz"
)

// Files are the PEM files of one identity.
type Files struct {
	Cert, Key, CA string
}

// CA signs leaves.
type CA struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	path string
}

// NewCA creates a CA whose files live in dir.
func NewCA(dir, name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{dir: dir, cert: cert, key: key, path: filepath.Join(dir, name+".pem")}
	return ca, writePEM(ca.path, "CERTIFICATE", der)
}

// CA returns the path of the CA certificate.
func (ca *CA) CA() string { return ca.path }

// Issue makes a certificate for name, valid as server and client, for the
// given IP addresses and "localhost", with no role.
func (ca *CA) Issue(name string, ips ...net.IP) (Files, error) {
	return ca.IssueLeaf(name, Leaf{IPs: ips})
}

// IssueRole is Issue with the role SAN of role.
func (ca *CA) IssueRole(role authz.Role, name string, ips ...net.IP) (Files, error) {
	return ca.IssueLeaf(name, Leaf{IPs: ips, URIs: []*url.URL{authz.RoleURI(role)}})
}

// Leaf is what a certificate holds beyond its name.
type Leaf struct {
	IPs  []net.IP
	URIs []*url.URL // the role SAN, or anything a test wants to try
}

// IssueLeaf makes a certificate for name, valid as server and client, with
// l's SANs and "localhost".
func (ca *CA) IssueLeaf(name string, l Leaf) (Files, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: l.IPs, DNSNames: []string{"localhost"}, URIs: l.URIs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return Files{}, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Files{}, err
	}
	f := Files{Cert: filepath.Join(ca.dir, name+".pem"), Key: filepath.Join(ca.dir, name+"-key.pem"), CA: ca.path}
	if err := writePEM(f.Cert, "CERTIFICATE", der); err != nil {
		return Files{}, err
	}
	return f, writePEM(f.Key, "EC PRIVATE KEY", kb)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
