package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fourover6/fourover6/controlplane/authz"
)

// The pki commands make the certificates of the control APIs' mutual TLS:
// a CA (ECDSA P-256, crypto/x509) and, signed by it, a key and certificate
// per daemon and per person. What a holder may do is its role, a URI SAN
// fourover6://role/ROLE (controlplane/authz). Keys are written 0600 and
// nothing is ever overwritten.

// The files of a CA directory.
const (
	caCertFile = "ca.pem"
	caKeyFile  = "ca-key.pem"
)

// roleController is the kind of certificate a controller serves with. It is
// not a role: the certificate carries none and cannot be used by a client.
const roleController = "controller"

// PKICA is what "pki init" prints (-o json/yaml).
type PKICA struct {
	Dir      string `json:"dir" yaml:"dir"`
	Cert     string `json:"cert" yaml:"cert"`           // the CA certificate: --tls-ca of everyone
	Key      string `json:"key" yaml:"key"`             // the CA key, 0600: keep it off the daemons' hosts
	Subject  string `json:"subject" yaml:"subject"`     // "CN=fourover6 CA"
	NotAfter string `json:"not_after" yaml:"not_after"` // RFC 3339 UTC
}

// PKICert is what "pki issue" prints (-o json/yaml).
type PKICert struct {
	Role     string   `json:"role" yaml:"role"` // dataplane, operator, viewer or controller
	Name     string   `json:"name" yaml:"name"`
	Cert     string   `json:"cert" yaml:"cert"` // --tls-cert
	Key      string   `json:"key" yaml:"key"`   // --tls-key, 0600
	CA       string   `json:"ca" yaml:"ca"`     // --tls-ca
	Subject  string   `json:"subject" yaml:"subject"`
	URIs     []string `json:"uris" yaml:"uris"` // the role SAN
	DNS      []string `json:"dns" yaml:"dns"`
	IPs      []string `json:"ips" yaml:"ips"`
	NotAfter string   `json:"not_after" yaml:"not_after"` // RFC 3339 UTC
}

func (a *app) pkiCommand() *cobra.Command {
	var caName string
	var caDays int
	initCmd := &cobra.Command{
		Use:   "init DIR",
		Short: "Create the certificate authority of the control APIs",
		Long: `Create a certificate authority in DIR (made 0700 if missing): ca.pem, the
CA certificate every daemon and 4over6ctl is given as --tls-ca, and
ca-key.pem (mode 0600), its private key. Keep the key where certificates are
issued, not on the daemons' hosts. Existing files are never overwritten.

The key is ECDSA P-256; the CA is valid for --days (10 years by default) and
signs only end-entity certificates ("pki issue").`,
		Example: `  4over6ctl pki init /etc/fourover6/pki
  4over6ctl pki init ./pki --name "example.net fourover6 CA"`,
		Args: exactArgs("DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if caDays < 1 || caDays > 36500 {
				return usageErrorf("invalid --days %d: want 1..36500", caDays)
			}
			if strings.TrimSpace(caName) == "" {
				return usageError("--name is empty: give the CA a name")
			}
			out, err := initCA(args[0], caName, time.Duration(caDays)*24*time.Hour, time.Now())
			if err != nil {
				return err
			}
			return a.emit(out, func(w io.Writer) {
				fmt.Fprintf(w, "CA:\t%s\n", out.Subject)
				fmt.Fprintf(w, "Certificate:\t%s\n", out.Cert)
				fmt.Fprintf(w, "Key:\t%s (0600: keep it off the daemons' hosts)\n", out.Key)
				fmt.Fprintf(w, "Valid until:\t%s\n", out.NotAfter)
			})
		},
	}
	initCmd.Flags().StringVar(&caName, "name", "fourover6 CA", "common name of the CA")
	initCmd.Flags().IntVar(&caDays, "days", 3650, "days the CA is valid")

	var caDir, outDir string
	var dnsNames, ips []string
	var days int
	issue := &cobra.Command{
		Use:   "issue ROLE NAME",
		Short: "Issue a key and certificate for a daemon or a person",
		Long: `Issue a private key (NAME-key.pem, mode 0600) and a certificate (NAME.pem),
signed by the CA in --ca, into --out. ROLE is what the holder may do on the
control APIs, written into the certificate as the URI SAN
fourover6://role/ROLE:

  dataplane   a data plane: the controller's LeaseService (leases, reports,
              heartbeats) and its status; also the certificate its own --api
              serves with, so give its names with --dns/--ip when that API is
              on TCP. Use the data plane's --id as NAME.
  operator    everything: every read and every change, on both daemons.
  viewer      reads only (lists, status, watch) on both daemons.
  controller  not a role: the controller's server certificate (no role SAN,
              server use only). Give every name and address data planes and
              4over6ctl dial it by with --dns/--ip.

A certificate with no role, or an unknown one, gets no access at all. Names
given with --dns/--ip are checked by whoever dials that daemon. Existing
files are never overwritten.`,
		Example: `  4over6ctl pki issue controller ctl1 --ca /etc/fourover6/pki --ip 2001:db8::10 --dns ctl1.example.net
  4over6ctl pki issue dataplane dp1 --ca /etc/fourover6/pki --out ./dp1
  4over6ctl pki issue operator alice --ca /etc/fourover6/pki
  4over6ctl pki issue viewer grafana --ca /etc/fourover6/pki --days 90`,
		Args: exactArgs("ROLE", "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := parseIssue(args[0], args[1], dnsNames, ips, days)
			if err != nil {
				return err
			}
			if outDir == "" {
				outDir = caDir
			}
			out, err := issueCert(caDir, outDir, req, time.Now())
			if err != nil {
				return err
			}
			return a.emit(out, func(w io.Writer) {
				fmt.Fprintf(w, "Subject:\t%s\n", out.Subject)
				fmt.Fprintf(w, "Role:\t%s\n", out.Role)
				if len(out.URIs) > 0 {
					fmt.Fprintf(w, "URI SAN:\t%s\n", strings.Join(out.URIs, ", "))
				}
				if len(out.DNS)+len(out.IPs) > 0 {
					fmt.Fprintf(w, "Names:\t%s\n", strings.Join(append(append([]string{}, out.DNS...), out.IPs...), ", "))
				}
				fmt.Fprintf(w, "Certificate:\t%s\n", out.Cert)
				fmt.Fprintf(w, "Key:\t%s\n", out.Key)
				fmt.Fprintf(w, "CA:\t%s\n", out.CA)
				fmt.Fprintf(w, "Valid until:\t%s\n", out.NotAfter)
			})
		},
	}
	f := issue.Flags()
	f.StringVar(&caDir, "ca", ".", "directory of the CA (ca.pem and ca-key.pem, from pki init)")
	f.StringVar(&outDir, "out", "", "directory to write NAME.pem and NAME-key.pem to (default: the --ca directory)")
	f.StringSliceVar(&dnsNames, "dns", nil, "DNS name the daemon is dialed by (repeat or comma-separate; controller and dataplane only)")
	f.StringSliceVar(&ips, "ip", nil, "IP address the daemon is dialed by (repeat or comma-separate; controller and dataplane only)")
	f.IntVar(&days, "days", 365, "days the certificate is valid (at most until the CA expires)")
	_ = issue.RegisterFlagCompletionFunc("ca", cobra.FixedCompletions(nil, cobra.ShellCompDirectiveFilterDirs))
	issue.ValidArgsFunction = func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) == 0 {
			return issueRoles(), cobra.ShellCompDirectiveNoFileComp
		}
		return nil, cobra.ShellCompDirectiveNoFileComp
	}

	return groupCommand("pki", "Certificates for mutual TLS between the daemons and 4over6ctl", initCmd, issue)
}

