package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/authz"
	"github.com/fourover6/fourover6/dataplane/wire"
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
	dpCert, _ := ca.IssueRole(authz.RoleDataplane, "dataplane")
	opCert, _ := ca.IssueRole(authz.RoleOperator, "operator")
	rogueCA, _ := pki.NewCA(t.TempDir(), "rogue")
	rogue, _ := rogueCA.Issue("mallory")
	rogue.CA = ca.CA() // trusts the server, but is not trusted by it

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

// addHost links a new namespace (another host) to the server namespace
// over its own /64: the host is PREFIX::2, the server PREFIX::1, and the
// host routes the server's network through it.
func (e *env) addHost(t *testing.T, tag, prefix string) *topo.NS {
	t.Helper()
	ns, err := topo.NewNS(topo.UniqueName(tag))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Delete)
	for _, err := range []error{
		topo.Veth(e.srv, "v6"+tag, ns, "v6s"),
		e.srv.AddAddr("v6"+tag, prefix+"::1/64"),
		ns.AddAddr("v6s", prefix+"::2/64"),
		ns.Exec("ip", "-6", "route", "add", "fd00:46::/64", "via", prefix+"::1"),
		e.srv.Sysctl("net.ipv6.conf.all.forwarding", "1"),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return ns
}

// TestPKIDeployment follows the README's small deployment with the real
// 4over6ctl pki: one controller, two data planes on other hosts (one with
// its API on TCP), an operator and a viewer, everything over mutual TLS
// with certificates from pki init and pki issue; a client gets its lease
// through a data plane that reached the controller that way.
func TestPKIDeployment(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	hostA, hostB := e.addHost(t, "a", "fd00:4a"), e.addHost(t, "b", "fd00:4b")
	dir := filepath.Join(e.dir, "pki")
	pkiCmd := func(args ...string) {
		t.Helper()
		out, err := exec.Command(filepath.Join(binDir, "4over6ctl"), append([]string{"pki"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("4over6ctl pki %v: %v\n%s", args, err, out)
		}
	}
	pkiCmd("init", dir)
	pkiCmd("issue", "controller", "ctl1", "--ca", dir, "--ip", serverV6)
	pkiCmd("issue", "dataplane", "dp-a", "--ca", dir, "--ip", "fd00:4a::2")
	pkiCmd("issue", "dataplane", "dp-b", "--ca", dir)
	pkiCmd("issue", "operator", "alice", "--ca", dir)
	pkiCmd("issue", "viewer", "bob", "--ca", dir)
	files := func(name string) []string {
		return []string{"--tls-cert", filepath.Join(dir, name+".pem"), "--tls-key", filepath.Join(dir, name+"-key.pem"), "--tls-ca", filepath.Join(dir, "ca.pem")}
	}

	ctlAddr := net.JoinHostPort(serverV6, "7000")
	dpAPI := net.JoinHostPort("fd00:4a::2", "7001")
	e.start(e.srv, "4over6-controller", append([]string{"--listen", ctlAddr, "--state", filepath.Join(e.dir, "pki.db"),
		"--controller-id", "ctl1", "--pool", "13.9.0.0/24"}, files("ctl1")...)...)
	e.start(hostA, "4over6-dataplane", append([]string{"--id", "dp-a", "--controller", ctlAddr, "--api", dpAPI}, files("dp-a")...)...)
	e.start(hostB, "4over6-dataplane", append([]string{"--id", "dp-b", "--controller", ctlAddr,
		"--api", "unix://" + filepath.Join(e.dir, "dp-b.sock")}, files("dp-b")...)...)

	asNS := func(who string, args ...string) (string, string, int) {
		full := append([]string{"--timeout", "5s", "--controller", ctlAddr, "--dataplane", dpAPI}, files(who)...)
		cmd := e.srv.Command(t.Context(), filepath.Join(binDir, "4over6ctl"), append(full, args...)...)
		var o, er strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &er
		code := exitCode(cmd.Run())
		return o.String(), er.String(), code
	}
	e.waitFor("both data planes registered over mutual TLS", func() bool {
		out, _, code := asNS("bob", "dataplanes", "list", "-o", "json")
		return code == 0 && strings.Contains(out, `"dp-a"`) && strings.Contains(out, `"dp-b"`)
	})

	// A client leases through dp-a.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := e.srv.Dial(ctx, "tcp6", "[fd00:4a::2]:5678")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	lc := &labClient{t: t, conn: conn, dec: wire.NewDecoder(conn, 0)}
	if got := lc.lease().Addr; !netip.MustParsePrefix("13.9.0.0/24").Contains(got) {
		t.Fatalf("lease %v from the TLS controller's pool", got)
	}
	e.waitFor("the client in the table, read by the viewer", func() bool {
		out, _, code := asNS("bob", "clients", "list", "-o", "json")
		return code == 0 && strings.Contains(out, `"dataplane": "dp-a"`)
	})

	for _, c := range []struct {
		who  string
		args []string
		code int
	}{
		{"alice", []string{"dns", "set", "192.0.2.10"}, 0},
		{"bob", []string{"dns", "set", "192.0.2.11"}, 5},
		{"bob", []string{"dns", "show"}, 0},
		{"alice", []string{"dataplane", "status"}, 0}, // dp-a's API, over TLS
		{"bob", []string{"dataplane", "status"}, 0},
		{"bob", []string{"dataplane", "log-level", "debug"}, 5},
		{"alice", []string{"dataplane", "log-level", "info"}, 0},
		{"dp-a", []string{"pool", "show"}, 5}, // a data plane's certificate reads no pool
		{"ctl1", []string{"pool", "show"}, 3}, // a server certificate is no client's: the handshake fails
		{"alice", []string{"dataplane", "drain", "dp-b"}, 0},
		{"bob", []string{"dataplane", "undrain", "dp-b"}, 5},
	} {
		out, errOut, code := asNS(c.who, c.args...)
		if code != c.code {
			t.Errorf("%s: %v: exit %d, want %d\n%s%s", c.who, c.args, code, c.code, out, errOut)
		}
	}
	var dns DNSOut
	out, errOut, code := asNS("bob", "dns", "show", "-o", "json")
	if code != 0 || json.Unmarshal([]byte(out), &dns) != nil || len(dns.Servers) == 0 || dns.Servers[0] != "192.0.2.10" {
		t.Errorf("dns show: exit %d %s %s", code, out, errOut)
	}
}
