package e2e

import (
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fourover6/fourover6/test/pki"
	"github.com/fourover6/fourover6/test/topo"
)

// TestControlAPIsNeedMutualTLSOffLoopback: a controller on a network
// address refuses to start without TLS; with it, a data plane and
// 4over6ctl holding certificates from the CA get in, and nobody else does.
func TestControlAPIsNeedMutualTLSOffLoopback(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	addr := net.JoinHostPort(serverV6, "7001")

	// Without TLS: exit 2 and a message that says what to give.
	out, err := e.srv.Command(t.Context(), filepath.Join(binDir, "4over6-controller"),
		"--listen", addr, "--state", filepath.Join(e.dir, "nontls.db")).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "--tls-cert") {
		t.Fatalf("controller on %s without TLS: %v %s", addr, err, out)
	}
	out, err = e.srv.Command(t.Context(), filepath.Join(binDir, "4over6-dataplane"),
		"--api", "[::]:7002", "--controller", "unix://"+e.ctlSock).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "--tls-cert") {
		t.Fatalf("data plane API on [::]:7002 without TLS: %v %s", err, out)
	}

	ca, err := pki.NewCA(t.TempDir(), "ca")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, _ := ca.Issue("controller", net.ParseIP(serverV6))
	dpCert, _ := ca.Issue("dataplane")
	opCert, _ := ca.Issue("operator")
	rogueCA, _ := pki.NewCA(t.TempDir(), "rogue")
	rogue, _ := rogueCA.Issue("mallory")
	rogue.CA = ca.CA() // trusts the server, but is not trusted by it

	tlsArgs := func(f pki.Files) []string {
		return []string{"--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA}
	}
	e.start(e.srv, "4over6-controller", append([]string{"--listen", addr, "--state", filepath.Join(e.dir, "tls.db"),
		"--controller-id", "tls"}, tlsArgs(srvCert)...)...)
	dpSock := filepath.Join(e.dir, "tls-dp.sock")
	// A second data plane, in its own namespace, reaching the controller
	// over the network with its certificate.
	dpNS, err := topo.NewNS(topo.UniqueName("t"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dpNS.Delete)
	if err := topo.Veth(e.srv, "v6t", dpNS, "v6s"); err != nil {
		t.Fatal(err)
	}
	e.srv.AddAddr("v6t", "fd00:47::1/64")
	dpNS.AddAddr("v6s", "fd00:47::2/64")
	dpNS.Exec("ip", "-6", "route", "add", "fd00:46::/64", "via", "fd00:47::1")
	e.srv.Sysctl("net.ipv6.conf.all.forwarding", "1")
	e.start(dpNS, "4over6-dataplane", append([]string{"--id", "dp-tls", "--controller", addr, "--api", "unix://" + dpSock}, tlsArgs(dpCert)...)...)

	ctl := func(files *pki.Files, args ...string) (string, int) {
		full := []string{filepath.Join(binDir, "4over6ctl"), "--controller", addr, "--timeout", "3s"}
		if files != nil {
			full = append(full, tlsArgs(*files)...)
		}
		cmd := e.srv.Command(t.Context(), full[0], append(full[1:], args...)...)
		b, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return string(b), code
	}
	e.waitFor("data plane registered over mutual TLS", func() bool {
		out, code := ctl(&opCert, "dataplanes", "list", "-o", "json")
		return code == 0 && strings.Contains(out, "dp-tls")
	})
	if out, code := ctl(nil, "pool", "show"); code == 0 {
		t.Fatalf("plaintext client got in: %s", out)
	}
	if out, code := ctl(&rogue, "pool", "show"); code == 0 {
		t.Fatalf("client with a certificate from another CA got in: %s", out)
	}
}