func issueRoles() []string {
	var out []string
	for _, r := range authz.Roles {
		out = append(out, r.String())
	}
	return append(out, roleController)
}

// issueRequest is a validated "pki issue".
type issueRequest struct {
	kind string     // a role's name, or roleController
	role authz.Role // RoleNone for roleController
	name string
	dns  []string
	ips  []net.IP
	life time.Duration
}

var certName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
var dnsName = regexp.MustCompile(`^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$`)

func parseIssue(kind, name string, dnsNames, ips []string, days int) (issueRequest, error) {
	r := issueRequest{kind: kind, name: name}
	if kind != roleController {
		role, err := authz.ParseRole(kind)
		if err != nil {
			return r, usageErrorf("invalid ROLE %q: want one of %s", kind, strings.Join(issueRoles(), ", "))
		}
		r.role = role
	}
	if !certName.MatchString(name) {
		return r, usageErrorf("invalid NAME %q: want 1 to 64 letters, digits, '.', '_' or '-' (it names the files too)", name)
	}
	for _, d := range dnsNames {
		d = strings.TrimSpace(d)
		if !dnsName.MatchString(d) || len(d) > 253 {
			return r, usageErrorf("invalid --dns %q: want a DNS name such as ctl1.example.net", d)
		}
		r.dns = append(r.dns, strings.TrimSuffix(d, "."))
	}
	for _, s := range ips {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || a.Zone() != "" {
			return r, usageErrorf("invalid --ip %q: want an IPv4 or IPv6 address", s)
		}
		r.ips = append(r.ips, net.IP(a.Unmap().AsSlice()))
	}
	serves := r.kind == roleController || r.role == authz.RoleDataplane
	if !serves && len(r.dns)+len(r.ips) > 0 {
		return r, usageErrorf("--dns and --ip name a daemon's server: a %s certificate only dials (give them to controller or dataplane certificates)", kind)
	}
	if r.kind == roleController && len(r.dns)+len(r.ips) == 0 {
		return r, usageError("a controller certificate needs the names it is dialed by: give --ip and/or --dns (e.g. --ip 2001:db8::10)")
	}
	if days < 1 || days > 36500 {
		return r, usageErrorf("invalid --days %d: want 1..36500", days)
	}
	r.life = time.Duration(days) * 24 * time.Hour
	return r, nil
}

