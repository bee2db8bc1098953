package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/cmd/internal/tlsconf"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// TLS on one side only, or with the wrong CA: the message says so, without
// gRPC's wrapping, and names the flags to try.
func TestTLSHints(t *testing.T) {
	t.Parallel()
	dir, rogue := t.TempDir(), t.TempDir()
	ctl(t, nil, "pki", "init", dir).expect(t, 0)
	ctl(t, nil, "pki", "issue", "--ca", dir, "controller", "ctl", "--ip", "127.0.0.1").expect(t, 0)
	ctl(t, nil, "pki", "issue", "--ca", dir, "operator", "op").expect(t, 0)
	ctl(t, nil, "pki", "init", rogue).expect(t, 0)
	ctl(t, nil, "pki", "issue", "--ca", rogue, "operator", "op").expect(t, 0)
	files := func(d, name string) tlsconf.Files {
		return tlsconf.Files{Cert: filepath.Join(d, name+".pem"), Key: filepath.Join(d, name+"-key.pem"), CA: filepath.Join(d, "ca.pem")}
	}
	listen := func(opts ...grpc.ServerOption) string {
		s := grpc.NewServer(opts...)
		cpv1.RegisterControllerServiceServer(s, newController())
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go s.Serve(ln)
		t.Cleanup(s.Stop)
		return ln.Addr().String()
	}
	opt, err := files(dir, "ctl").ServerOption()
	if err != nil {
		t.Fatal(err)
	}
	tlsAddr, plainAddr := listen(opt), listen()
	env := func(f tlsconf.Files) map[string]string {
		return map[string]string{"FOUROVER6_TLS_CERT": f.Cert, "FOUROVER6_TLS_KEY": f.Key, "FOUROVER6_TLS_CA": f.CA}
	}
	for _, c := range []struct {
		name string
		env  map[string]string
		addr string
		want []string
	}{
		{"plaintext to a TLS server", nil, tlsAddr, []string{"error reading server preface: ", "; the server closed the connection without a word: is it using TLS? try --tls-cert, --tls-key and --tls-ca"}},
		{"TLS to a plaintext server", env(files(dir, "op")), plainAddr, []string{"authentication handshake failed: tls: first record does not look like a TLS handshake; the server does not speak TLS: drop --tls-cert"}},
		{"another CA", env(files(rogue, "op")), tlsAddr, []string{"certificate signed by unknown authority", "the server's certificate is not signed by --tls-ca " + filepath.Join(rogue, "ca.pem")}},
	} {
		for _, addr := range []string{c.addr, c.addr + "," + c.addr} { // one address, and several
			r := ctl(t, c.env, "--controller", addr, "pool", "show").expect(t, exitUnreachable)
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("%s (%s): stderr lacks %q:\n%s", c.name, addr, w, r.stderr)
				}
			}
			for _, bad := range []string{"connection error", "desc =", "transport:", "Unavailable", "code ="} {
				if strings.Contains(r.stderr, bad) {
					t.Errorf("%s (%s): stderr has gRPC's %q:\n%s", c.name, addr, bad, r.stderr)
				}
			}
		}
	}
	ctl(t, env(files(dir, "op")), "--controller", tlsAddr, "pool", "show").expect(t, 0)
}

// No answer of a daemon is shown with a gRPC code name.
func TestNoCodeNames(t *testing.T) {
	t.Parallel()
	for c := codes.OK + 1; c <= codes.Unauthenticated; c++ {
		ctrl := newController()
		ctrl.fail = map[string]error{"GetPool": status.Error(c, "the reason")}
		r := ctl(t, nil, "--controller", serve(t, ctrl, nil), "pool", "show")
		// NotFound has the command's own message; Canceled and
		// DeadlineExceeded are the CLI's own (interrupted, --timeout).
		if r.code == 0 || !strings.Contains(r.stderr, "the reason") && c != codes.NotFound && c != codes.Canceled && c != codes.DeadlineExceeded {
			t.Errorf("%v: exit %d %q", c, r.code, r.stderr)
		}
		// "internal error" is English; "Internal", "failedprecondition"
		// or "FailedPrecondition" are gRPC's.
		name := c.String()
		bads := []string{name, "code ="}
		if strings.ToLower(name[1:]) != name[1:] {
			bads = append(bads, strings.ToLower(name))
		}
		for _, bad := range bads {
			if strings.Contains(r.stderr, bad) {
				t.Errorf("%v: %q shows %q", c, r.stderr, bad)
			}
		}
	}
}

func TestCleanTransport(t *testing.T) {
	for in, want := range map[string]string{
		`connection error: desc = "transport: Error while dialing: dial unix /x.sock: connect: permission denied"`: "dial unix /x.sock: connect: permission denied",
		`connection error: desc = "error reading server preface: EOF"`:                                             "error reading server preface: EOF",
		"connection refused":                     "connection refused",
		`connection error: desc = "unterminated`: `"unterminated`,
	} {
		if got := cleanTransport(in); got != want {
			t.Errorf("cleanTransport(%q) = %q, want %q", in, got, want)
		}
	}
	if h := permissionHint("/nonexistent/x.sock"); !strings.Contains(h, "run as root") {
		t.Errorf("permissionHint: %q", h)
	}
}