// initCA creates a CA in dir.
func initCA(dir, name string, life time.Duration, now time.Time) (PKICA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return PKICA{}, fmt.Errorf("pki init: %w", err)
	}
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return PKICA{}, fmt.Errorf("pki init: %s exists: this directory holds a CA already (remove it, or choose another DIR)", p)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return PKICA{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return PKICA{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-5 * time.Minute), // tolerate a little clock skew
		NotAfter:              now.Add(life),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return PKICA{}, err
	}
	if err := writeKeyAndCert(keyPath, certPath, key, der); err != nil {
		return PKICA{}, fmt.Errorf("pki init: %w", err)
	}
	return PKICA{Dir: dir, Cert: certPath, Key: keyPath, Subject: tmpl.Subject.String(),
		NotAfter: tmpl.NotAfter.UTC().Format(time.RFC3339)}, nil
}

// issueCert signs a certificate for r with the CA in caDir, into outDir.
func issueCert(caDir, outDir string, r issueRequest, now time.Time) (PKICert, error) {
	caCert, caKey, err := loadCA(caDir)
	if err != nil {
		return PKICert{}, err
	}
	if !now.Before(caCert.NotAfter) {
		return PKICert{}, fmt.Errorf("pki issue: the CA in %s expired on %s", caDir, caCert.NotAfter.UTC().Format(time.RFC3339))
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return PKICert{}, fmt.Errorf("pki issue: %w", err)
	}
	certPath, keyPath := filepath.Join(outDir, r.name+".pem"), filepath.Join(outDir, r.name+"-key.pem")
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return PKICert{}, fmt.Errorf("pki issue: %s exists: remove it first, or choose another NAME or --out", p)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return PKICert{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return PKICert{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: r.name},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(r.life),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		DNSNames:     r.dns,
		IPAddresses:  r.ips,
	}
	if tmpl.NotAfter.After(caCert.NotAfter) {
		tmpl.NotAfter = caCert.NotAfter
	}
	switch {
	case r.kind == roleController:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case r.role == authz.RoleDataplane:
		// It serves its own API and dials the controller with one pair.
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	default:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if r.role != authz.RoleNone {
		tmpl.URIs = append(tmpl.URIs, authz.RoleURI(r.role))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return PKICert{}, fmt.Errorf("pki issue: sign: %w", err)
	}
	if err := writeKeyAndCert(keyPath, certPath, key, der); err != nil {
		return PKICert{}, fmt.Errorf("pki issue: %w", err)
	}
	out := PKICert{Role: r.kind, Name: r.name, Cert: certPath, Key: keyPath, CA: filepath.Join(caDir, caCertFile),
		Subject: tmpl.Subject.String(), URIs: []string{}, DNS: append([]string{}, r.dns...), IPs: []string{},
		NotAfter: tmpl.NotAfter.UTC().Format(time.RFC3339)}
	for _, u := range tmpl.URIs {
		out.URIs = append(out.URIs, u.String())
	}
	for _, ip := range r.ips {
		out.IPs = append(out.IPs, ip.String())
	}
	return out, nil
}

// loadCA reads the CA certificate and key of caDir and checks that they
// belong together.
func loadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	cb, err := os.ReadFile(certPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("pki issue: no CA in %s (%s is missing): run 4over6ctl pki init %s, or give --ca", dir, certPath, dir)
		}
		return nil, nil, fmt.Errorf("pki issue: %w", err)
	}
	block, _ := pem.Decode(cb)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("pki issue: %s: no PEM certificate in it", certPath)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("pki issue: %s: %w", certPath, err)
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("pki issue: %s is not a CA certificate", certPath)
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("pki issue: the CA key: %w", err)
	}
	kblock, _ := pem.Decode(kb)
	if kblock == nil {
		return nil, nil, fmt.Errorf("pki issue: %s: no PEM key in it", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(kblock.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("pki issue: %s: %w", keyPath, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("pki issue: %s: a %T cannot sign", keyPath, k)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := signer.Public().(equaler); !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("pki issue: %s is not the key of %s", keyPath, certPath)
	}
	return cert, signer, nil
}

// writeKeyAndCert writes a private key (PKCS #8, 0600) and its certificate
// (0644), refusing to replace either; on failure neither is left behind.
func writeKeyAndCert(keyPath, certPath string, key *ecdsa.PrivateKey, der []byte) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeNew(keyPath, 0o600, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})); err != nil {
		return err
	}
	if err := writeNew(certPath, 0o644, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
		os.Remove(keyPath)
		return err
	}
	return nil
}

// writeNew creates path (which must not exist) with mode perm, whatever
// the umask, and syncs it.
func writeNew(path string, perm os.FileMode, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(b)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// newSerial is a random positive serial number of up to 127 bits (RFC
// 5280 allows 20 octets and wants them unpredictable).
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	return n.Add(n, big.NewInt(1)), nil
}
